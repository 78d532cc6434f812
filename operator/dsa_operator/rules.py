"""Every rule SGLang documents for the DSA models, one function each, named for what it protects.

A rule takes the resolved `Context` and yields `Problem`s (field path + what to change).
`RULES` runs them all, so a user sees every problem at once. Warnings (advice that does
not block a deployment) come from `WARNINGS`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator

from dsa_operator.errors import Problem
from dsa_operator.kernels import kernel_problems
from dsa_operator.resolve import Context, RoleContext

Rule = Callable[[Context], Iterable[Problem]]

NAME_MAX = 40  # `<name>-prefill-<g>-<ordinal>` and the controller-revision-hash label fit 63
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
CP_MAX_TP = 8  # SGLang: "Context parallel only supports single machine (tp_size <= 8)"
NVFP4_MOE_RUNNERS = ("flashinfer_trtllm", "flashinfer_cutlass", "flashinfer_cutedsl")

# Flags whose values the planner derives from fields; extraArgs may not set them.
OWNED_FLAGS: dict[str, str] = {
    "--model-path": "model.source",
    "--model": "model.source",
    "--tp-size": "parallelism.tp",
    "--tp": "parallelism.tp",
    "--tensor-parallel-size": "parallelism.tp",
    "--dp-size": "parallelism.dp",
    "--dp": "parallelism.dp",
    "--attn-dp-size": "parallelism.dp",
    "--data-parallel-size": "parallelism.dp",
    "--enable-dp-attention": "parallelism.attention",
    "--ep-size": "parallelism.ep",
    "--ep": "parallelism.ep",
    "--pp-size": "parallelism.pp",
    "--pipeline-parallel-size": "parallelism.pp",
    "--nnodes": "parallelism (nodes are derived)",
    "--node-rank": "parallelism (ranks are derived)",
    "--dist-init-addr": "parallelism (the operator fills it)",
    "--host": "(the operator fills it)",
    "--port": "port",
    "--enable-nsa-prefill-context-parallel": "parallelism.contextParallel.mode",
    "--nsa-prefill-cp-mode": "parallelism.contextParallel.mode",
    "--enable-prefill-cp": "parallelism.contextParallel.mode",
    "--cp-strategy": "parallelism.contextParallel.mode",
    "--nsa-prefill-backend": "kernels.prefill",
    "--dsa-prefill-backend": "kernels.prefill",
    "--nsa-decode-backend": "kernels.decode",
    "--dsa-decode-backend": "kernels.decode",
    "--kv-cache-dtype": "kernels.kvCacheDtype",
    "--quantization": "model.quantization",
    "--disaggregation-mode": "prefill/decode",
    "--disaggregation-bootstrap-port": "disaggregation.bootstrapPort",
    "--disaggregation-transfer-backend": "disaggregation.transferBackend",
    "--disaggregation-ib-device": "disaggregation.ibDevices",
    "--speculative-algorithm": "features.mtp",
    "--speculative-num-steps": "features.mtp.numSteps",
    "--speculative-eagle-topk": "features.mtp.eagleTopK",
    "--speculative-num-draft-tokens": "features.mtp.numDraftTokens",
    "--tool-call-parser": "features.toolCalling",
    "--reasoning-parser": "features.reasoning",
    "--served-model-name": "model.servedModelName",
    "--trust-remote-code": "model.trustRemoteCode",
}


def _par(role: RoleContext) -> str:
    return f"{role.path}.parallelism"


def valid_name(ctx: Context) -> Iterator[Problem]:
    """Child objects are named `<name>-<role>-<group>`: the name must leave room for that."""
    if not DNS_LABEL.match(ctx.name) or len(ctx.name) > NAME_MAX:
        yield Problem(
            "metadata.name",
            f"must be a lowercase DNS label of at most {NAME_MAX} characters "
            "(pods are named <name>-<role>-<group>-<rank>)",
        )


def one_topology(ctx: Context) -> Iterator[Problem]:
    """Either unified serving, or prefill and decode together: never a mix."""
    s = ctx.spec
    if s.serving is not None and (s.prefill or s.decode):
        yield Problem("spec.serving", "set either serving, or prefill and decode, not both")
    elif s.serving is None:
        if s.prefill is None and s.decode is None:
            yield Problem("spec.serving", "required: set serving, or prefill and decode")
        elif s.prefill is None:
            yield Problem("spec.prefill", "required with decode (PD disaggregation needs both)")
        elif s.decode is None:
            yield Problem("spec.decode", "required with prefill (PD disaggregation needs both)")


def whole_nodes(ctx: Context) -> Iterator[Problem]:
    """A group is tp*pp GPUs, one pod per node, each pod taking all gpusPerNode GPUs."""
    for r in ctx.roles:
        if r.world_size % ctx.gpus_per_node:
            yield Problem(
                f"{_par(r)}.tp",
                f"tp*pp = {r.world_size} GPUs is not a whole number of "
                f"{ctx.gpus_per_node}-GPU nodes; make tp*pp a multiple of "
                f"{ctx.gpus_per_node} or set spec.hardware.gpusPerNode",
            )


def parallel_sizes_divide(ctx: Context) -> Iterator[Problem]:
    """SGLang splits attention by dp and experts by ep inside the tp group."""
    for r in ctx.roles:
        p = r.spec.parallelism
        if p.tp % p.dp:
            yield Problem(f"{_par(r)}.dp", f"tp ({p.tp}) must be divisible by dp ({p.dp})")
        if p.tp % p.ep:
            yield Problem(f"{_par(r)}.ep", f"tp ({p.tp}) must be divisible by ep ({p.ep})")
        if p.moe_dense_tp_size is not None and p.tp % p.moe_dense_tp_size:
            yield Problem(f"{_par(r)}.moeDenseTpSize", "must divide tp")


def dp_attention_needs_dp(ctx: Context) -> Iterator[Problem]:
    """DP attention with one DP group is TP attention under another name."""
    for r in ctx.roles:
        p = r.spec.parallelism
        if p.attention == "dp" and p.dp == 1:
            yield Problem(f"{_par(r)}.attention", "dp attention needs dp > 1 (e.g. dp: 8)")


def context_parallel_fits(ctx: Context) -> Iterator[Problem]:
    """Both CP modes' restrictions, as SGLang enforces them at start-up."""
    for r in ctx.roles:
        if r.cp_mode == "none":
            continue
        p = r.spec.parallelism
        path = f"{_par(r)}.contextParallel.mode"
        if r.name == "decode":
            yield Problem(path, "context parallelism is for prefill only: not on a PD decode role")
            continue
        if ctx.arch == "amd":
            yield Problem(path, "SGLang does not support DSA prefill context parallelism on AMD GPUs")
        if p.tp > CP_MAX_TP:
            yield Problem(f"{_par(r)}.tp", f"context parallelism runs within one node: tp <= {CP_MAX_TP}")
        if r.cp_mode == "in-seq-split":
            if p.tp <= p.dp:
                yield Problem(path, "in-seq-split needs a CP size tp/dp > 1: make tp larger than dp")
            if not r.attention_dp:
                yield Problem(f"{_par(r)}.attention", "in-seq-split runs with DP attention (dp > 1)")
            if p.ep != p.tp:
                yield Problem(f"{_par(r)}.ep", f"in-seq-split needs ep == tp ({p.tp}) (DeepEP MoE)")
            if p.moe_dense_tp_size not in (None, 1):
                yield Problem(f"{_par(r)}.moeDenseTpSize", "in-seq-split needs moeDenseTpSize 1")
            if r.kv_dtype != "bf16":
                yield Problem(f"{r.path}.kernels.kvCacheDtype", "in-seq-split needs a bf16 KV cache")
            if r.nodes > 1:
                yield Problem(path, "in-seq-split does not run across nodes; use round-robin-split")
            if ctx.pd:
                yield Problem(path, "in-seq-split is not supported with PD; use round-robin-split")
            if ctx.dialect.name == "dsa" and ctx.family.sglang_architecture == "DeepseekV32ForCausalLM":
                yield Problem(
                    path,
                    f"SGLang {ctx.dialect.version} rejects in-seq-split (zigzag) for "
                    "DeepSeek-V3.2; use round-robin-split",
                )
        else:  # round-robin-split
            if p.dp != 1 or r.attention_dp:
                yield Problem(f"{_par(r)}.dp", "round-robin-split cannot run with DP attention: set dp 1")
            if p.tp < 2:
                yield Problem(f"{_par(r)}.tp", "context parallelism needs tp > 1 (the CP size is tp)")
            if p.pp > 1 and p.moe_dense_tp_size != 1:
                yield Problem(f"{_par(r)}.moeDenseTpSize", "PP + CP needs moeDenseTpSize 1")


