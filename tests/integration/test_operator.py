"""End to end: the operator on the real control plane with kwok GPU nodes, driven by kubectl.

The operator runs as a local process (operator_proc.Operator), not as a pod: kwok nodes run no
containers. The image in-cluster is tests/integration/test_real_serving.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from dsa_operator import labels
from dsa_operator.planner import plan
from tests.cluster import harness
from tests.integration.operator_proc import (
    ROOT,
    WEBHOOK_CONFIG,
    Operator,
    admin_operator,
    wait_phase,
)

pytestmark = pytest.mark.integration
EXAMPLES = ROOT / "examples"
ENGINE = {labels.COMPONENT: "engine"}


@pytest.fixture(scope="module")
def cluster():
    """This module's own cluster: H20 nodes for the PP+CP examples (documented on H20), H200 nodes
    for the rest, each with an RDMA NIC as the PD example asks; and a CPU-only node for routers."""
    with harness.running(
        nodes=7,
        cpu_nodes=1,
        gpu_products=["NVIDIA-H20"] * 3 + ["NVIDIA-H200"] * 4,
        extra_resources={"rdma/ib": "1"},
    ) as c:
        yield c


@pytest.fixture(scope="module")
def op(cluster):
    with admin_operator(cluster) as o:
        yield o


def apply_example(cluster, ns: str, example: str) -> dict:
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / f"{example}.yaml"))
    return yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())


def pods(cluster, ns: str, model: str, **extra: str) -> list[dict]:
    sel = ",".join(f"{k}={v}" for k, v in {labels.MODEL: model, **extra}.items())
    return cluster.kubectl_json("get", "pods", "-n", ns, "-l", sel)["items"]


def planned_pods(manifest: dict, ns: str) -> dict:
    m = json.loads(json.dumps(manifest))
    m["metadata"]["namespace"] = ns
    return {(p.role, p.group, p.rank): p.model_dump() for p in plan(m).pods}


def assert_pods_carry_plan(cluster, ns: str, manifest: dict) -> None:
    """Each pod's mounted plan has, for its own role/group/rank, exactly the planner's argv and env."""
    want = planned_pods(manifest, ns)
    name = manifest["metadata"]["name"]
    seen = set()
    for pod in pods(cluster, ns, name):
        spec = pod["spec"]
        env = {e["name"]: e for e in spec["containers"][0].get("env", [])}
        role = env["DSA_ROLE"]["value"]
        cm_name = next(v["configMap"]["name"] for v in spec["volumes"] if v["name"] == "plan")
        doc = json.loads(cluster.kubectl_json("get", "configmap", cm_name, "-n", ns)["data"]["plan.json"])
        if role == "router":
            entry = next(p for p in doc["pods"] if p["role"] == "router")
            assert entry["argv"] == want[("router", 0, 0)]["argv"]
            continue
        group = int(env["DSA_GROUP"]["value"])
        rank = int(pod["metadata"]["labels"][labels.POD_INDEX])
        assert (
            env["DSA_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{labels.POD_INDEX}']"
        )
        entry = next(p for p in doc["pods"] if (p["role"], p["group"], p["rank"]) == (role, group, rank))
        assert entry["argv"] == want[(role, group, rank)]["argv"]
        assert entry["env"] == want[(role, group, rank)]["env"]
        seen.add((role, group, rank))
    assert seen == {k for k in want if k[0] != "router"}


def test_unified_tp_dp_on_one_node(cluster, op, ns):
    m = apply_example(cluster, ns, "01-tp-dp-attention")
    obj = wait_phase(cluster, "dsv32-exp-tp-dp", ns, "Ready")
    assert obj["status"]["endpoint"] == f"http://dsv32-exp-tp-dp.{ns}.svc:30000/v1"
    assert obj["status"]["readyGroups"] == "1/1"
    assert obj["status"]["plan"]["roles"]["serving"]["prefillKernel"] == "flashmla_sparse"
    svc = cluster.kubectl_json("get", "service", "dsv32-exp-tp-dp", "-n", ns)
    assert svc["spec"]["selector"][labels.POD_INDEX] == "0"
    assert_pods_carry_plan(cluster, ns, m)
    printed = cluster.kubectl("get", "dsamodels", "-n", ns).stdout
    assert "Ready" in printed and "1/1" in printed


def test_pd_with_pp_cp_prefill_ep_decode_and_router(cluster, op, ns):
    m = apply_example(cluster, ns, "19-pd-pp-cp")
    obj = wait_phase(cluster, "dsv32-pd-pp-cp", ns, "Ready")
    assert obj["status"]["endpoint"] == f"http://dsv32-pd-pp-cp.{ns}.svc:8000/v1"
    prefill = pods(cluster, ns, "dsv32-pd-pp-cp", **{labels.ROLE: "prefill"})
    assert len(prefill) == 2 and len({p["spec"]["nodeName"] for p in prefill}) == 2
    assert all(p["metadata"]["annotations"][labels.BOOTSTRAP_PORT] == "8998" for p in prefill)
    assert len(pods(cluster, ns, "dsv32-pd-pp-cp", **{labels.ROLE: "decode"})) == 1
    role = cluster.kubectl_json("get", "role", "dsv32-pd-pp-cp-router", "-n", ns)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    dep = cluster.kubectl_json("get", "deployment", "dsv32-pd-pp-cp-router", "-n", ns)
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "dsv32-pd-pp-cp-router"
    assert_pods_carry_plan(cluster, ns, m)


def test_glm5_with_index_cache(cluster, op, ns):
    m = apply_example(cluster, ns, "10-glm5-indexcache")
    wait_phase(cluster, "glm5-indexcache", ns, "Ready")
    assert_pods_carry_plan(cluster, ns, m)


def test_invalid_model_is_refused_with_field_path(cluster, op, ns):
    bad = yaml.safe_load((EXAMPLES / "17-pp-cp.yaml").read_text())
    bad["spec"]["serving"]["parallelism"]["tp"] = 3
    r = cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(bad), check=False)
    assert r.returncode != 0
    assert "spec.serving.parallelism.tp" in r.stderr and "whole number" in r.stderr
    both = yaml.safe_load((EXAMPLES / "12-pd.yaml").read_text())
    both["spec"]["serving"] = both["spec"]["prefill"]
    r = cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(both), check=False)
    assert r.returncode != 0 and "serving" in r.stderr
    assert cluster.kubectl_json("get", "dsamodels,statefulsets", "-n", ns)["items"] == []


def test_killing_rank1_restarts_the_whole_group(cluster, op, ns):
    apply_example(cluster, ns, "17-pp-cp")
    wait_phase(cluster, "dsv32-pp-cp", ns, "Ready")
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(cluster, ns, "dsv32-pp-cp")}
    assert len(before) == 2
    cluster.kubectl("delete", "pod", "dsv32-pp-cp-serving-0-1", "-n", ns, "--wait=false")

    def both_replaced():
        now = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods(cluster, ns, "dsv32-pp-cp")}
        return len(now) == 2 and all(now[n] != before[n] for n in now)

    cluster.wait_for(both_replaced, timeout=30, what="rank 0 and rank 1 both recreated")
    wait_phase(cluster, "dsv32-pp-cp", ns, "Ready")
    events = cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", "reason=GroupFailed")[
        "items"
    ]
    assert events and "serving-0" in events[0]["message"]


def test_a_replaced_one_pod_group_is_not_restarted_again(cluster, op, ns):
    """With no peer left to hold a stale NCCL world, the StatefulSet's replacement is the
    group's new incarnation: deleting it too would only repeat the model load."""
    apply_example(cluster, ns, "03-pure-tp")
    wait_phase(cluster, "dsv32-exp-tp", ns, "Ready")
    (old,) = [p["metadata"]["uid"] for p in pods(cluster, ns, "dsv32-exp-tp")]
    cluster.kubectl("delete", "pod", "dsv32-exp-tp-serving-0-0", "-n", ns, "--wait=false")

    def successor() -> str | None:
        now = [p for p in pods(cluster, ns, "dsv32-exp-tp") if not p["metadata"].get("deletionTimestamp")]
        ok = len(now) == 1 and now[0]["metadata"]["uid"] != old and now[0]["status"].get("podIP")
        return now[0]["metadata"]["uid"] if ok else None

    new = cluster.wait_for(successor, timeout=30, what="the StatefulSet to replace the pod")
    wait_phase(cluster, "dsv32-exp-tp", ns, "Ready")
    time.sleep(3)  # the operator has seen the new pod many times over by now
    assert [p["metadata"]["uid"] for p in pods(cluster, ns, "dsv32-exp-tp")] == [new]
    events = cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", "reason=GroupFailed")
    assert events["items"] == []


