"""Every rule refuses what SGLang would refuse (or misrun), naming the field and the fix."""

from __future__ import annotations

import pytest

from dsa_operator.errors import PlanError
from dsa_operator.planner import plan
from tests.conftest import ROOT, load


def example(name: str) -> dict:
    return load(ROOT / "examples" / f"{name}.yaml")


def problems(m: dict, version: str | None = None) -> dict[str, str]:
    with pytest.raises(PlanError) as e:
        plan(m, sglang_version=version)
    found: dict[str, str] = {}
    for p in e.value.problems:
        found[p.path] = f"{found[p.path]} | {p.message}" if p.path in found else p.message
    return found


def set_in(m: dict, dotted: str, value) -> dict:
    node = m["spec"]
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return m


CASES = [
    # (example, field to set, value, expected path, words in the message, version)
    ("03-pure-tp", "serving.parallelism.tp", 4, "spec.serving.parallelism.tp", "whole number", None),
    ("01-tp-dp-attention", "serving.parallelism.dp", 3, "spec.serving.parallelism.dp", "divisible", None),
    ("03-pure-tp", "serving.parallelism.ep", 3, "spec.serving.parallelism.ep", "divisible", None),
    (
        "03-pure-tp",
        "serving.parallelism.attention",
        "dp",
        "spec.serving.parallelism.attention",
        "dp > 1",
        None,
    ),
    ("03-pure-tp", "serving.parallelism.pp", 2, None, None, None),  # valid: 2 nodes
    (
        "17-pp-cp",
        "serving.parallelism.ppLayerPartition",
        [30, 30],
        "spec.serving.parallelism.ppLayerPartition",
        "61 layers",
        None,
    ),
    (
        "17-pp-cp",
        "serving.parallelism.ppLayerPartition",
        [61],
        "spec.serving.parallelism.ppLayerPartition",
        "2 entries",
        None,
    ),
    (
        "03-pure-tp",
        "serving.parallelism.ppLayerPartition",
        [61],
        "spec.serving.parallelism.ppLayerPartition",
        "pp > 1",
        None,
    ),
    (
        "17-pp-cp",
        "serving.parallelism.moeDenseTpSize",
        2,
        "spec.serving.parallelism.moeDenseTpSize",
        "1 or tp",
        None,
    ),
    (
        "17-pp-cp",
        "serving.parallelism.moeDenseTpSize",
        8,
        "spec.serving.parallelism.moeDenseTpSize",
        "accepts only 1",
        "0.5.12",
    ),
    (
        "16-cp-round-robin",
        "serving.parallelism.dp",
        2,
        "spec.serving.parallelism.contextParallel.mode",
        "DP attention",
        "0.5.12",
    ),
    ("16-cp-round-robin", "serving.parallelism.dp", 2, None, None, "0.5.23"),  # interleave + DP attention
    (
        "16-cp-round-robin",
        "serving.parallelism.tp",
        16,
        "spec.serving.parallelism.tp",
        "within one node",
        None,
    ),
    ("15-cp-in-seq-split", "serving.parallelism.ep", 1, "spec.serving.parallelism.ep", "be 8 or unset", None),
    (
        "15-cp-in-seq-split",
        "serving.parallelism.dp",
        8,
        "spec.serving.parallelism.contextParallel.mode",
        "tp/dp > 1",
        None,
    ),
    (
        "15-cp-in-seq-split",
        "serving.kernels",
        {"kvCacheDtype": "fp8_e4m3"},
        "spec.serving.kernels.kvCacheDtype",
        "bf16",
        None,
    ),
    (
        "15-cp-in-seq-split",
        "runtime.sglangVersion",
        "0.5.23",
        "spec.serving.parallelism.contextParallel.mode",
        "round-robin-split",
        None,
    ),
    (
        "12-pd",
        "decode.parallelism",
        {"tp": 8, "contextParallel": {"mode": "round-robin-split"}},
        "spec.decode.parallelism.contextParallel.mode",
        "prefill only",
        None,
    ),
    (
        "12-pd",
        "prefill.parallelism",
        {"tp": 8, "ep": 8, "dp": 2, "contextParallel": {"mode": "in-seq-split"}},
        "spec.prefill.parallelism.contextParallel.mode",
        "PD",
        "0.5.12",
    ),
    ("03-pure-tp", "serving.kernels", {"decode": "trtllm"}, "spec.serving.kernels.decode", "Blackwell", None),
    (
        "03-pure-tp",
        "serving.kernels",
        {"prefill": "fa3", "kvCacheDtype": "fp8_e4m3"},
        "spec.serving.kernels.prefill",
        "cannot read a fp8_e4m3 KV cache",
        None,
    ),
    ("03-pure-tp", "serving.kernels", {"prefill": "aiter"}, "spec.serving.kernels.prefill", "AMD", None),
    (
        "03-pure-tp",
        "serving.kernels",
        {"prefill": "triton"},
        "spec.serving.kernels.prefill",
        "0.5.12",
        "0.5.12",
    ),
    ("03-pure-tp", "serving.kernels", {"decode": "flashmla_kv"}, None, None, None),  # converts: a warning
    ("03-pure-tp", "serving.kernels", {"decode": "triton"}, "spec.serving.kernels.decode", "ROCm", None),
    ("05-mtp", "features.mtp.numDraftTokens", 5, "spec.features.mtp.numDraftTokens", "numSteps + 1", None),
    ("11-nvfp4-blackwell", "hardware.accelerator", "h200", "spec.model.quantization", "Blackwell", None),
    (
        "11-nvfp4-blackwell",
        "serving.moeRunnerBackend",
        "triton",
        "spec.serving.moeRunnerBackend",
        "flashinfer_trtllm",
        None,
    ),
    (
        "10-glm5-indexcache",
        "features.indexCache.pattern",
        "FFS",
        "spec.features.indexCache.pattern",
        "78",
        "0.5.12",
    ),
    ("10-glm5-indexcache", "features.indexCache.pattern", "FFS", None, None, "0.5.23"),  # rest read as F
    (
        "10-glm5-indexcache",
        "features.indexCache.pattern",
        "S" * 78,
        "spec.features.indexCache.pattern",
        None,
        None,
    ),
    (
        "06-v32-exp-tools-reasoning",
        "features.indexCache.pattern",
        "F" * 61,
        "spec.features.indexCache.pattern",
        "glm-5",
        None,
    ),
    ("08-v32-speciale", "features.toolCalling", True, "spec.features.toolCalling", "tool calling", None),
    ("12-pd", "router.enabled", False, "spec.router.enabled", "router", None),
    ("12-pd", "decode.port", 31000, "spec.decode.port", "same port", None),
    (
        "03-pure-tp",
        "runtime.extraArgs",
        ["--tp-size", "4"],
        "spec.runtime.extraArgs[0]",
        "parallelism.tp",
        None,
    ),
    (
        "19-pd-pp-cp",
        "prefill.extraArgs",
        ["--nsa-prefill-cp-mode=in-seq-split"],
        "spec.prefill.extraArgs[0]",
        "contextParallel",
        None,
    ),
    (
        "03-pure-tp",
        "runtime.extraArgs",
        ["--json-model-override-args", "{bad"],
        "spec.runtime.extraArgs[0]",
        "JSON object",
        None,
    ),
    (
        "03-pure-tp",
        "runtime.extraArgs",
        ["--collect-tokens-histogram"],
        "spec.runtime.extraArgs[0]",
        "enableMetrics",
        None,
    ),
    ("03-pure-tp", "runtime.extraArgs", ["--collect-tokens-histogram"], None, None, "0.5.12"),
    ("03-pure-tp", "model.source", "/data/dsv32", "spec.model.source", "mountPath", None),
    ("03-pure-tp", "storage.shmSize", "lots", "spec.storage.shmSize", "quantity", None),
    (
        "03-pure-tp",
        "hardware.gpusPerNode",
        0,
        "spec.hardware.gpusPerNode",
        "greater than or equal to 1",
        None,
    ),
    ("03-pure-tp", "hardware.accelerator", "a100", "spec.hardware.accelerator", "h200", None),
    ("03-pure-tp", "runtime.sglangVersion", "0.4.0", "spec.runtime.sglangVersion", "pattern", None),
    (
        "03-pure-tp",
        "serving.parallelism.contextParallel.mode",
        "zigzag",
        "spec.serving.parallelism.contextParallel.mode",
        "in-seq-split",
        None,
    ),
    ("03-pure-tp", "serving.replicaz", 2, "spec.serving.replicaz", "unknown field", None),
    ("03-pure-tp", "serving.parallelism.tp", "eight", "spec.serving.parallelism.tp", "integer", None),
    ("03-pure-tp", "mtp", {}, "spec.mtp", "unknown field", None),
]


