"""The DSAModel's status, computed from the plan and what was observed. Pure.

Conditions keep their lastTransitionTime while their status holds, so an unchanged
cluster yields an identical status and the operator writes nothing.
"""

from __future__ import annotations

from typing import Any

from dsa_operator.errors import PlanError
from dsa_operator.observe import GroupView
from dsa_operator.plan import Plan

Obj = dict[str, Any]


def _condition(ctype: str, ok: bool, reason: str, message: str) -> Obj:
    return {"type": ctype, "status": "True" if ok else "False", "reason": reason, "message": message}


def _carry_times(new: list[Obj], old: list[Obj], now: str, generation: int | None) -> list[Obj]:
    before = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        prev = before.get(c["type"])
        same = prev is not None and prev.get("status") == c["status"]
        out.append(
            {
                **c,
                "lastTransitionTime": prev.get("lastTransitionTime", now) if same else now,
                "observedGeneration": generation,
            }
        )
    return out


def invalid_status(error: PlanError, old: Obj, generation: int | None, now: str) -> Obj:
    message = "; ".join(str(p) for p in error.problems)
    conditions = [
        _condition("Valid", False, "InvalidSpec", f"fix the spec: {message}"),
        _condition("Ready", False, "InvalidSpec", "the spec is invalid; nothing was changed"),
    ]
    return {
        "observedGeneration": generation,
        "phase": "Invalid",
        "readyGroups": (old or {}).get("readyGroups"),
        "endpoint": (old or {}).get("endpoint"),
        "conditions": _carry_times(conditions, (old or {}).get("conditions", []), now, generation),
        "roles": (old or {}).get("roles", []),
        "plan": (old or {}).get("plan", {}),
    }


def plan_summary(plan: Plan) -> Obj:
    return {
        "sglangVersion": plan.sglang_version,
        "dialect": plan.dialect,
        "engine": plan.engine,
        "accelerator": plan.hardware.accelerator,
        "arch": plan.hardware.arch,
        "roles": {
            r.role: {
                "nodesPerGroup": r.nodes_per_group,
                "gpusPerNode": r.gpus_per_node,
                "attention": r.attention,
                "contextParallel": r.context_parallel,
                "prefillKernel": r.kernels.prefill,
                "decodeKernel": r.kernels.decode,
                "kvCacheDtype": r.kernels.kv_cache_dtype,
                **({"ppLayerPartition": r.pp_layer_partition} if r.pp_layer_partition else {}),
            }
            for r in plan.roles
        },
    }


def compute_status(
    plan: Plan,
    groups: list[GroupView],
    router_ready: bool | None,
    rolling: list[str],
    backing_off: list[str],
    old: Obj,
    generation: int | None,
    now: str,
    gate: Obj | None = None,
    queue: str | None = None,
    admission: list[str] | None = None,
    not_queued: str | None = None,
) -> Obj:
    """`rolling`: groups being restarted for a spec change; `backing_off`: failed groups waiting;
    `gate`: the RolloutGate condition of a gated rollout (spec.rollout.gate); `queue`: the Kueue
    LocalQueue the groups are admitted through (spec.placement.queueName), `admission`: for each
    group Kueue holds back, its pods and Kueue's reason; `not_queued`: which pods of a queued model
    Kueue never gated (it is missing, or not watching the namespace), and what to check."""
    wanted = {(r.role, g.group) for r in plan.roles for g in r.groups}
    current = [g for g in groups if (g.role, g.index) in wanted]
    ready = [g for g in current if g.ready]
    failed = [g for g in current if g.evidence]
    held = [h for g in current for h in g.held]
    unsched = [u for g in current for u in g.unschedulable]
    roles = [
        {
            "role": r.role,
            "desiredGroups": r.replicas,
            "readyGroups": sum(1 for g in ready if g.role == r.role),
            "nodesPerGroup": r.nodes_per_group,
        }
        for r in plan.roles
    ]
    all_ready = len(ready) == len(wanted) and router_ready is not False
    progressing = bool(rolling) or (not all_ready and not failed)
    conditions = [
        _condition(
            "Valid", True, "PlanValid", f"planned for SGLang {plan.sglang_version} ({plan.dialect} flags)"
        ),
        _condition(
            "Ready",
            all_ready,
            "AllGroupsReady" if all_ready else "GroupsNotReady",
            f"{len(ready)}/{len(wanted)} groups ready"
            + ("" if router_ready is None else f", router {'ready' if router_ready else 'not ready'}"),
        ),
        _condition(
            "Progressing",
            progressing,
            "RollingGroups" if rolling else ("Creating" if progressing else "Stable"),
            f"restarting {', '.join(rolling)} for the new spec" if rolling else "",
        ),
        _condition(
            "Degraded",
            bool(failed or held),
            "GroupFailed" if failed else ("NodeLost" if held else "NoFailures"),
            "; ".join(
                [
                    f"{g.role}-{g.index}: {g.evidence[0].describe()}"
                    + (" (restart backing off)" if f"{g.role}-{g.index}" in backing_off else "")
                    for g in failed
                ]
                + held
            ),
        ),
        _condition(
            "Scheduled",
            not unsched,
            "Unschedulable" if unsched else "AllScheduled",
            (
                "pods cannot be scheduled (free GPUs or adjust nodeSelector/tolerations): "
                + "; ".join(unsched)
                if unsched
                else ""
            ),
        ),
    ]
    if queue:
        if not_queued:
            admitted = _condition("Admitted", False, "NotManagedByKueue", f"queue {queue}: {not_queued}")
        elif admission:
            admitted = _condition(
                "Admitted",
                False,
                "WaitingForAdmission",
                f"Kueue admits each group whole or not at all (queue {queue}); waiting: "
                + "; ".join(admission),
            )
        else:
            admitted = _condition(
                "Admitted", True, "Admitted", f"every running group admitted by Kueue through queue {queue}"
            )
        conditions.append(admitted)
    if gate is not None:
        conditions.append(gate)
    if all_ready:
        phase = "Ready"
    elif failed or held:
        phase = "Degraded"
    elif (unsched or admission) and not ready:
        phase = "Pending"
    else:
        phase = "Progressing"
    return {
        "observedGeneration": generation,
        "phase": phase,
        "readyGroups": f"{len(ready)}/{len(wanted)}",
        "endpoint": plan.endpoint.url,
        "conditions": _carry_times(conditions, (old or {}).get("conditions", []), now, generation),
        "roles": roles,
        "plan": plan_summary(plan),
    }
