"""An evaluation's Job and what its pod reports. Pure.

The Job runs `dsa-runtime evaluate` (the runtime image's harness wrapper) against one address:
a DSAModel's endpoint, or one group's rank 0 for a rollout canary. The wrapper writes its result
as the pod's termination message (JSON), so the operator reads it from the pod's status, with no
log access; the operator then copies it onto the Job (`RESULT`), where it outlives the pod.

A Job never retries (`backoffLimit: 0`): a harness that failed is an outcome to report, and a
second run would double the GPU time silently. It has a deadline (`activeDeadlineSeconds`), so a
hung endpoint ends as a failed Job, not a run that never finishes. It asks for no GPU and stays
off GPU nodes (`placement.away_from_gpu_nodes`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from dsa_operator import labels
from dsa_operator.evaluation_api import DSAEvaluationSpec
from dsa_operator.placement import away_from_gpu_nodes
from dsa_operator.render import content_hash
from dsa_operator.suites import Settings

Obj = dict[str, Any]
EVALUATION = "serving.dsa.dev/evaluation"  # label: the DSAEvaluation a Job runs
CANARY_OF = "serving.dsa.dev/canary-of"  # label: the DSAModel whose rollout a canary Job gates
CANARY_GROUP = "serving.dsa.dev/canary-group"  # label: <role>-<index> the canary asks
CANARY_REVISION = "serving.dsa.dev/canary-revision"  # annotation: that group's StatefulSet revision
RESULT = "serving.dsa.dev/result"  # annotation on a finished Job: what its pod reported
JOB_NAME = "batch.kubernetes.io/job-name"  # set by the Job controller on its pods (1.27+)
HARNESS_UID = 65532
DATA_MOUNT = "/data"
EPS = 1e-9


@dataclass(frozen=True)
class Target:
    """Where the harness sends its requests."""

    host: str
    port: int
    what: str  # "endpoint" or "group serving-0 (canary)"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def harness_args(suite: str, settings: Settings, target: Target, dataset_path: str | None) -> list[str]:
    """`dsa-runtime evaluate` options: every setting explicit, so the run does not depend on the
    image's defaults."""
    args = ["evaluate", "--suite", suite, "--host", target.host, "--port", str(target.port)]
    for flag, value in (
        ("--num-shots", settings.num_shots),
        ("--num-questions", settings.questions),
        ("--parallel", settings.parallel),
        ("--max-tokens", settings.max_tokens),
        ("--repeats", settings.repeats),
        ("--temperature", settings.temperature),
        ("--top-p", settings.top_p),
    ):
        if value is not None:
            args += [flag, str(value)]
    if settings.thinking is not None:
        args.append("--thinking" if settings.thinking else "--no-thinking")
    if dataset_path:
        args += ["--data-path", f"{DATA_MOUNT}/{dataset_path}"]
    return [*args, "--out-dir", "/tmp/eval"]


def render_job(
    *,
    name: str,
    namespace: str,
    owner: Obj,
    job_labels: dict[str, str],
    annotations: dict[str, str],
    spec: DSAEvaluationSpec,
    settings: Settings,
    target: Target,
    image: str,
    pull_policy: str,
    timeout_seconds: int,
) -> Obj:
    """The Job. `owner` (the DSAEvaluation, or the DSAModel for a canary) takes it along when deleted."""
    volumes: list[Obj] = [{"name": "tmp", "emptyDir": {}}]
    mounts: list[Obj] = [{"name": "tmp", "mountPath": "/tmp"}]
    if spec.dataset is not None:
        volumes.append({"name": "dataset", **spec.dataset.volume})
        mounts.append({"name": "dataset", "mountPath": DATA_MOUNT, "readOnly": True})
    env: list[Obj] = [{"name": "HF_HOME", "value": "/tmp/huggingface"}]
    if spec.hf_token_secret is not None:
        ref = {"name": spec.hf_token_secret.name, "key": spec.hf_token_secret.key}
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    pod_labels = {**job_labels, labels.COMPONENT: job_labels.get(labels.COMPONENT, "evaluation")}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**job_labels, labels.MANAGED_BY: "dsa-operator"},
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": owner["apiVersion"],
                    "kind": owner["kind"],
                    "name": owner["metadata"]["name"],
                    "uid": owner["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": timeout_seconds,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    "enableServiceLinks": False,
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": HARNESS_UID,
                        "runAsGroup": HARNESS_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "harness",
                            "image": image,
                            "imagePullPolicy": pull_policy,
                            "args": harness_args(
                                spec.suite, settings, target, spec.dataset.path if spec.dataset else None
                            ),
                            "env": env,
                            "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
                            "volumeMounts": mounts,
                            "terminationMessagePolicy": "File",
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                    "volumes": volumes,
                    # It needs no GPU: off GPU nodes, and no GPU toleration.
                    "affinity": away_from_gpu_nodes(),
                },
            },
        },
    }