@pytest.mark.parametrize(("name", "field", "value", "path", "words", "version"), CASES)
def test_rule(name, field, value, path, words, version):
    m = set_in(example(name), field, value)
    if path is None:
        plan(m, sglang_version=version)
        return
    found = problems(m, version)
    assert path in found, found
    if words:
        assert words in found[path]


def test_serving_xor_prefill_decode():
    m = example("12-pd")
    m["spec"]["serving"] = m["spec"]["prefill"]
    assert "spec.serving" in problems(m)
    m = example("12-pd")
    del m["spec"]["decode"]
    assert "decode" in problems(m)["spec.decode"] or "required" in problems(m)["spec.decode"]
    m = example("12-pd")
    del m["spec"]["decode"], m["spec"]["prefill"]
    assert "required" in problems(m)["spec.serving"]


def test_several_problems_reported_together():
    m = example("12-pd")
    m["spec"]["prefill"]["parallelism"]["tp"] = 4
    m["spec"]["decode"]["parallelism"]["contextParallel"] = {"mode": "round-robin-split"}
    m["spec"]["features"]["toolCalling"] = True
    m["spec"]["features"]["indexCache"] = {"pattern": "F"}
    found = problems(m)
    assert {
        "spec.prefill.parallelism.tp",
        "spec.decode.parallelism.contextParallel.mode",
        "spec.features.indexCache.pattern",
    } <= set(found)


