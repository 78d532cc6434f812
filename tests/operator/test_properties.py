"""No input crashes the planner: generated manifests give a clean PlanError or a sound plan."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings

from dsa_operator.errors import PlanError
from dsa_operator.planner import plan
from tests.strategies import junk, manifests

PROPERTY_SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_plan(p) -> None:
    engine = [x for x in p.pods if x.role != "router"]
    expected = sum(r.replicas * r.nodes_per_group for r in p.roles)
    assert len(engine) == expected
    for r in p.roles:
        assert r.nodes_per_group * r.gpus_per_node == r.world_size
        for g in r.groups:
            pods = [x for x in engine if x.role == r.role and x.group == g.group]
            assert [x.rank for x in pods] == list(range(r.nodes_per_group))
            if r.nodes_per_group > 1:
                addrs = {x.argv[x.argv.index("--dist-init-addr") + 1] for x in pods}
                assert addrs == {g.leader_address}
                ranks = [x.argv[x.argv.index("--node-rank") + 1] for x in pods]
                assert ranks == [str(i) for i in range(r.nodes_per_group)]
        if r.pp_layer_partition is not None:
            assert len(r.pp_layer_partition) == int(
                next(x for x in engine if x.role == r.role).argv[
                    next(x for x in engine if x.role == r.role).argv.index("--pp-size") + 1
                ]
            )
    for x in p.pods:
        assert all(isinstance(a, str) for a in x.argv)
        if p.dialect == "dsa":
            assert not [a for a in x.argv if a.startswith("--nsa-")]
        if x.role == "decode":
            assert (
                "--enable-prefill-cp" not in x.argv and "--enable-nsa-prefill-context-parallel" not in x.argv
            )


@PROPERTY_SETTINGS
@given(manifests())
def test_generated_manifests_plan_or_fail_cleanly(m):
    try:
        p = plan(m)
    except PlanError as e:
        assert e.problems
        for problem in e.problems:
            assert problem.path.startswith(("spec", "metadata")) or problem.path == ""
            assert problem.message
        return
    _check_plan(p)


@settings(max_examples=200, deadline=None)
@given(junk)
def test_junk_never_crashes(value):
    for candidate in (value, {"metadata": {"name": "m"}, "spec": value}):
        with contextlib.suppress(PlanError):
            plan(candidate)