def job_name(base: str, *key: Any) -> str:
    """A Job name unique to `key`, short enough for the pod-name label its pods get (63)."""
    return f"{base[:45].rstrip('-')}-{content_hash(list(key))}"


# ---- what a Job shows -------------------------------------------------------------------------


def pods_by_job(pods: list[Obj]) -> dict[str, Obj]:
    """Each Job's pod (backoffLimit 0: one; the newest if the node lost one)."""
    out: dict[str, Obj] = {}
    for p in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        job = (p["metadata"].get("labels") or {}).get(JOB_NAME)
        if job:
            out[job] = p
    return out


@dataclass(frozen=True)
class Outcome:
    state: Literal["pending", "running", "succeeded", "failed"]
    result: Obj | None = None  # the wrapper's result JSON (state succeeded)
    reason: str = ""  # failed: why, in one line
    pod: str | None = None
    start_time: str | None = None
    completion_time: str | None = None


def _condition(job: Obj, ctype: str) -> Obj | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return c
    return None


def _terminated(pod: Obj | None) -> Obj | None:
    for cs in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == "harness":
            return (cs.get("state") or {}).get("terminated")
    return None


def _report(text: str | None) -> Obj | None:
    """The wrapper's JSON from a termination message; None when it is not one."""
    try:
        doc = json.loads(text or "")
    except ValueError:
        return None
    return doc if isinstance(doc, dict) and doc.get("evaluation") in ("result", "error") else None


def _usable(result: Obj) -> bool:
    score = result.get("score")
    return isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)


def outcome(job: Obj, pod: Obj | None) -> Outcome:
    """The Job's state and, once it ended, its result or the reason it failed."""
    status = job.get("status") or {}
    pod_name = (pod or {}).get("metadata", {}).get("name")
    times = {"start_time": status.get("startTime"), "completion_time": status.get("completionTime")}
    stored = _report(((job.get("metadata") or {}).get("annotations") or {}).get(RESULT))
    term = _terminated(pod)
    report = stored or _report((term or {}).get("message"))
    failed = _condition(job, "Failed")
    if _condition(job, "Complete") or (report and report["evaluation"] == "result" and not failed):
        if report and report["evaluation"] == "result" and _usable(report):
            return Outcome("succeeded", report, pod=pod_name, **times)
        return Outcome("failed", None, "the harness exited 0 without a readable result", pod_name, **times)
    if failed or (report and report["evaluation"] == "error"):
        if report and report["evaluation"] == "error":
            reason, message = str(report.get("reason") or "HarnessFailed"), str(report.get("message", ""))
            why = f"{reason}: {message.strip()[-600:]}" if message.strip() else reason
        elif failed and failed.get("reason") == "DeadlineExceeded":
            why = f"DeadlineExceeded: the run outlived activeDeadlineSeconds ({failed.get('message', '')})"
        elif term is not None:
            why = f"HarnessFailed: exit code {term.get('exitCode')} {term.get('reason', '')}".rstrip()
        else:
            why = f"{(failed or {}).get('reason', 'Failed')}: {(failed or {}).get('message', '')}".rstrip(
                ": "
            )
        stamp = (failed or {}).get("lastTransitionTime")
        return Outcome("failed", None, why, pod_name, times["start_time"], times["completion_time"] or stamp)
    if status.get("active") or pod_name:
        return Outcome("running", pod=pod_name, **times)
    return Outcome("pending", **times)


def verdict(score: float, reference: float, tolerance: float) -> Literal["Passed", "Below"]:
    """Passed when the score is at most `tolerance` below the reference (above is fine)."""
    return "Passed" if score >= reference - tolerance - EPS else "Below"


def progress(log_tail: str) -> str | None:
    """The last `{"evaluation": "progress", "done": D, "total": T}` line of the wrapper's log, as D/T."""
    for line in reversed(log_tail.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        doc = _json(line)
        if doc.get("evaluation") == "progress" and isinstance(doc.get("done"), int):
            return f"{doc['done']}/{doc.get('total', '?')}"
    return None


def _json(line: str) -> Obj:
    try:
        doc = json.loads(line)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
