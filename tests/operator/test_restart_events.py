"""One Event per group restart, whichever reconcile carries the restart out.

A restart is recorded on its StatefulSet before its pods are deleted (``_record``, write-ahead);
a reconcile cut short in between leaves it to the next one (``unfinished``). The reconcile that
records a rollout's second pick also writes the first group's record (its new pods just became
ready), and the StatefulSet controller writes that StatefulSet's status on the same pod change:
that write can land between the reconcile's list and its patch (409), after the second group's
restart was recorded and before it was announced. Here the controller runs against an API in
memory (``Kube``'s own ``event`` included), with the StatefulSet controller played by the test.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client.rest import ApiException

from dsa_operator import labels
from dsa_operator.controller import Reconciler
from dsa_operator.kube import Kube

Obj = dict[str, Any]
EXAMPLE = Path(__file__).parents[2] / "examples" / "simulator" / "pd-pp-cp.yaml"
NS = "ns"
REVISION = "controller-revision-hash"


def _matches(obj: Obj, selector: str) -> bool:
    have = obj["metadata"].get("labels") or {}
    return all(have.get(k) == v for k, v in (term.split("=", 1) for term in selector.split(",") if term))


def _merge(old: Any, patch: Any) -> Any:
    """RFC 7396, as the API server applies the controller's status patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(old) if isinstance(old, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


class _Core:
    """The one CoreV1Api call Kube.event makes: create an Event (409 for a name taken)."""

    def __init__(self) -> None:
        self.events: dict[str, Any] = {}
        self.serial = itertools.count()

    def create_namespaced_event(self, namespace: str, body: Any) -> None:
        name = body.metadata.name or f"{body.metadata.generate_name}{next(self.serial):05d}"
        if name in self.events:
            raise ApiException(status=409, reason="AlreadyExists")
        self.events[name] = body


class MemoryApi(Kube):
    """Kube's calls on objects kept in memory, with resourceVersions; its `event` is Kube's own."""

    def __init__(self, model: Obj) -> None:
        self.core = _Core()
        self.model = model
        self.objs: dict[tuple[str, str], Obj] = {}
        self.rv = itertools.count(1)
        self.uids = itertools.count(1)
        self.racing: set[str] = set()  # StatefulSets whose status the controller writes before our patch
        self.conflicts: list[str] = []
        self.deleted_one_by_one: list[str] = []

    def _stamp(self, obj: Obj) -> Obj:
        obj["metadata"]["resourceVersion"] = str(next(self.rv))
        return obj

    def reset_connections(self) -> None:
        pass

    def get_model(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.model)

    def get_custom(self, *args: Any, **kw: Any) -> Obj | None:
        return None

    def get_node(self, name: str) -> Obj | None:
        return {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}

    def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]:
        return [
            copy.deepcopy(o) for (k, _), o in sorted(self.objs.items()) if k == kind and _matches(o, selector)
        ]

    def apply(self, obj: Obj) -> Obj:
        key = (obj["kind"], obj["metadata"]["name"])
        new = copy.deepcopy(obj)
        old = self.objs.get(key)
        if old is not None:  # what the apply does not own: other annotations, the status
            new["metadata"]["annotations"] = {
                **(old["metadata"].get("annotations") or {}),
                **(new["metadata"].get("annotations") or {}),
            }
            if "status" in old:
                new["status"] = old["status"]
        self.objs[key] = self._stamp(new)
        return copy.deepcopy(new)

    def patch_annotation(self, obj: Obj, key: str, value: str) -> None:
        name = obj["metadata"]["name"]
        stored = self.objs[(obj["kind"], name)]
        if name in self.racing:  # the StatefulSet controller's status write came first
            self.racing.discard(name)
            self._stamp(stored)
        was = (obj["metadata"].get("annotations") or {}).get(key)
        now = (stored["metadata"].get("annotations") or {}).get(key)
        # Kube's compare-and-swap: on the annotation's value; on the version while there is none
        if now != was or (
            was is None and stored["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"]
        ):
            self.conflicts.append(name)
            raise ApiException(status=409, reason="Conflict")
        stored["metadata"].setdefault("annotations", {})[key] = value
        self._stamp(stored)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.objs.pop((kind, name), None)

    def delete_pods(self, namespace: str, selector: str) -> None:
        for key in [k for k, o in self.objs.items() if k[0] == "Pod" and _matches(o, selector)]:
            del self.objs[key]

    def delete_pod(self, namespace: str, name: str, uid: str) -> None:
        pod = self.objs.get(("Pod", name))
        if pod is not None and pod["metadata"]["uid"] == uid:
            self.deleted_one_by_one.append(name)
            del self.objs[("Pod", name)]

    def patch_status(self, model: Obj, status: Obj, plural: str = "") -> None:
        self.model["status"] = _merge(self.model.get("status"), status)

    # ---- the rest of the cluster ----------------------------------------------------------------
    def statefulset_controller(self) -> None:
        """OnDelete: a new template only moves the update revision; a missing pod is created at it.
        (And the router's Deployment is up.)"""
        for (kind, name), sts in list(self.objs.items()):
            if kind == "Deployment":  # the router: up
                sts["status"] = {"readyReplicas": sts["spec"]["replicas"]}
            if kind != "StatefulSet":
                continue
            template = sts["spec"]["template"]
            revision = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
            if (sts.get("status") or {}).get("updateRevision") != revision:
                sts["status"] = {"updateRevision": revision}
                self._stamp(sts)
            for i in range(sts["spec"]["replicas"]):
                if ("Pod", f"{name}-{i}") not in self.objs:
                    meta = template["metadata"]
                    self.objs[("Pod", f"{name}-{i}")] = {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            "name": f"{name}-{i}",
                            "namespace": NS,
                            "uid": f"uid-{next(self.uids)}",
                            "labels": {**meta["labels"], REVISION: revision, labels.POD_INDEX: str(i)},
                            "annotations": dict(meta.get("annotations") or {}),
                        },
                        "spec": copy.deepcopy(template["spec"]),
                        "status": {"phase": "Pending"},
                    }

    def pods_become_ready(self) -> None:
        """Every pod Ready; the StatefulSet controller then writes the status of each StatefulSet
        whose pods changed, racing the reconcile that the same pod change wakes."""
        for (kind, _), pod in self.objs.items():
            if kind == "Pod" and pod["status"].get("phase") != "Running":
                pod["status"] = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
                lbl = pod["metadata"]["labels"]
                self.racing.add(f"{lbl[labels.MODEL]}-{lbl[labels.ROLE]}-{lbl[labels.GROUP]}")

    def engine_pods(self) -> list[Obj]:
        return [
            o for (k, _), o in self.objs.items() if k == "Pod" and _matches(o, f"{labels.COMPONENT}=engine")
        ]

    def events(self, reason: str) -> list[str]:
        return sorted(e.message for e in self.core.events.values() if e.reason == reason)


