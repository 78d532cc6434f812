"""What the operator must know of a group between reconciles, kept in the API. Pure.

A group's record lives in one annotation on its StatefulSet (``serving.dsa.dev/group-state``,
JSON), not in the operator's memory and not in the DSAModel's status:

- the StatefulSet is the group: the record is created with it, goes with it on scale-down, and
  one group's record never races another's (each write names the StatefulSet's resourceVersion);
- status is a report computed from the records (``status.groups``), rewritten from them at will;
  an annotation is not reset by anyone who rewrites status, and writing it does not bump the
  DSAModel's generation;
- the renderer's server-side apply does not own the annotation (it is written by a patch), so a
  spec change that re-applies the StatefulSet keeps it.

So an operator restarted, or a standby taking over, mid-backoff reads the same incarnation,
failure count and last restart time, and takes the same decision (``observe``).
Times are wall-clock seconds (UTC): a monotonic clock does not survive the process.
"""

from __future__ import annotations

import datetime
import json
import logging
from dataclasses import dataclass, replace
from typing import Any

from dsa_operator.observe import Evidence, GroupView, torn

log = logging.getLogger(__name__)
ANNOTATION = "serving.dsa.dev/group-state"
# A group whole and ready this long has its failures-in-a-row (and so its backoff) reset.
STEADY_AFTER = 600.0


@dataclass(frozen=True)
class Failure:
    """The evidence of the last failure restart, as `kubectl describe dsamodel` shows it."""

    time: float
    pod: str
    reason: str
    exit_code: int | None = None
    message: str = ""


@dataclass(frozen=True)
class GroupRecord:
    incarnation: frozenset[str] = frozenset()  # pod uids of the group's last whole, ready incarnation
    restarting_from: frozenset[str] | None = None  # pods the operator deletes for a restart, not yet replaced
    failures: int = 0  # failure restarts in a row (the backoff's exponent)
    restarts: int = 0  # failure restarts in this group's life
    last_restart: float | None = None  # when the operator last restarted the group (any reason)
    ready_since: float | None = None  # when `incarnation` was first seen whole and ready
    last_failure: Failure | None = None


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_seconds(t: float) -> str:
    """As status shows times elsewhere (conditions): whole seconds."""
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(s: Any) -> float | None:
    if not isinstance(s, str):
        return None
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC).timestamp()


