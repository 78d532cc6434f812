"""What a reconcile wrote to a model's children, until the watch cache shows it. Pure.

A reconcile reads a model's children and pods from the operator's watch cache (kopf indexes, fed
by one watch per kind) instead of listing them, but only when that cache shows every write the
model's previous reconciles made: otherwise it would act on a view older than its own writes
(e.g. see a group it just restarted still Ready, and restart a second one). Until then it lists
afresh. This is the controller-manager's "expectations" (k8s.io/kubernetes
pkg/controller/controller_utils.go, ControllerExpectations), kept by content rather than by count,
and like theirs they lapse after a while (there five minutes, here EXPECTATIONS_TTL): a write that
someone else overwrote at once is never seen, and must not keep a model off the cache forever.

Only which source to read comes from memory: what to do is decided from what the API holds, so a
restarted operator (no expectations, its cache filled by a full list before any handler runs)
decides the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

EXPECTATIONS_TTL = 60.0  # seconds
Obj = dict[str, Any]
View = Mapping[str, Sequence[Obj]]  # kind -> the model's objects of that kind, as the cache holds them


@dataclass
class Expected:
    """Writes not yet seen in the cache: objects applied (with their applied-hash), annotations
    set, objects deleted, pods deleted (by uid)."""

    deadline: float
    applied: dict[tuple[str, str], tuple[str, str | None]] = field(default_factory=dict)
    annotated: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    deleted: set[tuple[str, str]] = field(default_factory=set)
    deleted_pods: set[str] = field(default_factory=set)
    # A write was refused with 409: the cache held an older version than the API. The next
    # reconcile lists afresh (retrying on the same stale cache would only be refused again).
    stale: bool = False

    def __bool__(self) -> bool:
        return bool(self.stale or self.applied or self.annotated or self.deleted or self.deleted_pods)

    def apply(self, kind: str, name: str, hash_key: str, applied_hash: str | None) -> None:
        self.applied[(kind, name)] = (hash_key, applied_hash)
        self.deleted.discard((kind, name))

    def annotate(self, kind: str, name: str, key: str, value: str) -> None:
        self.annotated.setdefault((kind, name), {})[key] = value

    def delete(self, kind: str, name: str) -> None:
        self.deleted.add((kind, name))
        self.applied.pop((kind, name), None)
        self.annotated.pop((kind, name), None)

    def delete_pods(self, uids: Sequence[str]) -> None:
        self.deleted_pods.update(uids)

    def merged(self, other: Expected) -> Expected:
        """These, then `other`'s (written later): the later write of an object wins. Only `other`
        (the reconcile that just ran) can ask for a fresh read: `self`'s was one."""
        out = Expected(max(self.deadline, other.deadline), stale=other.stale)
        for e in (self, other):
            for (kind, name), (key, h) in e.applied.items():
                out.apply(kind, name, key, h)
            for (kind, name), notes in e.annotated.items():
                for key, value in notes.items():
                    out.annotate(kind, name, key, value)
            for kind, name in e.deleted:
                out.delete(kind, name)
            out.deleted_pods |= e.deleted_pods
        return out


def met(expected: Expected | None, view: View, now: float) -> bool:
    """Whether `view` shows every write in `expected` (or they have lapsed). Kinds the view does
    not hold are not checked."""
    if not expected or now >= expected.deadline:
        return True
    if expected.stale:
        return False
    by_name = {kind: {o["metadata"]["name"]: o for o in objs} for kind, objs in view.items()}

    def current(kind: str, name: str) -> Obj | None:
        obj = by_name.get(kind, {}).get(name)
        return None if obj is None or obj["metadata"].get("deletionTimestamp") else obj

    for (kind, name), (key, h) in expected.applied.items():
        if kind in by_name:
            obj = current(kind, name)
            if obj is None or (obj["metadata"].get("annotations") or {}).get(key) != h:
                return False
    for (kind, name), notes in expected.annotated.items():
        if kind in by_name:
            obj = current(kind, name)
            have = (obj or {}).get("metadata", {}).get("annotations") or {}
            if obj is None or any(have.get(k) != v for k, v in notes.items()):
                return False
    for kind, name in expected.deleted:
        if kind in by_name and current(kind, name) is not None:
            return False
    if expected.deleted_pods and "Pod" in by_name:
        live = {
            p["metadata"].get("uid")
            for p in by_name["Pod"].values()
            if not p["metadata"].get("deletionTimestamp")
        }
        if live & expected.deleted_pods:
            return False
    return True
