"""One reconcile of one DSAModel: plan, apply what changed, act on groups, report status.

The rules are elsewhere (planner, rollout); this module only applies, observes and
reports. Unchanged objects are not sent (each child carries the hash of its rendered
content), and an unchanged status is not written, so a quiet cluster sees no writes.

It decides from what the API holds: the DSAModel itself, read afresh on every reconcile (never
the copy a watch delivered, which can be older than this operator's own last status write), its
children and pods, and each group's record on its StatefulSet (``group_record``). Children and
pods come from the operator's watch cache (one watch per kind, kopf indexes: no list calls) when
the model is Ready at its generation and the cache shows every write this model's reconciles
made (``expectations``); any change to a child is decided on fresh lists. Nothing else carries
over in memory, so a restarted operator, or a standby that takes over, does the same.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from dsa_operator import admission, canary, expectations, group_record, labels, rollout
from dsa_operator.api import parse_spec
from dsa_operator.errors import PlanError
from dsa_operator.evaluation import PLURAL as EVALUATION_PLURAL
from dsa_operator.evaluation_job import CANARY_OF, RESULT, pods_by_job
from dsa_operator.expectations import EXPECTATIONS_TTL, Expected, View
from dsa_operator.group_record import GroupRecord
from dsa_operator.kube import CHILD_KINDS, Kube
from dsa_operator.observe import Evidence, GroupView, lost_node, needs_node_check, split_by_group, view_group
from dsa_operator.planner import plan as make_plan
from dsa_operator.render import APPLIED_HASH, render
from dsa_operator.status import compute_status, invalid_status

log = logging.getLogger(__name__)
# Children whose content only this operator sets (nothing writes their status): a reconcile about
# to change something reads them from the cache when it shows this model's writes, and lists
# afresh only what others change too (pods, StatefulSets, Deployments).
STATIC_KINDS = frozenset({"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Service"})
ADMISSION_RECHECK = 30.0  # seconds between reads of Kueue's reason while a group waits for admission
Obj = dict[str, Any]


class Gone(Exception):
    """The DSAModel was deleted (or is being deleted) while this reconcile ran: write nothing more."""


class ReadAfresh(Exception):
    """A reconcile on the watch cache is about to change a child: it starts over on fresh lists."""


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _selector(d: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in d.items())


class Reconciler:
    """Reconciles DSAModels; between reconciles it holds only each model's writes its watch cache
    has yet to show (see the module doc). One instance serves every model, each reconcile in its
    own thread (never two of one model at once)."""

    def __init__(self, kube: Kube, clock: Callable[[], float] = time.time):
        self.kube = kube
        self.clock = clock  # wall clock: backoff deadlines are compared with times stored in the API
        self.pending: dict[tuple[str, str], Expected] = {}

    def reconcile(
        self, model: Obj, alive: Callable[[str], bool] = lambda uid: True, view: View | None = None
    ) -> float | None:
        """Returns when to look again without an event (seconds), or None.

        `model` names the DSAModel; its current state is read from the API. `alive(uid)` says
        whether the model of that uid is still wanted (its watch has not reported it deleted, or
        replaced by a new one of the same name): asked before every write. `view`: the model's
        children and pods in the watch cache, by kind; used when it shows this model's writes.
        """
        key = _key(model)
        now = time.monotonic()
        before = self.pending.pop(key, None)
        shown = view is not None and expectations.met(before, view, now)
        static = None  # the kinds only this operator changes, when the cache shows its writes
        if view is not None:
            only = {k: v for k, v in view.items() if k in STATIC_KINDS}
            static = only if shown or expectations.met(before, only, now) else None
        p = _Pass(
            self.kube, self.clock, alive, view if shown else None, static, Expected(now + EXPECTATIONS_TTL)
        )
        try:
            try:
                return p.run(*key)
            except ReadAfresh:  # nothing but the model's status was written on the cache's word
                p = _Pass(self.kube, self.clock, alive, None, static, p.wrote)
                return p.run(*key)
        except Gone:
            log.info("%s/%s is gone; nothing more is written for it", *key)
            return None
        except Exception as e:
            if getattr(e, "status", None) == 409:  # written since it was read: read afresh next
                p.wrote.stale = True
            raise
        finally:
            still = p.wrote if shown or before is None else before.merged(p.wrote)
            if view is not None and still and alive(p.uid):  # without a cache, nothing to expect
                self.pending[key] = still

    def forget(self, key: tuple[str, str]) -> None:
        """The model is gone: nothing to expect of its children."""
        self.pending.pop(key, None)


class _Pass:
    """One reconcile of one model."""

    def __init__(
        self,
        kube: Kube,
        clock: Callable[[], float],
        alive: Callable[[str], bool],
        view: View | None,
        static: View | None,
        wrote: Expected,
    ):
        self.kube, self.clock, self.wanted = kube, clock, alive
        self.view, self.static, self.wrote = view, static, wrote
        self.uid = ""
        self.replacing: set[str] = set()  # queued groups' StatefulSets Kueue lets us only replace

    def _alive(self) -> None:
        """Before a write to a child (or an Event of one): the model still wanted, and the view
        read afresh: the cache only ever decides a status, never a change to a child."""
        if not self.wanted(self.uid):
            raise Gone
        if self.view is not None:
            raise ReadAfresh

    def run(self, ns: str, name: str) -> float | None:
        model = self.kube.get_model(ns, name)
        if model is None or model["metadata"].get("deletionTimestamp"):
            raise Gone
        meta = model["metadata"]
        self.uid = meta.get("uid", "")
        old_status = model.get("status") or {}
        generation = meta.get("generation")
        if self.view is not None and not _settled(old_status, generation):
            raise ReadAfresh  # a model being created, rolled or repaired is read afresh throughout
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
            sts_name = _sts_name(plan.name, obj["metadata"]["labels"].get(labels.ROLE), grp) if grp else None
            if sts_name is None or sts_name in existing_sts:
                if obj["kind"] == "StatefulSet" and self._kueue_holds(obj, live):
                    self.replacing.add(obj["metadata"]["name"])
                    continue
                self._apply_if_changed(obj, live)

        if self.view is not None:
            pods = list(self.view.get("Pod", ()))
        else:
            pods = self.kube.list("v1", "Pod", ns, _selector({labels.MODEL: plan.name}))
        views = [
            replace(v, outdated=True) if _sts_name(plan.name, v.role, v.index) in self.replacing else v
            for v in self._views(plan, live, pods)
        ]
        queued_waits = self._admission(ns, pods)
        engine_pods = [p for p in pods if p["metadata"].get("labels", {}).get(labels.COMPONENT) == "engine"]
        outside = admission.unmanaged(engine_pods) if spec.placement.queue_name else []
        now = self.clock()
        stored = {
            (v.role, v.index): group_record.decode(
                live.get(("StatefulSet", _sts_name(plan.name, v.role, v.index)))
            )
            for v in views
        }
        seen = {(v.role, v.index): group_record.observe(stored[(v.role, v.index)], v, now) for v in views}
        states = [_state(v, seen[(v.role, v.index)]) for v in views]
        wanted = rollout.Desired(
            replicas={r.role: r.replicas for r in plan.roles},
            max_unavailable_groups=spec.rollout.max_unavailable_groups,
        )
        gate = None
        if spec.rollout.gate is not None:
            gate = self._gate(
                model, plan, spec.rollout.gate.evaluation, rollout.canary_of(states, wanted), views
            )
            wanted = replace(wanted, gate=gate)
        actions = rollout.enforce_bounds(states, wanted, rollout.next_step(states, wanted, now))
        log.debug("%s/%s groups %s -> actions %s", ns, name, states, actions)
        records = self._record(plan.name, actions, views, live, seen, stored, now)
        requeue = self._execute(model, plan.name, actions, views, desired, live, seen, pods)
        self._collect_garbage(plan.name, ns, desired, live, pods)

        rolling = sorted(
            {
                f"{a.role}-{a.index}"
                for a in actions
                if isinstance(a, rollout.RestartGroup) and a.reason == "rollout"
            }
            | {f"{s.role}-{s.index}" for s in states if s.restarting and s.outdated}
        )
        restarted = {(a.role, a.index) for a in actions if isinstance(a, rollout.RestartGroup)}
        waiting = {
            f"{s.role}-{s.index}": due
            for s in states
            if s.failed and s.key not in restarted and (due := rollout.restart_due(s)) is not None
        }
        router = live.get(("Deployment", plan.router.deployment)) if plan.router else None
        router_ready = None if plan.router is None else bool(router) and _ready_replicas(router) >= 1
        status = compute_status(
            plan,
            _as_reported(views, states, actions),
            router_ready,
            rolling,
            sorted(waiting),
            old_status,
            generation,
            _now_iso(),
            gate=None if gate is None else canary.condition(gate),
            queue=spec.placement.queue_name,
            admission=queued_waits,
            not_queued=admission.not_managed_reason(ns, outside) if outside else None,
        )
        status["groups"] = [
            {
                "name": f"{v.role}-{v.index}",
                **group_record.report(records[(v.role, v.index)], waiting.get(f"{v.role}-{v.index}")),
            }
            for v in views
            if (v.role, v.index) in records and v.exists
        ]
        self._write_status(model, old_status, status)
        if queued_waits:  # Kueue's reason can change without a pod changing: look again
            requeue = ADMISSION_RECHECK if requeue is None else min(requeue, ADMISSION_RECHECK)
        return requeue

    def _kueue_holds(self, obj: Obj, live: dict[tuple[str, str], Obj]) -> bool:
        """A changed StatefulSet of a queued group whose change Kueue refuses in place."""
        current = live.get((obj["kind"], obj["metadata"]["name"]))
        return (
            current is not None
            and _applied_hash(current) != _applied_hash(obj)
            and admission.needs_replacement(current, obj, labels.QUEUE_NAME)
        )

    def _admission(self, ns: str, pods: list[Obj]) -> list[str]:
        """For each group Kueue holds back: its pods, and Kueue's reason from its Workload. Read
        only while some pod is gated: an admitted model costs no reads."""
        out = []
        for workload, names in sorted(admission.waiting_workloads(pods).items()):
            wl = None
            if workload:  # 403 or 404 (no read right, no Kueue, Workload gone): the reason says so
                wl = self.kube.get_custom(admission.WORKLOADS, ns, workload, admission.KUEUE_API, (403, 404))
            out.append(f"{', '.join(sorted(names))}: {admission.waiting_reason(workload, wl)}")
        return out

    def _gate(
        self, model: Obj, plan, evaluation: str, group: rollout.GroupState | None, views: list[GroupView]
    ) -> rollout.Gate:
        """The canary gate: its Job started, its verdict read and recorded (canary.decide_gate)."""
        ns = plan.namespace
        uid = model["metadata"].get("uid")
        jobs = [
            j
            for j in self.kube.list("batch/v1", "Job", ns, f"{CANARY_OF}={plan.name}")
            if any(r.get("uid") == uid for r in j["metadata"].get("ownerReferences") or [])
        ]
        revision = None
        if group is not None:
            revision = next((v.revision for v in views if (v.role, v.index) == group.key), None)
        ev = (
            self.kube.get_custom(EVALUATION_PLURAL, ns, evaluation)
            if group is not None and group.ready
            else None
        )
        pods = {}
        if jobs:
            pods = pods_by_job(self.kube.list("v1", "Pod", ns, f"{CANARY_OF}={plan.name}"))
        d = canary.decide_gate(model, plan, group, revision, evaluation, ev, jobs, pods)
        for name in d.delete:
            self._alive()
            self.kube.delete("batch/v1", "Job", ns, name)
        if d.create is not None:
            self._alive()
            self.kube.apply(d.create)
        if d.record is not None:
            self._alive()
            self.kube.patch_annotation(d.record[0], RESULT, d.record[1])
        for kind, reason, message in d.events:
            self._alive()
            self.kube.event(model, kind, reason, message)
        return d.gate

    def _views(self, plan, live: dict, pods: list[Obj]) -> list[GroupView]:
        """Every group the plan wants or a StatefulSet still holds, as its pods show it."""
        by_group = split_by_group(pods)
        known = {(r.role, g.group) for r in plan.roles for g in r.groups}
        for (kind, _), obj in live.items():
            if kind == "StatefulSet":
                lbl = obj["metadata"]["labels"]
                known.add((lbl[labels.ROLE], int(lbl[labels.GROUP])))
        nodes = {r.role: r.nodes_per_group for r in plan.roles}
        lost = self._lost_nodes(pods)
        views = []
        for role, index in sorted(known):
            sts = live.get(("StatefulSet", _sts_name(plan.name, role, index)))
            want = (sts or {}).get("spec", {}).get("replicas", nodes.get(role, 0))
            views.append(view_group(role, index, sts, by_group.get((role, index), []), want, lost))
        return views

    def _lost_nodes(self, pods: list[Obj]) -> dict[str, str]:
        """The lost nodes among those of pods that are not ready or are being deleted."""
        names = sorted({p["spec"]["nodeName"] for p in pods if needs_node_check(p)})
        return {n: why for n in names if (why := lost_node(self.kube.get_node(n)))}

    def _record(
        self,
        name: str,
        actions: list,
        views: list[GroupView],
        live: dict,
        seen: dict[tuple[str, int], group_record.Observed],
        stored: dict[tuple[str, int], GroupRecord],
        now: float,
    ) -> dict[tuple[str, int], GroupRecord]:
        """Each group's record brought up to date with this look and the restarts about to be made,
        and written where it changed: before any pod is deleted (write-ahead), so a crash in
        between leaves a recorded restart whose pods still live, which the next reconcile deletes."""
        by_key = {(v.role, v.index): v for v in views}
        records = {k: o.record for k, o in seen.items()}
        for a in actions:
            if isinstance(a, rollout.RestartGroup):
                key = (a.role, a.index)
                records[key] = group_record.restarted(records[key], by_key[key], a.reason, now)
        removed = {(a.role, a.index) for a in actions if isinstance(a, rollout.DeleteGroup)}
        for key, record in records.items():
            sts = live.get(("StatefulSet", _sts_name(name, *key)))
            if sts is not None and key not in removed and record != stored[key]:
                self._alive()
                value = group_record.encode(record)
                self.kube.patch_annotation(sts, group_record.ANNOTATION, value)
                self.wrote.annotate("StatefulSet", sts["metadata"]["name"], group_record.ANNOTATION, value)
        return records

    def _execute(
        self,
        model: Obj,
        name: str,
        actions: list,
        views: list[GroupView],
        desired: list[Obj],
        live: dict,
        seen: dict[tuple[str, int], group_record.Observed],
        pods: list[Obj],
    ) -> float | None:
        """Carry out the rollout planner's actions, and finish restarts recorded but not carried out;
        returns the soonest requeue a Wait asks for."""
        ns = model["metadata"]["namespace"]
        by_key = {(v.role, v.index): v for v in views}
        restarts = {(a.role, a.index) for a in actions if isinstance(a, rollout.RestartGroup)}
        pod_names = {p["metadata"]["uid"]: p["metadata"]["name"] for p in pods}
        for key, obs in seen.items():
            if obs.unfinished and key not in restarts:  # a restart recorded, its delete not done
                log.info("finishing the recorded restart of %s-%s", *key)
                # Its Event may not have been posted either (the reconcile that recorded it was cut
                # short, e.g. by a 409 on another group's record): post it; once only (_announce).
                record = obs.record
                self._alive()
                self._announce(
                    model,
                    by_key[key],
                    group_record.restart_reason(record),
                    record.restarting_from or frozenset(),
                    _recorded_evidence(record),
                )
                for uid in sorted(obs.unfinished):
                    self._alive()
                    self.kube.delete_pod(ns, pod_names[uid], uid)
                    self.wrote.delete_pods([uid])

        requeue: float | None = None
        for action in actions:
            if isinstance(action, rollout.CreateGroup):
                for obj in desired:
                    lbl = obj["metadata"]["labels"]
                    if lbl.get(labels.ROLE) == action.role and lbl.get(labels.GROUP) == str(action.index):
                        self._apply_if_changed(obj, live)
            elif isinstance(action, rollout.DeleteGroup):
                group = f"{action.role}-{action.index}"
                self._alive()
                self.kube.event(model, "Normal", "GroupRemoved", f"removing group {group}: replicas lowered")
                self._delete_group(name, ns, action.role, action.index, live)
            elif isinstance(action, rollout.RestartGroup):
                self._restart(model, by_key[(action.role, action.index)], action.reason)
            elif isinstance(action, rollout.Wait) and action.requeue_after is not None:
                requeue = action.requeue_after if requeue is None else min(requeue, action.requeue_after)
        return requeue

    # ---- pieces -----------------------------------------------------------------------
    def _children(self, meta: Obj) -> dict[tuple[str, str], Obj]:
        sel = _selector({labels.MODEL: meta["name"], labels.MANAGED_BY: "dsa-operator"})
        out = {}
        for api_version, kind in CHILD_KINDS:
            if self.view is not None:
                objs = self.view.get(kind, ())
            elif self.static is not None and kind in STATIC_KINDS:
                objs = self.static.get(kind, ())
            else:
                objs = self.kube.list(api_version, kind, meta["namespace"], sel)
            for obj in objs:
                out[(kind, obj["metadata"]["name"])] = obj
        return out

    def _apply_if_changed(self, obj: Obj, live: dict[tuple[str, str], Obj]) -> None:
        current = live.get((obj["kind"], obj["metadata"]["name"]))
        if current and _applied_hash(current) == _applied_hash(obj):
            return
        self._alive()
        log.info("applying %s %s", obj["kind"], obj["metadata"]["name"])
        live[(obj["kind"], obj["metadata"]["name"])] = self.kube.apply(obj)
        self.wrote.apply(obj["kind"], obj["metadata"]["name"], APPLIED_HASH, _applied_hash(obj))

    def _restart(self, model: Obj, v: GroupView, reason: str) -> None:
        name = f"{v.role}-{v.index}"
        self._alive()
        sts = _sts_name(model["metadata"]["name"], v.role, v.index)
        if sts in self.replacing:
            self.kube.event(
                model,
                "Normal",
                "ReplacingGroup",
                f"replacing group {name} for the new spec: Kueue holds a queued group's requests and "
                "placement fixed, so its StatefulSet is recreated and the group is admitted anew",
            )
            self.kube.delete("apps/v1", "StatefulSet", model["metadata"]["namespace"], sts)
            self.wrote.delete("StatefulSet", sts)
            return
        evidence = "; ".join(e.describe() for e in v.evidence) or "a pod of the group was replaced"
        self._announce(model, v, reason, v.uids, evidence)
        self.kube.delete_pods(
            model["metadata"]["namespace"], _group_pods(model["metadata"]["name"], v.role, v.index)
        )
        self.wrote.delete_pods(sorted(v.uids))

    def _announce(self, model: Obj, v: GroupView, reason: str, pods: frozenset[str], evidence: str) -> None:
        """The Event of one restart of a group, named after the pods the restart deletes: a restart
        recorded (``_record``) but finished only by a later reconcile is announced by that one, and
        one announced already is not announced twice (the API refuses the name again)."""
        name = f"{v.role}-{v.index}"
        event = _restart_event_name(model["metadata"]["name"], name, pods)
        if reason == "failure":
            message = f"restarting group {name} (all {v.want_pods} pods): {evidence}"
            self.kube.event(model, "Warning", "GroupFailed", message, name=event)
        else:
            message = f"restarting group {name} for the new spec"
            self.kube.event(model, "Normal", "RollingGroup", message, name=event)

    def _delete_group(self, model: str, ns: str, role: str, index: int, live: dict) -> None:
        name = _sts_name(model, role, index)
        self.kube.delete("apps/v1", "StatefulSet", ns, name)
        self.kube.delete("v1", "Service", ns, name)
        self.wrote.delete("StatefulSet", name)
        self.wrote.delete("Service", name)
        for kind, n in list(live):
            obj = live[(kind, n)]
            lbl = obj["metadata"].get("labels", {})
            if kind == "ConfigMap" and lbl.get(labels.ROLE) == role and lbl.get(labels.GROUP) == str(index):
                self.kube.delete("v1", "ConfigMap", ns, n)
                self.wrote.delete("ConfigMap", n)

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
                stale = _sts_name(model, lbl.get(labels.ROLE), lbl[labels.GROUP]) not in groups
            else:
                stale = True
            if stale:
                self._alive()
                self.kube.delete(obj["apiVersion"], kind, ns, name)
                self.wrote.delete(kind, name)
                del live[(kind, name)]

    def _write_status(self, model: Obj, old: Obj, new: Obj) -> None:
        """Only a changed status, and only onto the version it was computed from (else 409: the
        reconcile runs again on the newer one)."""
        new, old = prune(new), prune(old)
        if old == new:
            return
        if not self.wanted(self.uid):
            raise Gone
        self.kube.patch_status(model, merge_patch(old, new))


def _settled(status: Obj, generation: int | None) -> bool:
    """Ready at its generation: the one state a reconcile may read from the cache. While a model
    changes, its pods change faster than the cache follows them (one watch per kind, each at its
    own pace), and a status written from the cache between two written from lists would go back
    and forth, each write waking the model again."""
    return status.get("observedGeneration") == generation and status.get("phase") == "Ready"


def _applied_hash(obj: Obj) -> str | None:
    return (obj["metadata"].get("annotations") or {}).get(APPLIED_HASH)


def _key(model: Obj) -> tuple[str, str]:
    return model["metadata"]["namespace"], model["metadata"]["name"]


def _sts_name(model: str, role: str, index: int | str) -> str:
    """A group's StatefulSet (and headless Service): as commands.statefulset_name names it."""
    return f"{model}-{role}-{index}"


