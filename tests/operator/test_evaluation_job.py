"""An evaluation's Job: what the harness is asked, how it runs (never on a GPU, never twice), and
what its pod reports."""

from __future__ import annotations

import json

import pytest

from dsa_operator.evaluation_api import parse_evaluation
from dsa_operator.evaluation_job import (
    JOB_NAME,
    RESULT,
    Target,
    harness_args,
    job_name,
    outcome,
    pods_by_job,
    progress,
    render_job,
    verdict,
)
from dsa_operator.suites import Settings, settings_for

TARGET = Target("m.ns.svc", 8000, "endpoint")
OWNER = {
    "apiVersion": "serving.dsa.dev/v1alpha1",
    "kind": "DSAEvaluation",
    "metadata": {"name": "e", "uid": "u-e"},
}


def job_for(**spec_kw) -> dict:
    spec = parse_evaluation({"model": "m", "suite": "gsm8k", **spec_kw})
    return render_job(
        name="e-abc",
        namespace="ns",
        owner=OWNER,
        job_labels={"serving.dsa.dev/evaluation": "e"},
        annotations={"a": "b"},
        spec=spec,
        settings=settings_for(spec.suite, "deepseek-v3.2-exp", Settings()),
        target=TARGET,
        image="img:1",
        pull_policy="IfNotPresent",
        timeout_seconds=7200,
    )


def pod_spec(job: dict) -> dict:
    return job["spec"]["template"]["spec"]


# ---- the command line ------------------------------------------------------------------------
def test_gsm8k_passes_every_page_setting_explicitly():
    args = harness_args("gsm8k", settings_for("gsm8k", "deepseek-v3.2-exp", Settings()), TARGET, None)
    assert args == [
        "evaluate", "--suite", "gsm8k", "--host", "m.ns.svc", "--port", "8000",
        "--num-shots", "8", "--num-questions", "1319", "--parallel", "1319", "--max-tokens", "512",
        "--temperature", "0.0", "--out-dir", "/tmp/eval",
    ]  # fmt: skip


def test_aime25_passes_sampling_repeats_thinking_and_the_dataset_under_data():
    s = settings_for("aime25", "deepseek-v3.2-speciale", Settings())
    args = harness_args("aime25", s, TARGET, "sets/aime.jsonl")
    opts = dict(zip(args[1::2], args[2::2], strict=False))
    assert opts["--repeats"] == "4" and opts["--temperature"] == "1.0" and opts["--top-p"] == "0.95"
    assert opts["--max-tokens"] == "120000"
    assert "--thinking" in args and "--no-thinking" not in args
    assert args[args.index("--data-path") + 1] == "/data/sets/aime.jsonl"
    off = harness_args("aime25", Settings(thinking=False), TARGET, None)
    assert "--no-thinking" in off and "--thinking" not in off and "--data-path" not in off


def test_zero_shots_is_passed_not_dropped():
    args = harness_args("gsm8k", Settings(num_shots=0), TARGET, None)
    assert args[args.index("--num-shots") + 1] == "0"


# ---- the Job ---------------------------------------------------------------------------------
def test_the_job_runs_once_with_a_deadline_and_is_owned():
    job = job_for()
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 7200
    assert pod_spec(job)["restartPolicy"] == "Never"
    (ref,) = job["metadata"]["ownerReferences"]
    assert ref["uid"] == "u-e" and ref["kind"] == "DSAEvaluation" and ref["controller"] is True
    assert job["metadata"]["annotations"] == {"a": "b"}
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "dsa-operator"
    assert pod_spec(job)["containers"][0]["image"] == "img:1"


