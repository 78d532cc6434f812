"""The rollout planner, step by step and through simulated whole rollouts, restarts and scalings."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsa_operator.rollout import (
    CreateGroup,
    DeleteGroup,
    Desired,
    Gate,
    GroupState,
    RestartGroup,
    Wait,
    backoff_seconds,
    canary_of,
    enforce_bounds,
    next_step,
    unavailable,
)

Key = tuple[str, int]


# ---- a test-only simulator ------------------------------------------------------------------
@dataclass
class SimGroup:
    """A group's pods as the cluster runs them, plus the controller's memory of the group."""

    rev: int
    serving: bool
    loading: int = 0  # ticks until its pods are up
    crashed: bool = False
    restarting: bool = False
    failures: int = 0
    last_restart: float | None = None


class Sim:
    """Applies actions as the controller and the StatefulSet controller would; time in 1 s ticks.

    Observations follow ``dsa_operator.observe``: ready means ready at the update revision, so an
    outdated group is never ready; a crash is reported as failed unless the group is restarting.
    """

    def __init__(self, replicas: dict[str, int], max_unavailable: int = 1, load: int = 3):
        self.desired = Desired(dict(replicas), max_unavailable)
        self.rev = 0
        self.now = 1000.0
        self.load = load
        self.groups: dict[Key, SimGroup] = {
            (r, i): SimGroup(rev=0, serving=True) for r, n in replicas.items() for i in range(n)
        }
        self.restarts: list[tuple[float, RestartGroup]] = []
        self.steps: list[list] = []

    def observe(self) -> list[GroupState]:
        return [
            GroupState(
                role=r,
                index=i,
                exists=True,
                outdated=g.rev != self.rev,
                ready=g.serving and not g.crashed and g.rev == self.rev,
                failed=g.crashed and not g.restarting,
                restarting=g.restarting,
                failures=g.failures,
                last_restart=g.last_restart,
            )
            for (r, i), g in sorted(self.groups.items())
        ]

    def true_unavailable(self) -> int:
        wanted = [(r, i) for r, n in self.desired.replicas.items() for i in range(n)]
        return sum(
            1 for k in wanted if k not in self.groups or not self.groups[k].serving or self.groups[k].crashed
        )

    def gap(self) -> Fraction:
        """|u_p/n_p - u_d/n_d|, u = groups whose pods run the update revision (restarting included)."""
        frac = {}
        for role in ("prefill", "decode"):
            n = self.desired.replicas.get(role, 0)
            done = sum(1 for (r, _), g in self.groups.items() if r == role and g.rev == self.rev)
            frac[role] = Fraction(done, n) if n else Fraction(0)
        return abs(frac["prefill"] - frac["decode"])

    def apply(self, actions: list) -> None:
        for a in actions:
            key = (getattr(a, "role", None), getattr(a, "index", None))
            if isinstance(a, CreateGroup):
                self.groups[key] = SimGroup(rev=self.rev, serving=False, loading=self.load)
            elif isinstance(a, DeleteGroup):
                del self.groups[key]
            elif isinstance(a, RestartGroup):
                g = self.groups[key]
                g.rev, g.serving, g.loading, g.crashed = self.rev, False, self.load, False
                g.restarting, g.last_restart = True, self.now
                g.failures += a.reason == "failure"
                self.restarts.append((self.now, a))

    def step(self) -> list:
        """One reconcile, checked against the invariants, then time passes."""
        obs = self.observe()
        acts = next_step(obs, self.desired, self.now)
        assert next_step(obs, self.desired, self.now) == acts, "not deterministic"
        assert enforce_bounds(obs, self.desired, acts) == acts, "planner broke a hard bound"
        check_invariants(obs, self.desired, acts)
        self.apply(acts)
        again = next_step(self.observe(), self.desired, self.now)
        assert not set(again) & {a for a in acts if not isinstance(a, Wait)}, "repeated an action"
        self.steps.append(acts)
        self.advance(acts)
        return acts

    def advance(self, acts: list) -> None:
        busy = any(g.loading for g in self.groups.values())
        waits = [a.requeue_after for a in acts if isinstance(a, Wait) and a.requeue_after]
        if not busy and acts and all(isinstance(a, Wait) for a in acts):
            assert waits, f"stuck: {acts}"
            self.now += min(waits)  # nothing moves until the requeue
        else:
            self.now += 1
        for g in self.groups.values():
            if g.loading:
                g.loading -= 1
                g.serving = g.loading == 0
            if g.restarting and g.serving and g.rev == self.rev and not g.crashed:
                g.restarting = False

    def run(self, max_steps: int = 500, each=None) -> None:
        """Until a step returns [] with no pods loading (steady state)."""
        for _ in range(max_steps):
            if each:
                each(self)
            busy = any(g.loading for g in self.groups.values())
            if not self.step() and not busy:
                return
        raise AssertionError(f"no steady state after {max_steps} steps: {self.steps[-3:]}")

    def rollouts(self) -> list[str]:
        return [f"{a.role}-{a.index}" for _, a in self.restarts if a.reason == "rollout"]


def check_invariants(obs: list[GroupState], desired: Desired, acts: list) -> None:
    """H1-H4 and the rollout gate, as stated in the module docstring."""
    by_key = {(g.role, g.index): g for g in obs if g.exists}
    wanted = {(r, i) for r, n in desired.replicas.items() for i in range(n)}
    u = unavailable(obs, desired)
    budgeted = [a for a in acts if isinstance(a, RestartGroup) and by_key[(a.role, a.index)].up]
    assert all(a.reason == "rollout" for a in budgeted)
    assert u + len(budgeted) <= desired.max_unavailable_groups or not budgeted  # H1
    if budgeted:  # rollout only when whole
        assert wanted <= set(by_key) and not any(by_key[k].failed for k in wanted)
    keys = [(a.role, a.index) for a in acts if not isinstance(a, Wait)]
    assert len(keys) == len(set(keys))  # H2: one action per group
    for a in acts:
        if isinstance(a, RestartGroup):
            g = by_key[(a.role, a.index)]
            assert not g.restarting or g.outdated  # H2
            assert a.reason == "rollout" or g.failed  # H3
        if isinstance(a, DeleteGroup):
            assert (a.role, a.index) not in wanted  # H4
        if isinstance(a, CreateGroup):
            assert (a.role, a.index) in wanted and (a.role, a.index) not in by_key  # H4


def state(role="serving", index=0, **kw) -> GroupState:
    base = dict(exists=True, outdated=False, ready=True, failed=False, restarting=False)
    return GroupState(role=role, index=index, **(base | kw))


def fleet(replicas: dict[str, int], **kw) -> list[GroupState]:
    return [state(r, i, **kw) for r, n in replicas.items() for i in range(n)]


# ---- backoff -------------------------------------------------------------------------------
def test_backoff_doubles_from_30s_to_a_600s_cap():
    assert [backoff_seconds(f) for f in range(10)] == [0, 30, 60, 120, 240, 480, 600, 600, 600, 600]
    assert backoff_seconds(10**6) == 600


def test_failed_group_restarts_at_once_then_after_backoff():
    first = state(ready=False, failed=True)
    assert next_step([first], Desired({"serving": 1}), 0.0) == [RestartGroup("serving", 0, "failure")]
    again = replace(first, failures=3, last_restart=100.0)  # backoff 120 s
    (wait,) = next_step([again], Desired({"serving": 1}), 150.0)
    assert isinstance(wait, Wait) and wait.requeue_after == pytest.approx(70.0)
    assert next_step([again], Desired({"serving": 1}), 220.0) == [RestartGroup("serving", 0, "failure")]


def test_gang_restart_backs_off_under_repeated_failures():
    sim = Sim({"serving": 2})

    def crash_whenever_up(s: Sim) -> None:
        g = s.groups[("serving", 1)]
        if g.serving and len(s.restarts) < 9:
            g.crashed, g.serving = True, False

    sim.run(max_steps=200, each=crash_whenever_up)
    times = [t for t, a in sim.restarts]
    assert all(a == RestartGroup("serving", 1, "failure") for _, a in sim.restarts)
    assert [b - a for a, b in itertools.pairwise(times)] == [30, 60, 120, 240, 480, 600, 600, 600]
    assert sim.groups[("serving", 0)].last_restart is None  # the healthy group was never touched


# ---- steady state, first deployment, scaling -------------------------------------------------
@pytest.mark.parametrize("replicas", [{"serving": 3}, {"prefill": 2, "decode": 4}])
def test_steady_state_returns_nothing(replicas):
    assert next_step(fleet(replicas), Desired(replicas, 2), 0.0) == []


def test_first_deployment_creates_everything_and_restarts_nothing():
    replicas = {"prefill": 2, "decode": 3}
    acts = next_step([], Desired(replicas), 0.0)
    assert acts == [CreateGroup("prefill", 0), CreateGroup("prefill", 1)] + [
        CreateGroup("decode", i) for i in range(3)
    ]
    sim = Sim({})
    sim.desired = Desired(replicas)
    sim.run()
    assert sim.restarts == [] and sim.true_unavailable() == 0


def test_scale_down_deletes_highest_index_first_and_up_creates_missing():
    groups = fleet({"serving": 5})
    assert next_step(groups, Desired({"serving": 2}), 0.0) == [DeleteGroup("serving", i) for i in (4, 3, 2)]
    up = next_step([*groups[:2], state(index=2, exists=False)], Desired({"serving": 4}), 0.0)
    assert up == [CreateGroup("serving", 2), CreateGroup("serving", 3)]
    removed_role = next_step(fleet({"serving": 1, "decode": 1}), Desired({"decode": 1}), 0.0)
    assert removed_role == [DeleteGroup("serving", 0)]


def test_scaling_in_a_simulation_settles():
    sim = Sim({"prefill": 1, "decode": 4})
    sim.desired = Desired({"prefill": 3, "decode": 2})
    sim.run()
    assert sorted(sim.groups) == [
        ("decode", 0),
        ("decode", 1),
        ("prefill", 0),
        ("prefill", 1),
        ("prefill", 2),
    ]
    assert sim.steps[0] == [
        DeleteGroup("decode", 3),
        DeleteGroup("decode", 2),
        CreateGroup("prefill", 1),
        CreateGroup("prefill", 2),
    ]


# ---- rollouts --------------------------------------------------------------------------------
EXPECTED_ORDER = {
    1: [
        "prefill-0",
        "decode-0",
        "decode-1",
        "prefill-1",
        "decode-2",
        "decode-3",
        "prefill-2",
        "decode-4",
        "decode-5",
    ],
    2: [
        "prefill-0",
        "decode-0",
        "decode-1",
        "prefill-1",
        "decode-2",
        "decode-3",
        "prefill-2",
        "decode-4",
        "decode-5",
    ],
}


@pytest.mark.parametrize("max_unavailable", [1, 2])
def test_rollout_3_prefill_6_decode(max_unavailable):
    sim = Sim({"prefill": 3, "decode": 6}, max_unavailable)
    sim.rev = 1
    share = Fraction(1, 3)  # one group's share of the smaller role

    def check(s: Sim) -> None:
        assert s.true_unavailable() <= max_unavailable
        assert s.gap() <= share

    sim.run(each=check)
    check(sim)
    order = sim.rollouts()
    assert order == EXPECTED_ORDER[max_unavailable]
    assert sorted(order) == sorted(f"{r}-{i}" for r, n in sim.desired.replicas.items() for i in range(n))
    assert all(g.rev == 1 and g.serving and not g.restarting for g in sim.groups.values())
    per_step = [sum(isinstance(a, RestartGroup) for a in acts) for acts in sim.steps]
    assert max(per_step) == max_unavailable  # the budget is used, not just respected


def test_rollout_waits_for_a_restarting_group():
    groups = [state("prefill", 0, ready=False, restarting=True)] + [
        state("decode", i, ready=False, outdated=True) for i in range(2)
    ]
    (wait,) = next_step(groups, Desired({"prefill": 1, "decode": 2}), 0.0)
    assert isinstance(wait, Wait) and wait.requeue_after is None and "prefill-0" in wait.reason
    two = next_step(groups, Desired({"prefill": 1, "decode": 2}, 2), 0.0)
    assert two == [RestartGroup("decode", 0, "rollout")]


def test_a_failure_during_a_rollout_pauses_it():
    sim = Sim({"prefill": 3, "decode": 6}, 2)
    sim.rev = 1
    failed_seen: list[bool] = []

    def crash_decode_5_twice(s: Sim) -> None:
        g = s.groups[("decode", 5)]
        if len(s.rollouts()) >= 3 and g.failures < 2 and g.serving and not g.restarting:
            g.crashed, g.serving = True, False  # the second crash meets the 30 s backoff
        failed_seen.append(g.crashed)

    sim.run(each=crash_decode_5_twice)
    during = [acts for seen, acts in zip(failed_seen, sim.steps, strict=True) if seen]
    assert any(isinstance(a, Wait) and a.requeue_after for acts in during for a in acts)
    assert all(
        a == RestartGroup("decode", 5, "failure") for acts in during for a in acts if not isinstance(a, Wait)
    )
    failures = [a for _, a in sim.restarts if a.reason == "failure"]
    assert failures == [RestartGroup("decode", 5, "failure")] * 2
    # decode-5 got the new template through its failure restart, so it was not rolled again.
    assert "decode-5" not in sim.rollouts() and len(sim.rollouts()) == 8
    assert all(g.rev == 1 and g.serving for g in sim.groups.values())


def test_failed_group_in_backoff_pauses_the_rollout():
    groups = [
        *fleet({"prefill": 1, "decode": 1}, ready=False, outdated=True),
        state("decode", 1, ready=False, failed=True, failures=2, last_restart=0.0),
    ]
    acts = next_step(groups, Desired({"prefill": 1, "decode": 2}), 10.0)
    assert [type(a) for a in acts] == [Wait, Wait]
    assert acts[0].requeue_after == pytest.approx(50.0) and "paused" in acts[1].reason


def test_no_rollout_before_the_deployment_is_whole():
    groups = fleet({"serving": 2}, ready=False, outdated=True)
    assert next_step(groups, Desired({"serving": 3}, 3), 0.0) == [CreateGroup("serving", 2)]


def test_a_restart_overtaken_by_a_newer_spec_is_restarted_again():
    groups = [
        state(index=0, ready=False, restarting=True, outdated=True),
        state(index=1, ready=False, outdated=True),
    ]
    assert next_step(groups, Desired({"serving": 2}), 0.0) == [RestartGroup("serving", 0, "rollout")]


def test_spec_change_during_a_rollout_completes():
    sim = Sim({"prefill": 2, "decode": 2}, load=5)
    sim.rev = 1

    def bump_once(s: Sim) -> None:
        if len(s.rollouts()) == 2 and s.rev == 1:
            s.rev = 2

    sim.run(each=bump_once)
    assert all(g.rev == 2 and not g.restarting for g in sim.groups.values())


# ---- idempotence and the executor's guard ---------------------------------------------------
def test_same_observation_same_actions_and_restarting_groups_left_alone():
    groups = fleet({"prefill": 2, "decode": 2}, ready=False, outdated=True)
    desired = Desired({"prefill": 2, "decode": 2}, 2)
    first = next_step(groups, desired, 5.0)
    assert first == next_step(groups, desired, 5.0) == next_step(list(reversed(groups)), desired, 5.0)
    assert first == [RestartGroup("prefill", 0, "rollout"), RestartGroup("decode", 0, "rollout")]
    after = [
        replace(g, restarting=True, outdated=False)
        if (g.role, g.index) in {("prefill", 0), ("decode", 0)}
        else g
        for g in groups
    ]
    (wait,) = next_step(after, desired, 6.0)
    assert isinstance(wait, Wait)
    crashed_while_restarting = [replace(g, failed=True) if g.restarting else g for g in after]
    assert next_step(crashed_while_restarting, desired, 6.0) == [wait]


def test_enforce_bounds_drops_what_would_break_a_bound():
    desired = Desired({"prefill": 2, "decode": 2}, 1)
    groups = [
        *fleet({"prefill": 2, "decode": 1}, ready=False, outdated=True),
        state("decode", 1, ready=False, restarting=True),
        state("decode", 2),
    ]
    crafted = [
        RestartGroup("prefill", 0, "rollout"),  # U = 1 already (decode-1 restarting)
        RestartGroup("prefill", 1, "rollout"),
        RestartGroup("decode", 0, "failure"),  # not failed: an unbudgeted rollout
        RestartGroup("decode", 1, "rollout"),  # already restarting
        RestartGroup("decode", 9, "rollout"),  # no such group
        DeleteGroup("prefill", 0),  # a wanted group
        DeleteGroup("decode", 2),  # surplus: kept
        CreateGroup("decode", 0),  # exists
        CreateGroup("decode", 5),  # not wanted
        Wait("why not", 3.0),
    ]
    assert enforce_bounds(groups, desired, crafted) == [DeleteGroup("decode", 2), Wait("why not", 3.0)]
    two = Desired({"prefill": 2, "decode": 2}, 2)
    assert enforce_bounds(groups, two, crafted[:2]) == [RestartGroup("prefill", 0, "rollout")]
    three = Desired({"prefill": 2, "decode": 2}, 3)
    assert enforce_bounds(groups, three, crafted[:2] + crafted[:1]) == crafted[:2]  # duplicate dropped


def test_enforce_bounds_lets_failure_and_stale_restarts_through():
    desired = Desired({"serving": 3}, 1)
    groups = [
        state(index=0, ready=False, failed=True),
        state(index=1, ready=False, restarting=True, outdated=True),
        state(index=2, ready=False, outdated=True),
    ]
    acts = [RestartGroup("serving", 0, "failure"), RestartGroup("serving", 1, "rollout")]
    assert enforce_bounds(groups, desired, acts) == acts
    assert enforce_bounds(groups, desired, [RestartGroup("serving", 2, "rollout")]) == []


def test_desired_is_validated():
    with pytest.raises(ValueError):
        Desired({"serving": 1}, 0)
    with pytest.raises(ValueError):
        Desired({"serving": -1})


# ---- random fleets and failure schedules ----------------------------------------------------
@st.composite
def scenarios(draw):
    disagg = draw(st.booleans())
    roles = ("prefill", "decode") if disagg else ("serving",)
    before = {r: draw(st.integers(0 if not disagg else 1, 5)) for r in roles}
    after = {r: draw(st.integers(1, 6)) for r in roles} if draw(st.booleans()) else dict(before)
    max_u = draw(st.integers(1, 3))
    load = draw(st.integers(1, 4))
    crashes = draw(
        st.lists(st.tuples(st.integers(0, 40), st.sampled_from(roles), st.integers(0, 5)), max_size=5)
    )
    bump = draw(st.none() | st.integers(1, 30))
    return before, after, max_u, load, crashes, bump


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_random_fleets_keep_the_invariants_and_converge(scenario):
    before, after, max_u, load, crashes, bump = scenario
    sim = Sim(before, max_u, load)
    sim.rev = 1
    sim.desired = Desired(after, max_u)
    tick = [0]
    pure = after == before and not crashes and bump is None
    new = sum(max(0, n - before.get(r, 0)) for r, n in after.items())  # groups created: down until loaded

    def each(s: Sim) -> None:
        for at, role, index in crashes:
            g = s.groups.get((role, index))
            if at == tick[0] and g and not g.restarting:
                g.crashed, g.serving = True, False
        if bump is not None and tick[0] == bump:
            s.rev = 2
        if bump is None and not crashes:
            assert s.true_unavailable() <= max(max_u, new)
        if pure and len(after) == 2:
            assert s.gap() <= max(Fraction(1, n) for n in after.values())
        tick[0] += 1

    sim.run(max_steps=2000, each=each)
    assert sorted(sim.groups) == sorted((r, i) for r, n in after.items() for i in range(n))
    assert all(g.rev == sim.rev and g.serving and not g.restarting for g in sim.groups.values())
    if pure:
        assert sorted(sim.rollouts()) == sorted(f"{r}-{i}" for r, n in after.items() for i in range(n))


# ---- a gated rollout (spec.rollout.gate): one canary group first ----------------------------
CLOSED = Gate(False, "rollout waits for the canary evaluation (gsm8k) of serving-0")


def test_a_gated_rollout_restarts_exactly_one_group_first():
    groups = fleet({"serving": 3}, ready=False, outdated=True)
    ungated = next_step(groups, Desired({"serving": 3}, 3), 0.0)
    assert len(ungated) == 3  # the budget alone would take all three
    # the controller's gate before any group is updated says "no rollout under way" (passed)
    for gate in (Gate(True, "no rollout under way"), CLOSED):
        desired = Desired({"serving": 3}, 3, gate=gate)
        assert canary_of(groups, desired) is None
        assert next_step(groups, desired, 0.0) == [RestartGroup("serving", 0, "rollout")]


def test_the_canary_is_the_first_updated_group():
    groups = [
        state(index=0, ready=False, restarting=True),
        state(index=1, ready=False, outdated=True),
        state(index=2, ready=False, outdated=True),
    ]
    assert canary_of(groups, Desired({"serving": 3})) == groups[0]
    pd = [
        state("decode", 0, ready=False, outdated=True),
        state("prefill", 0),
        state("prefill", 1, outdated=True),
    ]
    assert canary_of(pd, Desired({"prefill": 2, "decode": 1})).key == ("prefill", 0)
    assert canary_of(fleet({"serving": 2}), Desired({"serving": 2})) is None  # no rollout under way


def test_no_further_pick_until_the_gate_passes():
    canary_ready = [
        state(index=0),
        state(index=1, ready=False, outdated=True),
        state(index=2, ready=False, outdated=True),
    ]
    held = Desired({"serving": 3}, 3, gate=CLOSED)
    assert next_step(canary_ready, held, 0.0) == [Wait(CLOSED.why, None)]
    restarting = [replace(canary_ready[0], ready=False, restarting=True), *canary_ready[1:]]
    assert next_step(restarting, held, 0.0) == [Wait(CLOSED.why, None)]
    passed = Desired({"serving": 3}, 3, gate=Gate(True, "canary passed: ..."))
    assert next_step(canary_ready, passed, 0.0) == [
        RestartGroup("serving", 1, "rollout"),
        RestartGroup("serving", 2, "rollout"),
    ]
    # without a gate the same observation rolls on at once
    assert next_step(canary_ready, Desired({"serving": 3}, 3), 0.0) == next_step(canary_ready, passed, 0.0)


def test_a_closed_gate_still_lets_failure_restarts_through():
    groups = [
        state(index=0),
        state(index=1, ready=False, failed=True, outdated=True),
        state(index=2, ready=False, outdated=True),
    ]
    acts = next_step(groups, Desired({"serving": 3}, 3, gate=CLOSED), 0.0)
    assert RestartGroup("serving", 1, "failure") in acts
    assert not [a for a in acts if isinstance(a, RestartGroup) and a.reason == "rollout"]


def test_enforce_bounds_drops_a_rollout_restart_past_a_closed_gate():
    groups = [
        state(index=0),
        state(index=1, ready=False, outdated=True),
        state(index=2, ready=False, outdated=True),
    ]
    crafted = [RestartGroup("serving", 1, "rollout"), RestartGroup("serving", 2, "rollout")]
    assert enforce_bounds(groups, Desired({"serving": 3}, 3, gate=CLOSED), crafted) == []
    assert enforce_bounds(groups, Desired({"serving": 3}, 3, gate=Gate(True)), crafted) == crafted
    assert enforce_bounds(groups, Desired({"serving": 3}, 3), crafted) == crafted


@pytest.mark.parametrize("gate", [Gate(True, "no rollout under way"), CLOSED])
def test_enforce_bounds_lets_one_group_alone_start_a_gated_rollout(gate):
    groups = fleet({"serving": 3}, ready=False, outdated=True)
    crafted = [RestartGroup("serving", i, "rollout") for i in range(3)]
    assert enforce_bounds(groups, Desired({"serving": 3}, 3, gate=gate), crafted) == crafted[:1]
    assert enforce_bounds(groups, Desired({"serving": 3}, 3), crafted) == crafted


class GatedSim(Sim):
    """Time passes while the gate holds: the canary's evaluation runs outside the planner's view."""

    def advance(self, acts: list) -> None:
        super().advance([] if acts == [Wait(CLOSED.why, None)] else acts)  # one tick, loading goes on


def _gated_sim(replicas: dict[str, int], max_unavailable: int, passes_after: int | None) -> tuple[Sim, list]:
    """A rollout whose gate passes `passes_after` ticks after the canary is ready (None: never)."""
    sim = GatedSim(replicas, max_unavailable)
    sim.rev = 1
    ready_for = [0]
    log: list[tuple[int, bool]] = []  # (rollout restarts so far, gate passed) at each step

    def gate(s: Sim) -> None:
        obs = s.observe()
        c = canary_of(obs, s.desired)
        if c is None:
            g = Gate(True, "no rollout under way")
        else:
            ready_for[0] = ready_for[0] + 1 if c.ready else 0
            ok = passes_after is not None and ready_for[0] > passes_after
            g = Gate(True, "canary passed") if ok else CLOSED
        s.desired = replace(s.desired, gate=g)
        log.append((len(s.rollouts()), g.passed))

    return sim, [gate, log]


def test_a_gated_simulated_rollout_waits_for_its_canary_then_completes():
    sim, (gate, log) = _gated_sim({"serving": 3}, 3, passes_after=4)
    sim.run(each=gate)
    assert sim.rollouts() == ["serving-0", "serving-1", "serving-2"]
    first = [a for a in sim.steps[0] if isinstance(a, RestartGroup)]
    assert first == [RestartGroup("serving", 0, "rollout")]
    # nothing else was restarted until the gate had passed
    before = [n for n, passed in log if not passed and n > 0]
    assert before and max(before) == 1
    assert all(g.rev == 1 and g.serving for g in sim.groups.values())


def test_a_gated_pd_rollout_starts_with_prefill_0_alone():
    sim, (gate, _) = _gated_sim({"prefill": 2, "decode": 4}, 2, passes_after=2)
    sim.run(each=gate)
    assert sim.rollouts()[0] == "prefill-0"
    assert [a for a in sim.steps[0] if isinstance(a, RestartGroup)] == [RestartGroup("prefill", 0, "rollout")]
    assert sorted(sim.rollouts()) == sorted(["prefill-0", "prefill-1"] + [f"decode-{i}" for i in range(4)])


def test_a_gate_that_never_passes_holds_the_rollout_after_the_canary():
    sim, (gate, _) = _gated_sim({"serving": 3}, 3, passes_after=None)
    for _ in range(20):
        gate(sim)
        sim.step()
    assert sim.rollouts() == ["serving-0"]
    assert sim.steps[-1] == [Wait(CLOSED.why, None)]
    assert [g.rev for _, g in sorted(sim.groups.items())] == [1, 0, 0]  # the rest serve the old spec
