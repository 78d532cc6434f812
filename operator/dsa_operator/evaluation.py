"""One DSAEvaluation: whether to start its Job, and its status. Pure.

A DSAEvaluation runs once per generation of its spec: its Job is named after the evaluation's
uid and generation, so a changed spec runs again and an unchanged one never does, whatever the
operator remembers. The Job is created only when the DSAModel is Ready at its current
generation. What the run was asked (target, settings, reference, tolerance) is written on the
Job when it is created, and what it reported once it ended, so the status is always computed
from the Job alone: a restarted operator, or a model deleted since, reports the same.
"""

from __future__ import annotations

import datetime
import json
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic.alias_generators import to_camel

from dsa_operator import GROUP, VERSION, labels
from dsa_operator.api import parse_spec
from dsa_operator.errors import PlanError, Problem
from dsa_operator.evaluation_api import DSAEvaluationSpec, parse_evaluation
from dsa_operator.evaluation_job import (
    EVALUATION,
    RESULT,
    Outcome,
    Target,
    job_name,
    outcome,
    render_job,
    verdict,
)
from dsa_operator.plan import Plan
from dsa_operator.suites import SUITES, Settings, published, settings_for

Obj = dict[str, Any]
KIND = "DSAEvaluation"
PLURAL = "dsaevaluations"
ASKED = "serving.dsa.dev/asked"  # annotation on the Job: what it was asked, as JSON
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class Reference:
    score: float
    tolerance: float
    source: str


def reference_for(spec: DSAEvaluationSpec, family: str) -> Reference:
    """The expected figure: the spec's, else the one published for the family (PlanError if none)."""
    suite = SUITES[spec.suite]
    tolerance = spec.expected.tolerance if spec.expected.tolerance is not None else suite.tolerance
    if spec.expected.score is not None:
        return Reference(spec.expected.score, tolerance, "spec.expected.score")
    pub = published(spec.suite, family)
    if pub is None:
        known = ", ".join(sorted(suite.published)) or "none"
        raise PlanError(
            [
                Problem(
                    "spec.expected.score",
                    f"the usage page publishes no {spec.suite} figure for {family} "
                    f"(it does for {known}): set one",
                    "published_reference",
                )
            ]
        )
    return Reference(pub.score, tolerance, pub.source)


def asked(spec: DSAEvaluationSpec, family: str, target: Target) -> Obj:
    """What a run is asked, as recorded on its Job."""
    settings = settings_for(spec.suite, family, Settings(**spec.settings.model_dump()))
    ref = reference_for(spec, family)
    return {
        "suite": spec.suite,
        "family": family,
        "endpoint": target.url,
        "target": target.what,
        "settings": {to_camel(k): v for k, v in asdict(settings).items() if v is not None},
        "reference": ref.score,
        "tolerance": ref.tolerance,
        "referenceSource": ref.source,
    }


def build_job(
    *, name: str, ev_spec: DSAEvaluationSpec, owner: Obj, namespace: str, job_labels: dict[str, str],
    extra_annotations: dict[str, str], family: str, target: Target, image: str, pull_policy: str,
) -> Obj:  # fmt: skip
    """The Job of a run, with what it is asked on it."""
    record = asked(ev_spec, family, target)
    settings = settings_for(ev_spec.suite, family, Settings(**ev_spec.settings.model_dump()))
    return render_job(
        name=name,
        namespace=namespace,
        owner=owner,
        job_labels=job_labels,
        annotations={ASKED: json.dumps(record, sort_keys=True), **extra_annotations},
        spec=ev_spec,
        settings=settings,
        target=target,
        image=ev_spec.image or image,
        pull_policy=pull_policy,
        timeout_seconds=ev_spec.timeout_seconds or SUITES[ev_spec.suite].timeout_seconds,
    )


def model_ready(model: Obj) -> tuple[bool, str]:
    """Ready at its current generation (a spec change not yet rolled out is not Ready)."""
    meta, status = model.get("metadata") or {}, model.get("status") or {}
    name = meta.get("name")
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if status.get("observedGeneration") != meta.get("generation"):
        return False, f"DSAModel {name}: its latest spec is not observed yet"
    if not ready or ready.get("status") != "True":
        phase = status.get("phase") or "Pending"
        return False, f"DSAModel {name} is {phase} ({status.get('readyGroups') or '0/?'} groups ready)"
    return True, f"DSAModel {name} is Ready"


@dataclass
class Decision:
    create: Obj | None = None
    delete: list[str] = field(default_factory=list)  # Jobs of superseded generations
    status: Obj = field(default_factory=dict)
    record: tuple[Obj, str] | None = None  # (job, result JSON) to copy onto the Job
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    poll: float | None = None  # look again after this long (progress of a running Job)


