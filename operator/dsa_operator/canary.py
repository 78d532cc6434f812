"""A rollout's canary gate (spec.rollout.gate): the evaluation run against the rollout's first group
alone, and what it means for the rest of the rollout. Pure.

The rollout planner restarts one group first (``rollout.canary``). Once it is ready on the new
revision, a Job runs the named DSAEvaluation's suite, settings, reference and tolerance against
that group's rank 0 (its headless-Service DNS name, not the shared endpoint, which still mixes
old and new groups). The Job is named after the group, its StatefulSet revision and the
evaluation's generation, and is owned by the DSAModel: the verdict is read from the Job each
reconcile, so a restarted operator holds or continues exactly as before. Passed: the rollout goes
on. Below, or the run failed: it is held, the RolloutGate condition says why, and it stays held
until the spec changes again (a new revision, a new canary) or the Job is deleted (run it again).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dsa_operator import GROUP, KIND, VERSION, labels
from dsa_operator.api import parse_spec
from dsa_operator.errors import PlanError
from dsa_operator.evaluation import asked, build_job, reference_for
from dsa_operator.evaluation_api import parse_evaluation
from dsa_operator.evaluation_job import (
    CANARY_GROUP,
    CANARY_OF,
    CANARY_REVISION,
    RESULT,
    Target,
    job_name,
    outcome,
    verdict,
)
from dsa_operator.plan import Plan
from dsa_operator.rollout import Gate, GroupState

Obj = dict[str, Any]


@dataclass
class GateDecision:
    gate: Gate
    create: Obj | None = None
    delete: list[str] = field(default_factory=list)
    record: tuple[Obj, str] | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)


def target(plan: Plan, role: str, index: int) -> Target:
    """The group's rank 0, by the stable DNS name its headless Service gives it."""
    r = plan.role(role)
    g = r.groups[index]
    host = f"{g.stateful_set}-0.{g.headless_service}.{plan.namespace}.svc"
    return Target(host, r.port, f"group {role}-{index} (canary)")


def decide_gate(
    model: Obj,
    plan: Plan,
    group: GroupState | None,
    revision: str | None,
    evaluation_name: str,
    ev: Obj | None,
    jobs: list[Obj],
    pods: dict[str, Obj],
) -> GateDecision:
    """The gate for this look. `group`: the canary (None: no rollout under way); `jobs`: the
    model's canary Jobs; `pods`: Job name -> its pod."""
    if group is None:
        return GateDecision(Gate(passed=True, why="no rollout under way"))
    name = f"{group.role}-{group.index}"
    if not (group.up and group.ready):
        keep = {j["metadata"]["name"] for j in jobs if _for(j, name, revision)}
        return GateDecision(
            Gate(False, f"rollout waits for its canary {name} to become ready"),
            delete=sorted(j["metadata"]["name"] for j in jobs if j["metadata"]["name"] not in keep),
        )
    if ev is None:
        return GateDecision(
            Gate(False, f"rollout held: spec.rollout.gate.evaluation: no DSAEvaluation {evaluation_name} "
                        f"in namespace {plan.namespace}")
        )  # fmt: skip
    try:
        spec = parse_evaluation(ev.get("spec"))
        reference_for(spec, plan.family)
    except PlanError as e:
        why = "; ".join(str(p) for p in e.problems)
        return GateDecision(Gate(False, f"rollout held: DSAEvaluation {evaluation_name} is invalid: {why}"))
    emeta = ev["metadata"]
    jname = job_name(f"{plan.name}-canary", name, revision, emeta.get("uid"), emeta.get("generation"))
    d = GateDecision(Gate(False))
    waits = f"rollout waits for the canary evaluation ({spec.suite}) of {name} (Job {jname})"
    d.delete = sorted(j["metadata"]["name"] for j in jobs if j["metadata"]["name"] != jname)
    job = next((j for j in jobs if j["metadata"]["name"] == jname), None)
    if job is None:
        tgt = target(plan, group.role, group.index)
        runtime = parse_spec(model["spec"]).runtime  # planned already: it parses
        d.create = build_job(
            name=jname,
            ev_spec=spec,
            owner={"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": model["metadata"]},
            namespace=plan.namespace,
            job_labels={CANARY_OF: plan.name, CANARY_GROUP: name, labels.COMPONENT: "canary"},
            extra_annotations={CANARY_REVISION: revision or ""},
            family=plan.family,
            target=tgt,
            image=runtime.image,
            pull_policy=runtime.image_pull_policy,
        )
        d.events.append(
            ("Normal", "CanaryStarted", f"running {spec.suite} against {tgt.url} alone (Job {jname})")
        )
        d.gate = Gate(False, waits)
        return d
    o = outcome(job, pods.get(jname))
    stored = ((job["metadata"].get("annotations")) or {}).get(RESULT)
    rec = asked(spec, plan.family, target(plan, group.role, group.index))
    if o.state in ("pending", "running"):
        d.gate = Gate(False, waits)
    elif o.state == "succeeded" and o.result is not None:
        score, ref, tol = float(o.result["score"]), rec["reference"], rec["tolerance"]
        passed = verdict(score, ref, tol) == "Passed"
        summary = (
            f"canary {name} scored {score:.3f} on {spec.suite} against {ref:.3f} - {tol:.3f} (Job {jname})"
        )
        d.gate = Gate(passed, ("canary passed: " if passed else "rollout held: ") + summary)
        if stored is None:
            d.record = (job, json.dumps(o.result, sort_keys=True))
            d.events.append(
                ("Normal", "CanaryPassed", summary) if passed else ("Warning", "RolloutHeld", summary)
            )
    else:
        d.gate = Gate(
            False, f"rollout held: the canary evaluation of {name} failed: {o.reason} (Job {jname})"
        )
        if stored is None:  # without a pod too (deleted at the deadline): the hold is announced once
            reason, _, message = o.reason.partition(": ")
            d.record = (job, json.dumps({"evaluation": "error", "reason": reason, "message": message}))
            d.events.append(("Warning", "RolloutHeld", d.gate.why))
    return d


def _for(job: Obj, group: str, revision: str | None) -> bool:
    meta = job["metadata"]
    return (meta.get("labels") or {}).get(CANARY_GROUP) == group and (
        (meta.get("annotations") or {}).get(CANARY_REVISION) == (revision or "")
    )


def condition(gate: Gate) -> Obj:
    """The DSAModel's RolloutGate condition."""
    if gate.passed:
        reason = "CanaryPassed" if gate.why.startswith("canary passed") else "NoRollout"
    elif gate.why.startswith("rollout held"):
        reason = "Held"
    else:
        reason = "Waiting"
    return {"type": "RolloutGate", "status": "True" if gate.passed else "False", "reason": reason,
            "message": gate.why}  # fmt: skip