def test_status_follows_a_lost_pod(cluster, op, ns):
    """A lost rank 1 takes its group down and the status says so. (A one-pod group's
    replacement is Ready again before a look could catch it: kwok has no model to load.)"""
    apply_example(cluster, ns, "17-pp-cp")
    wait_phase(cluster, "dsv32-pp-cp", ns, "Ready")
    # kwok replaces a pod in well under a second: watch the status rather than poll it.
    watch = subprocess.Popen(
        [
            str(cluster.kubectl_path),
            f"--kubeconfig={cluster.kubeconfig}",
            "get",
            "dsamodel",
            "dsv32-pp-cp",
            "-n",
            ns,
            "-w",
            "-o",
            'jsonpath={.status.readyGroups} {.status.phase}{"\\n"}',
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    seen: list[tuple[float, str]] = []
    reader = threading.Thread(
        target=lambda: [seen.append((time.monotonic(), line.strip())) for line in watch.stdout], daemon=True
    )
    reader.start()
    time.sleep(1)
    t0 = time.monotonic()
    cluster.kubectl("delete", "pod", "dsv32-pp-cp-serving-0-1", "-n", ns, "--wait=false")
    try:
        cluster.wait_for(
            lambda: any(t > t0 and line.startswith("0/1") for t, line in seen),
            timeout=60,  # a hang guard, not a latency target
            interval=0.05,
            what="status to show the lost pod",
        )
        wait_phase(cluster, "dsv32-pp-cp", ns, "Ready")
    finally:
        watch.terminate()
    # The delay is a figure (it depends on the machine), not an assertion: the behaviour is that
    # the loss shows in the status at all, before the group is Ready again (waited for above).
    delay = next(t for t, line in seen if t > t0 and line.startswith("0/1")) - t0
    print(f"\nFIGURE status reflected a pod deletion after {delay:.2f} s")


def test_spec_change_rolls_group_by_group(cluster, op, ns):
    m = yaml.safe_load((EXAMPLES / "03-pure-tp.yaml").read_text())
    m["spec"]["serving"]["replicas"] = 3
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(m))
    wait_phase(cluster, "dsv32-exp-tp", ns, "Ready", timeout=60)
    uids = {
        p["metadata"]["labels"][labels.GROUP]: p["metadata"]["uid"]
        for p in pods(cluster, ns, "dsv32-exp-tp", **ENGINE)
    }
    m["spec"]["serving"]["maxRunningRequests"] = 64
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(m))
    order: list[str] = []
    down_at_once = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        current = pods(cluster, ns, "dsv32-exp-tp", **ENGINE)
        live = {
            p["metadata"]["labels"][labels.GROUP]: p
            for p in current
            if not p["metadata"].get("deletionTimestamp")
        }
        down = [g for g in uids if g not in live or not _ready(live[g])]
        down_at_once = max(down_at_once, len(down))
        for g, p in live.items():
            if p["metadata"]["uid"] != uids[g] and g not in order:
                order.append(g)
        if len(order) == 3 and not down:
            break
        time.sleep(0.1)
    print(f"\nFIGURE rollout order of groups: {order}; most groups down at once: {down_at_once}")
    assert sorted(order) == ["0", "1", "2"]
    assert down_at_once <= 1
    wait_phase(cluster, "dsv32-exp-tp", ns, "Ready")