def test_the_job_is_unprivileged_and_has_no_api_credentials():
    ps = pod_spec(job_for())
    assert ps["automountServiceAccountToken"] is False
    assert ps["securityContext"]["runAsNonRoot"] is True and ps["securityContext"]["runAsUser"] != 0
    (c,) = ps["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # the only writable place
    assert c["terminationMessagePolicy"] == "File"  # the result comes back through the pod status


def test_the_job_never_asks_for_a_gpu_nor_tolerates_gpu_nodes():
    ps = pod_spec(job_for())
    assert "tolerations" not in ps and "nodeSelector" not in ps
    # Kept off GPU nodes: every term requires the GPU product labels to be absent.
    (term,) = ps["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert {(e["key"], e["operator"]) for e in term["matchExpressions"]} == {
        ("nvidia.com/gpu.product", "DoesNotExist"),
        ("amd.com/gpu.product-name", "DoesNotExist"),
    }
    text = json.dumps({k: v for k, v in ps.items() if k != "affinity"})
    assert "nvidia.com" not in text and "amd.com" not in text
    res = ps["containers"][0]["resources"]
    assert set(res) == {"requests"} and set(res["requests"]) == {"cpu", "memory"}


def test_hf_token_only_from_the_named_secret_and_only_when_set():
    env = pod_spec(job_for())["containers"][0]["env"]
    assert all(e["name"] != "HF_TOKEN" for e in env)
    gpqa = job_for(suite="gpqa-diamond", hfTokenSecret={"name": "hf", "key": "tok"})
    env = pod_spec(gpqa)["containers"][0]["env"]
    (tok,) = [e for e in env if e["name"] == "HF_TOKEN"]
    assert tok == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "tok"}}}


def test_a_dataset_volume_is_mounted_read_only_at_data():
    job = job_for(dataset={"volume": {"configMap": {"name": "q"}}, "path": "gsm8k.jsonl"})
    ps = pod_spec(job)
    assert {"name": "dataset", "configMap": {"name": "q"}} in ps["volumes"]
    assert {"name": "dataset", "mountPath": "/data", "readOnly": True} in ps["containers"][0]["volumeMounts"]
    args = ps["containers"][0]["args"]
    assert args[args.index("--data-path") + 1] == "/data/gsm8k.jsonl"


def test_job_names_fit_and_differ_per_key():
    long = "x" * 80
    a, b = job_name(long, "uid", 1), job_name(long, "uid", 2)
    assert a != b and len(a) <= 63 - 6  # room for the pod name suffix under the 63 label limit
    assert job_name("e", "uid", 1) == job_name("e", "uid", 1)
    assert not job_name("a-" + "b" * 42 + "-c", 1).count("--")


# ---- what a Job shows ------------------------------------------------------------------------
def job(conditions=(), annotations=None, **status) -> dict:
    return {
        "metadata": {"name": "j", "annotations": annotations or {}},
        "status": {"conditions": [{"status": "True", **c} for c in conditions], **status},
    }


def pod(message=None, exit_code=0, name="j-xyz", created="2026-01-01T00:00:00Z") -> dict:
    term = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}
    if message is not None:
        term["message"] = message
    return {
        "metadata": {"name": name, "labels": {JOB_NAME: "j"}, "creationTimestamp": created},
        "status": {"containerStatuses": [{"name": "harness", "state": {"terminated": term}}]},
    }


RESULT_DOC = {"evaluation": "result", "score": 0.9, "scores": [0.9], "questions": 10}
STARTED = {"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:10:00Z"}


def test_pending_and_running():
    assert outcome(job(), None).state == "pending"
    assert outcome(job(active=1), None).state == "running"
    running = {"metadata": {"name": "p", "labels": {JOB_NAME: "j"}}, "status": {"phase": "Running"}}
    o = outcome(job(active=1), running)
    assert o.state == "running" and o.pod == "p"


def test_succeeded_with_its_result():
    o = outcome(job([{"type": "Complete"}], **STARTED), pod(json.dumps(RESULT_DOC)))
    assert o.state == "succeeded" and o.result == RESULT_DOC and o.pod == "j-xyz"
    assert (o.start_time, o.completion_time) == (STARTED["startTime"], STARTED["completionTime"])


@pytest.mark.parametrize(
    "message",
    [
        None,
        "",
        "not json",
        json.dumps({"score": 0.9}),
        json.dumps({"evaluation": "result"}),
        json.dumps({"evaluation": "result", "score": "0.9"}),
        '{"evaluation": "result", "score": NaN}',
        json.dumps({"evaluation": "result", "score": True}),
    ],
)
def test_complete_without_a_readable_result_is_a_failure(message):
    o = outcome(job([{"type": "Complete"}]), pod(message))
    assert o.state == "failed" and o.result is None and "without a readable result" in o.reason


