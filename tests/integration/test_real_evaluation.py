"""Accuracy evaluations on real nodes: DSAEvaluations run the pinned SGLang's gsm8k harness, in
the runtime image, as Jobs of the in-cluster operator, against a DSAModel on the engine simulator
whose answer book answers a known share of a small data set right; and a rollout gated on a
canary evaluation.

The data set and the answer books are written here: 8 questions, 2 used as few-shot examples
(the harness asks all 8). The good book answers 6 right, so the recorded score must be exactly
0.75; the bad one 4, so 0.5. The simulator does not judge: it replays the book (docs/simulator.md).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from dsa_operator import labels
from tests.integration.test_real_serving import (  # noqa: F401  (module fixtures, reused)
    OPERATOR_NS,
    RELEASE,
    chart,
    pods,
    refs,
)

pytestmark = pytest.mark.integration
MODEL = "dsv32-eval"
QUESTIONS = [(f"Item {i}: what is {3 * i + 5} plus {2 * i + 7}?", 5 * i + 12) for i in range(8)]
WRONG_GOOD = {2, 5}  # the good book answers these wrong: 6/8
WRONG_BAD = {1, 2, 5, 6}  # the bad one: 4/8


def dataset() -> str:
    return "\n".join(json.dumps({"question": q, "answer": f"{q} #### {a}"}) for q, a in QUESTIONS) + "\n"


def book(wrong: set[int]) -> str:
    return json.dumps({q: f"It is {a + (1 if i in wrong else 0)}." for i, (q, a) in enumerate(QUESTIONS)})


def configmap(ns: str, name: str, data: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns},
        "data": data,
    }


def model(ns: str, image: str, answers: str) -> dict:
    """Two unified groups (one node each) behind the router, on the simulator, gated on `gate-check`."""
    return {
        "apiVersion": "serving.dsa.dev/v1alpha1",
        "kind": "DSAModel",
        "metadata": {"name": MODEL, "namespace": ns},
        "spec": {
            "model": {"family": "deepseek-v3.2-exp", "servedModelName": "deepseek-v32"},
            "runtime": {
                "engine": "simulator",
                "image": image,
                "imagePullPolicy": "Never",
                "env": {"DSA_SIMULATOR_ANSWERS": "/models/answers.json"},
            },
            "storage": {"shmSize": "64Mi", "volume": {"configMap": {"name": answers}}},
            "features": {"toolCalling": False, "reasoning": False},
            "serving": {"parallelism": {"tp": 8}, "replicas": 2},
            "rollout": {"gate": {"evaluation": "gate-check"}},
        },
    }


def router_url(cluster, ns: str) -> str:
    """The router pod's own address: this cluster routes no ClusterIP (no kube-proxy, docs/cluster.md),
    so the evaluations here name it in spec.endpoint instead of using the model's endpoint Service."""
    (router,) = pods(cluster, ns, MODEL, **{labels.COMPONENT: "router"})
    return f"http://{router['status']['podIP']}:8000"


def evaluation(cluster, ns: str, name: str, score: float, tolerance: float, **extra) -> dict:
    spec = {
        "model": MODEL,
        "endpoint": router_url(cluster, ns),
        "suite": "gsm8k",
        "settings": {"numShots": 2, "questions": 8, "parallel": 8},
        "expected": {"score": score, "tolerance": tolerance},
        "dataset": {"volume": {"configMap": {"name": "evalset"}}, "path": "gsm8k.jsonl"},
        **extra,
    }
    return {
        "apiVersion": "serving.dsa.dev/v1alpha1",
        "kind": "DSAEvaluation",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }


def ev_status(cluster, ns: str, name: str) -> dict:
    return cluster.kubectl_json("get", "dsaevaluation", name, "-n", ns).get("status", {})


def wait_phase(
    cluster, ns: str, name: str, phases: tuple[str, ...], timeout: float = 300, want: str | None = None
) -> dict:
    """Until the evaluation's phase is one of `phases`; with `want`, it must be that one (else the
    evaluation, its Job's pods and their logs are printed)."""
    try:
        s = cluster.wait_for(
            lambda: (s := ev_status(cluster, ns, name)).get("phase") in phases and s,
            timeout=timeout,
            interval=1,
            what=f"DSAEvaluation {ns}/{name} {phases}",
        )
        if want is None or s["phase"] == want:
            return s
        raise AssertionError(f"{name}: phase {s['phase']}, not {want}")
    except (TimeoutError, AssertionError):
        print(cluster.kubectl("get", "dsaevaluation", name, "-n", ns, "-o", "yaml", check=False).stdout)
        print(cluster.kubectl("get", "jobs,pods", "-n", ns, "-o", "wide", check=False).stdout)
        for p in cluster.kubectl_json("get", "pods", "-n", ns, "-l", f"serving.dsa.dev/evaluation={name}")[
            "items"
        ]:
            print(cluster.kubectl("logs", "-n", ns, p["metadata"]["name"], "--tail=60", check=False).stdout)
        print(
            cluster.kubectl(
                "logs", "-n", OPERATOR_NS, f"deployment/{RELEASE}", "--tail=40", check=False
            ).stdout
        )
        raise


