"""Hypothesis strategies for DSAModel manifests: mostly plausible, sometimes wrong, sometimes junk.

Shared by the planner's property tests and the real-parser tests (every plan these
produce must parse under the pinned SGLang).
"""

from __future__ import annotations

from hypothesis import strategies as st

from dsa_operator.api import KernelName
from dsa_operator.catalog import FAMILIES, GLM5_RECOMMENDED_INDEX_PATTERN
from dsa_operator.hardware import ACCELERATORS

KERNELS = list(KernelName.__args__)
VERSIONS = ["0.5.9", "0.5.12", "0.5.13", "0.5.14", "0.5.16", "0.5.19", "0.5.20", "0.5.22", "0.5.23"]

junk = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70000) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def maybe(strategy, junk_rate: int = 12):
    """`strategy` junk_rate times in junk_rate + 1, otherwise a wrong-typed value."""
    return st.sampled_from([True] * junk_rate + [False]).flatmap(lambda good: strategy if good else junk)


pow2 = st.sampled_from([1, 2, 4, 8, 16])


@st.composite
def parallelism(draw):
    p = {
        "tp": draw(maybe(st.sampled_from([1, 2, 4, 8, 8, 8, 16]))),
        "dp": draw(maybe(st.sampled_from([1, 1, 2, 8]))),
        "ep": draw(maybe(st.sampled_from([1, 1, 8]))),
        "pp": draw(maybe(st.sampled_from([1, 1, 1, 2, 4]))),
    }
    if draw(st.booleans()):
        p["attention"] = draw(maybe(st.sampled_from(["dp", "tp"])))
    if draw(st.integers(0, 3)) == 0:
        p["contextParallel"] = {"mode": draw(maybe(st.sampled_from(["in-seq-split", "round-robin-split"])))}
    if draw(st.integers(0, 3)) == 0:
        p["moeDenseTpSize"] = draw(maybe(st.sampled_from([1, 2])))
    if draw(st.integers(0, 5)) == 0:
        p["ppLayerPartition"] = draw(maybe(st.lists(st.integers(1, 40), min_size=1, max_size=4)))
    return p


@st.composite
def engine(draw):
    e = {"replicas": draw(maybe(st.integers(1, 3))), "parallelism": draw(parallelism())}
    if draw(st.booleans()):
        e["kernels"] = {
            "prefill": draw(maybe(st.sampled_from(KERNELS))),
            "decode": draw(maybe(st.sampled_from(KERNELS))),
            "kvCacheDtype": draw(maybe(st.sampled_from(["auto", "bf16", "fp8_e4m3"]))),
        }
    for key, values in (
        ("maxRunningRequests", st.integers(1, 1024)),
        ("memFractionStatic", st.sampled_from([0.8, 0.9])),
        ("chunkedPrefillSize", st.sampled_from([4096, 16384])),
        ("cudaGraphMaxBatchSize", st.integers(1, 64)),
        ("pageSize", st.sampled_from([1, 64])),
        ("disableRadixCache", st.booleans()),
        ("enableMetrics", st.booleans()),
        ("extraArgs", st.sampled_from([[], ["--tokenizer-worker-num", "4"], ["--tp-size", "2"]])),
    ):
        if draw(st.integers(0, 3)) == 0:
            e[key] = draw(maybe(values))
    return e


@st.composite
def plausible_engine(draw, role: str, arch: str, version: str):
    """A role a user could mean: whole nodes, divisible sizes, CP only where SGLang allows it."""
    tp = draw(st.sampled_from([8, 8, 16]))
    pp = draw(st.sampled_from([1, 1, 2]))
    attention_dp = draw(st.booleans())
    par: dict = {"tp": tp, "pp": pp, "dp": tp if attention_dp else 1, "ep": draw(st.sampled_from([1, tp]))}
    if attention_dp:
        par["attention"] = "dp"
    if role != "decode" and tp == 8 and not attention_dp and arch != "amd" and draw(st.booleans()):
        par["contextParallel"] = {"mode": "round-robin-split"}
        if pp > 1:
            par["moeDenseTpSize"] = 1
    e: dict = {"replicas": draw(st.integers(1, 2)), "parallelism": par}
    if draw(st.booleans()):
        kv = draw(st.sampled_from(["bf16", "fp8_e4m3"]))
        fits = {
            ("sm90", "bf16"): ["flashmla_sparse", "fa3", "flashmla_auto", "tilelang"],
            ("sm90", "fp8_e4m3"): ["flashmla_kv", "flashmla_auto", "tilelang"],
            ("sm100", "bf16"): ["flashmla_sparse", "trtllm", "flashmla_auto"],
            ("sm100", "fp8_e4m3"): ["trtllm", "flashmla_kv", "flashmla_auto"],
            ("amd", "bf16"): ["tilelang"],
            ("amd", "fp8_e4m3"): ["tilelang"],
        }[(arch, kv)]
        e["kernels"] = {
            "prefill": draw(st.sampled_from(fits)),
            "decode": draw(st.sampled_from(fits)),
            "kvCacheDtype": kv,
        }
    for key, values in (
        ("maxRunningRequests", st.integers(1, 1024)),
        ("memFractionStatic", st.sampled_from([0.8, 0.9])),
        ("chunkedPrefillSize", st.sampled_from([4096, 16384])),
        ("cudaGraphMaxBatchSize", st.integers(1, 64)),
        ("pageSize", st.just(64)),  # SGLang's DSA page size: any other value is overridden
        ("contextLength", st.sampled_from([65536, 131072])),
        ("disableRadixCache", st.booleans()),
        ("enableMetrics", st.booleans()),
        ("watchdogTimeout", st.sampled_from([600, 3600])),
        ("extraArgs", st.sampled_from([[], ["--tokenizer-worker-num", "4"], ["--log-level", "debug"]])),
    ):
        if draw(st.booleans()):
            e[key] = draw(values)
    return e


