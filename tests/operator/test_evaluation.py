"""One DSAEvaluation's decision: a Job only against a Ready model, once per generation; a status
computed from the Job alone, which holds still when nothing changes."""

from __future__ import annotations

import copy
import json
import statistics

import pytest

from dsa_operator.errors import PlanError
from dsa_operator.evaluation import ASKED, decide, evaluation_job_name
from dsa_operator.evaluation_job import EVALUATION, JOB_NAME, RESULT
from dsa_operator.planner import plan

T0, T1, T2 = "2026-03-01T00:00:00Z", "2026-03-01T00:05:00Z", "2026-03-01T00:10:00Z"


def manifest(family="deepseek-v3.2-exp", name="m") -> dict:
    return {
        "apiVersion": "serving.dsa.dev/v1alpha1",
        "kind": "DSAModel",
        "metadata": {"name": name, "namespace": "ns", "uid": "u-model", "generation": 4},
        "spec": {
            "model": {"family": family},
            "runtime": {"engine": "simulator", "image": "rt:1", "imagePullPolicy": "Never"},
            "serving": {"parallelism": {"tp": 8}, "replicas": 2},
        },
    }


def model(ready=True, observed=4, family="deepseek-v3.2-exp") -> dict:
    m = manifest(family)
    m["status"] = {
        "observedGeneration": observed,
        "phase": "Ready" if ready else "Progressing",
        "readyGroups": "2/2" if ready else "1/2",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    return m


PLAN = plan(manifest())


def ev(generation=1, status=None, **spec) -> dict:
    return {
        "apiVersion": "serving.dsa.dev/v1alpha1",
        "kind": "DSAEvaluation",
        "metadata": {"name": "e", "namespace": "ns", "uid": "u-ev", "generation": generation},
        "spec": {"model": "m", "suite": "gsm8k", **spec},
        "status": status or {},
    }


def cond(status: dict, ctype: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == ctype)


def types(status: dict) -> list[str]:
    return [c["type"] for c in status["conditions"]]


def started(e: dict) -> dict:
    """The Job decide creates for `e`, as the API returns it once its pod runs."""
    d = decide(e, model(), PLAN, [], {}, None, T0)
    assert d.create is not None
    job = copy.deepcopy(d.create)
    job["status"] = {"active": 1, "startTime": T0}
    return job


def finished(job: dict, result: dict | None = None, failed: dict | None = None) -> tuple[dict, dict]:
    """The Job once it ended, and its pod with the wrapper's termination message."""
    job = copy.deepcopy(job)
    if failed is None:
        job["status"] = {"succeeded": 1, "startTime": T0, "completionTime": T1,
                         "conditions": [{"type": "Complete", "status": "True"}]}  # fmt: skip
        message, code = json.dumps(result), 0
    else:
        job["status"] = {"failed": 1, "startTime": T0,
                         "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                         "message": "backoff", "lastTransitionTime": T1}]}  # fmt: skip
        message, code = json.dumps(failed), 2
    name = job["metadata"]["name"]
    terminated = {"exitCode": code, "message": message}
    pod = {
        "metadata": {"name": f"{name}-p", "labels": {JOB_NAME: name}},
        "status": {"containerStatuses": [{"name": "harness", "state": {"terminated": terminated}}]},
    }
    return job, pod


def with_result_stored(job: dict, record: tuple[dict, str]) -> dict:
    job = copy.deepcopy(job)
    job["metadata"]["annotations"][RESULT] = record[1]
    return job


def result(score: float, scores: list[float] | None = None) -> dict:
    scores = scores or [score]
    return {"evaluation": "result", "score": score, "scores": scores, "questions": 1319,
            "repeats": len(scores), "outputThroughput": 1234.5, "harness": "few_shot_gsm8k"}  # fmt: skip


# ---- waiting for the model -------------------------------------------------------------------
def test_a_missing_model_waits_and_starts_nothing():
    d = decide(ev(), None, None, [], {}, None, T0)
    assert d.create is None and d.delete == [] and d.events == []
    assert d.status["phase"] == "WaitingForModel"
    c = cond(d.status, "ModelReady")
    assert (
        c["status"] == "False"
        and c["reason"] == "ModelNotFound"
        and "no DSAModel m in namespace ns" in c["message"]
    )


@pytest.mark.parametrize(
    ("m", "says"),
    [
        (model(ready=False), "Progressing (1/2 groups ready)"),
        (model(observed=3), "not observed yet"),  # Ready, but at an older spec
    ],
)
def test_a_model_that_is_not_ready_at_its_generation_waits(m, says):
    d = decide(ev(), m, PLAN, [], {}, None, T0)
    assert d.create is None and d.status["phase"] == "WaitingForModel"
    c = cond(d.status, "ModelReady")
    assert c["reason"] == "ModelNotReady" and says in c["message"]
    assert cond(d.status, "Complete")["reason"] == "WaitingForModel"


def test_an_invalid_model_waits():
    bad = PlanError([])
    d = decide(ev(), model(), bad, [], {}, None, T0)
    assert d.create is None and d.status["phase"] == "WaitingForModel"
    assert cond(d.status, "ModelReady")["reason"] == "ModelInvalid"


def test_an_invalid_spec_names_the_field_and_starts_nothing():
    d = decide(ev(suite="gpqa-diamond", settings={"numShots": 5}), model(), PLAN, [], {}, None, T0)
    assert d.create is None and d.status["phase"] == "Invalid"
    c = cond(d.status, "Valid")
    assert c["status"] == "False" and "spec.settings.numShots" in c["message"]


def test_no_published_figure_is_a_problem_at_expected_score():
    glm = plan(manifest("glm-5"))
    d = decide(ev(), model(family="glm-5"), glm, [], {}, None, T0)
    assert d.create is None and d.status["phase"] == "Invalid"
    c = cond(d.status, "Valid")
    assert c["reason"] == "NoReference" and "spec.expected.score" in c["message"] and "glm-5" in c["message"]
    # with a figure of its own it runs
    d = decide(ev(expected={"score": 0.9}), model(family="glm-5"), glm, [], {}, None, T0)
    assert d.create is not None and json.loads(d.create["metadata"]["annotations"][ASKED])["reference"] == 0.9


# ---- the run ---------------------------------------------------------------------------------
def test_a_ready_model_gets_one_job_with_what_it_was_asked():
    e = ev()
    d = decide(e, model(), PLAN, [], {}, None, T0)
    job = d.create
    assert job["metadata"]["name"] == evaluation_job_name(e) and d.delete == []
    assert job["metadata"]["labels"][EVALUATION] == "e"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-ev"
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "rt:1" and c["imagePullPolicy"] == "Never"  # the model's runtime image
    assert c["args"][c["args"].index("--host") + 1] == "m.ns.svc"
    assert c["args"][c["args"].index("--port") + 1] == "8000"
    asked = json.loads(job["metadata"]["annotations"][ASKED])
    assert asked["endpoint"] == "http://m.ns.svc:8000" and asked["reference"] == 0.956
    assert asked["tolerance"] == 0.02 and "usage page" in asked["referenceSource"]
    assert asked["settings"] == {"numShots": 8, "questions": 1319, "parallel": 1319, "maxTokens": 512,
                                 "temperature": 0.0}  # fmt: skip
    assert [(k, r) for k, r, _ in d.events] == [("Normal", "Started")]
    s = d.status
    assert s["phase"] == "Running" and s["job"] == job["metadata"]["name"] and s["reference"] == 0.956
    assert cond(s, "ModelReady")["status"] == "True" and d.poll

    again = decide(ev(status=s), model(), PLAN, [started(e)], {}, None, T1)
    assert again.create is None and again.events == [] and again.delete == []
    assert again.status["phase"] == "Running"


def test_the_spec_settings_and_the_evaluations_image_win():
    d = decide(
        ev(settings={"numShots": 3}, image="harness:2", timeoutSeconds=600), model(), PLAN, [], {}, None, T0
    )
    (c,) = d.create["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "harness:2" and d.create["spec"]["activeDeadlineSeconds"] == 600
    assert c["args"][c["args"].index("--num-shots") + 1] == "3"
    assert json.loads(d.create["metadata"]["annotations"][ASKED])["settings"]["numShots"] == 3


def test_a_new_generation_runs_again_and_deletes_the_old_job():
    old = started(ev(generation=1))
    e2 = ev(generation=2, settings={"numShots": 4})
    d = decide(e2, model(), PLAN, [old], {}, None, T1)
    assert d.delete == [old["metadata"]["name"]]
    assert d.create is not None and d.create["metadata"]["name"] != old["metadata"]["name"]
    assert d.create["metadata"]["name"] == evaluation_job_name(e2)
    # the same generation never runs twice, whatever the operator remembers
    assert decide(ev(generation=1), model(), PLAN, [old], {}, None, T1).create is None


def test_a_new_generation_waiting_for_its_model_still_deletes_the_old_job():
    old = started(ev(generation=1))
    d = decide(ev(generation=2), model(ready=False), PLAN, [old], {}, None, T1)
    assert d.create is None and d.delete == [old["metadata"]["name"]]


def test_progress_while_running():
    e = ev()
    d = decide(e, model(), PLAN, [started(e)], {}, "200/1319", T1)
    assert d.status["progress"] == "200/1319" and d.status["phase"] == "Running"
    assert cond(d.status, "Passed")["status"] == "Unknown"


def test_success_records_score_spread_verdict_and_the_result_once():
    e = ev(suite="aime25")
    job, pod = finished(started(e), result(0.9, [0.9, 0.85, 0.95, 0.9]))
    d = decide(e, model(), PLAN, [job], {job["metadata"]["name"]: pod}, None, T2)
    s = d.status
    assert s["phase"] == "Succeeded" and s["score"] == 0.9 and s["verdict"] == "Passed"
    assert s["scores"] == [0.9, 0.85, 0.95, 0.9]
    assert s["spread"] == pytest.approx(statistics.pstdev([0.9, 0.85, 0.95, 0.9]))
    assert (s["reference"], s["tolerance"]) == (0.875, 0.05)
    assert s["durationSeconds"] == 300 and s["pod"] == pod["metadata"]["name"]
    assert s["outputThroughput"] == 1234.5 and s["repeats"] == 4
    assert s["settings"]["repeats"] == 4 and s["settings"]["topP"] == 0.95
    assert cond(s, "Passed")["status"] == "True" and cond(s, "Complete")["status"] == "True"
    assert d.record is not None and json.loads(d.record[1]) == result(0.9, [0.9, 0.85, 0.95, 0.9])
    assert [(k, r) for k, r, _ in d.events] == [("Normal", "Passed")]

    # once recorded: nothing more to write, no second event, and the pod is no longer needed
    stored = with_result_stored(job, d.record)
    again = decide(ev(suite="aime25", status=s), None, None, [stored], {}, None, "2026-03-02T00:00:00Z")
    assert again.record is None and again.events == [] and again.create is None
    assert {**again.status, "pod": s["pod"]} == s


@pytest.mark.parametrize(("score", "expect"), [(0.85, "Passed"), (0.8499, "Below")])
def test_the_verdict_at_exactly_reference_minus_tolerance(score, expect):
    e = ev(expected={"score": 0.9, "tolerance": 0.05})
    job, pod = finished(started(e), result(score))
    d = decide(e, model(), PLAN, [job], {job["metadata"]["name"]: pod}, None, T2)
    assert d.status["verdict"] == expect and d.status["phase"] == "Succeeded"
    assert cond(d.status, "Passed")["status"] == ("True" if expect == "Passed" else "False")
    assert cond(d.status, "Passed")["reason"] == expect
    ((kind, reason, message),) = d.events
    assert reason == expect and kind == ("Normal" if expect == "Passed" else "Warning")
    assert f"{score:.3f}" in message and "0.900" in message


def test_the_published_default_passes_at_its_tolerance():
    e = ev()  # gsm8k on V3.2-Exp: 0.956, tolerance 0.02
    for score, expect in ((0.936, "Passed"), (0.935, "Below")):
        job, pod = finished(started(e), result(score))
        assert (
            decide(e, model(), PLAN, [job], {job["metadata"]["name"]: pod}, None, T2).status["verdict"]
            == expect
        )


def test_a_failed_run_says_why_and_records_it_once():
    e = ev()
    job, pod = finished(
        started(e), failed={"evaluation": "error", "reason": "EndpointDown", "message": "no /health"}
    )
    d = decide(e, model(), PLAN, [job], {job["metadata"]["name"]: pod}, None, T2)
    s = d.status
    assert s["phase"] == "Failed" and "verdict" not in s and "score" not in s
    assert (
        cond(s, "Complete")["reason"] == "Failed"
        and "EndpointDown: no /health" in cond(s, "Complete")["message"]
    )
    assert cond(s, "Passed") | {"lastTransitionTime": None} == cond(s, "Passed") | {
        "status": "False", "reason": "RunFailed", "lastTransitionTime": None}  # fmt: skip
    assert [(k, r) for k, r, _ in d.events] == [("Warning", "Failed")]
    assert s["completionTime"] == T1  # from the Failed condition
    stored = with_result_stored(job, d.record)
    again = decide(ev(status=s), model(), PLAN, [stored], {}, None, "2026-03-02T00:00:00Z")
    assert again.events == [] and again.record is None
    assert cond(again.status, "Complete")["message"] == cond(s, "Complete")["message"]
    assert {k: v for k, v in again.status.items() if k != "pod"} == {k: v for k, v in s.items() if k != "pod"}


def test_the_status_comes_from_the_job_alone():
    """A deleted or changed model, or a restarted operator: the same Job gives the same status."""
    e = ev()
    job, pod = finished(started(e), result(0.95))
    pods = {job["metadata"]["name"]: pod}
    a = decide(e, model(), PLAN, [job], pods, None, T2).status
    b = decide(e, None, None, [job], pods, None, T2).status
    c = decide(e, model(ready=False, family="glm-5"), plan(manifest("glm-5")), [job], pods, None, T2).status
    assert a == b == c and a["reference"] == 0.956


def test_conditions_keep_their_transition_time_while_their_status_holds():
    e = ev()
    waiting = decide(e, model(ready=False), PLAN, [], {}, None, T0).status
    running = decide(ev(status=waiting), model(), PLAN, [], {}, None, T1).status
    assert cond(running, "Valid")["lastTransitionTime"] == T0  # True all along
    assert cond(running, "ModelReady")["lastTransitionTime"] == T1  # False -> True
    assert cond(running, "Complete")["lastTransitionTime"] == T0  # False all along
    job = started(e)
    later = decide(ev(status=running), model(), PLAN, [job], {}, "5/1319", T2).status
    assert cond(later, "Valid")["lastTransitionTime"] == T0
    assert cond(later, "Passed")["lastTransitionTime"] == T1


def test_the_conditions_do_not_come_and_go_over_a_run():
    e = ev()
    first = decide(e, model(), PLAN, [], {}, None, T0).status
    job = started(e)
    running = decide(ev(status=first), model(), PLAN, [job], {}, None, T1).status
    job, pod = finished(job, result(0.95))
    done = decide(ev(status=running), model(), PLAN, [job], {job["metadata"]["name"]: pod}, None, T2).status
    assert types(first) == types(running) == types(done) == ["Valid", "ModelReady", "Complete", "Passed"]
    assert cond(running, "ModelReady") == cond(first, "ModelReady")


@pytest.mark.parametrize(
    "scene", ["missing", "waiting", "invalid", "created", "running", "succeeded", "failed"]
)
def test_the_same_inputs_twice_give_the_same_status(scene):
    """No writes in a quiet cluster: the status with the first one as old, later, is identical."""
    e = ev(**({"suite": "aime25", "settings": {"numShots": 1}} if scene == "invalid" else {}))
    m, jobs, pods = model(), [], {}
    if scene == "missing":
        m = None
    elif scene == "waiting":
        m = model(ready=False)
    elif scene == "running":
        jobs = [started(e)]
    elif scene in ("succeeded", "failed"):
        job, pod = finished(
            started(e), result(0.9), None if scene == "succeeded" else {"evaluation": "error"}
        )
        jobs, pods = [job], {job["metadata"]["name"]: pod}
    first = decide(e, m, PLAN if m else None, jobs, pods, "1/2", T0).status
    e2 = ev(status=first, **e["spec"])
    second = decide(e2, m, PLAN if m else None, jobs, pods, "1/2", "2026-04-01T00:00:00Z").status
    assert second == first


def test_spec_endpoint_is_asked_instead_of_the_endpoint_service():
    d = decide(ev(endpoint="http://gateway.llm:8080"), model(), PLAN, [], {}, None, T0)
    (c,) = d.create["spec"]["template"]["spec"]["containers"]
    assert c["args"][c["args"].index("--host") + 1] == "gateway.llm"
    assert c["args"][c["args"].index("--port") + 1] == "8080"
    assert d.status["endpoint"] == "http://gateway.llm:8080"


@pytest.mark.parametrize("url", ["https://gw:443", "http://gw", "http://gw:80/v1", "gw:80"])
def test_a_malformed_endpoint_is_refused_at_its_field(url):
    d = decide(ev(endpoint=url), model(), PLAN, [], {}, None, T0)
    assert d.create is None and d.status["phase"] == "Invalid"
    assert "spec.endpoint" in cond(d.status, "Valid")["message"]
