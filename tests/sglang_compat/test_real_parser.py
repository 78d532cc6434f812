"""The documented commands (shared/reference/seed-commands.md) against the REAL parsers.

Each version's argvs are parsed in one subprocess (envs.parse_many), once per module.
"""

from __future__ import annotations

import pytest

from tests.sglang_compat import envs
from tests.sglang_compat.envs import ParseError

pytestmark = pytest.mark.sglang

M = ["--model-path", "deepseek-ai/DeepSeek-V3.2-Exp"]
IP, PORT, HEAD, DIST_PORT = "10.0.0.1", "30000", "10.0.0.2", "20000"
TP8_DP8 = ["--tp", "8", "--dp", "8", "--enable-dp-attention"]
PATTERN = "FFSFSSSFSSFFFSSSFFFSFSSSSSSFFSFFSFFSSFFFFFFSFFFFFSFFSSSSSSFSFFFSFSSSFSFFSFFSSS"
assert len(PATTERN) == 78


def _pp_cp(rank: int) -> list[str]:  # rows 17, 18
    return [
        *M,
        "--nnodes",
        "2",
        "--node-rank",
        str(rank),
        "--dist-init-addr",
        f"{HEAD}:62001",
        "--tp",
        "8",
        "--pp-size",
        "2",
        "--dp-size",
        "1",
        "--moe-dense-tp-size",
        "1",
        "--enable-nsa-prefill-context-parallel",
        "--nsa-prefill-cp-mode",
        "round-robin-split",
        "--trust-remote-code",
        "--disable-radix-cache",
        "--mem-fraction-static",
        "0.8",
        "--max-running-requests",
        "128",
        "--chunked-prefill-size",
        "16384",
        "--cuda-graph-max-bs",
        "8",
        "--page-size",
        "64",
        "--watchdog-timeout",
        "3600",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--tool-call-parser",
        "deepseekv32",
    ]


def _pd_pp_cp(rank: int) -> list[str]:  # rows 19, 20
    return [
        *M,
        "--served-model-name",
        "deepseek-v32",
        "--nnodes",
        "2",
        "--node-rank",
        str(rank),
        "--dist-init-addr",
        f"{HEAD}:20102",
        "--tp",
        "8",
        "--pp-size",
        "2",
        "--dp-size",
        "1",
        "--moe-dense-tp-size",
        "1",
        "--enable-nsa-prefill-context-parallel",
        "--nsa-prefill-cp-mode",
        "round-robin-split",
        "--disaggregation-ib-device",
        "mlx5_bond_0,mlx5_bond_1,mlx5_bond_2,mlx5_bond_3",
        "--trust-remote-code",
        "--disable-radix-cache",
        "--max-running-requests",
        "512",
        "--chunked-prefill-size",
        "4096",
        "--context-length",
        "131072",
        "--mem-fraction-static",
        "0.9",
        "--page-size",
        "64",
        "--enable-metrics",
        "--collect-tokens-histogram",
        "--tokenizer-worker-num",
        "8",
        "--host",
        "0.0.0.0",
        "--port",
        "30000",
        "--disaggregation-mode",
        "prefill",
    ]