def evaluation_job_name(ev: Obj) -> str:
    meta = ev["metadata"]
    return job_name(meta["name"], meta.get("uid"), meta.get("generation"))


def decide(
    ev: Obj,
    model: Obj | None,
    plan: Plan | PlanError | None,
    jobs: list[Obj],
    pods: dict[str, Obj],
    log_progress: str | None,
    now: str,
) -> Decision:
    """`jobs`: the evaluation's Jobs; `pods`: Job name -> its pod; `log_progress`: "D/T" of the
    current Job's pod log, when it runs."""
    meta = ev["metadata"]
    gen = meta.get("generation")
    old = ev.get("status") or {}
    d = Decision()
    name = evaluation_job_name(ev)
    d.delete = sorted(j["metadata"]["name"] for j in jobs if j["metadata"]["name"] != name)
    try:
        spec = parse_evaluation(ev.get("spec"))
    except PlanError as e:
        d.status = _status(old, gen, now, phase="Invalid", valid=(False, "InvalidSpec", _problems(e)))
        return d
    current = next((j for j in jobs if j["metadata"]["name"] == name), None)
    if current is not None:
        return _from_job(
            d, current, pods.get(name), log_progress, old, gen, now, _was_ready(spec.model, name)
        )

    if model is None:
        why = ("ModelNotFound", f"no DSAModel {spec.model} in namespace {meta.get('namespace')}")
        d.status = _status(old, gen, now, phase="WaitingForModel", model=(False, *why))
        return d
    if isinstance(plan, PlanError) or plan is None:
        msg = f"DSAModel {spec.model} is invalid: {_problems(plan) if plan else 'no plan'}"
        d.status = _status(old, gen, now, phase="WaitingForModel", model=(False, "ModelInvalid", msg))
        return d
    family = plan.family
    try:
        reference_for(spec, family)
    except PlanError as e:
        d.status = _status(old, gen, now, phase="Invalid", valid=(False, "NoReference", _problems(e)))
        return d
    ready, why = model_ready(model)
    if not ready:
        d.status = _status(old, gen, now, phase="WaitingForModel", model=(False, "ModelNotReady", why))
        return d
    runtime = parse_spec(model["spec"]).runtime  # planned already: it parses, defaults filled in
    if spec.endpoint:
        host, _, port = spec.endpoint.removeprefix("http://").rstrip("/").rpartition(":")
        target = Target(host, int(port), "spec.endpoint")
    else:
        target = Target(f"{plan.endpoint.service}.{plan.namespace}.svc", plan.endpoint.port, "endpoint")
    d.create = build_job(
        name=name,
        ev_spec=spec,
        owner={"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": meta},
        namespace=meta["namespace"],
        job_labels={EVALUATION: meta["name"], labels.COMPONENT: "evaluation"},
        extra_annotations={},
        family=family,
        target=target,
        image=runtime.image,
        pull_policy=runtime.image_pull_policy,
    )
    d.events.append(("Normal", "Started", f"running {spec.suite} against {target.url} (Job {name})"))
    d.status = _status(
        old,
        gen,
        now,
        phase="Running",
        model=_was_ready(spec.model, name),
        job=name,
        asked=asked(spec, family, target),
    )
    d.poll = 10.0
    return d


def _was_ready(model: str, job: str) -> tuple[bool, str, str]:
    """ModelReady once a Job exists: it was created against a Ready model (the Job alone says so)."""
    return True, "ModelReady", f"DSAModel {model} was Ready when Job {job} was created"


def _from_job(
    d: Decision, job: Obj, pod: Obj | None, log_progress: str | None, old: Obj, gen: Any, now: str,
    model: tuple[bool, str, str],
) -> Decision:  # fmt: skip
    record = _asked_of(job)
    o = outcome(job, pod)
    name = job["metadata"]["name"]
    base = {"job": name, "asked": record, "outcome": o, "model": model}
    if o.state in ("pending", "running"):
        d.status = _status(old, gen, now, phase="Running", progress=log_progress, **base)
        d.poll = 10.0
        return d
    stored = ((job.get("metadata") or {}).get("annotations") or {}).get(RESULT)
    if o.state == "succeeded":
        if stored is None and o.result is not None:
            d.record = (job, json.dumps(o.result, sort_keys=True))
        d.status = _status(old, gen, now, phase="Succeeded", **base)
        if d.record is not None:  # once: the result is recorded on the Job with it
            v = d.status.get("verdict")
            kind = "Normal" if v == "Passed" else "Warning"
            d.events.append((kind, v or "Finished", _summary(d.status)))
        return d
    if stored is None and pod is not None:  # the reason outlives the pod
        reason, _, message = o.reason.partition(": ")
        d.record = (job, json.dumps({"evaluation": "error", "reason": reason, "message": message}))
    d.status = _status(old, gen, now, phase="Failed", **base)
    if d.record is not None:
        d.events.append(("Warning", "Failed", f"Job {name}: {o.reason}"))
    return d