def test_an_error_report_fails_with_its_reason():
    report = {"evaluation": "error", "reason": "EndpointDown", "message": "  /health failed 3 times\n"}
    o = outcome(job([{"type": "Failed", "reason": "BackoffLimitExceeded"}]), pod(json.dumps(report), 3))
    assert o.state == "failed" and o.reason == "EndpointDown: /health failed 3 times"
    # the pod's report is read before the Job controller has marked the Job failed
    assert outcome(job(active=1), pod(json.dumps(report), 3)).state == "failed"


def test_a_crash_without_a_report_gives_its_exit_code():
    o = outcome(job([{"type": "Failed", "reason": "BackoffLimitExceeded"}]), pod("Traceback ...", 137))
    assert o.state == "failed" and "exit code 137" in o.reason


def test_deadline_exceeded_says_so_without_a_pod():
    failed = {
        "type": "Failed",
        "reason": "DeadlineExceeded",
        "message": "Job was active longer than specified",
        "lastTransitionTime": "2026-01-01T02:00:00Z",
    }
    o = outcome(job([failed], startTime="2026-01-01T00:00:00Z"), None)
    assert o.state == "failed" and o.reason.startswith("DeadlineExceeded")
    assert "activeDeadlineSeconds" in o.reason and o.completion_time == "2026-01-01T02:00:00Z"


def test_the_stored_result_outlives_the_pod():
    stored = job([{"type": "Complete"}], annotations={RESULT: json.dumps(RESULT_DOC)})
    o = outcome(stored, None)
    assert o.state == "succeeded" and o.result == RESULT_DOC and o.pod is None
    err = {"evaluation": "error", "reason": "HarnessFailed", "message": "exit code 1"}
    o = outcome(job([{"type": "Failed"}], annotations={RESULT: json.dumps(err)}), None)
    assert o.state == "failed" and o.reason == "HarnessFailed: exit code 1"


def test_a_failure_reason_survives_being_stored():
    """What decide records on the Job reads back as the same reason without the pod."""
    for j, p in [
        (job([{"type": "Failed", "reason": "BackoffLimitExceeded"}]), pod("garbage", 2)),
        (job([{"type": "Failed", "reason": "DeadlineExceeded", "message": "m"}]), pod(None, 143)),
        (
            job([{"type": "Failed"}]),
            pod(json.dumps({"evaluation": "error", "reason": "R", "message": "x"}), 1),
        ),
        (
            job([{"type": "Failed", "reason": "BackoffLimitExceeded"}]),
            {"metadata": {"name": "p"}, "status": {}},
        ),
    ]:
        first = outcome(j, p)
        reason, _, message = first.reason.partition(": ")
        doc = {"evaluation": "error", "reason": reason, "message": message}
        again = outcome({**j, "metadata": {"name": "j", "annotations": {RESULT: json.dumps(doc)}}}, None)
        assert again.reason == first.reason


def test_verdict_at_the_boundary():
    assert verdict(0.936, 0.956, 0.02) == "Passed"  # exactly reference - tolerance
    assert verdict(0.9359, 0.956, 0.02) == "Below"
    assert verdict(1.0, 0.956, 0.0) == "Passed"  # above the reference is fine
    assert verdict(0.875 - 0.05, 0.875, 0.05) == "Passed"


def test_progress_is_the_last_progress_line():
    log = "\n".join(
        [
            "starting",
            json.dumps({"evaluation": "progress", "done": 10, "total": 1319}),
            "{not json",
            json.dumps({"evaluation": "progress", "done": 200, "total": 1319}),
            json.dumps({"evaluation": "other", "done": 999}),
            "  ",
        ]
    )
    assert progress(log) == "200/1319"
    assert progress("no progress here\n[1, 2]") is None
    assert progress(json.dumps({"evaluation": "progress", "done": "x"})) is None


def test_pods_by_job_takes_the_newest_pod_of_each_job():
    old = pod(name="j-old", created="2026-01-01T00:00:00Z")
    new = pod(name="j-new", created="2026-01-01T01:00:00Z")
    other = {"metadata": {"name": "k-1", "labels": {JOB_NAME: "k"}}}
    loose = {"metadata": {"name": "x", "labels": {}}}
    found = pods_by_job([new, loose, other, old])
    assert {k: v["metadata"]["name"] for k, v in found.items()} == {"j": "j-new", "k": "k-1"}