def encode(record: GroupRecord) -> str:
    """The annotation's value: stable JSON (sorted keys and uids), so equal records compare equal."""
    body: dict[str, Any] = {
        "incarnation": sorted(record.incarnation),
        "failures": record.failures,
        "restarts": record.restarts,
    }
    if record.restarting_from is not None:
        body["restartingFrom"] = sorted(record.restarting_from)
    if record.last_restart is not None:
        body["lastRestart"] = _iso(record.last_restart)
    if record.ready_since is not None:
        body["readySince"] = _iso(record.ready_since)
    if record.last_failure is not None:
        f = record.last_failure
        body["lastFailure"] = {
            "time": _iso(f.time),
            "pod": f.pod,
            "reason": f.reason,
            **({"exitCode": f.exit_code} if f.exit_code is not None else {}),
            **({"message": f.message} if f.message else {}),
        }
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def decode(sts: dict[str, Any] | None) -> GroupRecord:
    """The record a StatefulSet carries; an empty one when it has none. A malformed annotation (a
    hand edit) is logged and read as empty: the pods' restart counts still reveal a failure."""
    value = (((sts or {}).get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    if not value:
        return GroupRecord()
    try:
        body = json.loads(value)
        last = body.get("lastFailure")
        restarting = body.get("restartingFrom")
        return GroupRecord(
            incarnation=frozenset(str(u) for u in body.get("incarnation") or ()),
            restarting_from=None if restarting is None else frozenset(str(u) for u in restarting),
            failures=max(0, int(body.get("failures") or 0)),
            restarts=max(0, int(body.get("restarts") or 0)),
            last_restart=_epoch(body.get("lastRestart")),
            ready_since=_epoch(body.get("readySince")),
            last_failure=None
            if not isinstance(last, dict)
            else Failure(
                time=_epoch(last.get("time")) or 0.0,
                pod=str(last.get("pod", "")),
                reason=str(last.get("reason", "")),
                exit_code=last.get("exitCode") if isinstance(last.get("exitCode"), int) else None,
                message=str(last.get("message", "")),
            ),
        )
    except (ValueError, TypeError, AttributeError) as e:
        name = ((sts or {}).get("metadata") or {}).get("name")
        log.warning("StatefulSet %s: unreadable %s annotation (%s); reading it as empty", name, ANNOTATION, e)
        return GroupRecord()


@dataclass(frozen=True)
class Observed:
    """A group's record brought up to date with one observation, and what it means."""

    record: GroupRecord
    failed: bool  # some pod failed, or the last whole incarnation was torn
    restarting: bool  # pods the operator deleted are not all replaced (and ready, or failed) yet
    unfinished: frozenset[str]  # pods recorded for deletion that still live: delete them (again)
    outdated: bool  # pods run an older template, not counting those on their way out (unfinished)


def observe(record: GroupRecord, view: GroupView, now: float) -> Observed:
    """Fold one look at the group into its record. The same record and view give the same result,
    so a repeated or resumed reconcile decides as the first one did."""
    restarting = record.restarting_from is not None
    unfinished = frozenset()
    if restarting:
        unfinished = view.uids & record.restarting_from
        renewed = bool(view.uids) and not unfinished
        if renewed and (view.ready or view.evidence):
            # The new incarnation is up, or has failed in turn (then it is restarted after backoff).
            record, restarting = replace(record, restarting_from=None), False
    vanished = not restarting and view.exists and torn(record.incarnation, view.uids)
    failed = (bool(view.evidence) or vanished) and not restarting
    if view.ready and not restarting and not failed:
        if record.incarnation != view.uids:
            record = replace(record, incarnation=view.uids, ready_since=now)
        if record.failures and now - (record.ready_since or now) > STEADY_AFTER:
            record = replace(record, failures=0)
    # Pods recorded for deletion are the restart in flight, not a template to roll again: counting
    # them would make a resumed operator restart (and announce) the same rollout restart twice.
    return Observed(record, failed, restarting, unfinished, view.outdated and not unfinished)


def restarted(record: GroupRecord, view: GroupView, reason: str, now: float) -> GroupRecord:
    """The record of a group whose pods are about to be deleted: written before the delete, so
    a crash in between leaves a restart that the next reconcile finishes (``unfinished``)."""
    record = replace(record, restarting_from=view.uids, incarnation=frozenset(), last_restart=now)
    if reason != "failure":
        return record
    first = (
        view.evidence[0] if view.evidence else Evidence(",".join(view.pods) or "?", "replaced by a new pod")
    )
    return replace(
        record,
        failures=record.failures + 1,
        restarts=record.restarts + 1,
        last_failure=Failure(now, first.pod, first.reason, first.exit_code, first.message.strip()[:500]),
    )


def restart_reason(record: GroupRecord) -> str:
    """Why the group's last restart was made, as ``restarted`` recorded it: a failure restart
    stamps its failure with the restart's own time, a rollout restart leaves an older one."""
    f = record.last_failure
    return "failure" if f is not None and f.time == record.last_restart else "rollout"


def report(record: GroupRecord, backoff_until: float | None) -> dict[str, Any]:
    """The group's entry in status.groups (camelCase, no nulls)."""
    out: dict[str, Any] = {"restarts": record.restarts, "failuresInARow": record.failures}
    if record.last_restart is not None:
        out["lastRestartTime"] = _iso_seconds(record.last_restart)
    if backoff_until is not None:
        out["nextRestartAfter"] = _iso_seconds(backoff_until)
    if record.last_failure is not None:
        f = record.last_failure
        out["lastFailure"] = {
            k: v
            for k, v in {
                "time": _iso_seconds(f.time),
                "pod": f.pod,
                "reason": f.reason,
                "exitCode": f.exit_code,
                "message": f.message or None,
            }.items()
            if v is not None
        }
    return out
