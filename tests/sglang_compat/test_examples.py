"""Golden tests: every example reproduces its documented command, checked by SGLang's own parser.

- Planned for 0.5.12 (the `nsa` dialect of the usage page), each pod's argv parses to exactly
  the values the documented command parses to (hosts and ports filled in by the cluster aside).
- Planned for 0.5.23, the same example parses under 0.5.23 and means the same: the documented
  values, translated to 0.5.23's names, are exactly what 0.5.23 parses from our argv.
- Every plan the property strategy produces parses under a real parser of its dialect.
"""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings

from dsa_operator.errors import PlanError
from dsa_operator.planner import plan
from tests.conftest import ROOT, load
from tests.sglang_compat import envs
from tests.sglang_compat.test_real_parser import ROUTER_ROWS, SEED_ROWS
from tests.strategies import manifests

pytestmark = pytest.mark.sglang

CLUSTER_FILLED = {"host", "port", "dist_init_addr"}
ENGINE = ["python3", "-m", "sglang.launch_server"]

# example -> {(role, rank): documented seed row}
GOLDEN: dict[str, dict[tuple[str, int], str]] = {
    "01-tp-dp-attention": {("serving", 0): "01-tp-dp-attn"},
    "02-ep-dp-attention": {("serving", 0): "02-ep-dp-attn"},
    "03-pure-tp": {("serving", 0): "03-pure-tp"},
    "04-glm5": {("serving", 0): "04-glm5"},
    "05-mtp": {("serving", 0): "05-mtp"},
    "06-v32-exp-tools-reasoning": {("serving", 0): "06-v32exp-tools"},
    "07-v32-tools-reasoning": {("serving", 0): "07-v32-tools"},
    "08-v32-speciale": {("serving", 0): "08-speciale"},
    "09-glm5-tools-reasoning": {("serving", 0): "09-glm5-tools"},
    "10-glm5-indexcache": {("serving", 0): "10-glm5-indexcache"},
    "11-nvfp4-blackwell": {("serving", 0): "11-nvfp4-flashinfer_trtllm"},
    "12-pd": {("prefill", 0): "12-pd-prefill", ("decode", 0): "13-pd-decode"},
    "15-cp-in-seq-split": {("serving", 0): "15-cp-in-seq-split"},
    "16-cp-round-robin": {("serving", 0): "16-cp-round-robin"},
    "17-pp-cp": {("serving", 0): "17-pp-cp-node0", ("serving", 1): "18-pp-cp-node1"},
    # 17-pp-cp on H200 nodes with spec.placement: placement changes where pods run, not their argv.
    "18-placement": {("serving", 0): "17-pp-cp-node0", ("serving", 1): "18-pp-cp-node1"},
    "19-pd-pp-cp": {("prefill", 0): "19-pd-pp-cp-node0", ("prefill", 1): "20-pd-pp-cp-node1"},
}
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.yaml"))
NEW_ONLY_INVALID = {"15-cp-in-seq-split"}  # SGLang 0.5.20+ rejects in-seq-split for DeepSeek-V3.2


def test_every_example_has_a_golden_row():
    assert set(GOLDEN) == set(EXAMPLES)


def _engine_pods(example: str, version: str):
    p = plan(load(ROOT / "examples" / f"{example}.yaml"), sglang_version=version)
    return {(x.role, x.rank): x for x in p.pods if x.group == 0 and x.role != "router"}, p


def _explicit(parsed: dict, defaults: dict) -> dict:
    """The values a command sets: those that differ from the parser's defaults."""
    return {k: v for k, v in parsed.items() if k not in CLUSTER_FILLED and defaults.get(k) != v}


@pytest.fixture(scope="module")
def parsed(sglang_0_5_12, sglang_0_5_23):
    """One subprocess per version: the documented rows, our argvs, and the defaults."""
    rows = sorted({row for pairs in GOLDEN.values() for row in pairs.values()})
    old_ours, new_ours = {}, {}
    for ex in EXAMPLES:
        for key, pod in _engine_pods(ex, "0.5.12")[0].items():
            old_ours[(ex, *key)] = pod.argv[len(ENGINE) :]
        if ex not in NEW_ONLY_INVALID:
            for key, pod in _engine_pods(ex, "0.5.23")[0].items():
                new_ours[(ex, *key)] = pod.argv[len(ENGINE) :]
    minimal = ["--model-path", "m"]
    old = envs.parse_many("0.5.12", [minimal] + [SEED_ROWS[r] for r in rows] + list(old_ours.values()))
    new = envs.parse_many("0.5.23", [minimal, *list(new_ours.values())])
    return {
        "defaults12": old[0],
        "rows": dict(zip(rows, old[1 : 1 + len(rows)], strict=True)),
        "old": dict(zip(old_ours, old[1 + len(rows) :], strict=True)),
        "defaults23": new[0],
        "new": dict(zip(new_ours, new[1:], strict=True)),
    }


def _ok(result):
    if isinstance(result, envs.ParseError):
        pytest.fail(f"rejected by the real parser: {result}")
    return result


@pytest.mark.parametrize("example", EXAMPLES)
def test_nsa_dialect_reproduces_the_documented_command(parsed, example):
    for (role, rank), row in GOLDEN[example].items():
        ours = _explicit(_ok(parsed["old"][(example, role, rank)]), parsed["defaults12"])
        doc = _explicit(_ok(parsed["rows"][row]), parsed["defaults12"])
        assert ours == doc, f"{example} {role} rank {rank} vs seed row {row}"