def model_status(cluster, ns: str) -> dict:
    return cluster.kubectl_json("get", "dsamodel", MODEL, "-n", ns).get("status", {})


def wait_model_ready(cluster, ns: str, timeout: float = 400) -> dict:
    def ready():
        s = model_status(cluster, ns)
        return s if s.get("phase") == "Ready" and s.get("readyGroups") == "2/2" else None

    return cluster.wait_for(ready, timeout=timeout, interval=1, what=f"{ns}/{MODEL} Ready")


@pytest.fixture(scope="module")
def served(real_cluster, refs, chart):  # noqa: F811
    """One namespace: the data set, both answer books, the model (good book) Ready."""
    ns = f"e-{uuid.uuid4().hex[:6]}"
    real_cluster.kubectl("create", "namespace", ns)
    real_cluster.apply(
        [
            configmap(ns, "evalset", {"gsm8k.jsonl": dataset()}),
            configmap(ns, "answers-good", {"answers.json": book(WRONG_GOOD)}),
            configmap(ns, "answers-bad", {"answers.json": book(WRONG_BAD)}),
        ]
    )
    real_cluster.apply(model(ns, refs["runtime"], "answers-good"))
    wait_model_ready(real_cluster, ns)
    try:
        yield ns
    finally:
        real_cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)


def test_an_evaluation_the_rules_refuse_is_refused_with_its_field(real_cluster, served) -> None:
    bad = evaluation(real_cluster, served, "bad", 0.9, 0.02)
    bad["spec"]["suite"] = "aime25"  # numShots is gsm8k's only
    r = real_cluster.apply(bad, check=False)
    assert r.returncode != 0 and "spec.settings.numShots" in r.stderr, r.stderr
    assert real_cluster.kubectl_json("get", "dsaevaluations", "-n", served)["items"] == []


def test_gsm8k_records_exactly_the_share_answered_right(real_cluster, served) -> None:
    real_cluster.apply(
        [
            evaluation(real_cluster, served, "gsm8k-pass", 0.75, 0.0),
            evaluation(real_cluster, served, "gsm8k-below", 0.9, 0.05),
        ]
    )
    passed = wait_phase(real_cluster, served, "gsm8k-pass", ("Succeeded", "Failed"), want="Succeeded")
    below = wait_phase(real_cluster, served, "gsm8k-below", ("Succeeded", "Failed"), want="Succeeded")
    for s in (passed, below):
        assert s["score"] == 0.75 and s["questions"] == 8, s  # 6 of 8, through the real harness
        assert s["endpoint"] == router_url(real_cluster, served)  # through the router, both groups
        assert s["settings"]["numShots"] == 2 and s["settings"]["maxTokens"] == 512  # page default
        assert s["job"] and s["pod"] and "few_shot_gsm8k" in s["harness"]
    assert passed["verdict"] == "Passed" and below["verdict"] == "Below"
    cond = {c["type"]: c for c in below["conditions"]}
    assert cond["Passed"]["status"] == "False" and "0.750" in cond["Passed"]["message"]
    table = real_cluster.kubectl("get", "dsaeval", "-n", served).stdout
    assert "gsm8k-below" in table and "Below" in table and "0.75" in table, table
    events = real_cluster.kubectl_json("get", "events", "-n", served, "--field-selector", "reason=Below")
    assert len(events["items"]) == 1
    # The harness asked the model: every generation went to an engine of this model.
    for s in (passed, below):
        print(f"\n[figure] gsm8k, 8 questions through the router: Job ran {s.get('durationSeconds')} s")
    for name in ("gsm8k-pass", "gsm8k-below"):
        real_cluster.kubectl("delete", "dsaevaluation", name, "-n", served)