# The seed's rows, literally (short flags as the docs write them), SGLang 0.5.9-0.5.12 dialect.
SEED_ROWS: dict[str, list[str]] = {
    "01-tp-dp-attn": [*M, *TP8_DP8],
    "02-ep-dp-attn": [*M, "--tp", "8", "--ep", "8", "--dp", "8", "--enable-dp-attention"],
    "03-pure-tp": [*M, "--tp", "8"],
    "04-glm5": ["--model-path", "zai-org/GLM-5-FP8", *TP8_DP8],
    "05-mtp": [
        *M,
        *TP8_DP8,
        "--speculative-algorithm",
        "EAGLE",
        "--speculative-num-steps",
        "3",
        "--speculative-eagle-topk",
        "1",
        "--speculative-num-draft-tokens",
        "4",
    ],
    "06-v32exp-tools": [
        *M,
        "--trust-remote-code",
        "--tp-size",
        "8",
        "--dp-size",
        "8",
        "--enable-dp-attention",
        "--tool-call-parser",
        "deepseekv31",
        "--reasoning-parser",
        "deepseek-v3",
        "--chat-template",
        "./examples/chat_template/tool_chat_template_deepseekv32.jinja",
    ],
    "07-v32-tools": [
        "--model-path",
        "deepseek-ai/DeepSeek-V3.2",
        "--trust-remote-code",
        "--tp-size",
        "8",
        "--dp-size",
        "8",
        "--enable-dp-attention",
        "--tool-call-parser",
        "deepseekv32",
        "--reasoning-parser",
        "deepseek-v3",
    ],
    "08-speciale": [
        "--model-path",
        "deepseek-ai/DeepSeek-V3.2-Speciale",
        "--trust-remote-code",
        "--tp-size",
        "8",
        "--dp-size",
        "8",
        "--enable-dp-attention",
        "--reasoning-parser",
        "deepseek-v3",
    ],
    "09-glm5-tools": [
        "--model-path",
        "zai-org/GLM-5-FP8",
        "--trust-remote-code",
        "--tp-size",
        "8",
        "--dp-size",
        "8",
        "--enable-dp-attention",
        "--tool-call-parser",
        "glm47",
        "--reasoning-parser",
        "glm45",
    ],
    "10-glm5-indexcache": [
        "--model-path",
        "zai-org/GLM-5-FP8",
        "--trust-remote-code",
        "--tp-size",
        "8",
        "--dp-size",
        "8",
        "--enable-dp-attention",
        "--tool-call-parser",
        "glm47",
        "--reasoning-parser",
        "glm45",
        "--json-model-override-args",
        '{"index_topk_pattern": "' + PATTERN + '"}',
    ],
    **{
        f"11-nvfp4-{be}": [
            "--model-path",
            "nvidia/DeepSeek-V3.2-NVFP4",
            *TP8_DP8,
            "--quantization",
            "modelopt_fp4",
            "--moe-runner-backend",
            be,
        ]
        for be in ("flashinfer_trtllm", "flashinfer_cutlass", "flashinfer_cutedsl")
    },
    "12-pd-prefill": [
        *M,
        "--disaggregation-mode",
        "prefill",
        "--host",
        IP,
        "--port",
        PORT,
        *TP8_DP8,
        "--dist-init-addr",
        f"{HEAD}:{DIST_PORT}",
        "--trust-remote-code",
        "--disaggregation-bootstrap-port",
        "8998",
        "--mem-fraction-static",
        "0.9",
    ],
    "13-pd-decode": [
        *M,
        "--disaggregation-mode",
        "decode",
        "--host",
        IP,
        "--port",
        PORT,
        *TP8_DP8,
        "--dist-init-addr",
        f"{HEAD}:{DIST_PORT}",
        "--trust-remote-code",
        "--mem-fraction-static",
        "0.9",
    ],
    "15-cp-in-seq-split": [
        *M,
        "--tp",
        "8",
        "--ep",
        "8",
        "--dp",
        "2",
        "--enable-dp-attention",
        "--enable-nsa-prefill-context-parallel",
        "--nsa-prefill-cp-mode",
        "in-seq-split",
        "--max-running-requests",
        "32",
    ],
    "16-cp-round-robin": [
        *M,
        "--tp",
        "8",
        "--enable-nsa-prefill-context-parallel",
        "--nsa-prefill-cp-mode",
        "round-robin-split",
        "--max-running-requests",
        "32",
    ],
    "17-pp-cp-node0": _pp_cp(0),
    "18-pp-cp-node1": _pp_cp(1),
    "19-pd-pp-cp-node0": _pd_pp_cp(0),
    "20-pd-pp-cp-node1": _pd_pp_cp(1),
}


def _to_0_5_23(argv: list[str]) -> list[str]:
    """The newest dialect: full flag names, dsa/prefill-cp names, per-phase cuda-graph bs."""
    full = {
        "--tp": "--tp-size",
        "--dp": "--dp-size",
        "--ep": "--ep-size",
        "--nsa-prefill-backend": "--dsa-prefill-backend",
        "--nsa-decode-backend": "--dsa-decode-backend",
        "--enable-nsa-prefill-context-parallel": "--enable-prefill-cp",
        "--nsa-prefill-cp-mode": "--cp-strategy",
        "--cuda-graph-max-bs": "--cuda-graph-max-bs-decode",
    }
    values = {"round-robin-split": "interleave", "in-seq-split": "zigzag"}
    # Gone in 0.5.23 (still in 0.5.16): "unrecognized arguments: --collect-tokens-histogram".
    dropped = {"--collect-tokens-histogram"}
    out, prev = [], None
    for a in argv:
        if a in dropped:
            continue
        if prev == "--cp-strategy":
            a = values.get(a, a)
        a = full.get(a, a)
        out.append(a)
        prev = a
    return out


NEW_ROWS = {name: _to_0_5_23(argv) for name, argv in SEED_ROWS.items()}

