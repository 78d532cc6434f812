"""Placement on the real control plane: kwok GPU nodes in two racks, a CPU-only node, and Kueue
(built from its module, tests/cluster/build.sh) admitting each group whole or not at all.

Racks: gpu-node-0 and gpu-node-1 in rack-0, gpu-node-2 and gpu-node-3 in rack-1 (8 GPUs each);
cpu-node-0 has no GPU. A PP 2 group needs two whole nodes.
"""

from __future__ import annotations

import copy
import json
import time
import uuid

import pytest

from dsa_operator import labels
from tests.cluster import harness
from tests.integration.operator_proc import admin_operator, wait_phase

pytestmark = pytest.mark.integration
RACK = "topology.dsa-operator.io/rack"
PP2 = {
    "apiVersion": "serving.dsa.dev/v1alpha1",
    "kind": "DSAModel",
    "metadata": {"name": "pp2"},
    "spec": {
        "model": {"family": "deepseek-v3.2", "source": "deepseek-ai/DeepSeek-V3.2-Exp"},
        "hardware": {"accelerator": "h200"},
        "features": {"toolCalling": False, "reasoning": False},
        "serving": {"parallelism": {"tp": 8, "pp": 2}},
        "router": {"enabled": True},
        "placement": {"topologyKey": RACK},
    },
}
ONE_NODE = {
    "apiVersion": "serving.dsa.dev/v1alpha1",
    "kind": "DSAModel",
    "metadata": {"name": "one"},
    "spec": {
        "model": {"family": "deepseek-v3.2"},
        "hardware": {"accelerator": "h200"},
        "features": {"toolCalling": False, "reasoning": False},
        "serving": {"parallelism": {"tp": 8}},
    },
}


# Kueue: a Topology of racks then hosts, one GPU flavor on it, and two ClusterQueues: `gpus`, room
# for every GPU of the cluster, and `small`, quota for two nodes only.
def _cluster_queue(name: str, gpus: int) -> str:
    return f"""
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {{name: {name}}}
spec:
  namespaceSelector: {{}}
  resourceGroups:
  - coveredResources: [nvidia.com/gpu]
    flavors:
    - name: h200
      resources:
      - {{name: nvidia.com/gpu, nominalQuota: {gpus}}}
"""


KUEUE_SETUP = f"""
apiVersion: kueue.x-k8s.io/v1beta2
kind: Topology
metadata: {{name: racks}}
spec:
  levels:
  - nodeLabel: {RACK}
  - nodeLabel: kubernetes.io/hostname
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {{name: h200}}
spec:
  nodeLabels: {{nvidia.com/gpu.product: NVIDIA-H200}}
  topologyName: racks
---{_cluster_queue("gpus", 32)}---{_cluster_queue("small", 16)}"""


@pytest.fixture(scope="module")
def cluster():
    with harness.running(nodes=4, nodes_per_rack=2, cpu_nodes=1, kueue=True) as c:
        c.apply(KUEUE_SETUP)
        yield c


@pytest.fixture(scope="module")
def op(cluster):
    with admin_operator(cluster) as o:
        yield o