def test_a_failed_run_and_a_missing_model_say_why_and_deleting_removes_the_job(real_cluster, served) -> None:
    crash = evaluation(real_cluster, served, "no-data", 0.75, 0.0)
    crash["spec"]["dataset"]["path"] = "missing.jsonl"
    orphan = evaluation(real_cluster, served, "orphan", 0.75, 0.0)
    orphan["spec"]["model"] = "no-such-model"
    real_cluster.apply([crash, orphan])
    failed = wait_phase(real_cluster, served, "no-data", ("Failed", "Succeeded"), want="Failed")
    complete = {c["type"]: c for c in failed["conditions"]}["Complete"]
    assert complete["status"] == "True" and "missing.jsonl" in complete["message"], complete
    waiting = wait_phase(real_cluster, served, "orphan", ("WaitingForModel",), timeout=60)
    ready = {c["type"]: c for c in waiting["conditions"]}["ModelReady"]
    assert ready["reason"] == "ModelNotFound" and "no-such-model" in ready["message"]
    jobs = real_cluster.kubectl_json("get", "jobs", "-n", served, "-l", "serving.dsa.dev/evaluation")["items"]
    assert {j["metadata"]["labels"]["serving.dsa.dev/evaluation"] for j in jobs} == {"no-data"}
    real_cluster.kubectl("delete", "dsaevaluation", "no-data", "orphan", "-n", served)
    real_cluster.wait_for(
        lambda: (
            not real_cluster.kubectl_json("get", "jobs", "-n", served, "-l", "serving.dsa.dev/evaluation")[
                "items"
            ]
        ),
        timeout=60,
        what="the evaluation's Job deleted with it",
    )


def engine_uids(cluster, ns: str, index: int) -> set[str]:
    return {
        p["metadata"]["uid"]
        for p in pods(cluster, ns, MODEL, **{labels.ROLE: "serving", labels.GROUP: str(index)})
    }


def test_a_canary_that_answers_worse_holds_the_rollout(real_cluster, refs, served) -> None:  # noqa: F811
    real_cluster.apply(evaluation(real_cluster, served, "gate-check", 0.75, 0.0))
    wait_phase(
        real_cluster, served, "gate-check", ("Succeeded", "Failed"), want="Succeeded"
    )  # it also runs on the endpoint
    # A rollout to the worse book: group 0 goes first, scores 0.5 < 0.75, and group 1 is kept.
    before = engine_uids(real_cluster, served, 1)
    t0 = time.monotonic()
    real_cluster.apply(model(served, refs["runtime"], "answers-bad"))

    def held():
        conds = {c["type"]: c for c in model_status(real_cluster, served).get("conditions", [])}
        gate = conds.get("RolloutGate", {})
        return gate if gate.get("reason") == "Held" else None

    gate = real_cluster.wait_for(held, timeout=400, interval=1, what="the rollout held by its canary")
    print(f"\n[figure] spec change to the rollout held by its canary: {time.monotonic() - t0:.1f} s")
    assert "serving-0" in gate["message"] and "0.500" in gate["message"], gate
    jobs = real_cluster.kubectl_json("get", "jobs", "-n", served, "-l", "serving.dsa.dev/canary-of")["items"]
    (job,) = [j for j in jobs if j["metadata"]["labels"]["serving.dsa.dev/canary-group"] == "serving-0"]
    assert json.loads(job["metadata"]["annotations"]["serving.dsa.dev/result"])["score"] == 0.5
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--host") + 1] == f"{MODEL}-serving-0-0.{MODEL}-serving-0.{served}.svc"
    time.sleep(5)  # held, not merely slow: group 1 stays on its pods
    assert engine_uids(real_cluster, served, 1) == before
    assert model_status(real_cluster, served)["phase"] != "Ready"
    events = real_cluster.kubectl_json(
        "get", "events", "-n", served, "--field-selector", "reason=RolloutHeld"
    )
    assert len(events["items"]) == 1

    # Back to the good book: group 1 (still on it) is now the canary, passes, and group 0 follows.
    t0 = time.monotonic()
    real_cluster.apply(model(served, refs["runtime"], "answers-good"))

    def canary_passed():
        return real_cluster.kubectl_json(
            "get", "events", "-n", served, "--field-selector", "reason=CanaryPassed"
        )["items"]

    (passed,) = real_cluster.wait_for(canary_passed, timeout=400, interval=1, what="the canary passed")
    assert "serving-1" in passed["message"] and "0.750" in passed["message"], passed
    wait_model_ready(real_cluster, served)
    print(f"[figure] reverted spec to Ready, through a passing canary: {time.monotonic() - t0:.1f} s")
    assert engine_uids(real_cluster, served, 1) == before  # the canary itself is not restarted