def model() -> Obj:
    doc = yaml.safe_load(EXAMPLE.read_text())  # prefill-0 (2 pods), decode-0 (1 pod): two groups
    doc["metadata"].update(namespace=NS, uid="model-uid", generation=1, resourceVersion="1")
    return doc


def settle(api: MemoryApi, rounds: int = 40) -> None:
    """Reconcile as the operator's loop does (a 409 or another API error: again), the cluster
    answering after each reconcile, until a reconcile finds nothing left to do."""
    r = Reconciler(api)
    for _ in range(rounds):
        try:
            requeue = r.reconcile({"metadata": {"namespace": NS, "name": api.model["metadata"]["name"]}})
        except ApiException:
            continue
        api.statefulset_controller()
        api.pods_become_ready()
        pods = api.engine_pods()
        revisions = {o["status"]["updateRevision"] for (k, _), o in api.objs.items() if k == "StatefulSet"}
        rolled = {p["metadata"]["labels"][REVISION] for p in pods} <= revisions
        if requeue is None and pods and rolled and api.model.get("status", {}).get("phase") == "Ready":
            return
    raise AssertionError(f"not settled: {api.model.get('status')}")


def roll(api: MemoryApi) -> set[str]:
    old = {p["metadata"]["uid"] for p in api.engine_pods()}
    api.model["spec"]["runtime"]["env"] = {"DEMO_REVISION": "2"}
    api.model["metadata"]["generation"] += 1
    return old


def test_every_group_a_rollout_restarts_gets_its_rolling_group_event() -> None:
    api = MemoryApi(model())
    settle(api)
    assert api.events("RollingGroup") == []
    api.conflicts.clear()
    old = roll(api)
    settle(api)

    assert not {p["metadata"]["uid"] for p in api.engine_pods()} & old
    # The StatefulSet controller's status writes raced every record write of the rollout; none
    # was refused (the record is a compare-and-swap on itself), so no restart was left half done.
    assert api.conflicts == [] and api.deleted_one_by_one == []
    assert api.events("RollingGroup") == [
        "restarting group decode-0 for the new spec",
        "restarting group prefill-0 for the new spec",
    ]


def test_a_restart_announced_and_then_finished_by_the_next_reconcile_is_announced_once() -> None:
    """The Event was posted, the delete was not (the API refused it once): the reconcile that
    finishes the restart posts the same Event, which the API keeps once."""
    api = MemoryApi(model())
    settle(api)
    delete_pods = api.delete_pods
    refused: list[str] = []

    def refuse_once(namespace: str, selector: str) -> None:
        if not refused:
            refused.append(selector)
            raise ApiException(status=500, reason="InternalError")
        delete_pods(namespace, selector)

    api.delete_pods = refuse_once  # type: ignore[method-assign]
    roll(api)
    settle(api)

    assert refused and api.deleted_one_by_one  # the first restart was finished pod by pod
    assert api.events("RollingGroup") == [
        "restarting group decode-0 for the new spec",
        "restarting group prefill-0 for the new spec",
    ]