@pytest.fixture
def qns(cluster):
    """A fresh namespace Kueue manages, with LocalQueues `gpu-queue` (-> gpus) and `small-queue`
    (-> small); deleted afterwards and waited for, so its pods' GPUs are free for the next test."""
    name = f"q-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, f"{harness.KUEUE_NAMESPACE_LABEL}=enabled")
    cluster.apply(
        [
            {
                "apiVersion": "kueue.x-k8s.io/v1beta2",
                "kind": "LocalQueue",
                "metadata": {"name": q, "namespace": name},
                "spec": {"clusterQueue": cq},
            }
            for q, cq in (("gpu-queue", "gpus"), ("small-queue", "small"))
        ]
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=90s", check=False)


def model(base: dict, name: str, **placement) -> dict:
    m = copy.deepcopy(base)
    m["metadata"]["name"] = name
    m["spec"].setdefault("placement", {}).update(placement)
    return m


def pods(cluster, ns: str, name: str, component: str = "engine") -> list[dict]:
    sel = f"{labels.MODEL}={name},{labels.COMPONENT}={component}"
    return cluster.kubectl_json("get", "pods", "-n", ns, "-l", sel)["items"]


def racks(cluster) -> dict[str, str]:
    return {
        n["metadata"]["name"]: n["metadata"]["labels"].get(RACK, "")
        for n in cluster.kubectl_json("get", "nodes")["items"]
    }


def condition(cluster, ns: str, name: str, ctype: str) -> dict:
    obj = cluster.kubectl_json("get", "dsamodel", name, "-n", ns)
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def wait_condition(cluster, ns: str, name: str, ctype: str, status: str, timeout: float = 60) -> dict:
    return cluster.wait_for(
        lambda: (c := condition(cluster, ns, name, ctype)).get("status") == status and c,
        timeout=timeout,
        what=f"{ns}/{name} condition {ctype}={status}",
    )


def blocker(cluster, ns: str, node: str) -> str:
    """A one-node model in the same queue, pinned to `node`: it holds that node's GPUs through
    Kueue, as another team's model would."""
    name = f"block-{node}"
    m = model(ONE_NODE, name, queueName="gpu-queue")
    m["metadata"]["namespace"] = ns
    m["spec"]["hardware"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    cluster.apply(m)
    wait_phase(cluster, name, ns, "Ready", timeout=90)
    (p,) = pods(cluster, ns, name)
    assert p["spec"]["nodeName"] == node
    return name


def test_pp2_group_lands_in_one_rack_and_the_router_off_gpu_nodes(cluster, op, qns):
    """Without Kueue (no queueName: Kueue leaves the model alone): the group's two ranks in one
    rack (required pod affinity); the router, which needs no GPU, on the CPU node (away from
    nodes carrying a GPU product label)."""
    cluster.apply({**model(PP2, "pp2"), "metadata": {"name": "pp2", "namespace": qns}})
    wait_phase(cluster, "pp2", qns, "Ready", timeout=90)
    where = racks(cluster)
    nodes = [p["spec"]["nodeName"] for p in pods(cluster, qns, "pp2")]
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
    assert len({where[n] for n in nodes}) == 1, {n: where[n] for n in nodes}
    (router,) = pods(cluster, qns, "pp2", "router")
    assert router["spec"]["nodeName"] in cluster.cpu_node_names(), router["spec"]["nodeName"]
    for p in pods(cluster, qns, "pp2"):  # GPU pods tolerate the GPU taint; the router not
        assert any(t.get("key") == "nvidia.com/gpu" for t in p["spec"].get("tolerations", []))
    assert not any(t.get("key") == "nvidia.com/gpu" for t in router["spec"].get("tolerations") or [])


def test_group_waits_whole_until_a_rack_frees(cluster, op, qns):
    """One free node in each rack: the PP 2 group is not admitted (Kueue's topology-aware
    scheduling finds no rack with two free nodes), none of its pods is scheduled, and the
    DSAModel says so in Kueue's words. Freeing rack-1 admits the whole group there."""
    blockers = [blocker(cluster, qns, "gpu-node-0"), blocker(cluster, qns, "gpu-node-2")]
    cluster.apply({**model(PP2, "pp2", queueName="gpu-queue"), "metadata": {"name": "pp2", "namespace": qns}})
    waiting = cluster.wait_for(
        lambda: (
            "couldn't assign" in (c := condition(cluster, qns, "pp2", "Admitted")).get("message", "") and c
        ),
        timeout=90,
        what="Kueue's reason in the Admitted condition",
    )
    assert (waiting["status"], waiting["reason"]) == ("False", "WaitingForAdmission")
    assert "gpu-queue" in waiting["message"] and "pp2-serving-0-0" in waiting["message"], waiting
    engine = pods(cluster, qns, "pp2")
    assert len(engine) == 2
    for p in engine:  # all-or-nothing: no rank holds a node while the other waits
        assert not p["spec"].get("nodeName"), p["spec"].get("nodeName")
        assert {g["name"] for g in p["spec"].get("schedulingGates", [])} & {"kueue.x-k8s.io/admission"}
    obj = cluster.kubectl_json("get", "dsamodel", "pp2", "-n", qns)
    assert obj["status"]["phase"] == "Pending"
    print(f"\n[placement] waiting for admission: {waiting['message']}")

    t0 = time.monotonic()
    cluster.kubectl("delete", "dsamodel", blockers[1], "-n", qns, "--wait=true")
    wait_phase(cluster, "pp2", qns, "Ready", timeout=90)
    admitted_after = time.monotonic() - t0
    nodes = sorted(p["spec"]["nodeName"] for p in pods(cluster, qns, "pp2"))
    assert nodes == ["gpu-node-2", "gpu-node-3"], nodes
    assert condition(cluster, qns, "pp2", "Admitted")["status"] == "True"
    print(f"[placement] rack-1 freed -> group admitted and Ready in {admitted_after:.1f}s")


def test_two_models_compete_for_quota(cluster, op, qns):
    """`small` has quota for two nodes: the PP 2 model takes it, the second model waits with
    Kueue's quota reason, and is admitted once the first is deleted."""
    cluster.apply(
        {**model(PP2, "first", queueName="small-queue"), "metadata": {"name": "first", "namespace": qns}}
    )
    wait_phase(cluster, "first", qns, "Ready", timeout=90)
    cluster.apply(
        {
            **model(ONE_NODE, "second", queueName="small-queue"),
            "metadata": {"name": "second", "namespace": qns},
        }
    )
    waiting = cluster.wait_for(
        lambda: "quota" in (c := condition(cluster, qns, "second", "Admitted")).get("message", "") and c,
        timeout=90,
        what="Kueue's quota reason in the Admitted condition",
    )
    assert waiting["status"] == "False"
    print(f"\n[placement] second model waits: {waiting['message']}")
    cluster.kubectl("delete", "dsamodel", "first", "-n", qns, "--wait=true")
    wait_phase(cluster, "second", qns, "Ready", timeout=90)
    assert condition(cluster, qns, "second", "Admitted")["status"] == "True"


def test_a_placement_change_of_a_queued_group_replaces_it(cluster, op, qns):
    """Kueue refuses to change a queued group's tolerations or requests in place: the operator
    replaces the group's StatefulSet, and the group is admitted anew and Ready with the change."""
    m = {**model(ONE_NODE, "one", queueName="gpu-queue"), "metadata": {"name": "one", "namespace": qns}}
    cluster.apply(m)
    wait_phase(cluster, "one", qns, "Ready", timeout=90)
    before = cluster.kubectl_json("get", "statefulset", "one-serving-0", "-n", qns)["metadata"]["uid"]
    extra = {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}
    m["spec"]["hardware"]["tolerations"] = [extra]
    cluster.apply(m)

    def replaced():
        r = cluster.kubectl("get", "statefulset", "one-serving-0", "-n", qns, "-o", "json", check=False)
        return r.returncode == 0 and json.loads(r.stdout)["metadata"]["uid"] != before

    cluster.wait_for(replaced, timeout=60, what="the StatefulSet replaced")
    wait_phase(cluster, "one", qns, "Ready", timeout=90)
    (pod,) = pods(cluster, qns, "one")
    assert extra in pod["spec"]["tolerations"], json.dumps(pod["spec"]["tolerations"])


def test_exclusive_gives_each_group_its_rack_alone(cluster, op, qns):
    """`exclusive`: a PP 2 group takes one rack, a one-node group the other, and a third group
    finds no rack of its own although a node is free: it stays unschedulable, and says why."""
    for name, base in (("a", PP2), ("b", ONE_NODE)):
        m = model(base, name, topologyKey=RACK, exclusive=True)
        cluster.apply({**m, "metadata": {"name": name, "namespace": qns}})
        wait_phase(cluster, name, qns, "Ready", timeout=90)
    where = racks(cluster)
    rack_a = {where[p["spec"]["nodeName"]] for p in pods(cluster, qns, "a")}
    rack_b = {where[p["spec"]["nodeName"]] for p in pods(cluster, qns, "b")}
    assert len(rack_a) == len(rack_b) == 1 and rack_a != rack_b, (rack_a, rack_b)
    m = model(ONE_NODE, "c", topologyKey=RACK, exclusive=True)
    cluster.apply({**m, "metadata": {"name": "c", "namespace": qns}})
    unsched = wait_condition(cluster, qns, "c", "Scheduled", "False")
    assert "anti-affinity" in unsched["message"], unsched["message"]
    (pod,) = pods(cluster, qns, "c")
    assert not pod["spec"].get("nodeName")


def test_a_queue_kueue_does_not_watch_is_reported(cluster, op):
    """queueName in a namespace Kueue does not manage: the pods are scheduled one by one, without
    a gate, and the Admitted condition says so instead of claiming admission."""
    ns = f"u-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", ns)
    try:
        cluster.apply(
            {**model(ONE_NODE, "one", queueName="gpu-queue"), "metadata": {"name": "one", "namespace": ns}}
        )
        wait_phase(cluster, "one", ns, "Ready", timeout=90)
        c = wait_condition(cluster, ns, "one", "Admitted", "False")
        assert c["reason"] == "NotManagedByKueue" and ns in c["message"], c
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=90s", check=False)