# Flags that must be rejected.
REJECT_0_5_23 = {
    "nsa-prefill-backend": [*M, "--tp-size", "8", "--nsa-prefill-backend", "flashmla_sparse"],
    "nsa-decode-backend": [*M, "--tp-size", "8", "--nsa-decode-backend", "fa3"],
    "nsa-cp-flag": [*M, "--tp-size", "8", "--enable-nsa-prefill-context-parallel"],
    "nsa-cp-mode": [*M, "--tp-size", "8", "--nsa-prefill-cp-mode", "round-robin-split"],
    "ambiguous-pp": [*M, "--tp-size", "8", "--pp", "2"],
    "ambiguous-cuda-graph-max-bs": [*M, "--tp-size", "8", "--cuda-graph-max-bs", "8"],
    "seed-row-17-literal": SEED_ROWS["17-pp-cp-node0"],
    "collect-tokens-histogram": [*M, "--enable-metrics", "--collect-tokens-histogram"],
    "cp-strategy-bad-choice": [*M, "--enable-prefill-cp", "--cp-strategy", "round-robin-split"],
}
REJECT_0_5_12 = {
    "cp-strategy": [*M, "--tp", "8", "--cp-strategy", "interleave"],
    "enable-prefill-cp": [*M, "--tp", "8", "--enable-prefill-cp"],
    "dsa-prefill-backend": [*M, "--tp", "8", "--dsa-prefill-backend", "flashmla_sparse"],
    "attn-dp-size": [*M, "--tp", "8", "--attn-dp-size", "8"],
    "ambiguous-pp": [*M, "--tp", "8", "--pp", "2"],
    "new-row-17": NEW_ROWS["17-pp-cp-node0"],
}
ACCEPT_0_5_23_EXTRA = {
    "attn-dp-size": [*M, "--tp-size", "8", "--attn-dp-size", "8"],
    "dsa-backends": [
        *M,
        "--tp-size",
        "8",
        "--attention-backend",
        "dsa",
        "--dsa-prefill-backend",
        "flashmla_sparse",
        "--dsa-decode-backend",
        "fa3",
        "--kv-cache-dtype",
        "bf16",
    ],
}
ACCEPT_0_5_12_EXTRA = {
    "nsa-backends": [
        *M,
        "--tp",
        "8",
        "--attention-backend",
        "nsa",
        "--nsa-prefill-backend",
        "flashmla_kv",
        "--nsa-decode-backend",
        "flashmla_kv",
        "--kv-cache-dtype",
        "fp8_e4m3",
    ],
}


def _batch(version: str, table: dict[str, list[str]]) -> dict[str, dict | ParseError]:
    names = list(table)
    return dict(zip(names, envs.parse_many(version, [table[n] for n in names]), strict=True))


@pytest.fixture(scope="module")
def parsed_0_5_12(sglang_0_5_12):
    return _batch(
        sglang_0_5_12,
        {**SEED_ROWS, **ACCEPT_0_5_12_EXTRA, **{f"reject:{k}": v for k, v in REJECT_0_5_12.items()}},
    )


@pytest.fixture(scope="module")
def parsed_0_5_23(sglang_0_5_23):
    return _batch(
        sglang_0_5_23,
        {**NEW_ROWS, **ACCEPT_0_5_23_EXTRA, **{f"reject:{k}": v for k, v in REJECT_0_5_23.items()}},
    )


def _ok(result):
    if isinstance(result, ParseError):
        pytest.fail(f"rejected: {result.message}\nargv: {result.argv}")
    return result


@pytest.mark.parametrize("name", [*SEED_ROWS, *ACCEPT_0_5_12_EXTRA])
def test_seed_rows_parse_in_0_5_12(parsed_0_5_12, name):
    args = _ok(parsed_0_5_12[name])
    assert args["model_path"].count("/") == 1
    if "--tp" in SEED_ROWS.get(name, []) or "--tp-size" in SEED_ROWS.get(name, []):
        assert args["tensor_parallel_size"] == 8  # 0.5.12's dest name


@pytest.mark.parametrize("name", [*NEW_ROWS, *ACCEPT_0_5_23_EXTRA])
def test_new_spelling_parses_in_0_5_23(parsed_0_5_23, name):
    args = _ok(parsed_0_5_23[name])
    assert args["tp_size"] == 8  # 0.5.23's dest name


