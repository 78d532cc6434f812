"""Rank wiring over the real nodes' network, planted wrong: the classic mistake of the peers (every
pod of a multi-node group told it is rank 0) fails the group visibly, on two real nodes.

The objects are exactly what the operator renders for the demo model's 2-node prefill group
(plan ConfigMap, headless Service, StatefulSet); the test then plants `--node-rank 0` for rank 1
in the plan and applies them without an operator (nothing restarts the group here, so the
kubelet's own record of each container is what the test reads). The planted address and world
size cases run as real processes on loopback in tests/runtime/test_rendezvous.py.
"""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from dsa_operator import labels
from dsa_operator.api import parse_spec
from dsa_operator.planner import plan as make_plan
from dsa_operator.render import render
from tests import images
from tests.integration.operator_proc import ROOT

pytestmark = pytest.mark.integration
EXAMPLE = ROOT / "examples" / "simulator" / "pd-pp-cp.yaml"
RENDEZVOUS_FAILED = 78  # dsa_runtime.errors.ExitCode.RENDEZVOUS_FAILED
TIMEOUT_S = "20"  # the rendezvous timeout planted in the serve args: what bounds the failure


@pytest.fixture
def ns(real_cluster):
    name = f"rv-{uuid.uuid4().hex[:6]}"
    real_cluster.kubectl("create", "namespace", name)
    yield name
    real_cluster.kubectl(
        "delete", "namespace", name, "--wait=true", "--timeout=120s", check=False, timeout=150
    )


def _prefill_group(ns: str, runtime_ref: str) -> list[dict]:
    model = yaml.safe_load(EXAMPLE.read_text())
    model["metadata"].update(namespace=ns, uid=str(uuid.uuid4()))
    model["spec"]["runtime"]["image"] = runtime_ref
    objs = render(make_plan(model), parse_spec(model["spec"]), model)
    prefix = f"{model['metadata']['name']}-prefill-0"
    group = [o for o in objs if o["metadata"]["name"].startswith(prefix)]
    assert sorted(o["kind"] for o in group) == ["ConfigMap", "Service", "StatefulSet"], group
    for o in group:
        o["metadata"].pop("ownerReferences", None)  # no DSAModel here
    return group


def test_every_pod_rank_zero_fails_the_group_visibly(real_cluster, ns) -> None:
    c = real_cluster
    ref, archive = images.ensure_images()["runtime"]
    c.load_image(archive)
    group = _prefill_group(ns, ref)
    (cm,) = [o for o in group if o["kind"] == "ConfigMap"]
    doc = json.loads(cm["data"]["plan.json"])
    for pod in doc["pods"]:
        if pod["rank"] == 1:
            argv = pod["argv"]
            argv[argv.index("--node-rank") + 1] = "0"  # planted: both pods believe they are rank 0
    cm["data"]["plan.json"] = json.dumps(doc)
    (sts,) = [o for o in group if o["kind"] == "StatefulSet"]
    (engine,) = [k for k in sts["spec"]["template"]["spec"]["containers"] if k["args"][:1] == ["serve"]]
    engine["args"] = ["serve", "--rendezvous-timeout", TIMEOUT_S]
    pod_spec = sts["spec"]["template"]["spec"]
    pod_spec["nodeSelector"] = {**pod_spec.get("nodeSelector", {}), "dsa.dev/node-kind": "real"}  # no kwok
    for o in group:
        c.apply(o)

    def both_failed():
        sel = f"{labels.ROLE}=prefill"
        items = c.kubectl_json("get", "pods", "-n", ns, "-l", sel)["items"]
        out = {}
        for p in items:
            for st in p.get("status", {}).get("containerStatuses", []):
                term = st.get("lastState", {}).get("terminated") or st.get("state", {}).get("terminated")
                if term:
                    out[p["metadata"]["name"]] = (
                        term["exitCode"],
                        term.get("message", ""),
                        p["spec"]["nodeName"],
                    )
        return out if len(out) == 2 else None

    try:
        failed = c.wait_for(both_failed, timeout=240, interval=2, what="both ranks' containers terminated")
    except TimeoutError:
        print(c.kubectl("get", "pods,events", "-n", ns, "-o", "wide", check=False).stdout[-5000:])
        for pod in (f"{sts['metadata']['name']}-0", f"{sts['metadata']['name']}-1"):
            print(f"--- {pod}", c.kubectl("logs", "-n", ns, pod, "--tail=20", check=False).stdout)
        raise
    assert len({node for _, _, node in failed.values()}) == 2, failed  # one rank per real node
    for pod, (code, message, _) in failed.items():
        assert code == RENDEZVOUS_FAILED, (pod, code, message)
        assert "rendezvous-failed" in message and "rank 0 of 2 at tcp://" in message, (pod, message)
        logs = c.kubectl("logs", "-n", ns, pod, "--previous", check=False).stdout
        assert '{"rendezvous": "ok"' not in logs, logs[-2000:]
