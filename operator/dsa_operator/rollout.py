"""The next step for a model's groups: gang restarts, rollouts and scaling. Pure, no I/O.

A group is one SGLang instance: one StatefulSet (``updateStrategy: OnDelete``) whose pods share
one NCCL world, so a group is only ever restarted whole (all its pods deleted at once).
``next_step`` maps one observation to the next actions; the same observation always gives the
same actions, so the shell may crash or repeat a reconcile at any point.

Notation, per role r with n_r = replicas[r]:

    W      = {(r, i) : 0 <= i < n_r}                             wanted groups
    up(g)  = exists & !failed & !restarting & (ready | outdated)
    U      = #{g in W : g missing | !up(g)}                       unavailable groups, all roles
    u_r    = #{g in W_r : exists & !outdated}                     updated groups of role r
    whole  = every g in W exists and none is failed

``ready`` means ready at the StatefulSet's update revision, so an outdated group is never ready:
one that is neither failed nor restarting is taken to serve on its old revision (a crash of one
of its pods makes it failed).

Each step:

1. Scale. Delete every existing group with i >= n_r, highest index first, all in one step: they
   are leaving, so their availability is moot. Create every missing g in W at once: creating never
   lowers availability. A new StatefulSet's pods run its current template, so a new group is never
   outdated: a first deployment needs no restarts, and gating rollouts on ``whole`` never delays it.
2. Gang restart. A failed g in W is restarted (reason "failure") when
       failures == 0  or  now - last_restart >= backoff(failures),  backoff(f) = min(30 * 2^(f-1), 600) s
   else Wait(requeue_after=the rest). Not limited by maxUnavailable (the group is down already), but
   counted in U, so it pauses the rollout.
3. Rollout. An outdated group that is restarting was restarted into a superseded template (the spec
   changed again); it is restarted again, free (it is down already), or it would never get ready.
   Otherwise only if ``whole``: restart k = maxUnavailable - U outdated up groups, one pick at a time,
   role argmin_r u_r / n_r (ties: prefill, decode, serving), lowest index first, u_r += 1 per pick.
   A restarting group stays in U until ready, so it blocks further picks.
   Gated (``Desired.gate``): the rollout's first pick is one group alone, the canary; no further
   pick until the gate says it passed (its evaluation ran against the canary alone).

Invariants; ``enforce_bounds`` checks the hard ones (H) again, on its own, before the shell acts:

    H1  U + #(rollout restarts of up groups) <= maxUnavailable   (only failures push U past it)
    H2  a restart takes the whole group, at most once per step, never a restarting group unless outdated
    H3  "failure" restarts only of failed groups (else they would be unbudgeted rollouts)
    H4  deletes only for i >= n_r, creates only for missing i < n_r
    H5  a gated rollout takes no serving group down while its canary has not passed
    R   |u_p/n_p - u_d/n_d| <= max(1/n_p, 1/n_d) after every pick, for a rollout that starts even
    S   W all up and not outdated, nothing surplus  =>  []   (in steady state the operator writes nothing)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

BACKOFF_BASE = 30.0
BACKOFF_CAP = 600.0
ROLE_ORDER = ("prefill", "decode", "serving")  # tie-break of the interleave: prefill first


@dataclass(frozen=True)
class GroupState:
    """One group as observed (see ``dsa_operator.observe`` and the controller's memory)."""

    role: str  # serving | prefill | decode
    index: int  # group index g (StatefulSet <name>-<role>-<g>)
    exists: bool  # its StatefulSet exists
    outdated: bool  # some pod runs an older template than the StatefulSet's update revision (OnDelete)
    ready: bool  # all its pods Running+Ready at the update revision (so outdated => not ready)
    failed: bool  # some pod restarted, failed, or disappeared since the group was last whole
    restarting: bool  # the operator deleted its pods and they are not all back (ready) yet
    failures: int = 0  # consecutive failure-restarts (for backoff)
    last_restart: float | None = None  # when the operator last restarted it (caller's clock, s)

    @property
    def key(self) -> tuple[str, int]:
        return (self.role, self.index)

    @property
    def up(self) -> bool:
        """Serving: an outdated group that is neither failed nor restarting serves its old revision."""
        return self.exists and not self.failed and not self.restarting and (self.ready or self.outdated)


@dataclass(frozen=True)
class Gate:
    """A canary gate (spec.rollout.gate) and its verdict on the rollout's first updated group."""

    passed: bool = False
    why: str = "rollout waits for the canary evaluation"  # what it waits for, or why it is held


@dataclass(frozen=True)
class Desired:
    """What the spec asks for."""

    replicas: dict[str, int] = field(default_factory=dict)  # role -> groups wanted; absent role = 0
    max_unavailable_groups: int = 1  # U may reach this through rollout restarts, never more
    gate: Gate | None = None  # a gated rollout: one group first, the rest once it passed

    def __post_init__(self) -> None:
        if self.max_unavailable_groups < 1 or any(n < 0 for n in self.replicas.values()):
            raise ValueError(f"invalid rollout target {self}")

    def wants(self, role: str, index: int) -> bool:
        return 0 <= index < self.replicas.get(role, 0)


@dataclass(frozen=True)
class CreateGroup:
    role: str
    index: int


@dataclass(frozen=True)
class DeleteGroup:
    """Scale-down: the whole group (StatefulSet, Service, its ConfigMaps) goes."""

    role: str
    index: int


@dataclass(frozen=True)
class RestartGroup:
    """Delete all pods of the group at once: its NCCL world cannot survive a partial restart."""

    role: str
    index: int
    reason: Literal["failure", "rollout"]


@dataclass(frozen=True)
class Wait:
    """Something is pending but may not happen now; ``requeue_after`` (s) when time alone unblocks it."""

    reason: str
    requeue_after: float | None = None


Action = CreateGroup | DeleteGroup | RestartGroup | Wait


def backoff_seconds(failures: int) -> float:
    """Wait before the next failure restart after `failures` of them: 0, 30, 60, ... 480, 600, 600."""
    if failures <= 0:
        return 0.0
    return min(BACKOFF_BASE * 2 ** min(failures - 1, 16), BACKOFF_CAP)


def restart_due(g: GroupState) -> float | None:
    """When a failed group may next be restarted (the caller's clock), or None when at once."""
    if g.failures <= 0 or g.last_restart is None:
        return None
    return g.last_restart + backoff_seconds(g.failures)


def _name(role: str, index: int) -> str:
    return f"{role}-{index}"


def _role_rank(role: str) -> tuple[int, str]:
    return (ROLE_ORDER.index(role) if role in ROLE_ORDER else len(ROLE_ORDER), role)


def _wanted(desired: Desired) -> list[tuple[str, int]]:
    keys = ((r, i) for r, n in desired.replicas.items() for i in range(n))
    return sorted(keys, key=lambda k: (_role_rank(k[0]), k[1]))


def unavailable(groups: Iterable[GroupState], desired: Desired) -> int:
    """U: wanted groups that do not serve, missing ones included."""
    up = {g.key for g in groups if g.up}
    return sum(1 for k in _wanted(desired) if k not in up)


def next_step(groups: list[GroupState], desired: Desired, now: float) -> list[Action]:
    """The actions for this observation, in the order the shell should take them (see module doc)."""
    by_key = {g.key: g for g in groups if g.exists}
    wanted = _wanted(desired)
    actions: list[Action] = []

    # 1. Scale.
    surplus = [g for g in by_key.values() if not desired.wants(g.role, g.index)]
    actions += [
        DeleteGroup(g.role, g.index) for g in sorted(surplus, key=lambda g: (-g.index, _role_rank(g.role)))
    ]
    missing = [k for k in wanted if k not in by_key]
    actions += [CreateGroup(r, i) for r, i in missing]

    # 2. Gang restarts after failures, with backoff.
    members = [by_key[k] for k in wanted if k in by_key]
    failed = [g for g in members if g.failed and not g.restarting]
    for g in failed:
        due = restart_due(g)
        wait = 0.0 if due is None else due - now
        if wait <= 0:
            actions.append(RestartGroup(g.role, g.index, "failure"))
        else:
            actions.append(
                Wait(f"{_name(*g.key)} failed {g.failures}x in a row: restart in {wait:.0f}s", wait)
            )

    # 3. Rollout.
    stale = [g for g in members if g.restarting and g.outdated]
    actions += [RestartGroup(g.role, g.index, "rollout") for g in stale]
    candidates = [g for g in members if g.outdated and g.up]
    if not candidates:
        return actions
    budget = desired.max_unavailable_groups - unavailable(groups, desired)
    held = None
    if desired.gate is not None:
        if canary(members) is None:  # the rollout starts: its first group alone
            budget = min(budget, 1)
        elif not desired.gate.passed:
            budget, held = 0, desired.gate.why
    picks: list[GroupState] = []
    if not missing and not failed and budget > 0:
        picks = _interleave(candidates, members, desired, budget)
        actions += [RestartGroup(g.role, g.index, "rollout") for g in picks]
    if not picks and not any(isinstance(a, CreateGroup | DeleteGroup | RestartGroup) for a in actions):
        actions.append(Wait(held or _why_paused(missing, failed, members, desired), None))
    return actions


def canary(members: list[GroupState]) -> GroupState | None:
    """A gated rollout's canary: while some wanted group is outdated, the first one that is not
    (ties: prefill, decode, serving; lowest index). None before the rollout's first restart."""
    if not any(g.outdated for g in members):
        return None
    fresh = [g for g in members if g.exists and not g.outdated]
    return min(fresh, key=lambda g: (_role_rank(g.role), g.index), default=None)


def canary_of(groups: list[GroupState], desired: Desired) -> GroupState | None:
    """`canary` among the groups the spec wants."""
    return canary([g for g in groups if g.exists and desired.wants(g.role, g.index)])


def _interleave(
    candidates: list[GroupState], members: list[GroupState], desired: Desired, budget: int
) -> list[GroupState]:
    """Up to `budget` candidates, each from the role least far along (u_r / n_r), lowest index first."""
    updated = {r: 0 for r in desired.replicas}
    for g in members:
        if not g.outdated:
            updated[g.role] += 1
    queue = {r: sorted((g for g in candidates if g.role == r), key=lambda g: g.index) for r in updated}
    picks: list[GroupState] = []
    while len(picks) < budget and any(queue.values()):
        role = min(
            (r for r in queue if queue[r]),
            key=lambda r: (Fraction(updated[r], desired.replicas[r]), _role_rank(r)),
        )
        picks.append(queue[role].pop(0))
        updated[role] += 1
    return picks


def _why_paused(
    missing: list[tuple[str, int]], failed: list[GroupState], members: list[GroupState], desired: Desired
) -> str:
    if failed:
        return f"rollout paused: {', '.join(_name(*g.key) for g in failed)} failed"
    if missing:
        return f"rollout paused: {', '.join(_name(*k) for k in missing)} not created yet"
    down = [_name(*g.key) for g in members if not g.up]
    return (
        f"rollout waits for {', '.join(down)} to become ready "
        f"(maxUnavailableGroups {desired.max_unavailable_groups})"
    )


def enforce_bounds(groups: list[GroupState], desired: Desired, actions: list[Action]) -> list[Action]:
    """The executor's own check of H1-H4: drops every action that would break one; keeps the rest in order.

    Independent of ``next_step`` on purpose (as LWS's executor re-checks its planner), so a planner
    bug can slow a rollout but not take more groups down than allowed or delete a wanted group.
    """
    by_key = {g.key: g for g in groups if g.exists}
    down = unavailable(groups, desired)
    gate = desired.gate
    starts = gate is not None and canary_of(groups, desired) is None  # its first group goes alone
    gated = gate is not None and not gate.passed and not starts
    touched: set[tuple[str, int]] = set()  # one action per group per step
    kept: list[Action] = []
    for a in actions:
        if isinstance(a, Wait):
            kept.append(a)
            continue
        key = (a.role, a.index)
        g = by_key.get(key)
        if key in touched:
            ok = False
        elif isinstance(a, CreateGroup):
            ok = g is None and desired.wants(*key)
        elif isinstance(a, DeleteGroup):
            ok = g is not None and not desired.wants(*key)
        elif g is None or (g.restarting and not g.outdated):
            ok = False
        elif a.reason == "failure":
            ok = g.failed
        elif g.up and desired.wants(*key):  # a rollout restart that takes a serving group down
            ok = down < desired.max_unavailable_groups and not gated  # H5: not past a closed gate
            down += int(ok)
            gated = gated or (ok and starts)  # H5: the canary alone until its gate passes
        else:
            ok = True  # it is down already, or leaving
        touched.add(key)
        if ok:
            kept.append(a)
    return kept