def test_pp_cp_row_values_0_5_12(parsed_0_5_12):
    a = _ok(parsed_0_5_12["17-pp-cp-node0"])
    assert a["pipeline_parallel_size"] == 2 and a["data_parallel_size"] == 1
    assert a["enable_nsa_prefill_context_parallel"] is True
    assert a["nsa_prefill_cp_mode"] == "round-robin-split"
    assert a["cuda_graph_max_bs"] == 8 and a["moe_dense_tp_size"] == 1
    assert (a["nnodes"], a["node_rank"], a["dist_init_addr"]) == (2, 0, f"{HEAD}:62001")
    b = _ok(parsed_0_5_12["18-pp-cp-node1"])
    assert b["node_rank"] == 1


def test_pp_cp_row_values_0_5_23(parsed_0_5_23):
    a = _ok(parsed_0_5_23["17-pp-cp-node0"])
    assert a["pp_size"] == 2 and a["dp_size"] == 1 and a["moe_dense_tp_size"] == 1
    assert a["enable_prefill_cp"] is True and a["cp_strategy"] == "interleave"
    assert a["cuda_graph_max_bs_decode"] == 8
    p = _ok(parsed_0_5_23["19-pd-pp-cp-node0"])
    assert p["disaggregation_mode"] == "prefill"
    assert p["disaggregation_ib_device"] == "mlx5_bond_0,mlx5_bond_1,mlx5_bond_2,mlx5_bond_3"


def test_indexcache_json_is_passed_through(parsed_0_5_12):
    a = _ok(parsed_0_5_12["10-glm5-indexcache"])
    assert PATTERN in a["json_model_override_args"]


@pytest.mark.parametrize("name", list(REJECT_0_5_23))
def test_rejected_by_0_5_23(parsed_0_5_23, name):
    r = parsed_0_5_23[f"reject:{name}"]
    assert isinstance(r, ParseError), f"0.5.23 accepted {REJECT_0_5_23[name]}"
    assert r.message


@pytest.mark.parametrize("name", list(REJECT_0_5_12))
def test_rejected_by_0_5_12(parsed_0_5_12, name):
    r = parsed_0_5_12[f"reject:{name}"]
    assert isinstance(r, ParseError), f"0.5.12 accepted {REJECT_0_5_12[name]}"


def test_error_messages_name_the_problem(parsed_0_5_12, parsed_0_5_23):
    assert "unrecognized arguments: --nsa-prefill-backend" in (
        parsed_0_5_23["reject:nsa-prefill-backend"].message
    )
    assert "ambiguous option: --pp" in parsed_0_5_23["reject:ambiguous-pp"].message
    assert "ambiguous option: --cuda-graph-max-bs" in (
        parsed_0_5_23["reject:ambiguous-cuda-graph-max-bs"].message
    )
    assert "invalid choice" in parsed_0_5_23["reject:cp-strategy-bad-choice"].message
    assert "--cp-strategy" in parsed_0_5_12["reject:cp-strategy"].message


def test_single_argv_helper_raises(sglang_0_5_23):
    with pytest.raises(ParseError, match="unrecognized arguments"):
        envs.parse_server_argv("0.5.23", [*M, "--nsa-prefill-backend", "fa3"])


def test_0_5_16_accepts_both_dialects(sglang_0_5_16):
    """0.5.13-0.5.19 keep the nsa names as deprecated aliases beside the dsa names."""
    rows = {**{f"old:{k}": v for k, v in SEED_ROWS.items()}, **{f"new:{k}": v for k, v in NEW_ROWS.items()}}
    res = _batch(sglang_0_5_16, rows)
    bad = {k: r.message for k, r in res.items() if isinstance(r, ParseError)}
    assert not bad
    new = res["new:17-pp-cp-node0"]
    assert new["cp_strategy"] == "interleave" and new["enable_prefill_cp"] is True


# --------------------------------------------------------------------------------------------
# Router
# --------------------------------------------------------------------------------------------

ROUTER_ROWS = {
    "14-pd-static": [
        "--pd-disaggregation",
        "--prefill",
        f"http://{IP}:30000",
        "8998",
        "--decode",
        f"http://{HEAD}:30000",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ],
    "pd-static-multi": [
        "--pd-disaggregation",
        "--prefill",
        "http://p0:30000",
        "8998",
        "--prefill",
        "http://p1:30000",
        "8998",
        "--decode",
        "http://d0:30000",
        "--decode",
        "http://d1:30000",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--policy",
        "cache_aware",
        "--prometheus-port",
        "29000",
    ],
    "pd-k8s-discovery": [
        "--pd-disaggregation",
        "--service-discovery",
        "--service-discovery-namespace",
        "llm",
        "--service-discovery-port",
        "30000",
        "--prefill-selector",
        "app.kubernetes.io/instance=ds",
        "dsa.ai/role=prefill",
        "--decode-selector",
        "app.kubernetes.io/instance=ds",
        "dsa.ai/role=decode",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--prometheus-port",
        "29000",
        "--policy",
        "round_robin",
    ],
    "regular-k8s-discovery": [
        "--service-discovery",
        "--service-discovery-namespace",
        "llm",
        "--service-discovery-port",
        "30000",
        "--selector",
        "app=ds",
        "tier=engine",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ],
}
ROUTER_REJECT = {
    "bad-policy": ["--policy", "nope", "--host", "0.0.0.0"],
    "unknown-flag": ["--pd-disaggregation", "--no-such-router-flag"],
}