def _restart_event_name(model: str, group: str, pods: frozenset[str]) -> str | None:
    """One name per restart: pod uids are never reused, and a restart deletes the pods it names
    (None, a generated name, for a restart of no pod)."""
    if not pods:
        return None
    return f"{model}.{group}.{hashlib.sha256(','.join(sorted(pods)).encode()).hexdigest()[:16]}"


def _recorded_evidence(record: GroupRecord) -> str:
    """A failure restart's evidence as its record kept it (its pods may have changed since)."""
    f = record.last_failure
    if f is None:
        return "a pod of the group was replaced"
    return Evidence(f.pod, f.reason, f.exit_code, f.message).describe()


def _group_pods(model: str, role: str, index: int) -> str:
    return _selector({labels.MODEL: model, labels.ROLE: role, labels.GROUP: str(index)})


def _state(v: GroupView, seen: group_record.Observed) -> rollout.GroupState:
    return rollout.GroupState(
        role=v.role,
        index=v.index,
        exists=v.exists,
        outdated=seen.outdated,
        ready=v.ready,
        failed=seen.failed,
        restarting=seen.restarting,
        failures=seen.record.failures,
        last_restart=seen.record.last_restart,
    )


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


def merge_patch(old: Any, new: Any) -> Any:
    """A JSON merge patch (RFC 7396) that turns `old` into `new`: `new`, with null for every key
    that `new` drops (else the server keeps it, and status never settles)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out = {k: None for k in old if k not in new}
    out.update({k: merge_patch(old.get(k), v) for k, v in new.items()})
    return out


def prune(value: Any) -> Any:
    """Drop nulls the way the API server does, so a stored status compares equal to ours."""
    if isinstance(value, dict):
        return {k: prune(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value