def _ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", [])
    )


def test_too_few_gpus_shows_in_a_condition(cluster, op, ns):
    m = yaml.safe_load((EXAMPLES / "03-pure-tp.yaml").read_text())
    m["spec"]["serving"]["parallelism"]["pp"] = 8  # 8 nodes of 8 GPUs: more than the cluster has
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(m))

    def unschedulable():
        s = cluster.kubectl_json("get", "dsamodel", "dsv32-exp-tp", "-n", ns).get("status", {})
        c = next((c for c in s.get("conditions", []) if c["type"] == "Scheduled"), None)
        return c if c and c["status"] == "False" else None

    c = cluster.wait_for(unschedulable, timeout=30, what="an Unschedulable condition")
    assert c["reason"] == "Unschedulable"
    assert "dsv32-exp-tp-serving-0-" in c["message"] and "nvidia.com/gpu" in c["message"]


def test_deleting_the_model_removes_everything(cluster, op, ns):
    apply_example(cluster, ns, "12-pd")
    wait_phase(cluster, "dsv32-exp-pd", ns, "Ready")
    cluster.kubectl("delete", "dsamodel", "dsv32-exp-pd", "-n", ns)
    sel = f"{labels.MODEL}=dsv32-exp-pd"

    def gone():
        left = cluster.kubectl_json(
            "get",
            "statefulsets,deployments,services,configmaps,serviceaccounts,roles,rolebindings,pods",
            "-n",
            ns,
            "-l",
            sel,
        )["items"]
        return not left

    cluster.wait_for(gone, timeout=60, what="every child to be garbage-collected")