ARCH = {name: a.arch for name, a in ACCELERATORS.items()}


def _quantized_source(family: str, quantization: str) -> str:
    """The published checkpoint in that format, or a local copy in the model volume."""
    return FAMILIES[family].source_for(quantization) or f"/models/{family}-{quantization}"


@st.composite
def plausible_manifests(draw):
    """Specs that should plan: the planner's happy path across families, GPUs and versions."""
    family = draw(st.sampled_from(sorted(FAMILIES)))
    accel = draw(st.sampled_from(sorted(a for a in ACCELERATORS if ACCELERATORS[a].gpus_per_node == 8)))
    version = draw(st.sampled_from(VERSIONS))
    arch = ARCH[accel]
    spec: dict = {
        "model": {"family": family},
        "runtime": {"sglangVersion": version},
        "hardware": {"accelerator": accel},
    }
    if arch == "sm100" and draw(st.booleans()):
        spec["model"]["quantization"] = "nvfp4"
        spec["model"]["source"] = _quantized_source(family, "nvfp4")
    features: dict = {"reasoning": draw(st.booleans())}
    if family == "glm-5" and draw(st.booleans()):
        features["indexCache"] = {"pattern": GLM5_RECOMMENDED_INDEX_PATTERN}
    if draw(st.booleans()):
        steps = draw(st.integers(1, 4))
        features["mtp"] = {"enabled": True, "numSteps": steps, "eagleTopK": 1, "numDraftTokens": steps + 1}
    if draw(st.booleans()):
        features["denseAttentionThreshold"] = draw(st.sampled_from([1024, 2048, 4096]))
    spec["features"] = features
    if draw(st.booleans()):
        spec["serving"] = draw(plausible_engine("serving", arch, version))
    else:
        spec["prefill"] = draw(plausible_engine("prefill", arch, version))
        spec["decode"] = draw(plausible_engine("decode", arch, version))
        spec["decode"]["parallelism"].pop("contextParallel", None)
        if draw(st.booleans()):
            spec["disaggregation"] = {
                "transferBackend": draw(st.sampled_from(["mooncake", "nixl"])),
                "ibDevices": "mlx5_0,mlx5_1",
            }
    spec["router"] = {
        "discovery": draw(st.sampled_from(["kubernetes", "static"])),
        "policy": draw(st.sampled_from(["cache_aware", "round_robin", "power_of_two"])),
    }
    return {
        "apiVersion": "serving.dsa.dev/v1alpha1",
        "kind": "DSAModel",
        "metadata": {"name": draw(st.sampled_from(["m", "dsv32", "glm5-prod"])), "namespace": "ns1"},
        "spec": spec,
    }


@st.composite
def wild_manifests(draw):
    family = draw(maybe(st.sampled_from(sorted(FAMILIES))))
    spec: dict = {"model": {"family": family}}
    if draw(st.integers(0, 4)) == 0:
        spec["model"]["quantization"] = draw(maybe(st.sampled_from(["fp8", "nvfp4"])))
    spec["runtime"] = {"sglangVersion": draw(maybe(st.sampled_from(VERSIONS)))}
    spec["hardware"] = {"accelerator": draw(maybe(st.sampled_from(sorted(ACCELERATORS))))}
    if draw(st.integers(0, 4)) == 0:
        spec["hardware"]["gpusPerNode"] = draw(maybe(st.sampled_from([4, 8])))
    features: dict = {}
    if draw(st.booleans()):
        features["toolCalling"] = draw(maybe(st.booleans()))
    if draw(st.booleans()):
        features["reasoning"] = draw(maybe(st.booleans()))
    if draw(st.integers(0, 3)) == 0:
        s = draw(st.integers(1, 4))
        k = draw(st.sampled_from([1, 1, 2]))
        d = draw(st.sampled_from([s + 1, s + 1, 2, 8]))
        features["mtp"] = {"enabled": True, "numSteps": s, "eagleTopK": k, "numDraftTokens": d}
    if draw(st.integers(0, 3)) == 0:
        features["indexCache"] = {
            "pattern": draw(maybe(st.sampled_from([GLM5_RECOMMENDED_INDEX_PATTERN, "FFS", "S" + "F" * 77])))
        }
    if draw(st.integers(0, 4)) == 0:
        features["denseAttentionThreshold"] = draw(maybe(st.integers(1, 8192)))
    spec["features"] = features
    shape = draw(st.sampled_from(["serving", "serving", "pd", "pd", "both", "none", "prefill-only"]))
    if shape in ("serving", "both"):
        spec["serving"] = draw(engine())
    if shape in ("pd", "both", "prefill-only"):
        spec["prefill"] = draw(engine())
    if shape in ("pd", "both"):
        spec["decode"] = draw(engine())
    if draw(st.integers(0, 3)) == 0:
        spec["router"] = {
            "discovery": draw(maybe(st.sampled_from(["kubernetes", "static"]))),
            "policy": draw(maybe(st.sampled_from(["cache_aware", "round_robin"]))),
        }
    if draw(st.integers(0, 10)) == 0:
        spec[draw(st.text(min_size=1, max_size=5))] = draw(junk)
    name = draw(maybe(st.sampled_from(["m", "dsv32", "glm5-prod"]), junk_rate=30))
    return {
        "apiVersion": "serving.dsa.dev/v1alpha1",
        "kind": "DSAModel",
        "metadata": {"name": name, "namespace": "ns1"},
        "spec": spec,
    }


