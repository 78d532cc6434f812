"""The planner: topology, names and per-rank command lines, as a user would check them."""

from __future__ import annotations

import contextlib
import copy

import pytest

from dsa_operator.errors import PlanError
from dsa_operator.planner import plan
from tests.conftest import ROOT, load


def example(name: str) -> dict:
    return load(ROOT / "examples" / f"{name}.yaml")


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def engine_pods(p, role=None):
    return [pod for pod in p.pods if pod.role != "router" and (role is None or pod.role == role)]


def test_pp_cp_group_is_two_ranks_of_one_world():
    p = plan(example("17-pp-cp"), sglang_version="0.5.12")
    pods = engine_pods(p)
    assert [(x.group, x.rank) for x in pods] == [(0, 0), (0, 1)]
    assert [flag(x.argv, "--nnodes") for x in pods] == ["2", "2"]
    assert [flag(x.argv, "--node-rank") for x in pods] == ["0", "1"]
    addrs = {flag(x.argv, "--dist-init-addr") for x in pods}
    assert addrs == {"dsv32-pp-cp-serving-0-0.dsv32-pp-cp-serving-0.default.svc:20000"}
    assert all(x.env["SGLANG_PP_LAYER_PARTITION"] == "30,31" for x in pods)
    assert "--enable-nsa-prefill-context-parallel" in pods[0].argv
    assert flag(pods[0].argv, "--nsa-prefill-cp-mode") == "round-robin-split"


def test_pp_cp_in_newest_dialect_has_no_nsa_flags():
    p = plan(example("17-pp-cp"), sglang_version="0.5.23")
    for pod in engine_pods(p):
        assert not [a for a in pod.argv if a.startswith("--nsa-")]
        assert "--enable-prefill-cp" in pod.argv
        assert flag(pod.argv, "--cp-strategy") == "interleave"
        assert flag(pod.argv, "--cuda-graph-max-bs-decode") == "8"


def test_namespace_fills_leader_address():
    m = example("17-pp-cp")
    m["metadata"]["namespace"] = "llm"
    p = plan(m)
    assert p.role("serving").groups[0].leader_address == (
        "dsv32-pp-cp-serving-0-0.dsv32-pp-cp-serving-0.llm.svc:20000"
    )
    assert p.endpoint.url == "http://dsv32-pp-cp.llm.svc:8000/v1"


def test_pd_roles_router_and_bootstrap():
    p = plan(example("12-pd"))
    prefill, decode = engine_pods(p, "prefill"), engine_pods(p, "decode")
    assert len(prefill) == len(decode) == 1
    assert flag(prefill[0].argv, "--disaggregation-mode") == "prefill"
    assert flag(prefill[0].argv, "--disaggregation-bootstrap-port") == "8998"
    assert flag(decode[0].argv, "--disaggregation-mode") == "decode"
    assert "--disaggregation-bootstrap-port" not in decode[0].argv
    router = [x for x in p.pods if x.role == "router"]
    assert len(router) == 1 and p.router is not None
    argv = router[0].argv
    assert argv[:3] == ["python3", "-m", "sglang_router.launch_router"]
    assert "--pd-disaggregation" in argv and "--service-discovery" in argv
    i = argv.index("--prefill-selector")
    assert "apps.kubernetes.io/pod-index=0" in argv[i + 1 : argv.index("--decode-selector")]
    assert p.endpoint.port == 8000


def test_pd_pp_cp_prefill_two_nodes_decode_ep():
    p = plan(example("19-pd-pp-cp"))
    assert p.role("prefill").nodes_per_group == 2
    assert p.role("decode").nodes_per_group == 1
    dec = engine_pods(p, "decode")[0].argv
    assert flag(dec, "--ep-size") == "8" and "--enable-prefill-cp" not in dec
    pre = engine_pods(p, "prefill")
    assert [flag(x.argv, "--node-rank") for x in pre] == ["0", "1"]
    assert all(flag(x.argv, "--served-model-name") == "deepseek-v32" for x in p.pods if x.role != "router")


def test_static_router_lists_rank0_dns_names():
    m = example("12-pd")
    m["spec"]["router"]["discovery"] = "static"
    m["spec"]["decode"]["replicas"] = 2
    argv = plan(m).router.argv
    assert argv.count("--decode") == 2
    i = argv.index("--prefill")
    assert argv[i + 1 : i + 3] == [
        "http://dsv32-exp-pd-prefill-0-0.dsv32-exp-pd-prefill-0.default.svc:30000",
        "8998",
    ]