def test_operator_restarted_mid_reconcile_converges(cluster, op, ns):
    op.stop(signal.SIGKILL)
    _drop_webhook(cluster)  # its server is gone with it; the restarted ones run without
    m = apply_example(cluster, ns, "19-pd-pp-cp")
    restarted = Operator(cluster, op.kubeconfig, name="operator-restart", webhook=False).start()
    try:
        cluster.wait_for(lambda: cluster.kubectl_json("get", "statefulsets", "-n", ns)["items"], timeout=30)
        restarted.stop(signal.SIGKILL)  # killed somewhere inside its first reconcile
        again = Operator(cluster, op.kubeconfig, name="operator-restart-2", webhook=False).start()
        try:
            wait_phase(cluster, "dsv32-pd-pp-cp", ns, "Ready", timeout=60)
            _assert_inventory(cluster, ns, m)
        finally:
            again.stop()
    finally:
        op.start()
        op.wait_webhook()


def _assert_inventory(cluster, ns: str, manifest: dict) -> None:
    from dsa_operator.api import parse_spec
    from dsa_operator.render import render

    m = json.loads(json.dumps(manifest))
    m["metadata"]["namespace"] = ns
    owner = cluster.kubectl_json("get", "dsamodel", m["metadata"]["name"], "-n", ns)
    want = {(o["kind"], o["metadata"]["name"]) for o in render(plan(m), parse_spec(m["spec"]), owner)}
    items = cluster.kubectl_json(
        "get",
        "statefulsets,deployments,services,configmaps,serviceaccounts,roles,rolebindings",
        "-n",
        ns,
        "-l",
        f"{labels.MODEL}={m['metadata']['name']}",
    )["items"]
    have = {(o["kind"], o["metadata"]["name"]) for o in items}
    assert have == want


def _drop_webhook(cluster) -> None:
    cluster.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_CONFIG, "--ignore-not-found")


