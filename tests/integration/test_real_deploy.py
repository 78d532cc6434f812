"""`kubectl apply -f deploy/` on real nodes: the operator in-cluster from its image, its webhook on
with the TLS it makes itself, reached by the API server through its Service.

Only the image differs from what a user applies: deploy/ names the published image, here the one
built from the repo's Dockerfile and imported into the nodes (`kubectl set image`, pull policy
Never). Runs before test_real_serving.py (which installs the chart under the same names) and
removes everything of deploy/ but the CRD.
"""

from __future__ import annotations

import json

import pytest

from tests import images
from tests.helm.chart import DEPLOY, ROOT

pytestmark = pytest.mark.integration
INVALID = ROOT / "examples" / "invalid" / "cp-on-decode.yaml"
VALID = ROOT / "examples" / "simulator" / "pd-pp-cp.yaml"
NS, NAME = "dsa-system", "dsa-operator"


@pytest.fixture(scope="module")
def operator_ref(real_cluster) -> str:
    ref, archive = images.ensure_images()["operator"]
    real_cluster.load_image(archive)
    return ref


def test_kubectl_apply_deploy_runs_the_webhook_in_cluster(real_cluster, operator_ref) -> None:
    c = real_cluster
    kwok = [n for n in c.kubectl_json("get", "nodes")["items"] if n["metadata"]["name"] not in
            c.real_node_names()]  # fmt: skip
    for n in kwok:  # a kwok node runs no container
        c.kubectl("cordon", n["metadata"]["name"])
    c.kubectl("apply", "-f", str(DEPLOY))
    try:
        c.wait_established("dsamodels.serving.dsa.dev")
        c.kubectl("set", "image", f"deployment/{NAME}", "-n", NS, f"operator={operator_ref}")
        patch = [
            {"op": "replace", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "Never"}
        ]
        c.kubectl("patch", f"deployment/{NAME}", "-n", NS, "--type=json", "-p", json.dumps(patch))
        c.kubectl("rollout", "status", f"deployment/{NAME}", "-n", NS, "--timeout=300s", timeout=320)

        def ca_bundle():
            hooks = c.kubectl_json("get", "validatingwebhookconfiguration", NAME)["webhooks"]
            return all(h["clientConfig"].get("caBundle") for h in hooks)

        c.wait_for(ca_bundle, timeout=120, interval=1, what="the operator's caBundle")
        secret = c.kubectl_json("get", "secret", "-n", NS, f"{NAME}-webhook-tls")
        assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"])

        # The API server calls the webhook through its Service, trusting the operator's own CA.
        r = c.kubectl("apply", "-f", str(INVALID), "--dry-run=server", check=False)
        assert r.returncode != 0
        assert 'admission webhook "dsamodel-planner.serving.dsa.dev" denied the request' in r.stderr, r.stderr
        assert "spec.decode.parallelism.contextParallel.mode" in r.stderr, r.stderr
        ok = c.kubectl("apply", "-n", "default", "-f", str(VALID), "--dry-run=server")
        assert "created (server dry run)" in ok.stdout, ok.stdout
        logs = c.kubectl("logs", "-n", NS, f"deployment/{NAME}", "--tail=-1").stdout
        assert "Traceback" not in logs and "PRIVATE KEY" not in logs, logs[-3000:]
    finally:
        c.kubectl("delete", "-f", str(DEPLOY / "dsa-operator.yaml"), "--wait=true", "--timeout=120s",
                  check=False, timeout=150)  # fmt: skip
        for n in kwok:
            c.kubectl("uncordon", n["metadata"]["name"], check=False)
    assert c.kubectl("get", "validatingwebhookconfiguration", NAME, check=False).returncode != 0