@pytest.fixture(scope="module", params=["sglang_router", "smg"])
def parsed_router(request, sglang_router_env, smg_env):
    table = {**ROUTER_ROWS, **{f"reject:{k}": v for k, v in ROUTER_REJECT.items()}}
    names = list(table)
    res = envs.parse_router_many([table[n] for n in names], request.param)
    return request.param, dict(zip(names, res, strict=True))


@pytest.mark.parametrize("name", list(ROUTER_ROWS))
def test_router_rows_parse(parsed_router, name):
    _router, res = parsed_router
    r = _ok(res[name])
    ra = r["router_args"]
    assert ra["port"] == 8000
    assert ra["bootstrap_port_annotation"] == "sglang.ai/bootstrap-port"
    if name == "14-pd-static":
        assert ra["prefill_urls"] == [[f"http://{IP}:30000", 8998]]
        assert ra["decode_urls"] == [f"http://{HEAD}:30000"]
    if name == "pd-k8s-discovery":
        assert ra["prefill_selector"] == {"app.kubernetes.io/instance": "ds", "dsa.ai/role": "prefill"}
        assert ra["decode_selector"] == {"app.kubernetes.io/instance": "ds", "dsa.ai/role": "decode"}
        assert ra["service_discovery_namespace"] == "llm"
        assert ra["service_discovery_port"] == 30000
        assert ra["prometheus_port"] == 29000
    if name == "regular-k8s-discovery":
        assert ra["selector"] == {"app": "ds", "tier": "engine"}


def test_router_selector_repeat_semantics(sglang_router_env, smg_env):
    """Give all labels after ONE --selector: sglang-router 0.3.2 stores (a repeated flag
    replaces the earlier labels), smg 1.13.0 extends."""
    argv = ["--service-discovery", "--selector", "a=1", "b=2", "--selector", "c=3"]
    (old,) = envs.parse_router_many([argv], "sglang_router")
    (new,) = envs.parse_router_many([argv], "smg")
    assert old["router_args"]["selector"] == {"c": "3"}
    assert new["router_args"]["selector"] == {"a": "1", "b": "2", "c": "3"}


@pytest.mark.parametrize("name", list(ROUTER_REJECT))
def test_router_rejects(parsed_router, name):
    _router, res = parsed_router
    assert isinstance(res[f"reject:{name}"], ParseError)


# --------------------------------------------------------------------------------------------
# check_plan_pods
# --------------------------------------------------------------------------------------------


def test_check_plan_pods_dispatches(sglang_0_5_23, sglang_router_env):
    pods = [
        {
            "role": "prefill",
            "group": 0,
            "rank": 0,
            "argv": ["python3", "-m", "sglang.launch_server", *NEW_ROWS["19-pd-pp-cp-node0"]],
        },
        {
            "role": "prefill",
            "group": 0,
            "rank": 1,
            "argv": ["python3", "-m", "sglang.launch_server", *SEED_ROWS["20-pd-pp-cp-node1"]],
        },
        {
            "role": "router",
            "group": 0,
            "rank": 0,
            "argv": ["python3", "-m", "sglang_router.launch_router", *ROUTER_ROWS["14-pd-static"]],
        },
        {
            "role": "router",
            "group": 1,
            "rank": 0,
            "argv": ["python3", "-m", "sglang_router.launch_router", "--bogus-flag"],
        },
        {"role": "x", "group": 0, "rank": 0, "argv": ["sglang", "serve"]},
    ]
    errors = envs.check_plan_pods("0.5.23", pods)
    assert len(errors) == 3, errors
    assert errors[0].startswith("x/0/0:")
    assert any(e.startswith("prefill/0/1:") and "--enable-nsa-prefill-context" in e for e in errors)
    assert any(e.startswith("router/1/0:") and "--bogus-flag" in e for e in errors)
