"""A group's record in the API: what an operator restarted mid-restart or mid-backoff reads back,
and the decisions it takes from it (the same as the operator that wrote it would have)."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from dsa_operator import group_record as G
from dsa_operator import rollout
from dsa_operator.observe import Evidence, GroupView

T0 = 1_790_000_000.0  # a wall-clock time (2026)


def view(uids: set[str], ready: bool = True, evidence: tuple[Evidence, ...] = (), want: int = 2) -> GroupView:
    return GroupView(
        role="prefill",
        index=0,
        exists=True,
        want_pods=want,
        pods=tuple(f"m-prefill-0-{i}" for i in range(len(uids))),
        uids=frozenset(uids),
        ready=ready and not evidence,
        outdated=False,
        evidence=evidence,
    )


def sts(record: G.GroupRecord | None) -> dict:
    annotations = {} if record is None else {G.ANNOTATION: G.encode(record)}
    return {"metadata": {"name": "m-prefill-0", "annotations": annotations}}


def through_api(record: G.GroupRecord) -> G.GroupRecord:
    """What a fresh operator process reads back."""
    return G.decode(sts(record))


def decide(record: G.GroupRecord, v: GroupView, now: float) -> tuple[G.Observed, list]:
    seen = G.observe(record, v, now)
    state = rollout.GroupState(
        "prefill",
        0,
        True,
        seen.outdated,
        v.ready,
        seen.failed,
        seen.restarting,
        seen.record.failures,
        seen.record.last_restart,
    )
    desired = rollout.Desired({"prefill": 1})
    return seen, rollout.enforce_bounds([state], desired, rollout.next_step([state], desired, now))


CRASH = (Evidence("m-prefill-0-1", "container engine restarted (1x)", 137, "OOMKilled"),)

times = st.floats(min_value=T0, max_value=T0 + 1e7, allow_nan=False)
uid_sets = st.frozensets(st.uuids().map(str), max_size=8)


@given(
    incarnation=uid_sets,
    restarting=st.none() | uid_sets,
    failures=st.integers(0, 50),
    restarts=st.integers(0, 10_000),
    last=st.none() | times,
    since=st.none() | times,
    failure=st.none()
    | st.builds(
        G.Failure, times, st.text(max_size=40), st.text(max_size=80), st.none() | st.integers(0, 255)
    ),
)
def test_a_record_reads_back_as_written(incarnation, restarting, failures, restarts, last, since, failure):
    r = G.GroupRecord(incarnation, restarting, failures, restarts, last, since, failure)
    back = through_api(r)
    assert back.incarnation == r.incarnation and back.restarting_from == r.restarting_from
    assert (back.failures, back.restarts) == (r.failures, r.restarts)
    for a, b in ((back.last_restart, last), (back.ready_since, since)):
        assert (a is None) == (b is None) and (a is None or abs(a - b) < 1e-5)
    assert (back.last_failure is None) == (failure is None)
    if failure:
        assert (back.last_failure.pod, back.last_failure.exit_code) == (failure.pod, failure.exit_code)
    assert G.encode(back) == G.encode(r)  # stable: an unchanged record is never written again


def test_an_unreadable_annotation_reads_as_no_record():
    for bad in ("{", "[]", '{"failures": "x"}', '{"lastRestart": 5}', "null"):
        obj = {"metadata": {"name": "s", "annotations": {G.ANNOTATION: bad}}}
        assert G.decode(obj) == G.GroupRecord(), bad
    assert G.decode(None) == G.GroupRecord()


def test_the_first_whole_ready_incarnation_is_recorded_once():
    seen = G.observe(G.GroupRecord(), view({"a", "b"}), T0)
    assert seen.record.incarnation == {"a", "b"} and seen.record.ready_since == T0
    again = G.observe(through_api(seen.record), view({"a", "b"}), T0 + 30)
    assert G.encode(again.record) == G.encode(seen.record)  # a quiet cluster: nothing to write
    assert not again.failed


def test_a_torn_incarnation_is_a_failure_even_when_its_replacement_is_ready():
    record = G.observe(G.GroupRecord(), view({"a", "b"}), T0).record
    seen = G.observe(through_api(record), view({"a", "c"}), T0 + 5)  # rank 1 replaced, Ready again
    assert seen.failed
    assert seen.record.incarnation == {"a", "b"}  # not adopted: the failure is not forgotten
    # A fresh operator (after a restart) still sees the torn group, even before it acts.
    assert G.observe(through_api(seen.record), view({"a", "c"}), T0 + 6).failed


def test_a_one_pod_group_whose_pod_was_replaced_is_not_failed():
    record = G.observe(G.GroupRecord(), view({"a"}, want=1), T0).record
    seen = G.observe(through_api(record), view({"b"}, want=1), T0 + 5)
    assert not seen.failed and seen.record.incarnation == {"b"}


def test_a_failure_restart_records_its_evidence_and_counts():
    record = G.observe(G.GroupRecord(), view({"a", "b"}), T0).record
    crashed = view({"a", "b"}, evidence=CRASH)
    after = G.restarted(record, crashed, "failure", T0 + 10)
    assert after.restarting_from == {"a", "b"} and after.incarnation == frozenset()
    assert (after.failures, after.restarts, after.last_restart) == (1, 1, T0 + 10)
    f = after.last_failure
    assert (f.pod, f.exit_code, f.message) == ("m-prefill-0-1", 137, "OOMKilled")
    report = G.report(through_api(after), None)
    assert report["restarts"] == 1 and report["lastFailure"]["exitCode"] == 137
    rolled = G.restarted(record, view({"a", "b"}), "rollout", T0 + 10)
    assert (rolled.failures, rolled.restarts, rolled.last_failure) == (0, 0, None)


def test_a_restart_recorded_but_not_carried_out_is_finished_by_the_next_operator():
    """Crash between writing the record and deleting the pods: the pods still live."""
    record = G.restarted(G.GroupRecord(), view({"a", "b"}, evidence=CRASH), "failure", T0)
    seen, actions = decide(through_api(record), view({"a", "b"}, evidence=CRASH), T0 + 1)
    assert seen.restarting and seen.unfinished == {"a", "b"}
    assert not any(isinstance(a, rollout.RestartGroup) for a in actions)  # not counted twice


def test_backoff_survives_an_operator_restart():
    """Restarted once for a failure, the new incarnation fails again 5 s later; an operator that
    starts afresh at +10 s waits out the rest of the 30 s backoff, not a new one, not none."""
    record = G.restarted(G.GroupRecord(), view({"a", "b"}, evidence=CRASH), "failure", T0)
    again = view({"c", "d"}, evidence=CRASH)
    seen, actions = decide(through_api(record), again, T0 + 10)
    assert seen.failed and not seen.restarting
    (wait,) = actions
    assert isinstance(wait, rollout.Wait) and abs(wait.requeue_after - 20) < 1e-3
    _, later = decide(through_api(seen.record), again, T0 + 31)
    assert later == [rollout.RestartGroup("prefill", 0, "failure")]
    nxt = G.restarted(seen.record, again, "failure", T0 + 31)
    assert nxt.failures == 2 and nxt.restarts == 2


def test_a_group_steady_for_ten_minutes_starts_its_backoff_afresh():
    record = G.restarted(G.GroupRecord(), view({"a", "b"}, evidence=CRASH), "failure", T0)
    record = G.observe(record, view({"c", "d"}), T0 + 60).record  # whole and ready again
    assert record.failures == 1 and record.restarting_from is None
    assert G.observe(through_api(record), view({"c", "d"}), T0 + 60 + 599).record.failures == 1
    steady = G.observe(through_api(record), view({"c", "d"}), T0 + 60 + 601).record
    assert steady.failures == 0 and steady.restarts == 1  # the history stays


def test_the_report_is_camel_case_without_nulls():
    record = G.restarted(G.GroupRecord(), view({"a"}, want=1), "failure", T0)
    out = G.report(record, T0 + 30)
    assert set(out) == {"restarts", "failuresInARow", "lastRestartTime", "nextRestartAfter", "lastFailure"}
    assert out["lastFailure"]["reason"] == "replaced by a new pod"
    assert "exitCode" not in out["lastFailure"]
    json.dumps(out)


def test_a_restart_finished_by_the_next_operator_reads_back_its_reason():
    """The next operator announces the restart it finishes (its Event may never have been posted)."""
    failed = through_api(G.restarted(G.GroupRecord(), view({"a", "b"}, evidence=CRASH), "failure", T0))
    assert G.restart_reason(failed) == "failure"
    rolled = through_api(G.restarted(failed, replace(view({"c", "d"}), outdated=True), "rollout", T0 + 60))
    assert G.restart_reason(rolled) == "rollout" and rolled.last_failure is not None
    assert (
        G.restart_reason(through_api(G.restarted(G.GroupRecord(), view({"a"}), "rollout", T0))) == "rollout"
    )


def test_a_rollout_restart_resumed_by_a_new_operator_is_not_restarted_again():
    """Killed after recording a rollout restart, before deleting the old pods: those pods run the
    old template, but they are the restart in flight, so the next operator finishes deleting them
    and restarts (and announces) nothing more."""
    old = replace(view({"a", "b"}), outdated=True)
    record = G.restarted(G.observe(G.GroupRecord(), view({"a", "b"}), T0).record, old, "rollout", T0 + 1)
    seen, actions = decide(through_api(record), old, T0 + 2)
    assert seen.unfinished == {"a", "b"} and not seen.outdated and seen.restarting
    assert not any(isinstance(a, rollout.RestartGroup) for a in actions)
    # Once they are gone and the new pods (current template) come up, the restart is over.
    done = G.observe(seen.record, view({"c", "d"}), T0 + 5)
    assert not done.restarting and not done.outdated and done.record.incarnation == {"c", "d"}