def test_replicas_make_groups_with_own_statefulsets():
    m = example("01-tp-dp-attention")
    m["spec"]["serving"]["replicas"] = 3
    p = plan(m)
    assert [g.stateful_set for g in p.role("serving").groups] == [
        "dsv32-exp-tp-dp-serving-0",
        "dsv32-exp-tp-dp-serving-1",
        "dsv32-exp-tp-dp-serving-2",
    ]
    assert p.router is not None  # several groups: the router balances them
    assert all(g.leader_address is None for g in p.role("serving").groups)
    assert all("--dist-init-addr" not in x.argv for x in engine_pods(p))


@pytest.mark.parametrize(
    ("accelerator", "kv", "expected"),
    [
        ("h200", "auto", ("flashmla_sparse", "fa3", "bf16")),
        ("h200", "fp8_e4m3", ("flashmla_kv", "flashmla_kv", "fp8_e4m3")),
        ("b200", "auto", ("trtllm", "trtllm", "fp8_e4m3")),
        ("gb300", "bf16", ("flashmla_sparse", "trtllm", "bf16")),
    ],
)
def test_auto_kernels_follow_the_seed_table(accelerator, kv, expected):
    m = example("03-pure-tp")
    m["spec"]["hardware"] = {"accelerator": accelerator, "gpusPerNode": 8}
    m["spec"]["serving"]["kernels"] = {"kvCacheDtype": kv}
    k = plan(m).role("serving").kernels
    assert (k.prefill, k.decode, k.kv_cache_dtype) == expected
    argv = engine_pods(plan(m))[0].argv
    assert "--dsa-prefill-backend" not in argv  # auto is SGLang's own choice: not passed


@pytest.mark.parametrize(("version", "kernel"), [("0.5.12", "tilelang"), ("0.5.23", "triton")])
def test_amd_defaults_by_version(version, kernel):
    m = example("03-pure-tp")
    m["spec"]["hardware"] = {"accelerator": "mi300x"}
    k = plan(m, sglang_version=version).role("serving").kernels
    assert (k.prefill, k.decode) == (kernel, kernel)


def test_explicit_kernels_use_the_dialect_spelling():
    m = example("03-pure-tp")
    m["spec"]["serving"]["kernels"] = {"prefill": "flashmla_sparse", "decode": "fa3", "kvCacheDtype": "bf16"}
    old = engine_pods(plan(m, sglang_version="0.5.12"))[0].argv
    new = engine_pods(plan(m, sglang_version="0.5.23"))[0].argv
    assert (
        flag(old, "--nsa-prefill-backend") == "flashmla_sparse" and flag(old, "--nsa-decode-backend") == "fa3"
    )
    assert (
        flag(new, "--dsa-prefill-backend") == "flashmla_sparse" and flag(new, "--dsa-decode-backend") == "fa3"
    )
    assert flag(new, "--kv-cache-dtype") == "bf16"


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.5.12", ["--dp-size", "8", "--enable-dp-attention"]),
        ("0.5.21", ["--dp-size", "8", "--enable-dp-attention"]),
        ("0.5.22", ["--attn-dp-size", "8"]),
    ],
)
def test_dp_attention_spelling(version, expected):
    argv = engine_pods(plan(example("01-tp-dp-attention"), sglang_version=version))[0].argv
    i = argv.index(expected[0])
    assert argv[i : i + len(expected)] == expected


@pytest.mark.parametrize(
    ("layers_family", "pp", "expected"),
    [
        ("deepseek-v3.2", 2, [30, 31]),
        ("deepseek-v3.2", 4, [15, 15, 15, 16]),
        ("glm-5", 4, [19, 19, 20, 20]),
        ("glm-5", 2, [39, 39]),
    ],
)
def test_pp_partition_computed_as_sglang_does(layers_family, pp, expected):
    m = example("03-pure-tp")
    m["spec"]["model"]["family"] = layers_family
    m["spec"]["serving"]["parallelism"] = {"tp": 8, "pp": pp}
    p = plan(m)
    assert p.role("serving").pp_layer_partition == expected
    assert engine_pods(p)[0].env["SGLANG_PP_LAYER_PARTITION"] == ",".join(map(str, expected))
    assert len(engine_pods(p)) == pp


