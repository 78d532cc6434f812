"""One reconcile of one DSAEvaluation: read it, its DSAModel, its Jobs and their pods; act on
`evaluation.decide`; write status. Holds nothing between reconciles (see `controller`)."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

from dsa_operator.controller import merge_patch, prune
from dsa_operator.errors import PlanError
from dsa_operator.evaluation import LOG_TAIL_LINES, PLURAL, Decision, decide, evaluation_job_name
from dsa_operator.evaluation_job import EVALUATION, RESULT, pods_by_job, progress
from dsa_operator.kube import Kube
from dsa_operator.planner import plan as make_plan

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def owned_by(obj: Obj, uid: str) -> bool:
    return any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or [])


class EvaluationReconciler:
    """Reconciles DSAEvaluations, each in its own loop (handlers.Loops)."""

    def __init__(self, kube: Kube):
        self.kube = kube

    def reconcile(self, ref: Obj, alive: Callable[[str], bool] = lambda uid: True) -> float | None:
        ns, name = ref["metadata"]["namespace"], ref["metadata"]["name"]
        ev = self.kube.get_custom(PLURAL, ns, name)
        if ev is None or ev["metadata"].get("deletionTimestamp"):
            return None  # its Jobs go with their ownerReferences
        uid = ev["metadata"].get("uid", "")
        jobs = [j for j in self.kube.list("batch/v1", "Job", ns, f"{EVALUATION}={name}") if owned_by(j, uid)]
        pods = pods_by_job(self.kube.list("v1", "Pod", ns, f"{EVALUATION}={name}"))
        spec = ev.get("spec") if isinstance(ev.get("spec"), dict) else {}
        model_name = spec.get("model")
        model = self.kube.get_model(ns, model_name) if isinstance(model_name, str) and model_name else None
        plan: Any = None
        if model is not None:
            try:
                plan = make_plan(model)
            except PlanError as e:
                plan = e
        current = evaluation_job_name(ev)
        running = pods.get(current)
        log_progress = None
        if running is not None and (running.get("status") or {}).get("phase") in ("Running", "Succeeded"):
            log_progress = progress(self.kube.pod_log_tail(ns, running["metadata"]["name"], LOG_TAIL_LINES))
        d = decide(ev, model, plan, jobs, pods, log_progress, _now_iso())
        self._act(ev, d, alive, uid)
        return d.poll

    def _act(self, ev: Obj, d: Decision, alive: Callable[[str], bool], uid: str) -> None:
        ns = ev["metadata"]["namespace"]

        def check() -> None:
            if not alive(uid):
                raise _Gone

        try:
            for name in d.delete:
                check()
                self.kube.delete("batch/v1", "Job", ns, name)
            if d.create is not None:
                check()
                log.info("creating evaluation Job %s/%s", ns, d.create["metadata"]["name"])
                self.kube.apply(d.create)
            if d.record is not None:
                check()
                self.kube.patch_annotation(d.record[0], RESULT, d.record[1])
            for kind, reason, message in d.events:
                check()
                self.kube.event(ev, kind, reason, message)
            old, new = prune(ev.get("status") or {}), prune(d.status)
            if old != new:
                check()
                self.kube.patch_status(ev, merge_patch(old, new), PLURAL)
        except _Gone:
            log.info("%s/%s is gone; nothing more is written for it", ns, ev["metadata"]["name"])


class _Gone(Exception):
    pass