def pp_layer_partition(ctx: Context) -> Iterator[Problem]:
    """SGLANG_PP_LAYER_PARTITION: one entry per stage, summing to the model's layers."""
    layers = ctx.family.layers
    for r in ctx.roles:
        p = r.spec.parallelism
        path = f"{_par(r)}.ppLayerPartition"
        if p.pp > layers:
            yield Problem(f"{_par(r)}.pp", f"pp ({p.pp}) exceeds the model's {layers} layers")
        given = p.pp_layer_partition
        if given is None:
            continue
        if p.pp == 1:
            yield Problem(path, "only meaningful with pp > 1")
        elif len(given) != p.pp:
            yield Problem(path, f"needs {p.pp} entries (one per stage), got {len(given)}")
        elif sum(given) != layers:
            yield Problem(path, f"entries sum to {sum(given)}, but {ctx.family.name} has {layers} layers")


def kernels_fit_gpu(ctx: Context) -> Iterator[Problem]:
    """The seed's table: each kernel runs on some architectures and KV-cache dtypes only."""
    for r in ctx.roles:
        k = r.spec.kernels
        for phase, chosen, resolved in (
            ("prefill", k.prefill, r.prefill_kernel),
            ("decode", k.decode, r.decode_kernel),
        ):
            if chosen == "auto":
                continue
            for msg in kernel_problems(resolved, phase, ctx.arch, r.kv_dtype, ctx.dialect):
                yield Problem(f"{r.path}.kernels.{phase}", msg)


