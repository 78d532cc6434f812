"""deploy/ on the real control plane: `kubectl apply -f deploy/` registers the admission webhook; the
operator, with deploy/'s arguments and its ServiceAccount's rights, provisions the webhook's TLS (the
Secret, the caBundle); the webhook refuses an invalid DSAModel and admits a valid one; delete.

Why the operator runs as a local process and not as deploy/'s pod: this control plane's nodes are
kwok's, which run no containers, so the operator image cannot run on them and nothing answers
behind the webhook's Service (tests/integration/operator_proc.py). The process gets what the pod
gets: deploy/'s Deployment arguments, POD_NAMESPACE, the ServiceAccount's token. Only what a
process on this machine must have its own is replaced: the listening address and port (loopback,
a free port), --webhook-host (the address the API server dials, which the certificate then also
covers) and the certificate file paths (the pod's in-memory emptyDir). The image in-cluster, on real
nodes, is tests/integration/test_real_serving.py.
"""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pytest
import yaml

from dsa_operator.webhook_tls import problem, service_names
from tests.cluster.harness import _free_ports
from tests.helm.chart import DEPLOY, ROOT
from tests.helm.test_install import CRD, free_gpus, model_ns, wait_phase  # noqa: F401
from tests.integration.operator_proc import Operator

pytestmark = pytest.mark.integration
NS, VWC, SECRET, SERVICE = "dsa-system", "dsa-operator", "dsa-operator-webhook-tls", "dsa-operator-webhook"
INVALID = ROOT / "examples" / "invalid" / "cp-on-decode.yaml"
LOCAL = ("--webhook-addr", "--webhook-port", "--webhook-cert", "--webhook-key")  # the pod's own


def deploy_args() -> list[str]:
    """The operator container's arguments in deploy/, minus --liveness (Operator sets its own port)."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / "dsa-operator.yaml").read_text()) if d]
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "run"
    return [a for a in args[1:] if not a.startswith("--liveness")]


def local_args(args: list[str], port: int, certs: Path) -> list[str]:
    """deploy/'s arguments for a process on this machine: LOCAL replaced, the rest as they are."""
    kept = [a for a in args if a.split("=", 1)[0] not in LOCAL]
    assert len(kept) == len(args) - len(LOCAL), args  # each LOCAL once: nothing else changes
    return [
        *kept,
        "--webhook-addr=127.0.0.1",
        f"--webhook-port={port}",
        "--webhook-host=127.0.0.1",
        f"--webhook-cert={certs / 'tls.crt'}",
        f"--webhook-key={certs / 'tls.key'}",
    ]


def point_at(cluster, port: int, ca_bundle: str) -> None:
    """Nothing answers behind the Service (kwok pod): send deploy/'s webhook to the local process, keeping the
    operator's caBundle (its certificate covers 127.0.0.1 through --webhook-host)."""
    hook = cluster.kubectl_json("get", "validatingwebhookconfiguration", VWC)["webhooks"][0]
    url = f"https://127.0.0.1:{port}{hook['clientConfig']['service']['path']}"
    patch = [
        {"op": "replace", "path": "/webhooks/0/clientConfig", "value": {"url": url, "caBundle": ca_bundle}}
    ]
    cluster.kubectl("patch", "validatingwebhookconfiguration", VWC, "--type=json", "-p", json.dumps(patch))


def local_operator(cluster, name: str) -> tuple[Operator, int, Path]:
    """The operator as deploy/ runs it (its arguments, namespace and ServiceAccount), on this machine."""
    (port,) = _free_ports(1)
    certs = cluster.workdir / f"{name}-certs"
    kubeconfig = cluster.sa_kubeconfig(NS, "dsa-operator", create=False)
    op = Operator(
        cluster,
        kubeconfig,
        name,
        webhook=False,
        extra=tuple(local_args(deploy_args(), port, certs)),
        env={"POD_NAMESPACE": NS},
    )
    return op.start(), port, certs


def provisioned(cluster) -> dict | None:
    """The TLS Secret, once the webhook configuration trusts its CA."""
    r = cluster.kubectl("get", "secret", SECRET, "-n", NS, "-o", "json", check=False)
    if r.returncode:
        return None
    secret = json.loads(r.stdout)
    hook = cluster.kubectl_json("get", "validatingwebhookconfiguration", VWC)["webhooks"][0]
    ca = (secret.get("data") or {}).get("ca.crt")
    return secret if ca and hook["clientConfig"].get("caBundle") == ca else None


def delete_deploy(cluster) -> None:
    cluster.kubectl(
        "delete", "-f", str(DEPLOY / "dsa-operator.yaml"), "--wait=true", "--timeout=90s", check=False
    )


