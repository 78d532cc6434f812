"""A rollout's canary gate: the evaluation against the first updated group alone, and its verdict."""

from __future__ import annotations

import copy
import json

from dsa_operator.canary import condition, decide_gate
from dsa_operator.evaluation import ASKED
from dsa_operator.evaluation_job import CANARY_GROUP, CANARY_OF, CANARY_REVISION, JOB_NAME, RESULT
from dsa_operator.planner import plan
from dsa_operator.rollout import Gate, GroupState

MODEL = {
    "apiVersion": "serving.dsa.dev/v1alpha1",
    "kind": "DSAModel",
    "metadata": {"name": "m", "namespace": "ns", "uid": "u-model", "generation": 2},
    "spec": {
        "model": {"family": "deepseek-v3.2-exp"},
        "runtime": {"engine": "simulator", "image": "rt:2"},
        "serving": {"parallelism": {"tp": 8}, "replicas": 3},
        "rollout": {"maxUnavailableGroups": 3, "gate": {"evaluation": "gate"}},
    },
}
PLAN = plan(MODEL)
EV = {
    "metadata": {"name": "gate", "namespace": "ns", "uid": "u-ev", "generation": 1},
    "spec": {"model": "m", "suite": "gsm8k", "expected": {"score": 0.9, "tolerance": 0.05}},
}
CANARY = GroupState("serving", 0, exists=True, outdated=False, ready=True, failed=False, restarting=False)


def gate(group=CANARY, revision="rev-2", ev=EV, jobs=(), pods=None):
    return decide_gate(MODEL, PLAN, group, revision, "gate", ev, list(jobs), pods or {})


def ended(job: dict, report: dict, ok: bool = True) -> tuple[dict, dict]:
    job = copy.deepcopy(job)
    job["status"] = {"conditions": [{"type": "Complete" if ok else "Failed", "status": "True"}]}
    name = job["metadata"]["name"]
    pod = {
        "metadata": {"name": f"{name}-p", "labels": {JOB_NAME: name}},
        "status": {
            "containerStatuses": [
                {
                    "name": "harness",
                    "state": {"terminated": {"exitCode": 0 if ok else 1, "message": json.dumps(report)}},
                }
            ]
        },
    }
    return job, {name: pod}


def stored(job: dict, record: tuple[dict, str]) -> dict:
    job = copy.deepcopy(job)
    job["metadata"]["annotations"][RESULT] = record[1]
    return job


def test_no_rollout_under_way_passes():
    d = gate(group=None)
    assert d.gate.passed and d.create is None and d.delete == [] and d.events == []
    assert condition(d.gate)["reason"] == "NoRollout" and condition(d.gate)["status"] == "True"


def test_a_canary_that_is_not_ready_waits_and_runs_nothing():
    restarting = GroupState("serving", 0, True, False, False, False, True)
    d = gate(group=restarting)
    assert not d.gate.passed and d.create is None and "serving-0" in d.gate.why
    c = condition(d.gate)
    assert c["status"] == "False" and c["reason"] == "Waiting"


def test_a_missing_evaluation_holds_and_names_the_field():
    d = gate(ev=None)
    assert not d.gate.passed and d.create is None
    assert "spec.rollout.gate.evaluation" in d.gate.why and "gate" in d.gate.why
    assert condition(d.gate)["reason"] == "Held"


def test_an_invalid_evaluation_holds():
    bad = {**EV, "spec": {"model": "m", "suite": "gsm8k", "settings": {"thinking": True}}}
    d = gate(ev=bad)
    assert not d.gate.passed and d.create is None and "spec.settings.thinking" in d.gate.why