def _asked_of(job: Obj) -> Obj:
    raw = ((job.get("metadata") or {}).get("annotations") or {}).get(ASKED)
    try:
        doc = json.loads(raw or "{}")
    except ValueError:
        doc = {}
    return doc if isinstance(doc, dict) else {}


def _problems(e: PlanError) -> str:
    return "; ".join(str(p) for p in e.problems)


def _summary(status: Obj) -> str:
    score, ref, tol = status.get("score"), status.get("reference"), status.get("tolerance")
    return (
        f"score {score:.3f} vs reference {ref:.3f} (tolerance {tol:.3f}): {status.get('verdict')}"
        if isinstance(score, (int, float)) and isinstance(ref, (int, float)) and isinstance(tol, (int, float))
        else f"score {score}"
    )


def _cond(ctype: str, state: bool | None, reason: str, message: str) -> Obj:
    s = "Unknown" if state is None else ("True" if state else "False")
    return {"type": ctype, "status": s, "reason": reason, "message": message}


def _carry(new: list[Obj], old: list[Obj], now: str, gen: Any) -> list[Obj]:
    before = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        prev = before.get(c["type"])
        keep = prev is not None and prev.get("status") == c["status"]
        out.append({**c, "lastTransitionTime": prev.get("lastTransitionTime", now) if keep else now,
                    "observedGeneration": gen})  # fmt: skip
    return out


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    try:
        return (datetime.datetime.strptime(end, fmt) - datetime.datetime.strptime(start, fmt)).total_seconds()
    except ValueError:
        return None


def _status(
    old: Obj,
    gen: Any,
    now: str,
    *,
    phase: str,
    valid: tuple[bool, str, str] = (True, "SpecValid", ""),
    model: tuple[bool, str, str] | None = None,
    job: str | None = None,
    asked: Obj | None = None,
    outcome: Outcome | None = None,
    progress: str | None = None,
) -> Obj:
    asked = asked or {}
    status: Obj = {"observedGeneration": gen, "phase": phase}
    conds = [_cond("Valid", *valid)]
    if model is not None:
        conds.append(_cond("ModelReady", *model))
    if asked:
        status.update(
            endpoint=asked.get("endpoint"),
            reference=asked.get("reference"),
            tolerance=asked.get("tolerance"),
            referenceSource=asked.get("referenceSource"),
            settings=asked.get("settings") or {},
        )
    if job:
        status["job"] = job
    if outcome is not None:
        status.update(pod=outcome.pod, startTime=outcome.start_time, completionTime=outcome.completion_time)
        status["durationSeconds"] = _seconds(outcome.start_time, outcome.completion_time)
    if phase == "Running":
        status["progress"] = progress
        conds.append(
            _cond("Complete", False, "Running", f"Job {job} is running against {asked.get('endpoint')}")
        )
        conds.append(_cond("Passed", None, "Running", "no result yet"))
    elif phase == "Succeeded" and outcome is not None and outcome.result is not None:
        r = outcome.result
        scores = [float(s) for s in r.get("scores") or [] if isinstance(s, (int, float))]
        status.update(
            score=float(r["score"]),
            scores=scores,
            spread=statistics.pstdev(scores) if len(scores) > 1 else None,
            invalid=r.get("invalid"),
            questions=r.get("questions"),
            repeats=r.get("repeats"),
            outputThroughput=r.get("outputThroughput"),
            harness=r.get("harness"),
        )
        if status["durationSeconds"] is None:
            status["durationSeconds"] = r.get("latencySeconds")
        ref, tol = asked.get("reference"), asked.get("tolerance")
        conds.append(_cond("Complete", True, "Succeeded", f"Job {job} finished"))
        if isinstance(ref, (int, float)) and isinstance(tol, (int, float)):
            status["verdict"] = verdict(status["score"], ref, tol)
            conds.append(_cond("Passed", status["verdict"] == "Passed", status["verdict"], _summary(status)))
    elif phase == "Failed" and outcome is not None:
        conds.append(_cond("Complete", True, "Failed", outcome.reason))
        conds.append(_cond("Passed", False, "RunFailed", outcome.reason))
    elif phase == "WaitingForModel":
        conds.append(_cond("Complete", False, "WaitingForModel", (model or (0, "", ""))[2]))
    elif phase == "Invalid":
        conds.append(_cond("Complete", False, "Invalid", valid[2]))
    status["conditions"] = _carry(conds, old.get("conditions") or [], now, gen)
    return {k: v for k, v in status.items() if v is not None}
