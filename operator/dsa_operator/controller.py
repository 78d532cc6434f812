"""One reconcile of one DSAModel: plan, apply what changed, act on groups, report status.

The rules are elsewhere (planner, rollout); this module only applies, observes and
reports. Unchanged objects are not sent (each child carries the hash of its rendered
content), and an unchanged status is not written, so a quiet cluster sees no writes.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from dsa_operator import labels, rollout
from dsa_operator.api import parse_spec
from dsa_operator.errors import PlanError
from dsa_operator.kube import CHILD_KINDS, Kube
from dsa_operator.observe import Evidence, GroupView, split_by_group, torn, view_group
from dsa_operator.planner import plan as make_plan
from dsa_operator.render import APPLIED_HASH, render
from dsa_operator.status import compute_status, invalid_status

log = logging.getLogger(__name__)
Obj = dict[str, Any]
STEADY_AFTER = 600.0  # a group ready this long has its failure count (and backoff) reset


@dataclass
class GroupMemory:
    """What the operator remembers of a group between reconciles (lost on restart: then the
    pods' restart counts and phases still reveal a failure)."""

    uids: frozenset[str] = frozenset()  # the pods of its last whole incarnation
    restarting_from: frozenset[str] | None = None  # pods the operator deleted, not yet replaced
    failures: int = 0
    last_restart: float | None = None
    ready_since: float | None = None


@dataclass
class ModelMemory:
    groups: dict[tuple[str, int], GroupMemory] = field(default_factory=dict)

    def of(self, role: str, index: int) -> GroupMemory:
        return self.groups.setdefault((role, index), GroupMemory())


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _selector(d: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in d.items())


class Reconciler:
    def __init__(self, kube: Kube):
        self.kube = kube
        self.memory: dict[tuple[str, str], ModelMemory] = {}

    # ---- the whole step -------------------------------------------------------------
    def reconcile(self, model: Obj) -> float | None:
        """Returns when to look again without an event (seconds), or None."""
        meta = model["metadata"]
        key = (meta["namespace"], meta["name"])
        mem = self.memory.setdefault(key, ModelMemory())
        old_status = model.get("status") or {}
        generation = meta.get("generation")
        try:
            plan = make_plan(model)
        except PlanError as e:
            status = invalid_status(e, old_status, generation, _now_iso())
            self._write_status(model, old_status, status)
            return None
        spec = parse_spec(model["spec"])
        desired = render(plan, spec, model)
        live = self._children(meta)

        # Objects outside groups (router, endpoint) and the groups that exist already.
        existing_sts = {n for (k, n) in live if k == "StatefulSet"}
        for obj in desired:
            grp = obj["metadata"].get("labels", {}).get(labels.GROUP)
            sts_name = f"{plan.name}-{obj['metadata']['labels'].get(labels.ROLE)}-{grp}" if grp else None
            if sts_name is None or sts_name in existing_sts:
                self._apply_if_changed(obj, live)

        pods = self.kube.list("v1", "Pod", meta["namespace"], _selector({labels.MODEL: plan.name}))
        views = self._views(plan, live, pods)
        now = time.monotonic()
        states = [self._state(v, mem, now) for v in views]
        wanted = rollout.Desired(
            replicas={r.role: r.replicas for r in plan.roles},
            max_unavailable_groups=spec.rollout.max_unavailable_groups,
        )
        actions = rollout.enforce_bounds(states, wanted, rollout.next_step(states, wanted, now))
        log.debug("%s/%s groups %s -> actions %s", *key, states, actions)
        requeue = self._execute(model, plan.name, actions, views, desired, live, mem, now)
        self._collect_garbage(plan.name, meta["namespace"], desired, live, pods)

        rolling = sorted(
            {
                f"{a.role}-{a.index}"
                for a in actions
                if isinstance(a, rollout.RestartGroup) and a.reason == "rollout"
            }
            | {f"{s.role}-{s.index}" for s in states if s.restarting and s.outdated}
        )
        waiting = [f"{s.role}-{s.index}" for s in states if s.failed] if requeue is not None else []
        router = live.get(("Deployment", plan.router.deployment)) if plan.router else None
        router_ready = None if plan.router is None else bool(router) and _ready_replicas(router) >= 1
        status = compute_status(
            plan,
            _as_reported(views, states, actions),
            router_ready,
            rolling,
            waiting,
            old_status,
            generation,
            _now_iso(),
        )
        self._write_status(model, old_status, status)
        return requeue

    def _views(self, plan, live: dict, pods: list[Obj]) -> list[GroupView]:
        """Every group the plan wants or a StatefulSet still holds, as its pods show it."""
        by_group = split_by_group(pods)
        known = {(r.role, g.group) for r in plan.roles for g in r.groups}
        for (kind, _), obj in live.items():
            if kind == "StatefulSet":
                lbl = obj["metadata"]["labels"]
                known.add((lbl[labels.ROLE], int(lbl[labels.GROUP])))
        nodes = {r.role: r.nodes_per_group for r in plan.roles}
        views = []
        for role, index in sorted(known):
            sts = live.get(("StatefulSet", f"{plan.name}-{role}-{index}"))
            want = (sts or {}).get("spec", {}).get("replicas", nodes.get(role, 0))
            views.append(view_group(role, index, sts, by_group.get((role, index), []), want))
        return views

    def _execute(
        self,
        model: Obj,
        name: str,
        actions: list,
        views: list[GroupView],
        desired: list[Obj],
        live: dict,
        mem: ModelMemory,
        now: float,
    ) -> float | None:
        """Carry out the rollout planner's actions; returns the soonest requeue a Wait asks for."""
        ns = model["metadata"]["namespace"]
        by_key = {(v.role, v.index): v for v in views}
        requeue: float | None = None
        for action in actions:
            if isinstance(action, rollout.CreateGroup):
                for obj in desired:
                    lbl = obj["metadata"]["labels"]
                    if lbl.get(labels.ROLE) == action.role and lbl.get(labels.GROUP) == str(action.index):
                        self._apply_if_changed(obj, live)
            elif isinstance(action, rollout.DeleteGroup):
                group = f"{action.role}-{action.index}"
                self.kube.event(model, "Normal", "GroupRemoved", f"removing group {group}: replicas lowered")
                self._delete_group(name, ns, action.role, action.index, live)
                mem.groups.pop((action.role, action.index), None)
            elif isinstance(action, rollout.RestartGroup):
                view = by_key[(action.role, action.index)]
                self._restart(model, view, mem.of(action.role, action.index), action.reason, now)
            elif isinstance(action, rollout.Wait) and action.requeue_after is not None:
                requeue = action.requeue_after if requeue is None else min(requeue, action.requeue_after)
        return requeue

    # ---- pieces -----------------------------------------------------------------------
    def _children(self, meta: Obj) -> dict[tuple[str, str], Obj]:
        sel = _selector({labels.MODEL: meta["name"], labels.MANAGED_BY: "dsa-operator"})
        out = {}
        for api_version, kind in CHILD_KINDS:
            for obj in self.kube.list(api_version, kind, meta["namespace"], sel):
                out[(kind, obj["metadata"]["name"])] = obj
        return out

    def _apply_if_changed(self, obj: Obj, live: dict[tuple[str, str], Obj]) -> None:
        current = live.get((obj["kind"], obj["metadata"]["name"]))
        want = obj["metadata"]["annotations"][APPLIED_HASH]
        if current and (current["metadata"].get("annotations") or {}).get(APPLIED_HASH) == want:
            return
        log.info("applying %s %s", obj["kind"], obj["metadata"]["name"])
        self.kube.apply(obj)
        live[(obj["kind"], obj["metadata"]["name"])] = obj

    def _state(self, v: GroupView, mem: ModelMemory, now: float) -> rollout.GroupState:
        m = mem.of(v.role, v.index)
        restarting = m.restarting_from is not None
        renewed = bool(v.uids) and v.uids.isdisjoint(m.restarting_from or frozenset())
        if restarting and renewed and (v.ready or v.evidence):
            # The new incarnation is up, or has failed in turn (then it is restarted after backoff).
            m.restarting_from, restarting = None, False
        vanished = not restarting and v.exists and torn(m.uids, v.uids)
        if v.ready and not restarting:
            m.uids = v.uids
            m.ready_since = m.ready_since or now
            if m.failures and now - m.ready_since > STEADY_AFTER:
                m.failures = 0
        else:
            m.ready_since = None
        return rollout.GroupState(
            role=v.role,
            index=v.index,
            exists=v.exists,
            outdated=v.outdated,
            ready=v.ready,
            failed=(bool(v.evidence) or vanished) and not restarting,
            restarting=restarting,
            failures=m.failures,
            last_restart=m.last_restart,
        )

    def _restart(self, model: Obj, v: GroupView, m: GroupMemory, reason: str, now: float) -> None:
        name = f"{v.role}-{v.index}"
        if reason == "failure":
            evidence = "; ".join(e.describe() for e in v.evidence) or "a pod of the group was replaced"
            self.kube.event(
                model,
                "Warning",
                "GroupFailed",
                f"restarting group {name} (all {v.want_pods} pods): {evidence}",
            )
            m.failures += 1
        else:
            self.kube.event(model, "Normal", "RollingGroup", f"restarting group {name} for the new spec")
        sel = {labels.MODEL: model["metadata"]["name"], labels.ROLE: v.role, labels.GROUP: str(v.index)}
        self.kube.delete_pods(model["metadata"]["namespace"], _selector(sel))
        m.restarting_from = v.uids
        m.last_restart = now
        m.uids = frozenset()

    def _delete_group(self, model: str, ns: str, role: str, index: int, live: dict) -> None:
        name = f"{model}-{role}-{index}"
        self.kube.delete("apps/v1", "StatefulSet", ns, name)
        self.kube.delete("v1", "Service", ns, name)
        for kind, n in list(live):
            obj = live[(kind, n)]
            lbl = obj["metadata"].get("labels", {})
            if kind == "ConfigMap" and lbl.get(labels.ROLE) == role and lbl.get(labels.GROUP) == str(index):
                self.kube.delete("v1", "ConfigMap", ns, n)

    def _collect_garbage(self, model: str, ns: str, desired: list[Obj], live: dict, pods: list[Obj]) -> None:
        """Delete what the spec no longer asks for: plan ConfigMaps no pod uses any more, and
        objects outside any group (a router that was turned off). A group's own objects go with
        its StatefulSet (DeleteGroup, highest index first), or once that is already gone."""
        wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
        in_use = {
            v["configMap"]["name"] for p in pods for v in p["spec"].get("volumes") or [] if v.get("configMap")
        }
        groups = {n for (k, n) in live if k == "StatefulSet"}
        for (kind, name), obj in list(live.items()):
            lbl = obj["metadata"].get("labels", {})
            if (kind, name) in wanted or kind == "StatefulSet":
                continue
            if kind == "ConfigMap" and lbl.get(labels.COMPONENT) == "plan":
                stale = name not in in_use
            elif labels.GROUP in lbl:
                stale = f"{model}-{lbl.get(labels.ROLE)}-{lbl[labels.GROUP]}" not in groups
            else:
                stale = True
            if stale:
                self.kube.delete(obj["apiVersion"], kind, ns, name)
                del live[(kind, name)]

    def _write_status(self, model: Obj, old: Obj, new: Obj) -> None:
        new = prune(new)
        if prune(old) == new:
            return
        self.kube.patch_status(model, new)


def _ready_replicas(deployment: Obj) -> int:
    return (deployment.get("status") or {}).get("readyReplicas") or 0


def _as_reported(views: list[GroupView], states: list[rollout.GroupState], actions: list) -> list[GroupView]:
    """What status reports: a group the operator is restarting is not ready, whatever its pods
    say (kwok, or a fast node, can bring replaced pods back before the next look), and a group
    whose pod was replaced behind the operator's back is failed."""
    restarted = {(a.role, a.index) for a in actions if isinstance(a, rollout.RestartGroup)}
    out = []
    for v, st in zip(views, states, strict=True):
        if st.failed and not v.evidence:
            v = replace(v, evidence=(Evidence(",".join(v.pods) or "?", "replaced by a new pod"),))
        if st.key in restarted or st.restarting:
            v = replace(v, ready=False)
        out.append(v)
    return out


def prune(value: Any) -> Any:
    """Drop nulls the way the API server does, so a stored status compares equal to ours."""
    if isinstance(value, dict):
        return {k: prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value