def test_the_canary_job_asks_that_group_alone():
    d = gate()
    job = d.create
    assert job is not None and not d.gate.passed and condition(d.gate)["reason"] == "Waiting"
    (c,) = job["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    host, port = args[args.index("--host") + 1], args[args.index("--port") + 1]
    assert f"{host}:{port}" == "m-serving-0-0.m-serving-0.ns.svc:30000"  # rank 0, not the endpoint
    assert c["image"] == "rt:2"
    meta = job["metadata"]
    assert meta["labels"][CANARY_OF] == "m" and meta["labels"][CANARY_GROUP] == "serving-0"
    assert meta["annotations"][CANARY_REVISION] == "rev-2"
    assert meta["ownerReferences"][0]["uid"] == "u-model"  # goes with the model
    asked = json.loads(meta["annotations"][ASKED])
    assert (
        asked["reference"] == 0.9
        and asked["tolerance"] == 0.05
        and asked["target"] == "group serving-0 (canary)"
    )
    assert [r for _, r, _ in d.events] == ["CanaryStarted"]
    again = gate(jobs=[job])  # it runs: no second Job, no second event
    assert again.create is None and again.events == [] and again.delete == [] and not again.gate.passed


def test_a_canary_below_tolerance_holds_the_rollout_with_its_score_once():
    job = gate().create
    job, pods = ended(job, {"evaluation": "result", "score": 0.8})
    d = gate(jobs=[job], pods=pods)
    assert not d.gate.passed and "0.800" in d.gate.why and "0.900" in d.gate.why
    assert condition(d.gate)["reason"] == "Held"
    assert [(k, r) for k, r, _ in d.events] == [("Warning", "RolloutHeld")]
    assert d.record is not None
    after = gate(jobs=[stored(job, d.record)])  # the pod gone, the result on the Job
    assert after.gate == d.gate and after.events == [] and after.record is None and after.create is None


def test_a_canary_at_exactly_reference_minus_tolerance_passes():
    job = gate().create
    job, pods = ended(job, {"evaluation": "result", "score": 0.85})
    d = gate(jobs=[job], pods=pods)
    assert d.gate.passed and condition(d.gate)["reason"] == "CanaryPassed"
    assert [(k, r) for k, r, _ in d.events] == [("Normal", "CanaryPassed")]
    assert gate(jobs=[stored(job, d.record)]).gate.passed


def test_a_failed_canary_run_holds_with_its_reason_once():
    job = gate().create
    job, pods = ended(job, {"evaluation": "error", "reason": "EndpointDown", "message": "gone"}, ok=False)
    d = gate(jobs=[job], pods=pods)
    assert not d.gate.passed and "EndpointDown: gone" in d.gate.why
    assert [r for _, r, _ in d.events] == ["RolloutHeld"]
    after = gate(jobs=[stored(job, d.record)])
    assert after.gate == d.gate and after.events == []


def test_a_canary_past_its_deadline_holds_once_without_its_pod():
    job = copy.deepcopy(gate().create)
    job["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "m"}]
    }
    d = gate(jobs=[job])  # the Job controller deleted the pod at the deadline
    assert not d.gate.passed and "DeadlineExceeded" in d.gate.why
    assert [r for _, r, _ in d.events] == ["RolloutHeld"]
    after = gate(jobs=[stored(job, d.record)])
    assert after.gate == d.gate and after.events == []


def test_a_new_revision_deletes_the_old_canary_job():
    old = gate(revision="rev-2").create
    d = gate(revision="rev-3", jobs=[old])
    assert d.delete == [old["metadata"]["name"]]
    assert d.create is not None and d.create["metadata"]["name"] != old["metadata"]["name"]
    assert d.create["metadata"]["annotations"][CANARY_REVISION] == "rev-3"
    # while the new canary is not ready yet, the old revision's Job goes too; its own revision's stays
    restarting = GroupState("serving", 0, True, False, False, False, True)
    assert gate(group=restarting, revision="rev-3", jobs=[old]).delete == [old["metadata"]["name"]]
    assert gate(group=restarting, revision="rev-2", jobs=[old]).delete == []


def test_a_changed_evaluation_runs_the_canary_again():
    old = gate().create
    ev2 = {**EV, "metadata": {**EV["metadata"], "generation": 2}}
    d = gate(ev=ev2, jobs=[old])
    assert d.delete == [old["metadata"]["name"]] and d.create is not None


def test_condition_reasons():
    assert condition(Gate(True, "canary passed: x"))["reason"] == "CanaryPassed"
    assert condition(Gate(False, "rollout held: x"))["reason"] == "Held"
    assert condition(Gate(False, "rollout waits for x")) == {
        "type": "RolloutGate",
        "status": "False",
        "reason": "Waiting",
        "message": "rollout waits for x",
    }