def manifests():
    """Half plausible (they should plan), half wild (they exercise every error path)."""
    return st.one_of(plausible_manifests(), wild_manifests())


def _engine_roles(spec: dict) -> list[dict]:
    return [spec[r] for r in ("serving", "prefill", "decode") if r in spec]


# One change each, to a field SGLang's validation (or a rule citing SGLang) looks at.
SGLANG_MUTATIONS: dict[str, object] = {
    "tp": st.sampled_from([4, 16]),
    "dp": st.sampled_from([1, 2, 4, 8]),
    "attention": st.sampled_from(["dp", "tp"]),
    "ep": st.sampled_from([1, 2, 8]),
    "pp": st.just(2),
    "contextParallel": st.sampled_from([{"mode": "in-seq-split"}, {"mode": "round-robin-split"}]),
    "moeDenseTpSize": st.sampled_from([1, 2, 8]),
    "moeA2ABackend": st.just("deepep"),
    "kernels": st.fixed_dictionaries(
        {
            "prefill": st.sampled_from(KERNELS),
            "decode": st.sampled_from(KERNELS),
            "kvCacheDtype": st.sampled_from(["auto", "bf16", "bfloat16", "fp8_e4m3"]),
        }
    ),
    "pageSize": st.sampled_from([1, 32, 64]),
    "chunkedPrefillSize": st.sampled_from([1000, 4096, 8192]),
    "moeRunnerBackend": st.sampled_from(
        ["flashinfer_trtllm", "flashinfer_cutlass", "flashinfer_cutedsl", "triton"]
    ),
    "quantization": st.sampled_from(["nvfp4", "mxfp4"]),
    "accelerator": st.sampled_from(sorted(ACCELERATORS)),
    "mtp": st.fixed_dictionaries(
        {"enabled": st.just(True), "numSteps": st.integers(1, 4)},
        optional={"eagleTopK": st.sampled_from([1, 2]), "numDraftTokens": st.integers(2, 8)},
    ),
    "servedModelName": st.sampled_from(["dsv32", "dsv32:latest"]),
    "indexCache": st.sampled_from([GLM5_RECOMMENDED_INDEX_PATTERN, "FFSFSS", "F" * 80]),
}
_PARALLELISM_KEYS = {
    "tp",
    "dp",
    "attention",
    "ep",
    "pp",
    "contextParallel",
    "moeDenseTpSize",
    "moeA2ABackend",
}
_ENGINE_KEYS = {"kernels", "pageSize", "chunkedPrefillSize", "moeRunnerBackend"}


@st.composite
def sglang_manifests(draw, max_mutations: int = 2):
    """Specs for measuring agreement with SGLang's own validation: a plausible spec (see
    `plausible_manifests`) with up to `max_mutations` changes to fields SGLang checks.
    Names, router and storage stay valid: they are the operator's alone."""
    m = draw(plausible_manifests())
    spec = m["spec"]
    for key in draw(st.lists(st.sampled_from(sorted(SGLANG_MUTATIONS)), max_size=max_mutations, unique=True)):
        value = draw(SGLANG_MUTATIONS[key])  # type: ignore[arg-type]
        roles = _engine_roles(spec)
        if key in _PARALLELISM_KEYS or key in _ENGINE_KEYS:
            role = draw(st.sampled_from(roles))
            (role["parallelism"] if key in _PARALLELISM_KEYS else role)[key] = value
        elif key == "quantization":
            spec["model"].update(quantization=value, source=_quantized_source(spec["model"]["family"], value))
        elif key == "servedModelName":
            spec["model"][key] = value
        elif key == "accelerator":
            spec["hardware"]["accelerator"] = value
        elif key == "mtp":
            spec["features"]["mtp"] = value
        elif key == "indexCache":
            spec["features"]["indexCache"] = {"pattern": value}
    return m
