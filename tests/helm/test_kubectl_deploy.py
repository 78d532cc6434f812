"""deploy/ on the real control plane: `kubectl apply -f deploy/`, the operator with its rights, delete."""

from __future__ import annotations

import pytest

from tests.helm.chart import DEPLOY, ROOT
from tests.helm.test_install import CRD, free_gpus, model_ns, wait_phase  # noqa: F401
from tests.integration.operator_proc import Operator

pytestmark = pytest.mark.integration


def test_kubectl_apply_deploy_reconcile_and_delete(cluster) -> None:
    cluster.kubectl("apply", "-f", str(DEPLOY))
    try:
        cluster.wait_established(CRD)
        cluster.kubectl("rollout", "status", "deployment/dsa-operator", "-n", "dsa-system", "--timeout=60s")
        assert not cluster.kubectl("get", "validatingwebhookconfiguration", "-o", "name").stdout.strip()
        # With a webhook server on loopback (registered nowhere): see test_deploy_args_start below.
        kubeconfig = cluster.sa_kubeconfig("dsa-system", "dsa-operator", create=False)
        op = Operator(cluster, kubeconfig, "deploy-op", webhook=True, managed=False)
        op.start()
        try:
            op.wait_healthy()
            ns = model_ns(cluster)
            cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples/03-pure-tp.yaml"))
            wait_phase(cluster, ns, "dsv32-exp-tp", "Ready")
            logs = op.logs()
            assert "Forbidden" not in logs and "Traceback" not in logs, logs[-3000:]
        finally:
            op.stop()
    finally:
        cluster.kubectl(
            "delete", "-f", str(DEPLOY / "dsa-operator.yaml"), "--wait=true", "--timeout=90s", check=False
        )
    for kind in ("clusterrole", "clusterrolebinding"):
        assert cluster.kubectl("get", kind, "dsa-operator", check=False).returncode != 0
    assert cluster.kubectl("get", "namespace", "dsa-system", check=False).returncode != 0
    cluster.kubectl("get", "crd", CRD)  # the CRD (and so every DSAModel) stays


def test_deploy_args_start_the_operator(cluster) -> None:
    """deploy/ runs the operator without a webhook: exactly its Deployment's arguments must start it."""
    import yaml

    docs = [d for d in yaml.safe_load_all((DEPLOY / "dsa-operator.yaml").read_text()) if d]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    args = [
        a for a in dep["spec"]["template"]["spec"]["containers"][0]["args"] if not a.startswith("--liveness")
    ]
    assert args[0] == "run"
    op = Operator(cluster, cluster.kubeconfig, "deploy-args-op", webhook=False, extra=tuple(args[1:]))
    op.start()
    try:
        op.wait_healthy(timeout=30)
    finally:
        op.stop()
