"""The endpoint end to end: the real sglang-router discovers the operator's pods and serves.

The operator runs against the real control plane (kwok GPU nodes, pod IPs on loopback); a
stand-in engine answers at each pod's IP and port (tests/standin_engine.py); the router runs
exactly the argv the operator planned, through `dsa-runtime route`, with the credentials of
the ServiceAccount the operator made for it. Only loopback addresses are ever dialled.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import json
import os
import time
import uuid

import pytest
import yaml

from dsa_operator import labels
from tests.cluster import harness
from tests.integration.endpoint_env import (
    RouterProc,
    StandinFleet,
    engine_pods,
    http,
    pod_url,
    wait,
)
from tests.integration.operator_proc import ROOT, Operator, wait_phase

pytestmark = pytest.mark.integration
EXAMPLES = ROOT / "examples"
CHAT = {"model": "standin", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def cluster():
    """Own cluster: 6 H200 nodes fit a PD model with a 2-node prefill group and 2 decode groups."""
    harness.install_signal_handlers()
    if os.environ.get("DSA_CLUSTER_SKIP_BUILD") != "1":
        harness.ensure_binaries()
    c = harness.Cluster(nodes=6)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def op(cluster):
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd/dsamodels.serving.dsa.dev", "--timeout=30s")
    kubeconfig = cluster.mint_user("dsa-operator", groups=["system:masters"])
    o = Operator(cluster, kubeconfig, webhook=False).start()
    try:
        yield o
    finally:
        o.stop()
        assert "Traceback" not in o.logs(), o.logs()[-4000:]


@pytest.fixture
def ns(cluster):
    name = f"t-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=60s", check=False)


def example(name: str) -> dict:
    return yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())


def pd_two_node_prefill() -> dict:
    """examples/12-pd.yaml with a PP-2 prefill group: 2 prefill pods, of which rank 1 must never
    be registered although it answers /health."""
    m = copy.deepcopy(example("12-pd"))
    m["spec"]["prefill"]["parallelism"] = {"tp": 8, "pp": 2}
    return m


def apply(cluster, ns: str, manifest: dict) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))


def rank0_urls(cluster, ns: str, model: str, role: str) -> set[str]:
    return {
        pod_url(p)
        for p in engine_pods(cluster, ns, model, **{labels.ROLE: role})
        if p["metadata"]["labels"][labels.POD_INDEX] == "0" and p["status"].get("podIP")
    }


def start_pd(cluster, ns: str, manifest: dict, delay_s: float = 0.0):
    model = manifest["metadata"]["name"]
    apply(cluster, ns, manifest)
    wait_phase(cluster, model, ns, "Ready", timeout=90)
    fleet = StandinFleet(cluster.kubeconfig, ns, model, delay_s=delay_s).__enter__()
    router = RouterProc(cluster, ns, model).start()
    router.wait_up()
    return model, fleet, router


def chat(router: RouterProc, timeout: float = 10) -> tuple[int, dict | str]:
    return http("POST", f"{router.url}/v1/chat/completions", CHAT, timeout=timeout)


def test_pd_router_registers_rank0_pods_and_serves_chat(cluster, op, ns):
    manifest = pd_two_node_prefill()
    model, fleet, router = start_pd(cluster, ns, manifest)
    try:
        prefill0 = rank0_urls(cluster, ns, model, "prefill")
        decode0 = rank0_urls(cluster, ns, model, "decode")
        assert len(prefill0) == 1 and len(decode0) == 1
        all_prefill = {pod_url(p) for p in engine_pods(cluster, ns, model, **{labels.ROLE: "prefill"})}
        assert len(all_prefill) == 2  # rank 1 exists ...
        rank1 = (all_prefill - prefill0).pop()
        assert http("GET", f"{rank1}/health")[0] == 200  # ... and answers /health

        wait(lambda: router.worker_urls() == prefill0 | decode0, 30, "the rank-0 workers", router)
        workers = router.workers()
        print(json.dumps(workers, indent=1))
        assert {w["url"] for w in workers if w.get("worker_type") == "prefill"} == prefill0
        assert {w["url"] for w in workers if w.get("worker_type") == "decode"} == decode0
        assert rank1 not in router.worker_urls()
        assert [w.get("bootstrap_port") for w in workers if w.get("worker_type") == "prefill"] == [8998]
        wait(router.ready, 10, "/readiness", router)

        status, reply = chat(router)
        assert status == 200, reply
        decode_pod = fleet.by_pod(next(e.pod for e in fleet.live() if e.url in decode0))
        prefill_pod = next(e for e in fleet.live() if e.url in prefill0)
        assert reply["choices"][0]["message"]["content"] == f"answered by {decode_pod.pod} (decode)"
        room = reply["standin"]["bootstrap_room"]
        assert room is not None and room in prefill_pod.rooms() and room in decode_pod.rooms()
        assert not [s for s in fleet.all_engines() if s.rank > 0 and s.generation_requests() and any(True for _ in s.generation_requests())]
        print(router.logs()[-3000:])
        print({e.pod: e.paths()[:20] for e in fleet.all_engines()})
    finally:
        router.stop()
        fleet.close()