@pytest.mark.parametrize("name", ["", "Bad_Name", "x" * 41])
def test_metadata_name(name):
    m = example("03-pure-tp")
    m["metadata"]["name"] = name
    found = problems(m)
    assert "metadata.name" in found


@pytest.mark.parametrize("junk", [None, [], "spec", 3, {"spec": None}, {"metadata": {}, "spec": {}}])
def test_junk_is_a_clean_error(junk):
    with pytest.raises(PlanError) as e:
        plan(junk)
    assert e.value.problems


def test_warnings_do_not_block():
    p = plan(example("05-mtp"))
    assert any("48" in w for w in p.warnings)
    p = plan(example("15-cp-in-seq-split"))
    assert any("one request" in w for w in p.warnings)


@pytest.mark.parametrize("version", ["0.5.12", "0.5.23"])
def test_pp_cp_without_moe_dense_tp_size_plans_what_sglang_does(version):
    """SGLang 0.5.12 sets moe_dense_tp_size 1 under prefill CP itself: the planner plans that."""
    m = example("17-pp-cp")
    del m["spec"]["serving"]["parallelism"]["moeDenseTpSize"]
    p = plan(m, sglang_version=version)
    overrides = p.role("serving").sglang_overrides
    assert overrides.get("moe_dense_tp_size") == (1 if version == "0.5.12" else None)
    assert "--moe-dense-tp-size" not in p.pods[0].argv  # SGLang's own value, not ours


def test_combination_names_the_field_to_change_first_first():
    m = set_in(example("16-cp-round-robin"), "serving.parallelism.dp", 2)
    with pytest.raises(PlanError) as e:
        plan(m, sglang_version="0.5.12")
    paths = [p.path for p in e.value.problems]
    mode, dp = "spec.serving.parallelism.contextParallel.mode", "spec.serving.parallelism.dp"
    assert mode in paths and dp in paths and paths.index(mode) < paths.index(dp)


def test_kernel_that_converts_the_cache_is_a_warning():
    kernels = {"decode": "flashmla_kv", "kvCacheDtype": "bfloat16"}
    m = set_in(example("03-pure-tp"), "serving.kernels", kernels)
    p = plan(m)
    assert p.role("serving").kernels.kv_cache_dtype == "bf16"
    assert any("flashmla_kv converts the bf16 KV cache" in w for w in p.warnings), p.warnings
    argv = p.pods[0].argv
    assert argv[argv.index("--kv-cache-dtype") + 1] == "bfloat16"  # SGLang's spelling, as given


def test_mxfp4_runs_on_amd_only():
    m = set_in(example("03-pure-tp"), "model.quantization", "mxfp4")
    found = problems(m)
    assert "AMD" in found["spec.model.quantization"] and "spec.hardware.accelerator" in found
    m = set_in(m, "hardware.accelerator", "mi355x")
    m = set_in(m, "model.source", "amd/DeepSeek-V3.2-mxfp4")
    argv = plan(m).pods[0].argv
    assert "--quantization" not in argv  # Quark's MXFP4 is read from the checkpoint


def test_mtp_draft_tokens_default_to_what_sglang_sets():
    m = example("05-mtp")
    m["spec"]["features"]["mtp"] = {"enabled": True, "numSteps": 2}
    argv = plan(m).pods[0].argv
    assert argv[argv.index("--speculative-num-draft-tokens") + 1] == "3"


def test_pp_with_mtp_refused_where_sglang_refuses():
    m = example("17-pp-cp")
    m["spec"]["features"]["mtp"] = {"enabled": True}
    assert "spec.features.mtp.enabled" in problems(m, "0.5.12")
    assert "PD prefill only" in problems(m, "0.5.23")["spec.features.mtp.enabled"]
    m = example("19-pd-pp-cp")  # PP on the prefill side only: 0.5.23 runs MTP there
    m["spec"]["features"]["mtp"] = {"enabled": True}
    assert "spec.prefill.parallelism.pp" in problems(m, "0.5.12")
    plan(m, sglang_version="0.5.23")


def test_every_rule_names_its_source_and_action():
    from dsa_operator.rules import RULES

    assert len({r.name for r in RULES}) == len(RULES)
    for r in RULES:
        assert r.sources and r.protects and r.action in ("refuse", "override", "warn", "operator"), r
        if r.action != "operator":
            assert any(s.startswith(("0.5.", "docs:", "notes:", "SGLang")) for s in r.sources), r


def test_quantized_checkpoints_have_their_published_source():
    m = set_in(example("03-pure-tp"), "model", {"family": "deepseek-v3.2", "quantization": "mxfp4"})
    m = set_in(m, "hardware.accelerator", "mi355x")
    assert plan(m).model.source == "amd/DeepSeek-V3.2-mxfp4"
    m = set_in(m, "model.family", "glm-5")
    found = problems(m)
    assert "no published mxfp4 checkpoint of glm-5" in found["spec.model.source"]