def mtp_parameters(ctx: Context) -> Iterator[Problem]:
    """EAGLE: with top-k 1 the draft is a chain of steps+1 tokens; a tree holds at most k*steps+1."""
    m = ctx.spec.features.mtp
    if not m.enabled:
        return
    path = "spec.features.mtp.numDraftTokens"
    if m.eagle_top_k == 1 and m.num_draft_tokens != m.num_steps + 1:
        yield Problem(path, f"with eagleTopK 1 it must be numSteps + 1 = {m.num_steps + 1}")
    elif m.eagle_top_k > 1 and m.num_draft_tokens > m.eagle_top_k * m.num_steps + 1:
        yield Problem(path, f"at most eagleTopK*numSteps+1 = {m.eagle_top_k * m.num_steps + 1}")


def nvfp4_on_blackwell(ctx: Context) -> Iterator[Problem]:
    """NVFP4 checkpoints (modelopt_fp4) need Blackwell and a FlashInfer MoE runner."""
    if ctx.spec.model.quantization != "nvfp4":
        return
    if ctx.arch != "sm100":
        yield Problem(
            "spec.model.quantization",
            f"nvfp4 runs on Blackwell GPUs only (b200, b300, gb200, gb300), not {ctx.accelerator.name}",
        )
    for r in ctx.roles:
        b = r.spec.moe_runner_backend
        if b is not None and b not in NVFP4_MOE_RUNNERS:
            yield Problem(
                f"{r.path}.moeRunnerBackend",
                f"nvfp4 needs one of {', '.join(NVFP4_MOE_RUNNERS)} (flashinfer_trtllm recommended)",
            )


def index_cache_on_glm5(ctx: Context) -> Iterator[Problem]:
    """IndexCache patterns are GLM-5's, one letter per layer, starting with F."""
    pattern = ctx.spec.features.index_cache.pattern
    if not pattern:
        return
    path = "spec.features.indexCache.pattern"
    if not ctx.family.index_cache:
        yield Problem(path, f"IndexCache is supported on glm-5 only, not {ctx.family.name}")
        return
    if len(pattern) != ctx.family.layers:
        yield Problem(path, f"needs one letter per layer: {ctx.family.layers} letters, got {len(pattern)}")
    if pattern[0] != "F":
        yield Problem(path, "must start with F: the first layer has no previous top-k to reuse")
    if set(pattern) - {"F", "S"}:
        yield Problem(path, "only the letters F and S are allowed")


def tool_calling_supported(ctx: Context) -> Iterator[Problem]:
    """V3.2-Speciale has no tool-call parser."""
    if ctx.spec.features.tool_calling and ctx.family.tool_call_parser is None:
        yield Problem("spec.features.toolCalling", f"{ctx.family.name} does not support tool calling")


def router_for_pd(ctx: Context) -> Iterator[Problem]:
    """PD needs the router: it pairs each request's prefill and decode."""
    if ctx.pd and ctx.spec.router.enabled is False:
        yield Problem("spec.router.enabled", "prefill/decode disaggregation needs the router")


def router_discovery_port(ctx: Context) -> Iterator[Problem]:
    """Kubernetes discovery dials every discovered pod on one port."""
    if ctx.router_enabled and ctx.spec.router.discovery == "kubernetes":
        ports = {r.spec.port for r in ctx.roles}
        if len(ports) > 1:
            yield Problem(
                "spec.decode.port",
                "with router.discovery kubernetes, prefill and decode must listen on the same port",
            )