def test_two_replicas_only_one_acts(cluster, op, ns):
    op.stop()
    _drop_webhook(cluster)
    a = Operator(
        cluster,
        op.kubeconfig,
        name="ha-a",
        webhook=False,
        extra=("--leader-elect", f"--leader-namespace={ns}"),
    ).start()
    b = Operator(
        cluster,
        op.kubeconfig,
        name="ha-b",
        webhook=False,
        extra=("--leader-elect", f"--leader-namespace={ns}"),
    ).start()
    try:
        apply_example(cluster, ns, "03-pure-tp")
        wait_phase(cluster, "dsv32-exp-tp", ns, "Ready")
        acting = [o for o in (a, b) if "applying" in o.logs()]
        assert len(acting) == 1, [o.logs()[-2000:] for o in (a, b)]
        leader, follower = acting[0], next(o for o in (a, b) if o is not acting[0])
        for o in (leader, follower):  # a standby is alive, but only the leader is ready
            url = f"http://127.0.0.1:{o.liveness_port}/healthz"
            with urllib.request.urlopen(f"{url}?probe=liveness", timeout=5) as r:
                assert r.status == 200
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    ready = r.status
            except urllib.error.HTTPError as e:
                ready = e.code
            assert ready == (200 if o is leader else 503)
        leader.stop(signal.SIGKILL)
        m = yaml.safe_load((EXAMPLES / "03-pure-tp.yaml").read_text())
        m["spec"]["serving"]["replicas"] = 2
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(m))
        cluster.wait_for(lambda: "applying" in follower.logs(), timeout=60, what="the follower to take over")
        wait_phase(cluster, "dsv32-exp-tp", ns, "Ready", timeout=60)
    finally:
        a.stop()
        b.stop()
        op.start()
        op.wait_webhook()


def test_steady_state_writes_nothing(cluster, op, ns):
    """Over a quiet minute the operator sends no write to the API server (its audit log says)."""
    apply_example(cluster, ns, "19-pd-pp-cp")
    wait_phase(cluster, "dsv32-pd-pp-cp", ns, "Ready")
    time.sleep(3)  # let the last status write land
    before = len(cluster.audit_writes("dsa-operator"))
    assert before > 0  # the audit log does see the operator's writes
    time.sleep(60)
    writes = cluster.audit_writes("dsa-operator")[before:]
    print(f"\nFIGURE operator API writes over a quiet minute: {len(writes)}")
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]


def test_scaling_removes_whole_groups_highest_index_first(cluster, op, ns):
    m = yaml.safe_load((EXAMPLES / "03-pure-tp.yaml").read_text())
    m["spec"]["serving"]["replicas"] = 3
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(m))
    wait_phase(cluster, "dsv32-exp-tp", ns, "Ready")
    m["spec"]["serving"]["replicas"] = 1
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(m))
    obj = wait_phase(cluster, "dsv32-exp-tp", ns, "Ready")
    assert obj["status"]["readyGroups"] == "1/1"

    def only_group_0():
        names = {
            s["metadata"]["name"] for s in cluster.kubectl_json("get", "statefulsets", "-n", ns)["items"]
        }
        return names == {"dsv32-exp-tp-serving-0"}

    cluster.wait_for(only_group_0, timeout=30, what="groups 1 and 2 removed")
    events = cluster.kubectl_json("get", "events", "-n", ns, "--field-selector", "reason=GroupRemoved")[
        "items"
    ]
    order = [e["message"] for e in sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))]
    assert [o.split()[2].rstrip(":") for o in order] == ["serving-2", "serving-1"], order


def test_pd_rollout_interleaves_prefill_and_decode(cluster, op, ns):
    m = yaml.safe_load((EXAMPLES / "12-pd.yaml").read_text())
    m["spec"]["decode"]["replicas"] = 2
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(m))
    wait_phase(cluster, "dsv32-exp-pd", ns, "Ready")

    def engine_uids() -> dict[str, str]:
        return {
            f"{p['metadata']['labels'][labels.ROLE]}-{p['metadata']['labels'][labels.GROUP]}": p["metadata"][
                "uid"
            ]
            for p in pods(cluster, ns, "dsv32-exp-pd", **ENGINE)
            if not p["metadata"].get("deletionTimestamp")
        }

    before = engine_uids()
    m["spec"]["prefill"]["memFractionStatic"] = 0.85
    m["spec"]["decode"]["memFractionStatic"] = 0.85
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(m))
    order: list[str] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(order) < len(before):
        for group, uid in engine_uids().items():
            if uid != before.get(group) and group not in order:
                order.append(group)
        time.sleep(0.05)
    print(f"\nFIGURE PD rollout order: {order}")
    assert order == ["prefill-0", "decode-0", "decode-1"]
    wait_phase(cluster, "dsv32-exp-pd", ns, "Ready")
