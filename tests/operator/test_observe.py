"""Reading a group's health from its pods, as a kubelet (or kwok) reports them."""

from __future__ import annotations

from dsa_operator.observe import REVISION, lost_node, needs_node_check, split_by_group, torn, view_group


def pod(name, ready=True, rev="r1", restarts=0, phase="Running", term=None, unsched=None, deleting=False):
    status = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [
            {
                "name": "engine",
                "restartCount": restarts,
                "state": {"running": {}},
                "lastState": {"terminated": term} if term else {},
            }
        ],
    }
    if unsched:
        status["conditions"].append(
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unsched}
        )
    meta = {
        "name": name,
        "uid": f"uid-{name}",
        "labels": {REVISION: rev, "serving.dsa.dev/role": "prefill", "serving.dsa.dev/group": "0"},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": status}


STS = {"status": {"updateRevision": "r1"}, "spec": {"replicas": 2}}


def test_whole_ready_group():
    v = view_group("prefill", 0, STS, [pod("a"), pod("b")], 2)
    assert v.ready and not v.outdated and not v.evidence and v.pods == ("a", "b")


def test_restart_is_evidence_with_exit_code():
    term = {"exitCode": 137, "reason": "OOMKilled", "message": "killed"}
    v = view_group("prefill", 0, STS, [pod("a"), pod("b", restarts=1, term=term)], 2)
    assert not v.ready
    e = v.evidence[0]
    assert (e.pod, e.exit_code) == ("b", 137) and "killed" in e.describe() and "137" in e.describe()


def test_failed_phase_is_evidence():
    v = view_group("prefill", 0, STS, [pod("a"), pod("b", phase="Failed", ready=False)], 2)
    assert v.evidence and v.evidence[0].reason == "failed"


def test_outdated_and_missing_pods():
    v = view_group("prefill", 0, {"status": {"updateRevision": "r2"}}, [pod("a"), pod("b")], 2)
    assert v.outdated and not v.ready
    v = view_group("prefill", 0, STS, [pod("a")], 2)
    assert not v.ready and not v.evidence


def test_unschedulable_names_pod_and_reason():
    v = view_group(
        "prefill",
        0,
        STS,
        [pod("a", ready=False, unsched="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")],
        1,
    )
    assert v.unschedulable == ("a: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",)


def test_terminating_pods_do_not_count():
    v = view_group("prefill", 0, STS, [pod("a"), pod("b", deleting=True)], 2)
    assert v.terminating and not v.ready and v.pods == ("a",)


def test_split_by_group_ignores_foreign_pods():
    other = {"metadata": {"name": "x", "labels": {}}}
    assert list(split_by_group([pod("a"), other])) == [("prefill", 0)]


def test_a_group_with_a_lost_peer_is_torn():
    whole = frozenset({"rank0", "rank1"})
    assert torn(whole, frozenset({"rank0"}))  # rank 1 gone
    assert torn(whole, frozenset({"rank0", "rank1-new"}))  # ... and already replaced
    assert not torn(whole, whole)


def test_a_wholly_new_incarnation_is_not_torn():
    """Nothing survives to hold a stale NCCL world: no second restart (and model load)."""
    assert not torn(frozenset({"only"}), frozenset({"only-new"}))  # a one-pod group's pod replaced
    assert not torn(frozenset({"rank0", "rank1"}), frozenset())  # every pod deleted at once
    assert not torn(frozenset(), frozenset({"rank0"}))  # nothing remembered (operator restarted)


# ---- a lost node --------------------------------------------------------------------------------
def on(p: dict, node: str) -> dict:
    return {**p, "spec": {"nodeName": node}}


NODE_LOST = {
    "status": {
        "conditions": [
            {
                "type": "Ready",
                "status": "Unknown",
                "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastTransitionTime": "2026-12-03T10:00:00Z",
            }
        ]
    }
}


def test_a_node_is_lost_when_not_ready_or_gone():
    assert lost_node({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}) is None
    why = lost_node(NODE_LOST)
    assert "Unknown since 2026-12-03T10:00:00Z" in why and "Kubelet stopped posting" in why
    assert lost_node(None) == "the node no longer exists"


def test_only_unready_or_deleted_pods_send_the_operator_to_their_node():
    assert not needs_node_check(on(pod("a"), "n1"))
    assert needs_node_check(on(pod("a", ready=False), "n1"))
    assert needs_node_check(on(pod("a", deleting=True), "n1"))
    assert not needs_node_check(pod("a", ready=False))  # not scheduled: no node to read


def test_a_pod_on_a_lost_node_fails_its_group():
    lost = {"n1": lost_node(NODE_LOST)}
    v = view_group("prefill", 0, STS, [on(pod("a"), "n0"), on(pod("b", ready=False), "n1")], 2, lost)
    assert not v.ready and v.evidence[0].pod == "b"
    assert "node n1, which is lost" in v.evidence[0].describe()


def test_a_pod_deleted_on_a_lost_node_holds_its_group_and_says_what_frees_it():
    lost = {"n1": lost_node(NODE_LOST)}
    v = view_group("prefill", 0, STS, [on(pod("b", ready=False, deleting=True), "n1")], 1, lost)
    (held,) = v.held
    assert "pod b stays terminating on node n1" in held
    assert "kubectl delete node n1" in held and "node.kubernetes.io/out-of-service" in held
    assert not v.evidence  # the pod is already being deleted: nothing to restart