def test_given_partition_is_used():
    m = example("17-pp-cp")
    m["spec"]["serving"]["parallelism"]["ppLayerPartition"] = [31, 30]
    assert engine_pods(plan(m))[0].env["SGLANG_PP_LAYER_PARTITION"] == "31,30"


def test_tool_calling_defaults_by_family():
    speciale = engine_pods(plan(example("08-v32-speciale")))[0].argv
    assert "--tool-call-parser" not in speciale and flag(speciale, "--reasoning-parser") == "deepseek-v3"
    exp = engine_pods(plan(example("06-v32-exp-tools-reasoning")))[0].argv
    assert flag(exp, "--tool-call-parser") == "deepseekv31"
    assert flag(exp, "--chat-template") == "./examples/chat_template/tool_chat_template_deepseekv32.jinja"
    glm = engine_pods(plan(example("09-glm5-tools-reasoning")))[0].argv
    assert (flag(glm, "--tool-call-parser"), flag(glm, "--reasoning-parser")) == ("glm47", "glm45")


def test_index_cache_is_json_override():
    argv = engine_pods(plan(example("10-glm5-indexcache")))[0].argv
    import json

    pattern = json.loads(flag(argv, "--json-model-override-args"))["index_topk_pattern"]
    assert len(pattern) == 78 and pattern.startswith("FFSF")


def test_nvfp4_flags():
    argv = engine_pods(plan(example("11-nvfp4-blackwell")))[0].argv
    assert flag(argv, "--quantization") == "modelopt_fp4"
    assert flag(argv, "--moe-runner-backend") == "flashinfer_trtllm"


def test_dense_threshold_env_by_dialect():
    m = example("03-pure-tp")
    m["spec"]["features"]["denseAttentionThreshold"] = 4096
    old = engine_pods(plan(m, sglang_version="0.5.12"))[0].env
    new = engine_pods(plan(m, sglang_version="0.5.23"))[0].env
    assert old["SGLANG_NSA_PREFILL_DENSE_ATTN_KV_LEN_THRESHOLD"] == "4096"
    assert new["SGLANG_DSA_PREFILL_DENSE_ATTN_KV_LEN_THRESHOLD"] == "4096"


def test_extra_args_come_last_and_env_merges():
    m = example("19-pd-pp-cp")
    m["spec"]["runtime"] = {"env": {"A": "1"}}
    m["spec"]["prefill"]["env"] = {"A": "2"}
    pod = engine_pods(plan(m), "prefill")[0]
    assert pod.argv[-2:] == ["--tokenizer-worker-num", "8"]
    assert pod.env["A"] == "2"


def test_generated_flags_are_full_names(example):
    for version in ("0.5.12", "0.5.23"):
        try:
            p = plan(example, sglang_version=version)
        except PlanError:
            continue
        for pod in p.pods:
            assert not {"--tp", "--dp", "--ep", "--pp", "--model"} & set(pod.argv)


def test_plan_does_not_mutate_its_input(example):
    before = copy.deepcopy(example)
    with contextlib.suppress(PlanError):
        plan(example, sglang_version="0.5.23")
    assert example == before


def test_engine_defaults_to_sglang_and_simulator_is_explicit_with_the_same_argv():
    m = example("19-pd-pp-cp")
    real = plan(m)
    assert real.engine == "sglang" and real.to_json_dict()["engine"] == "sglang"
    assert not [w for w in real.warnings if "simulator" in w]
    sim_manifest = copy.deepcopy(m)
    sim_manifest["spec"].setdefault("runtime", {})["engine"] = "simulator"
    sim = plan(sim_manifest)
    assert sim.engine == "simulator"
    # The simulator consumes the planned SGLang command lines unchanged (ports, rendezvous, PD).
    assert [p.argv for p in sim.pods] == [p.argv for p in real.pods]
    assert any("not model output" in w for w in sim.warnings)


def test_unknown_engine_is_refused_with_its_field():
    m = example("03-pure-tp")
    m["spec"].setdefault("runtime", {})["engine"] = "vllm"
    with pytest.raises(PlanError) as e:
        plan(m)
    assert [p.path for p in e.value.problems] == ["spec.runtime.engine"]
