"""When a reconcile may trust the watch cache: only once it shows the model's own writes."""

from __future__ import annotations

from dsa_operator.expectations import Expected, met

HASH = "serving.dsa.dev/applied-hash"
RECORD = "serving.dsa.dev/group-state"


def obj(name: str, annotations: dict | None = None, uid: str = "", deleting: bool = False) -> dict:
    meta: dict = {"name": name, "uid": uid or f"uid-{name}", "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T00:00:00Z"
    return {"metadata": meta}


def test_nothing_written_trusts_the_cache() -> None:
    assert met(None, {"Pod": []}, now=0)
    assert met(Expected(deadline=10), {"Pod": []}, now=0)


def test_an_applied_object_must_show_its_new_hash() -> None:
    e = Expected(deadline=10)
    e.apply("StatefulSet", "m-serving-0", HASH, "new")
    assert not met(e, {"StatefulSet": []}, now=0)  # not in the cache yet
    assert not met(e, {"StatefulSet": [obj("m-serving-0", {HASH: "old"})]}, now=0)
    assert met(e, {"StatefulSet": [obj("m-serving-0", {HASH: "new"})]}, now=0)


def test_a_recorded_restart_must_show_before_the_group_is_judged_again() -> None:
    e = Expected(deadline=10)
    e.annotate("StatefulSet", "m-serving-0", RECORD, '{"restarts":1}')
    stale = obj("m-serving-0", {RECORD: '{"restarts":0}'})
    assert not met(e, {"StatefulSet": [stale]}, now=0)
    assert met(e, {"StatefulSet": [obj("m-serving-0", {RECORD: '{"restarts":1}', HASH: "x"})]}, now=0)


def test_deleted_pods_must_be_gone_or_terminating() -> None:
    e = Expected(deadline=10)
    e.delete_pods(["a", "b"])
    assert not met(e, {"Pod": [obj("p0", uid="a"), obj("p1", uid="c")]}, now=0)
    assert met(e, {"Pod": [obj("p0", uid="a", deleting=True), obj("p1", uid="c")]}, now=0)
    assert met(e, {"Pod": [obj("p1", uid="c")]}, now=0)


def test_a_deleted_object_must_be_gone() -> None:
    e = Expected(deadline=10)
    e.delete("ConfigMap", "plan-old")
    assert not met(e, {"ConfigMap": [obj("plan-old")]}, now=0)
    assert met(e, {"ConfigMap": [obj("plan-new")]}, now=0)


def test_a_refused_write_reads_afresh_until_a_fresh_reconcile() -> None:
    e = Expected(deadline=10, stale=True)
    assert not met(e, {"StatefulSet": []}, now=0)
    # the fresh reconcile's own writes replace the flag: it read the API itself
    assert not Expected(deadline=10).merged(Expected(deadline=10)).stale
    assert e.merged(Expected(deadline=10)).stale is False


def test_kinds_the_view_does_not_hold_are_not_checked() -> None:
    e = Expected(deadline=10)
    e.apply("ConfigMap", "plan", HASH, "h")
    assert met(e, {"Pod": [], "StatefulSet": []}, now=0)


def test_expectations_lapse() -> None:
    """A write someone else overwrote at once is never seen: it must not keep the model off the
    cache for ever."""
    e = Expected(deadline=10)
    e.apply("StatefulSet", "s", HASH, "mine")
    view = {"StatefulSet": [obj("s", {HASH: "theirs"})]}
    assert not met(e, view, now=9.9)
    assert met(e, view, now=10)


def test_the_later_write_of_an_object_wins() -> None:
    first = Expected(deadline=5)
    first.apply("Service", "svc", HASH, "h1")
    later = Expected(deadline=8)
    later.delete("Service", "svc")
    both = first.merged(later)
    assert both.deadline == 8
    assert both.deleted == {("Service", "svc")} and not both.applied
    again = both.merged(_applied("Service", "svc", "h2"))
    assert again.applied == {("Service", "svc"): (HASH, "h2")} and not again.deleted


def _applied(kind: str, name: str, h: str) -> Expected:
    e = Expected(deadline=1)
    e.apply(kind, name, HASH, h)
    return e