def model_source_in_volume(ctx: Context) -> Iterator[Problem]:
    """A path source must be inside the model volume, or no pod can read it."""
    mount = ctx.spec.storage.mount_path.rstrip("/") + "/"
    if ctx.local_path and not ctx.local_path.startswith(mount):
        yield Problem("spec.model.source", f"a path source must be under storage.mountPath ({mount})")
    if ctx.local_path and ctx.spec.storage.download:
        yield Problem("spec.storage.download", "a path source cannot be downloaded: use a hub id")
    if ctx.shm_bytes is None:
        yield Problem("spec.storage.shmSize", "must be a Kubernetes quantity such as 64Gi")


def _flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def extra_args_not_owned(ctx: Context) -> Iterator[Problem]:
    """extraArgs may add flags, never override the planner's: those have fields."""
    lists = [("spec.runtime.extraArgs", ctx.spec.runtime.extra_args)]
    lists += [(f"{r.path}.extraArgs", r.spec.extra_args) for r in ctx.roles]
    for path, args in lists:
        for i, arg in enumerate(args):
            flag = _flag_name(arg)
            if flag in OWNED_FLAGS:
                yield Problem(
                    f"{path}[{i}]",
                    f"{flag} is set by the operator from {OWNED_FLAGS[flag]}: set that field instead",
                )
            if flag == "--json-model-override-args":
                value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
                try:
                    ok = isinstance(json.loads(value), dict)
                except ValueError:
                    ok = False
                if not ok:
                    yield Problem(f"{path}[{i}]", "--json-model-override-args needs a JSON object")
                elif ctx.spec.features.index_cache.pattern:
                    yield Problem(f"{path}[{i}]", "conflicts with features.indexCache: set one")


# Flags SGLang removed, by the first version without them (0.5.x patch number), and what replaces them.
# (The removed --nsa-* flags are the planner's own: OWNED_FLAGS refuses them in every version.)
REMOVED_FLAGS: dict[str, tuple[int, str]] = {
    "--collect-tokens-histogram": (20, "token histograms come with enableMetrics"),
    "--cuda-graph-max-bs": (20, "set cudaGraphMaxBatchSize (spelled --cuda-graph-max-bs-decode there)"),
}


def extra_args_exist_in_version(ctx: Context) -> Iterator[Problem]:
    """A flag the chosen SGLang no longer has would stop the server at start-up (argparse exit 2)."""
    patch = int(ctx.dialect.version.split(".")[2])
    lists = [("spec.runtime.extraArgs", ctx.spec.runtime.extra_args)]
    lists += [(f"{r.path}.extraArgs", r.spec.extra_args) for r in ctx.roles]
    for path, args in lists:
        for i, arg in enumerate(args):
            removed = REMOVED_FLAGS.get(_flag_name(arg))
            if removed and patch >= removed[0]:
                yield Problem(
                    f"{path}[{i}]",
                    f"{_flag_name(arg)} is gone in SGLang {ctx.dialect.version}: {removed[1]}",
                )


RULES: tuple[Rule, ...] = (
    valid_name,
    one_topology,
    whole_nodes,
    parallel_sizes_divide,
    dp_attention_needs_dp,
    context_parallel_fits,
    pp_layer_partition,
    kernels_fit_gpu,
    mtp_parameters,
    nvfp4_on_blackwell,
    index_cache_on_glm5,
    tool_calling_supported,
    router_for_pd,
    router_discovery_port,
    model_source_in_volume,
    extra_args_not_owned,
    extra_args_exist_in_version,
)


def warnings(ctx: Context) -> list[str]:
    """Advice SGLang's docs give that does not block a deployment."""
    out = []
    mtp = ctx.spec.features.mtp.enabled
    for r in ctx.roles:
        p = r.spec.parallelism
        if mtp and r.spec.max_running_requests is None:
            out.append(
                f"{r.path}: MTP caps --max-running-requests at 48 by default; "
                "set maxRunningRequests for large batches"
            )
        if r.attention_dp and p.dp != ctx.gpus_per_node:
            out.append(
                f"{r.path}: the DSA kernels are tuned for DP attention with dp = "
                f"{ctx.gpus_per_node} on {ctx.gpus_per_node} GPUs"
            )
        if r.cp_mode == "in-seq-split":
            out.append(f"{r.path}: in-seq-split limits prefill batches to one request")
        if r.cp_mode != "none" and ctx.arch != "sm90":
            out.append(f"{r.path}: context parallelism has only been verified on Hopper")
        if r.cp_mode != "none" and p.pp > 1 and ctx.accelerator.name != "h20":
            out.append(f"{r.path}: PP + CP has only been tested on H20")
    if ctx.spec.features.dense_attention_threshold and ctx.spec.features.dense_attention_threshold > 2048:
        out.append("spec.features.denseAttentionThreshold above 2048 trades accuracy for prefill speed")
    return out