def _to_0_5_23(doc: dict) -> dict:
    """The documented (0.5.12) values under 0.5.23's names."""
    out = dict(doc)
    for old, new in (
        ("tensor_parallel_size", "tp_size"),
        ("pipeline_parallel_size", "pp_size"),
        ("data_parallel_size", "dp_size"),
        ("expert_parallel_size", "ep_size"),
        ("nsa_prefill_backend", "dsa_prefill_backend"),
        ("nsa_decode_backend", "dsa_decode_backend"),
        ("cuda_graph_max_bs", "cuda_graph_max_bs_decode"),
    ):
        if old in out:
            out[new] = out.pop(old)
    if out.pop("enable_nsa_prefill_context_parallel", False):
        out["enable_prefill_cp"] = True
        mode = doc.get("nsa_prefill_cp_mode", "round-robin-split")
        out["cp_strategy"] = {"in-seq-split": "zigzag", "round-robin-split": "interleave"}[mode]
    out.pop("nsa_prefill_cp_mode", None)
    if out.pop("enable_dp_attention", False):
        out["attn_dp_size"] = out.pop("dp_size")
    return out


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e not in NEW_ONLY_INVALID])
def test_dsa_dialect_expresses_the_same_configuration(parsed, example):
    for (role, rank), row in GOLDEN[example].items():
        ours = _explicit(_ok(parsed["new"][(example, role, rank)]), parsed["defaults23"])
        doc = _to_0_5_23(_explicit(_ok(parsed["rows"][row]), parsed["defaults12"]))
        assert ours == doc, f"{example} {role} rank {rank} vs seed row {row} (0.5.23 spelling)"


def test_in_seq_split_example_is_refused_for_0_5_23():
    with pytest.raises(PlanError) as e:
        plan(load(ROOT / "examples" / "15-cp-in-seq-split.yaml"), sglang_version="0.5.23")
    assert "round-robin-split" in str(e.value)


@pytest.mark.parametrize("version", ["0.5.12", "0.5.23"])
def test_every_example_pod_parses(version, sglang_0_5_12, sglang_0_5_23, sglang_router_env):
    pods = []
    for ex in EXAMPLES:
        with contextlib.suppress(PlanError):
            pods += [
                p.model_dump()
                for p in plan(load(ROOT / "examples" / f"{ex}.yaml"), sglang_version=version).pods
            ]
    assert pods
    assert envs.check_plan_pods(version, pods) == []


def test_decode_of_pd_pp_cp_is_ep(parsed):
    new = _ok(parsed["new"][("19-pd-pp-cp", "decode", 0)])
    assert (new["tp_size"], new["ep_size"], new["attn_dp_size"]) == (8, 8, 8)


def test_static_router_reproduces_row_14(sglang_router_env):
    m = load(ROOT / "examples" / "12-pd.yaml")
    m["spec"]["router"]["discovery"] = "static"
    argv = plan(m).router.argv[3:]
    ours, doc = envs.parse_router_many([argv, ROUTER_ROWS["14-pd-static"]])
    ours, doc = _ok(ours)["namespace"], _ok(doc)["namespace"]
    # Cluster-filled: the workers' addresses. Ours adds the policy and metrics port it always sets,
    # and health-checks workers with /health_generate, which rank > 0 pods do not answer (the one
    # deliberate difference: a reused address of a former leader is dropped, never routed to).
    assert len(ours.pop("prefill")) == len(doc.pop("prefill")) == 1
    assert len(ours.pop("decode")) == len(doc.pop("decode")) == 1
    assert (ours.pop("policy"), ours.pop("prometheus_port")) == ("cache_aware", 29000)
    doc.pop("policy"), doc.pop("prometheus_port")
    assert (ours.pop("health_check_endpoint"), doc.pop("health_check_endpoint")) == (
        "/health_generate",
        "/health",
    )
    assert ours == doc
    assert argv[argv.index("--prefill") + 2] == "8998"


def test_generated_plans_parse(sglang_0_5_12, sglang_0_5_16, sglang_0_5_23, sglang_router_env):
    """Plans of generated specs parse under the installed release of their dialect nearest to the
    version drawn (0.5.12 for nsa, 0.5.16 for the transitional range, 0.5.23 for dsa)."""
    plans = []

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(manifests())
    def gather(m):
        with contextlib.suppress(PlanError):
            plans.append(plan(m))

    gather()
    by_version: dict[str, list[dict]] = {}
    for p in plans:
        version = {
            "0.5.9": "0.5.12",
            "0.5.13": "0.5.16",
            "0.5.14": "0.5.16",
            "0.5.19": "0.5.16",
            "0.5.20": "0.5.23",
            "0.5.22": "0.5.23",
        }.get(p.sglang_version, p.sglang_version)
        if version in ("0.5.12", "0.5.16", "0.5.23"):
            by_version.setdefault(version, []).extend(x.model_dump() for x in p.pods)
    assert sum(len(v) for v in by_version.values()) > 50, "too few valid plans generated"
    for version, pods in by_version.items():
        assert envs.check_plan_pods(version, pods) == [], version
    print(
        f"\nparsed {sum(len(v) for v in by_version.values())} generated pod argvs: "
        f"{ {k: len(v) for k, v in by_version.items()} }"
    )
