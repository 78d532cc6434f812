"""Status tells a user what is wrong and what to do, and holds still when nothing changes."""

from __future__ import annotations

from dsa_operator.errors import PlanError, Problem
from dsa_operator.observe import Evidence, GroupView
from dsa_operator.planner import plan
from dsa_operator.status import compute_status, invalid_status
from tests.conftest import ROOT, load

P = plan(load(ROOT / "examples" / "12-pd.yaml"))


def gv(role, ready=True, evidence=(), unsched=()):
    return GroupView(
        role, 0, True, 1, ("p",), frozenset({"u"}), ready, False, tuple(evidence), tuple(unsched)
    )


def status(groups, router=True, rolling=(), old=None, now="2026-12-01T00:00:00Z"):
    return compute_status(P, groups, router, list(rolling), [], old or {}, 3, now)


def cond(s, t):
    return next(c for c in s["conditions"] if c["type"] == t)


def test_ready():
    s = status([gv("prefill"), gv("decode")])
    assert s["phase"] == "Ready" and s["readyGroups"] == "2/2"
    assert s["endpoint"] == "http://dsv32-exp-pd.default.svc:8000/v1"
    assert cond(s, "Ready")["status"] == "True" and s["observedGeneration"] == 3
    assert s["plan"]["roles"]["prefill"]["prefillKernel"] == "flashmla_sparse"


def test_router_not_ready_is_not_ready():
    assert status([gv("prefill"), gv("decode")], router=False)["phase"] == "Progressing"


def test_degraded_names_pod_and_exit_code():
    s = status(
        [gv("prefill", ready=False, evidence=[Evidence("pf-0", "restarted", 139, "segfault")]), gv("decode")]
    )
    assert s["phase"] == "Degraded"
    msg = cond(s, "Degraded")["message"]
    assert "pf-0" in msg and "139" in msg


def test_unschedulable_condition():
    s = status(
        [
            gv(
                "prefill", ready=False, unsched=["pf-0: 0/4 nodes are available: Insufficient nvidia.com/gpu"]
            ),
            gv("decode", ready=False),
        ]
    )
    c = cond(s, "Scheduled")
    assert (
        c["status"] == "False"
        and c["reason"] == "Unschedulable"
        and "Insufficient nvidia.com/gpu" in c["message"]
    )
    assert s["phase"] == "Pending"


def test_transition_times_hold_when_nothing_changes():
    first = status([gv("prefill"), gv("decode")], now="2026-12-01T00:00:00Z")
    again = status([gv("prefill"), gv("decode")], old=first, now="2026-12-01T01:00:00Z")
    assert again == first
    changed = status([gv("prefill", ready=False), gv("decode")], old=first, now="2026-12-01T02:00:00Z")
    assert cond(changed, "Ready")["lastTransitionTime"] == "2026-12-01T02:00:00Z"
    assert cond(changed, "Valid")["lastTransitionTime"] == "2026-12-01T00:00:00Z"


def test_invalid_spec_status():
    s = invalid_status(PlanError([Problem("spec.serving.parallelism.tp", "bad")]), {}, 2, "t")
    assert s["phase"] == "Invalid"
    assert "spec.serving.parallelism.tp" in cond(s, "Valid")["message"]


def test_a_group_held_by_a_lost_node_is_degraded_and_says_what_frees_it():
    from dataclasses import replace

    held = replace(gv("prefill", ready=False), held=("pod p stays terminating on node n1 (...): delete it",))
    s = status([held, gv("decode")])
    assert s["phase"] == "Degraded"
    c = cond(s, "Degraded")
    assert c["status"] == "True" and c["reason"] == "NodeLost" and "node n1" in c["message"]


def test_a_gated_rollout_says_why_it_is_held_and_the_condition_holds_still():
    from dsa_operator.canary import condition
    from dsa_operator.rollout import Gate

    held = condition(
        Gate(False, "rollout held: canary serving-0 scored 0.800 on gsm8k against 0.900 - 0.050")
    )
    first = compute_status(P, [gv("prefill"), gv("decode")], True, [], [], {}, 3, "t0", gate=held)
    c = cond(first, "RolloutGate")
    assert c["status"] == "False" and c["reason"] == "Held" and "0.800" in c["message"]
    assert c["observedGeneration"] == 3 and c["lastTransitionTime"] == "t0"
    again = compute_status(P, [gv("prefill"), gv("decode")], True, [], [], first, 3, "t1", gate=held)
    assert again == first
    passed = condition(Gate(True, "canary passed: canary serving-0 scored 0.950"))
    later = compute_status(P, [gv("prefill"), gv("decode")], True, [], [], first, 3, "t2", gate=passed)
    assert cond(later, "RolloutGate")["status"] == "True"
    assert cond(later, "RolloutGate")["lastTransitionTime"] == "t2"
    assert cond(later, "Ready")["lastTransitionTime"] == "t0"


def test_no_gate_no_rollout_gate_condition():
    s = status([gv("prefill"), gv("decode")])
    assert "RolloutGate" not in [c["type"] for c in s["conditions"]]


def test_a_group_waiting_for_kueue_says_so_in_kueues_words():
    waits = ["m-serving-0-0, m-serving-0-1: Workload w in queue q: Pending: topology does not fit"]
    s = compute_status(
        P, [gv("prefill", ready=False), gv("decode")], True, [], [], {}, 3, "t", queue="q", admission=waits
    )
    c = cond(s, "Admitted")
    assert (c["status"], c["reason"]) == ("False", "WaitingForAdmission")
    assert "queue q" in c["message"] and "topology does not fit" in c["message"]
    assert s["phase"] == "Progressing"  # one group is ready: not Pending as a whole
    s = compute_status(
        P,
        [gv("prefill", ready=False), gv("decode", ready=False)],
        True,
        [],
        [],
        {},
        3,
        "t",
        queue="q",
        admission=waits,
    )
    assert s["phase"] == "Pending"
    s = compute_status(P, [gv("prefill"), gv("decode")], True, [], [], {}, 3, "t", queue="q", admission=[])
    assert cond(s, "Admitted")["status"] == "True" and s["phase"] == "Ready"


def test_no_queue_no_admitted_condition():
    assert not [c for c in status([gv("prefill"), gv("decode")])["conditions"] if c["type"] == "Admitted"]


def test_pods_kueue_never_gated_are_named_and_the_cause_asked():
    why = "m-serving-0-0: created without Kueue's admission gate, so scheduled pod by pod: ..."
    s = compute_status(P, [gv("prefill"), gv("decode")], True, [], [], {}, 3, "t", queue="q", not_queued=why)
    c = cond(s, "Admitted")
    assert (c["status"], c["reason"]) == ("False", "NotManagedByKueue")
    assert "m-serving-0-0" in c["message"] and "queue q" in c["message"]