def test_kubectl_apply_deploy_webhook_reconcile_and_delete(cluster) -> None:
    args = deploy_args()
    assert {"--webhook-tls-secret=" + SECRET, "--webhook-configuration=" + VWC} <= set(args), args
    cluster.kubectl("apply", "-f", str(DEPLOY))
    op = None
    try:
        cluster.wait_established(CRD)
        cluster.kubectl("rollout", "status", "deployment/dsa-operator", "-n", NS, "--timeout=60s")
        hook = cluster.kubectl_json("get", "validatingwebhookconfiguration", VWC)["webhooks"][0]
        assert hook["clientConfig"]["service"]["name"] == SERVICE and "caBundle" not in hook["clientConfig"]
        assert cluster.kubectl("get", "secret", SECRET, "-n", NS, check=False).returncode != 0

        op, port, certs = local_operator(cluster, "deploy-op")
        op.wait_healthy()
        secret = cluster.wait_for(
            lambda: provisioned(cluster), timeout=60, what="the operator's TLS Secret and caBundle"
        )
        assert secret["type"] == "kubernetes.io/tls"
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        names = [*service_names(SERVICE, NS), "127.0.0.1"]
        assert problem(data, names, datetime.datetime.now(datetime.UTC)) is None
        assert (certs / "tls.crt").read_bytes() == data["tls.crt"]
        # Applying deploy/ again (an upgrade) keeps the caBundle: the manifest does not name it.
        cluster.kubectl("apply", "-f", str(DEPLOY / "dsa-operator.yaml"))
        assert provisioned(cluster) == secret

        point_at(cluster, port, secret["data"]["ca.crt"])
        ns = model_ns(cluster)
        r = cluster.kubectl("apply", "-n", ns, "-f", str(INVALID), check=False)
        assert r.returncode != 0 and "invalid DSAModel" in r.stderr, r.stderr
        assert "spec.decode.parallelism.contextParallel.mode" in r.stderr, r.stderr
        assert cluster.kubectl("get", "dsamodel", "dsv32-invalid", "-n", ns, check=False).returncode != 0

        cluster.kubectl("apply", "-n", ns, "-f", str(ROOT / "examples/03-pure-tp.yaml"))
        wait_phase(cluster, ns, "dsv32-exp-tp", "Ready")

        # A restart uses the Secret it finds (usable): same TLS, no write.
        op.stop()
        op.start()
        op.wait_healthy()
        cluster.wait_for(
            lambda: (
                cluster.kubectl(
                    "apply",
                    "--dry-run=server",
                    "-n",
                    ns,
                    "-f",
                    str(ROOT / "examples/03-pure-tp.yaml"),
                    check=False,
                ).returncode
                == 0
            ),
            timeout=60,
            what="the restarted operator's webhook admitting a valid DSAModel",
        )
        assert f"webhook TLS Secret {NS}/{SECRET} is usable" in op.logs()
        again = cluster.kubectl_json("get", "secret", SECRET, "-n", NS)
        assert again["metadata"]["resourceVersion"] == secret["metadata"]["resourceVersion"]

        logs = op.logs()
        assert "Forbidden" not in logs and "Traceback" not in logs, logs[-3000:]
        assert "BEGIN" not in logs and "PRIVATE" not in logs  # no TLS material in the log
        assert logs.count(f"webhook TLS Secret {NS}/{SECRET} created") == 1, logs[-3000:]
    finally:
        if op:
            op.stop()
        delete_deploy(cluster)
    for kind in ("clusterrole", "clusterrolebinding", "validatingwebhookconfiguration"):
        assert cluster.kubectl("get", kind, "dsa-operator", check=False).returncode != 0
    assert cluster.kubectl("get", "namespace", NS, check=False).returncode != 0  # the Secret with it
    cluster.kubectl("get", "crd", CRD)  # the CRD (and so every DSAModel) stays


def test_operator_without_its_secret_rights_says_so_then_replaces_an_unusable_secret(cluster) -> None:
    """The Secret's RoleBinding missing (say, RBAC applied after the Deployment): the operator names
    what it cannot do and retries; once the rights are there it replaces the unusable Secret it finds
    (keeping the Secret's type, which cannot change) and the caBundle follows."""
    cluster.kubectl("apply", "-f", str(DEPLOY))
    op = None
    try:
        cluster.wait_established(CRD)
        cluster.kubectl("delete", "rolebinding", "dsa-operator-webhook-tls", "-n", NS)
        cluster.kubectl("create", "secret", "generic", SECRET, "-n", NS, "--from-literal=ca.crt=garbage")
        op, _, _ = local_operator(cluster, "deploy-op-norbac")
        cluster.wait_for(
            lambda: "cannot provision the webhook TLS" in op.logs(),
            timeout=60,
            what="the missing right, logged",
        )
        logs = op.logs()
        assert f"Secret {NS}/{SECRET}" in logs and "403" in logs, logs[-3000:]
        cluster.kubectl("apply", "-f", str(DEPLOY / "dsa-operator.yaml"))  # the RoleBinding is back
        secret = cluster.wait_for(lambda: provisioned(cluster), timeout=60, what="the Secret replaced")
        assert secret["type"] == "Opaque" and set(secret["data"]) == {"ca.crt", "tls.crt", "tls.key"}
        logs = op.logs()
        assert "is unusable (it lacks tls.crt, tls.key): replacing it" in logs, logs[-3000:]
        assert "BEGIN" not in logs and "garbage" not in logs
        op.wait_healthy()
    finally:
        if op:
            op.stop()
        delete_deploy(cluster)
