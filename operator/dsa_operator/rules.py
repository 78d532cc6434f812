"""Every rule the planner applies, one function each, named for what it protects.

A rule takes the resolved `Context` and yields `Problem`s (field paths + what to change); a
combination names every field involved, the one to change first first. Each rule says
where it comes from (`@rule`):
- `refuse`: SGLang refuses such a spec (an assert or exception at start-up), or a cited
  source says it fails; the planner refuses with the same reason.
- `override`: SGLang silently replaces a value. The planner plans SGLang's value (see
  `resolve._sglang_overrides`) and refuses only an explicit conflicting value.
- `warn`: SGLang runs it (slowly, or against its docs' advice): a warning in the plan.
- `operator`: the operator's own requirement (Kubernetes names, one pod per node, ...).

Sources name SGLang's code per pinned version (0.5.12: `sglang/srt/server_args.py`;
0.5.23: `sglang/srt/arg_groups/`), or the docs (the DeepSeek-V3.2 usage page and cookbook)
where only they state it. `dsa-operator rules` prints them all.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

from dsa_operator.dialects import parse_version
from dsa_operator.errors import Problem
from dsa_operator.kernels import KERNELS, unknown_kernel, wrong_gpu
from dsa_operator.resolve import EP_EQUALS_TP_A2A, Context, RoleContext
from dsa_operator.sglang_flags import flags, pinned_for, resolve_flag

Action = Literal["refuse", "override", "warn", "operator"]
Check = Callable[[Context], Iterable[Problem]]

S12 = "0.5.12 sglang/srt/server_args.py"
S23 = "0.5.23 sglang/srt/arg_groups"
DOCS = "docs: DeepSeek-V3.2 usage page"
COOKBOOK = "docs: SGLang cookbook, DeepSeek-V3.2"


@dataclass(frozen=True)
class Rule:
    name: str
    protects: str
    action: Action
    sources: tuple[str, ...]
    versions: tuple[int, int]  # 0.5.x patch range the rule applies to
    check: Check

    def applies(self, version: str) -> bool:
        return self.versions[0] <= parse_version(version)[2] <= self.versions[1]

    @property
    def version_range(self) -> str:
        lo, hi = self.versions
        return f"0.5.{lo}" if lo == hi else f"0.5.{lo}-0.5.{hi}"


RULES: list[Rule] = []


def rule(action: Action, *sources: str, versions: tuple[int, int] = (9, 23)) -> Callable[[Check], Check]:
    """Register a rule; its docstring's first line says what it protects."""

    def register(fn: Check) -> Check:
        protects = (fn.__doc__ or fn.__name__).strip().splitlines()[0]
        RULES.append(Rule(fn.__name__, protects, action, sources or ("dsa-operator",), versions, fn))
        return fn

    return register


NAME_MAX = 40  # `<name>-prefill-<g>-<ordinal>` and the controller-revision-hash label fit 63
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
CP_MAX_TP = 8  # "Context parallel only supports single machine (tp_size <= 8)"
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
    "--moe-dense-tp-size": "parallelism.moeDenseTpSize",
    "--moe-a2a-backend": "parallelism.moeA2ABackend",
    "--nnodes": "parallelism (nodes are derived)",
    "--node-rank": "parallelism (ranks are derived)",
    "--dist-init-addr": "parallelism (the operator fills it)",
    "--host": "(the operator fills it)",
    "--port": "port",
    "--page-size": "pageSize",
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


def _patch(ctx: Context) -> int:
    return parse_version(ctx.dialect.version)[2]


# ---------------------------------------------------------------------------------------------
# The operator's own rules
# ---------------------------------------------------------------------------------------------


@rule("operator", "dsa-operator: Kubernetes object names (DNS labels of at most 63 characters)")
def valid_name(ctx: Context) -> Iterator[Problem]:
    """Child objects are named `<name>-<role>-<group>`: the name must leave room for that."""
    if not DNS_LABEL.match(ctx.name) or len(ctx.name) > NAME_MAX:
        yield Problem(
            "metadata.name",
            f"must be a lowercase DNS label of at most {NAME_MAX} characters "
            "(pods are named <name>-<role>-<group>-<rank>)",
        )


@rule("operator", "dsa-operator: the DSAModel API (unified serving, or PD with both roles)")
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


@rule(
    "operator",
    "dsa-operator: one pod per node, each taking all gpusPerNode GPUs",
    f"{S12} ServerArgs.check_server_args: (tp_size * pp_size) % nnodes == 0",
    f"{S23}/validation_hook.py check_server_args: the same assert",
)
def whole_nodes(ctx: Context) -> Iterator[Problem]:
    """A group is whole nodes: tp*pp GPUs (times dp for DP replicas), one pod per node."""
    for r in ctx.roles:
        if r.world_size % ctx.gpus_per_node:
            p = r.spec.parallelism
            what = "tp*pp" if r.attention_dp or p.dp == 1 else "tp*pp*dp (DP replicas)"
            yield Problem(
                f"{_par(r)}.tp",
                f"{what} = {r.world_size} GPUs is not a whole number of "
                f"{ctx.gpus_per_node}-GPU nodes; make it a multiple of "
                f"{ctx.gpus_per_node} or set spec.hardware.gpusPerNode",
            )


@rule("operator", "dsa-operator: PD pairs each request's prefill and decode through the router")
def router_for_pd(ctx: Context) -> Iterator[Problem]:
    """PD needs the router: it pairs each request's prefill and decode."""
    if ctx.pd and ctx.spec.router.enabled is False:
        yield Problem("spec.router.enabled", "prefill/decode disaggregation needs the router")


@rule("operator", "dsa-operator: a canary evaluation asks one group alone")
def canary_group_serves_alone(ctx: Context) -> Iterator[Problem]:
    """A rollout canary asks one group's rank 0 alone, which only a unified group can answer."""
    if ctx.spec.rollout.gate is not None and ctx.pd:
        yield Problem(
            "spec.rollout.gate",
            "a canary evaluation asks one group alone; a prefill or decode group cannot answer "
            "without its peer: gate unified (serving) models only",
        )


@rule("operator", "dsa-operator: the router's Kubernetes discovery dials one port (sglang-router 0.3.2)")
def router_discovery_port(ctx: Context) -> Iterator[Problem]:
    """Kubernetes discovery dials every discovered pod on one port."""
    if ctx.router_enabled and ctx.spec.router.discovery == "kubernetes":
        ports = {r.spec.port for r in ctx.roles}
        if len(ports) > 1:
            yield Problem(
                "spec.decode.port",
                "with router.discovery kubernetes, prefill and decode must listen on the same port",
            )


@rule(
    "operator",
    "LeaderWorkerSet: leaderworkerset.sigs.k8s.io/exclusive-topology names the node label of the "
    "domains its groups hold one each",
)
def exclusive_domain_is_named(ctx: Context) -> Iterator[Problem]:
    """One group per topology domain needs the node label that names the domains."""
    p = ctx.spec.placement
    if p.exclusive and not p.topology_key:
        yield Problem(
            "spec.placement.exclusive",
            "one group per domain needs the domains: set spec.placement.topologyKey (a node label "
            "key such as topology.dsa-operator.io/rack), or drop exclusive",
        )


@rule("operator", "dsa-operator: pods read the weights from the model volume")
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


def _extra_args(ctx: Context) -> list[tuple[str, list[str]]]:
    lists = [("spec.runtime.extraArgs", list(ctx.spec.runtime.extra_args))]
    return lists + [(f"{r.path}.extraArgs", list(r.spec.extra_args)) for r in ctx.roles]


@rule("operator", "dsa-operator: every flag the planner derives has one field")
def extra_args_not_owned(ctx: Context) -> Iterator[Problem]:
    """extraArgs may add flags, never override the planner's: those have fields."""
    for path, args in _extra_args(ctx):
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
REMOVED_FLAGS: dict[str, tuple[int, str]] = {
    "--collect-tokens-histogram": (20, "token histograms come with enableMetrics"),
    "--cuda-graph-max-bs": (20, "set cudaGraphMaxBatchSize (spelled --cuda-graph-max-bs-decode there)"),
}


@rule(
    "refuse",
    "SGLang's argument parser (ServerArgs.add_cli_args): an unknown or ambiguous flag exits with status 2",
)
def extra_args_exist_in_version(ctx: Context) -> Iterator[Problem]:
    """A flag the chosen SGLang no longer has would stop the server at start-up."""
    patch = _patch(ctx)
    for path, args in _extra_args(ctx):
        for i, arg in enumerate(args):
            removed = REMOVED_FLAGS.get(_flag_name(arg))
            if removed and patch >= removed[0]:
                yield Problem(
                    f"{path}[{i}]",
                    f"{_flag_name(arg)} is gone in SGLang {ctx.dialect.version}: {removed[1]}",
                )


@rule(
    "refuse",
    "SGLang's argument parser (ServerArgs.add_cli_args, allow_abbrev) of the pinned 0.5.12, 0.5.16 and "
    "0.5.23: an unknown or ambiguous flag, or a value outside its choices, exits with status 2",
)
def extra_args_known_to_sglang(ctx: Context) -> Iterator[Problem]:
    """extraArgs are checked by the chosen SGLang's own parser table (pinned versions only)."""
    version = pinned_for(ctx.dialect.version)
    if version is None:
        return
    table = flags(version)
    for path, args in _extra_args(ctx):
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if not arg.startswith("--"):
                continue
            name, _, inline = arg.partition("=")
            if name in REMOVED_FLAGS or name in OWNED_FLAGS:
                continue  # their own rules say why, better
            flag, candidates = resolve_flag(version, name)
            if flag is None:
                what = f"is ambiguous ({', '.join(candidates[:4])})" if candidates else "is not a flag"
                yield Problem(f"{path}[{i - 1}]", f"{name} {what} in SGLang {version}")
                continue
            choices = table[flag]
            if choices is None:
                continue
            value = inline if "=" in arg else (args[i] if i < len(args) else None)
            if "=" not in arg:
                i += 1
            if value is None:
                yield Problem(f"{path}[{i - 2}]", f"{flag} needs a value")
            elif choices and value not in choices:
                yield Problem(
                    f"{path}[{i - 2 if '=' not in arg else i - 1}]",
                    f"{flag} takes one of {', '.join(choices)}",
                )


# ---------------------------------------------------------------------------------------------
# Parallelism
# ---------------------------------------------------------------------------------------------


@rule(
    "refuse",
    f"{S12} ServerArgs._handle_data_parallelism: assert tp_size % dp_size == 0 (DP attention)",
    f"{S23}/parallel_hook.py handle_data_parallelism: assert tp_size % attn_dp_size == 0",
)
def dp_divides_tp(ctx: Context) -> Iterator[Problem]:
    """DP attention splits the tp group into dp attention groups."""
    for r in ctx.roles:
        p = r.spec.parallelism
        if r.attention_dp and p.tp % p.dp:
            yield Problem(
                f"{_par(r)}.dp", f"{_par(r)}.tp ({p.tp}) must be divisible by dp ({p.dp}) under DP attention"
            )


@rule(
    "refuse",
    "0.5.12 sglang/srt/distributed/parallel_state.py initialize_model_parallel: "
    "moe_tp_size = tp_size // moe_ep_size (the expert groups tile the tp group)",
)
def ep_divides_tp(ctx: Context) -> Iterator[Problem]:
    """Experts are split by ep inside the tp group."""
    for r in ctx.roles:
        p = r.spec.parallelism
        if p.tp % r.ep:
            yield Problem(f"{_par(r)}.ep", f"{_par(r)}.tp ({p.tp}) must be divisible by ep ({r.ep})")


@rule(
    "refuse",
    f"{S12} ServerArgs.check_server_args: moe_dense_tp_size in {{1, None}}",
    versions=(9, 15),
)
def moe_dense_tp_size_one(ctx: Context) -> Iterator[Problem]:
    """SGLang up to 0.5.15 runs dense MoE layers with TP 1 or the full tp only by default."""
    for r in ctx.roles:
        v = r.spec.parallelism.moe_dense_tp_size
        if v is not None and v != 1:
            yield Problem(
                f"{_par(r)}.moeDenseTpSize", f"SGLang {ctx.dialect.version} accepts only 1 (or unset)"
            )


@rule(
    "refuse",
    "0.5.16 sglang/srt/server_args.py ServerArgs.check_server_args: moe_dense_tp_size in {None, 1, tp_size}",
    f"{S23}/validation_hook.py check_server_args: the same",
    versions=(16, 23),
)
def moe_dense_tp_size_one_or_tp(ctx: Context) -> Iterator[Problem]:
    """Dense MoE layers run with TP 1 or the full tp."""
    for r in ctx.roles:
        p = r.spec.parallelism
        v = p.moe_dense_tp_size
        if v is not None and v not in (1, p.tp):
            yield Problem(f"{_par(r)}.moeDenseTpSize", f"must be 1 or tp ({p.tp}), or unset")


@rule(
    "override",
    f"{S12} ServerArgs._handle_data_parallelism: dp_size == 1 sets enable_dp_attention = False",
    f"{S23}/parallel_hook.py handle_deprecated_dp_attention: --enable-dp-attention with dp 1 is TP attention",
)
def dp_attention_needs_dp(ctx: Context) -> Iterator[Problem]:
    """DP attention with one DP group is TP attention: SGLang switches it off."""
    for r in ctx.roles:
        p = r.spec.parallelism
        if p.attention == "dp" and p.dp == 1:
            yield Problem(f"{_par(r)}.attention", "dp attention needs dp > 1 (e.g. dp: 8)")
            yield Problem(f"{_par(r)}.dp", "is 1: SGLang would run TP attention")


@rule(
    "refuse",
    f"{S12} ServerArgs.check_server_args: multi-node data parallel is not supported unless dp attention",
    f"{S23}/validation_hook.py check_server_args: multi-node data-parallel replicas are not supported",
)
def dp_replicas_on_one_node(ctx: Context) -> Iterator[Problem]:
    """DP replicas (dp > 1 with TP attention) are processes of one node."""
    for r in ctx.roles:
        p = r.spec.parallelism
        if p.dp > 1 and not r.attention_dp and r.nodes > 1:
            yield Problem(f"{_par(r)}.attention", "dp > 1 across nodes needs DP attention (attention: dp)")
            yield Problem(f"{_par(r)}.dp", f"DP replicas run on one node, not {r.nodes}")


@rule(
    "refuse",
    "0.5.12 sglang/srt/distributed/utils.py get_pp_indices: SGLANG_PP_LAYER_PARTITION must have pp "
    "entries summing to the layer count (ValueError at model load)",
)
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


@rule(
    "refuse",
    f"{S12} ServerArgs.check_server_args: pipeline parallelism is not compatible with speculative decoding",
    "0.5.16 sglang/srt/server_args.py ServerArgs.check_server_args: the same assert",
    f"{S23}/validation_hook.py check_pipeline_parallel_compat: PP + speculative decoding (MTP) is only "
    "supported on prefill nodes (disaggregation-mode=prefill)",
)
def pp_without_mtp(ctx: Context) -> Iterator[Problem]:
    """Speculative decoding (MTP) with pipeline parallelism: never up to 0.5.22, PD prefill only in 0.5.23."""
    if not ctx.spec.features.mtp.enabled:
        return
    for r in ctx.roles:
        if r.spec.parallelism.pp > 1 and (_patch(ctx) <= 22 or r.name != "prefill"):
            where = "" if _patch(ctx) <= 22 else f" on a {r.name} server (PD prefill only)"
            yield Problem(
                "spec.features.mtp.enabled", f"SGLang {ctx.dialect.version} cannot run MTP with pp > 1{where}"
            )
            yield Problem(f"{_par(r)}.pp", "pipeline parallelism excludes MTP here")


# ---------------------------------------------------------------------------------------------
# Context parallelism
# ---------------------------------------------------------------------------------------------

_ADJUST = f"{S12} ServerArgs._handle_model_specific_adjustments"
_CP_BRANCH = f"{_ADJUST} (DSA context-parallel branch)"
_CP_23 = f"{S23}/model_overrides/deepseek_v2.py _deepseek_family_overrides (DSA prefill CP)"


def _cp_roles(ctx: Context) -> Iterator[RoleContext]:
    yield from (r for r in ctx.roles if r.cp_mode != "none")


@rule(
    "refuse",
    f"{_CP_BRANCH}: assert disaggregation_mode != 'decode'",
    f"{S23}/model_hook.py handle_model_specific_adjustments: the same assert",
)
def cp_prefill_only(ctx: Context) -> Iterator[Problem]:
    """Context parallelism is for prefill: a PD decode server refuses it."""
    for r in _cp_roles(ctx):
        if r.name == "decode":
            yield Problem(
                f"{_par(r)}.contextParallel.mode", "context parallelism is for prefill only: not on decode"
            )


@rule("refuse", f"{_CP_BRANCH}: assert tp_size <= 8 (cross-machine CP has precision issues)", _CP_23)
def cp_within_one_node(ctx: Context) -> Iterator[Problem]:
    """Context parallelism runs within one machine (tp <= 8)."""
    for r in _cp_roles(ctx):
        p = r.spec.parallelism
        if p.tp > CP_MAX_TP and r.name != "decode":
            yield Problem(f"{_par(r)}.tp", f"context parallelism runs within one node: tp <= {CP_MAX_TP}")
            yield Problem(f"{_par(r)}.contextParallel.mode", f"needs tp <= {CP_MAX_TP}")


@rule(
    "refuse",
    f"{S23}/parallel_hook.py handle_context_parallelism: Prefill CP on HIP is only supported for "
    "DeepseekV4ForCausalLM (absent in 0.5.12 and 0.5.16)",
    versions=(17, 23),
)
def cp_not_on_amd(ctx: Context) -> Iterator[Problem]:
    """SGLang 0.5.17+ refuses DSA prefill context parallelism on AMD GPUs."""
    if ctx.arch != "amd":
        return
    for r in _cp_roles(ctx):
        yield Problem(
            f"{_par(r)}.contextParallel.mode",
            f"SGLang {ctx.dialect.version} does not run DSA prefill context parallelism on AMD GPUs",
        )


@rule(
    "refuse",
    f"{_CP_BRANCH}: assert dp_size == 1 (for round-robin split mode, dp attention is not supported)",
    "notes: asserted up to 0.5.21; 0.5.23 runs interleave with attention DP",
    versions=(9, 21),
)
def round_robin_without_dp_attention(ctx: Context) -> Iterator[Problem]:
    """Round-robin-split CP cannot run with DP attention up to SGLang 0.5.21."""
    for r in _cp_roles(ctx):
        p = r.spec.parallelism
        if r.cp_mode == "round-robin-split" and p.dp != 1:
            yield Problem(
                f"{_par(r)}.contextParallel.mode",
                "round-robin-split cannot run with DP attention: use in-seq-split, or set dp 1",
            )
            yield Problem(f"{_par(r)}.dp", "must be 1 with round-robin-split (no DP attention)")


@rule(
    "override",
    f"{_CP_BRANCH}: in-seq-split sets enable_dp_attention, moe_dense_tp_size=1, moe_a2a_backend=deepep, "
    "ep_size=tp_size; round-robin-split sets moe_dense_tp_size=1",
    f"{_CP_23}: zigzag sets moe_dense_tp_size=1, moe_a2a_backend=deepep, ep_size=tp_size",
)
def cp_moe_layout(ctx: Context) -> Iterator[Problem]:
    """SGLang fixes the MoE layout under context parallelism: only an explicit other value is refused."""
    for r in _cp_roles(ctx):
        p = r.spec.parallelism
        mode = f"{_par(r)}.contextParallel.mode"
        o = r.sglang_overrides
        if "moe_dense_tp_size" in o and p.moe_dense_tp_size not in (None, o["moe_dense_tp_size"]):
            yield Problem(mode, f"{r.cp_mode} runs with moeDenseTpSize 1 in SGLang {ctx.dialect.version}")
            yield Problem(f"{_par(r)}.moeDenseTpSize", "must be 1 or unset under context parallelism")
        if r.cp_mode == "in-seq-split":
            if "ep" in r.explicit and p.ep != p.tp:
                yield Problem(mode, f"in-seq-split runs with ep == tp ({p.tp}) (DeepEP MoE)")
                yield Problem(f"{_par(r)}.ep", f"must be {p.tp} or unset with in-seq-split")
            if p.moe_a2a_backend not in (None, "deepep"):
                yield Problem(mode, "in-seq-split runs with moeA2ABackend deepep")
                yield Problem(f"{_par(r)}.moeA2ABackend", "must be deepep or unset with in-seq-split")
        if p.dp > 1 and p.attention == "tp":
            yield Problem(mode, "context parallelism runs its dp groups as DP attention")
            yield Problem(f"{_par(r)}.attention", "must be dp (or unset) with context parallelism and dp > 1")


@rule(
    "refuse",
    f"{DOCS}: in-seq-split needs a CP size tp/dp > 1, a bf16 KV cache, one node and no PD",
    f"{_CP_BRANCH}: 'TODO Supports ... kv cache dtype = fp8 ... and cross-machine operation'",
)
def in_seq_split_limits(ctx: Context) -> Iterator[Problem]:
    """In-seq-split's documented limits: CP size > 1, bf16 KV, one node, no PD."""
    for r in _cp_roles(ctx):
        if r.cp_mode != "in-seq-split" or r.name == "decode":
            continue
        p = r.spec.parallelism
        mode = f"{_par(r)}.contextParallel.mode"
        if p.tp <= p.dp:
            yield Problem(mode, "in-seq-split needs a CP size tp/dp > 1")
            yield Problem(f"{_par(r)}.dp", f"must be smaller than tp ({p.tp}) with in-seq-split")
        if r.kv_dtype != "bf16":
            yield Problem(mode, "in-seq-split runs with a bf16 KV cache only")
            yield Problem(f"{r.path}.kernels.kvCacheDtype", "must be bf16 with in-seq-split")
        if r.nodes > 1:
            yield Problem(mode, "in-seq-split does not run across nodes; use round-robin-split")
            yield Problem(f"{_par(r)}.pp" if p.pp > 1 else f"{_par(r)}.tp", f"spans {r.nodes} nodes")
        if ctx.pd:
            yield Problem(
                mode,
                "in-seq-split is not supported with PD (spec.prefill + spec.decode); use round-robin-split",
            )


@rule(
    "refuse",
    f"{S23}/parallel_hook.py handle_context_parallelism: DeepSeek V3.2 prefill CP does not support "
    "--cp-strategy zigzag; use interleave",
    "notes: from 0.5.20",
    versions=(20, 23),
)
def no_zigzag_on_deepseek_v32(ctx: Context) -> Iterator[Problem]:
    """SGLang 0.5.20+ refuses in-seq-split (zigzag) for DeepSeek-V3.2."""
    if ctx.family.sglang_architecture != "DeepseekV32ForCausalLM":
        return
    for r in _cp_roles(ctx):
        if r.cp_mode == "in-seq-split" and r.name != "decode":
            yield Problem(
                f"{_par(r)}.contextParallel.mode",
                f"SGLang {ctx.dialect.version} rejects in-seq-split (zigzag) for DeepSeek-V3.2; "
                "use round-robin-split",
            )


# ---------------------------------------------------------------------------------------------
# Memory layout
# ---------------------------------------------------------------------------------------------


@rule(
    "override",
    f"{_ADJUST}: page_size = 64 for DeepSeek DSA on CUDA, and on ROCm with aiter's paged-MQA kernel",
    f"{_CP_23}: page_size = 64 * index_kpool (64 for these checkpoints)",
)
def dsa_page_size(ctx: Context) -> Iterator[Problem]:
    """SGLang sets page size 64 for DSA models, whatever --page-size says."""
    for r in ctx.roles:
        planned = r.sglang_overrides.get("page_size")
        given = r.spec.page_size
        if planned is not None and given is not None and given != planned:
            yield Problem(
                f"{r.path}.pageSize",
                f"SGLang runs DSA models with page size {planned}: set {planned} or unset",
            )


@rule(
    "refuse",
    f"{S12} ServerArgs.check_server_args: chunked_prefill_size % page_size == 0 (not on decode), after "
    "_handle_data_parallelism divides it by dp under DP attention",
    f"{S23}/validation_hook.py check_server_args and parallel_hook.py handle_data_parallelism: the same",
)
def chunked_prefill_fits_pages(ctx: Context) -> Iterator[Problem]:
    """Each (per-DP-group) prefill chunk is whole KV pages."""
    for r in ctx.roles:
        size = r.spec.chunked_prefill_size
        page = r.page_size or r.spec.page_size or 1
        if size is None or size <= 0 or (ctx.pd and r.name == "decode"):
            continue
        per_group = size // r.spec.parallelism.dp if r.attention_dp else size
        if per_group % page:
            where = f" / dp {r.spec.parallelism.dp} = {per_group}" if r.attention_dp else ""
            yield Problem(
                f"{r.path}.chunkedPrefillSize",
                f"{size}{where} is not a multiple of the page size {page}",
            )


# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


def _chosen_kernels(ctx: Context) -> Iterator[tuple[RoleContext, str, str, str]]:
    """(role, phase, chosen, resolved) for kernels the user picked (auto is SGLang's own)."""
    for r in ctx.roles:
        k = r.spec.kernels
        for phase, chosen, resolved in (
            ("prefill", k.prefill, r.prefill_kernel),
            ("decode", k.decode, r.decode_kernel),
        ):
            if chosen != "auto":
                yield r, phase, chosen, resolved


@rule("refuse", "SGLang's argument parser: --nsa-*/--dsa-*-backend choices of the version")
def kernel_in_version(ctx: Context) -> Iterator[Problem]:
    """The chosen SGLang version has the kernel."""
    for r, phase, _, kernel in _chosen_kernels(ctx):
        msg = unknown_kernel(kernel, ctx.dialect)
        if msg:
            yield Problem(f"{r.path}.kernels.{phase}", msg)


@rule(
    "refuse",
    f"{DOCS}: kernel table (FlashMLA on Hopper and Blackwell, fa3 Hopper, trtllm Blackwell, aiter AMD)",
    f"{S23}/overrides.py _check_dsa_backend_constraints: triton is ROCm/HIP only",
    "0.5.12 sglang/srt/layers/attention/nsa_backend.py forward_extend: aiter has a prefill path too",
)
def kernels_fit_gpu(ctx: Context) -> Iterator[Problem]:
    """Each kernel runs on some GPU architectures only."""
    for r, phase, _, kernel in _chosen_kernels(ctx):
        if kernel in ctx.dialect.kernels:
            msg = wrong_gpu(kernel, phase, ctx.arch, ctx.dialect)
            if msg:
                yield Problem(
                    f"{r.path}.kernels.{phase}", f"{msg} (spec.hardware.accelerator: {ctx.accelerator.name})"
                )


@rule(
    "refuse",
    "0.5.12 sglang/srt/layers/attention/nsa_backend.py: fa3 and flashmla_sparse decode read the cache as "
    "bf16; the fp8 cache is a packed layout with scales and nothing converts it for them",
)
def kernel_reads_kv_cache(ctx: Context) -> Iterator[Problem]:
    """A kernel must have a path to the KV cache dtype."""
    for r, phase, _, kernel in _chosen_kernels(ctx):
        k = KERNELS.get(kernel)
        if k and kernel in ctx.dialect.kernels and k.kv_path(phase, r.kv_dtype) == "none":
            yield Problem(
                f"{r.path}.kernels.{phase}",
                f"{kernel} cannot read a {r.kv_dtype} KV cache in {phase}; pick another kernel",
            )
            yield Problem(f"{r.path}.kernels.kvCacheDtype", f"{r.kv_dtype} has no {phase} path in {kernel}")


@rule(
    "warn",
    "0.5.12 sglang/srt/layers/attention/nsa_backend.py: _forward_flashmla_kv quantizes a bf16 cache on "
    "every call; flashmla_sparse prefill dequantizes an fp8 cache (dequantize_k_cache_paged)",
)
def kernel_converts_kv_cache(ctx: Context) -> Iterator[Problem]:
    """Kernel and KV dtype pairs SGLang runs by converting the cache: slower than the table's pairs."""
    for r, phase, _, kernel in _chosen_kernels(ctx):
        k = KERNELS.get(kernel)
        if k and kernel in ctx.dialect.kernels and k.kv_path(phase, r.kv_dtype) == "converts":
            yield Problem(
                f"{r.path}.kernels.{phase}",
                f"{kernel} converts the {r.kv_dtype} KV cache on every {phase} call (slow); "
                "the defaults (auto) avoid it",
            )


@rule(
    "refuse",
    f"{S23}/overrides.py _check_dsa_backend_constraints: CUDA TileLang FP8 KV requires both DSA backends "
    "to be tilelang (absent in 0.5.16)",
    versions=(17, 23),
)
def tilelang_fp8_both_phases(ctx: Context) -> Iterator[Problem]:
    """On NVIDIA with an fp8 KV cache, tilelang must run both phases or neither."""
    if ctx.arch == "amd":
        return
    for r in ctx.roles:
        if r.kv_dtype != "fp8_e4m3":
            continue
        pair = (r.prefill_kernel, r.decode_kernel)
        if "tilelang" in pair and pair != ("tilelang", "tilelang"):
            other = "decode" if pair[0] == "tilelang" else "prefill"
            yield Problem(
                f"{r.path}.kernels.{other}", "must be tilelang too: raw and scaled fp8 KV layouts cannot mix"
            )


# ---------------------------------------------------------------------------------------------
# Model, features
# ---------------------------------------------------------------------------------------------


@rule(
    "override",
    f"{S12} ServerArgs._handle_speculative_decoding: with eagle topk 1, num_draft_tokens is set to "
    "num_steps + 1",
    f"{S23}/speculative_hook.py _handle_eagle_family: the same",
)
def mtp_parameters(ctx: Context) -> Iterator[Problem]:
    """EAGLE: with top-k 1 the draft is a chain of steps+1 tokens; a tree holds at most k*steps+1."""
    m = ctx.spec.features.mtp
    if not m.enabled or m.num_draft_tokens is None:
        return
    path = "spec.features.mtp.numDraftTokens"
    if m.eagle_top_k == 1 and m.num_draft_tokens != m.num_steps + 1:
        yield Problem(path, f"with eagleTopK 1 it must be numSteps + 1 = {m.num_steps + 1} (or unset)")
    elif m.eagle_top_k > 1 and m.num_draft_tokens > m.eagle_top_k * m.num_steps + 1:
        yield Problem(path, f"at most eagleTopK*numSteps+1 = {m.eagle_top_k * m.num_steps + 1}")


@rule(
    "refuse",
    f"{S12} ServerArgs._handle_speculative_decoding: eagle topk > 1 with page_size > 1 raises unless the "
    "attention backend is flashinfer or fa3",
    f"{S23}/speculative_hook.py _handle_eagle_family: the same (flashinfer, fa3, triton)",
)
def mtp_chain_on_dsa(ctx: Context) -> Iterator[Problem]:
    """DSA runs with page size 64 on its own attention backend: EAGLE drafts a chain (top-k 1)."""
    m = ctx.spec.features.mtp
    if m.enabled and m.eagle_top_k > 1:
        yield Problem(
            "spec.features.mtp.eagleTopK",
            "must be 1: DSA's paged attention (page size 64) drafts chains only",
        )


@rule(
    "refuse",
    f"{COOKBOOK}: NVFP4 requires B200 (Blackwell); MoE runner flashinfer_trtllm (recommended), "
    "flashinfer_cutlass or flashinfer_cutedsl",
)
def nvfp4_on_blackwell(ctx: Context) -> Iterator[Problem]:
    """NVFP4 checkpoints (modelopt_fp4) need Blackwell and a FlashInfer MoE runner."""
    if ctx.spec.model.quantization != "nvfp4":
        return
    if ctx.arch != "sm100":
        yield Problem(
            "spec.model.quantization",
            f"nvfp4 runs on Blackwell GPUs only (b200, b300, gb200, gb300), not {ctx.accelerator.name}",
        )
        yield Problem("spec.hardware.accelerator", "must be a Blackwell GPU for nvfp4")
    for r in ctx.roles:
        b = r.spec.moe_runner_backend
        if b is not None and b not in NVFP4_MOE_RUNNERS:
            yield Problem(
                f"{r.path}.moeRunnerBackend",
                f"nvfp4 needs one of {', '.join(NVFP4_MOE_RUNNERS)} (flashinfer_trtllm recommended)",
            )


@rule(
    "refuse", f"{COOKBOOK}: the published checkpoints (nvidia/DeepSeek-V3.2-NVFP4, amd/DeepSeek-V3.2-mxfp4)"
)
def quantized_checkpoint_source(ctx: Context) -> Iterator[Problem]:
    """An nvfp4 or mxfp4 deployment needs a checkpoint in that format."""
    q = ctx.spec.model.quantization
    if ctx.spec.model.source is None and ctx.family.source_for(q) is None:
        yield Problem(
            "spec.model.source", f"no published {q} checkpoint of {ctx.family.name}: set the one to serve"
        )
        yield Problem("spec.model.quantization", f"{q} needs model.source")


@rule("refuse", f"{COOKBOOK}: DeepSeek-V3.2-MXFP4 requires AMD MI300X/MI355X")
def mxfp4_on_amd(ctx: Context) -> Iterator[Problem]:
    """MXFP4 checkpoints (AMD Quark, OCP MXFP4) run on AMD Instinct GPUs."""
    if ctx.spec.model.quantization == "mxfp4" and ctx.arch != "amd":
        yield Problem(
            "spec.model.quantization", f"mxfp4 runs on AMD GPUs (mi300x, mi355x), not {ctx.accelerator.name}"
        )
        yield Problem("spec.hardware.accelerator", "must be an AMD GPU for mxfp4")


# The checkpoints each FlashInfer MoE runner takes (SGLang's quantization names: fp8 and quark are
# read from the checkpoint, modelopt_fp4 is --quantization for nvfp4).
MOE_RUNNER_CHECKPOINTS = {
    "flashinfer_trtllm": ("fp8", "nvfp4"),
    "flashinfer_cutlass": ("nvfp4",),
    "flashinfer_cutedsl": ("nvfp4",),
}


@rule(
    "refuse",
    f"{S12} ServerArgs._handle_moe_kernel_config: flashinfer_trtllm asserts quantization in (modelopt_fp4, "
    "fp8, ...), flashinfer_cutlass in (modelopt_fp4, modelopt_fp8, ...), flashinfer_cutedsl modelopt_fp4; "
    "cutlass and cutedsl assert ep_size in {1, tp_size}",
    f"{S23}/moe_hook.py handle_moe_kernel_config: the same asserts",
)
def moe_runner_fits(ctx: Context) -> Iterator[Problem]:
    """FlashInfer MoE runners take some checkpoints and expert layouts only."""
    quant = ctx.spec.model.quantization
    for r in ctx.roles:
        b = r.spec.moe_runner_backend
        if b in MOE_RUNNER_CHECKPOINTS and quant not in MOE_RUNNER_CHECKPOINTS[b]:
            yield Problem(f"{r.path}.moeRunnerBackend", f"{b} does not run {quant} checkpoints")
            yield Problem("spec.model.quantization", f"{b} runs {' or '.join(MOE_RUNNER_CHECKPOINTS[b])}")
        if b in ("flashinfer_cutedsl", "flashinfer_cutlass") and r.ep not in (1, r.spec.parallelism.tp):
            yield Problem(f"{r.path}.moeRunnerBackend", f"{b} runs with ep 1 or ep == tp")
            yield Problem(f"{_par(r)}.ep", f"must be 1 or tp with {b}")


@rule(
    "override",
    f"{S12} ServerArgs._handle_a2a_moe: the deepep/mooncake/nixl/mori/flashinfer all-to-all sets "
    "ep_size = tp_size",
    f"{S23}/moe_hook.py: the same",
)
def a2a_backend_sets_ep(ctx: Context) -> Iterator[Problem]:
    """An expert all-to-all backend spans the tp group: SGLang sets ep = tp."""
    for r in ctx.roles:
        p = r.spec.parallelism
        if p.moe_a2a_backend in EP_EQUALS_TP_A2A and "ep" in r.explicit and p.ep != p.tp:
            yield Problem(
                f"{_par(r)}.ep",
                f"moeA2ABackend {p.moe_a2a_backend} runs with ep == tp ({p.tp}): set it or unset ep",
            )
            yield Problem(f"{_par(r)}.moeA2ABackend", f"sets ep to tp ({p.tp})")


@rule(
    "refuse",
    f"{S12} ServerArgs.check_server_args: served_model_name cannot contain ':' (LoRA adapter syntax)",
    f"{S23}/validation_hook.py check_server_args: the same",
)
def served_name_without_colon(ctx: Context) -> Iterator[Problem]:
    """`model:adapter` is LoRA syntax, so a served name has no colon."""
    name = ctx.spec.model.served_model_name
    if name is not None and ":" in name:
        yield Problem("spec.model.servedModelName", "must not contain ':' (reserved for model:adapter)")


@rule(
    "refuse",
    f"{DOCS}: IndexCache is GLM-5's (`index_topk_pattern`, one letter per layer, F first)",
    "0.5.12 sglang/srt/models/deepseek_v2.py DeepseekV2AttentionMLA: skip_topk = "
    "index_topk_pattern[layer_id] == 'S' (a short pattern raises IndexError when the model is built); "
    "0.5.23 sglang/srt/configs/model_config.py reads missing letters as F",
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
    if len(pattern) < ctx.family.layers and _patch(ctx) <= 22:
        yield Problem(path, f"needs one letter per layer: {ctx.family.layers} letters, got {len(pattern)}")
    if pattern[0] != "F":
        yield Problem(path, "must start with F: the first layer has no previous top-k to reuse")
    if set(pattern) - {"F", "S"}:
        yield Problem(path, "only the letters F and S are allowed")


@rule("warn", f"{DOCS}: the recommended GLM-5 pattern has one letter per layer (78)")
def index_cache_length(ctx: Context) -> Iterator[Problem]:
    """A pattern that is not one letter per layer is read partly as F (or its tail is ignored)."""
    pattern = ctx.spec.features.index_cache.pattern
    n = ctx.family.layers
    if ctx.family.index_cache and pattern and (len(pattern) > n or (len(pattern) < n and _patch(ctx) > 22)):
        yield Problem(
            "spec.features.indexCache.pattern",
            f"has {len(pattern)} letters for {n} layers: missing letters count as F, extra ones are ignored",
        )


@rule("refuse", f"{COOKBOOK}: DeepSeek-V3.2-Speciale does not support tool calling")
def tool_calling_supported(ctx: Context) -> Iterator[Problem]:
    """V3.2-Speciale has no tool-call parser."""
    if ctx.spec.features.tool_calling and ctx.family.tool_call_parser is None:
        yield Problem("spec.features.toolCalling", f"{ctx.family.name} does not support tool calling")


# ---------------------------------------------------------------------------------------------
# Advice (warnings)
# ---------------------------------------------------------------------------------------------


@rule("warn", f"{DOCS}: MTP section (--max-running-requests defaults to 48 under MTP)")
def mtp_running_requests(ctx: Context) -> Iterator[Problem]:
    """MTP lowers SGLang's default request cap."""
    if ctx.spec.features.mtp.enabled:
        for r in ctx.roles:
            if r.spec.max_running_requests is None:
                yield Problem(
                    r.path,
                    "MTP caps --max-running-requests at 48 by default; "
                    "set maxRunningRequests for large batches",
                )


@rule("warn", f"{DOCS}: the kernels are customized for DP attention with dp_size 8")
def dp_attention_tuned_for_eight(ctx: Context) -> Iterator[Problem]:
    """The DSA kernels are tuned for dp = GPUs per node."""
    for r in ctx.roles:
        p = r.spec.parallelism
        if r.attention_dp and p.dp != ctx.gpus_per_node:
            yield Problem(
                r.path,
                f"the DSA kernels are tuned for DP attention with dp = {ctx.gpus_per_node} "
                f"on {ctx.gpus_per_node} GPUs",
            )


@rule(
    "warn",
    f"{DOCS}: CP notes (in-seq-split prefills one request at a time; PP + CP tested on H20)",
    f"{_CP_BRANCH}: 'Context parallel feature ... has only been verified on Hopper platform'",
)
def cp_advice(ctx: Context) -> Iterator[Problem]:
    """Context parallelism's documented caveats."""
    for r in _cp_roles(ctx):
        if r.cp_mode == "in-seq-split":
            yield Problem(r.path, "in-seq-split limits prefill batches to one request")
        if ctx.arch != "sm90":
            yield Problem(r.path, "context parallelism has only been verified on Hopper")
        if r.spec.parallelism.pp > 1 and ctx.accelerator.name != "h20":
            yield Problem(r.path, "PP + CP has only been tested on H20")
        if r.spec.parallelism.tp // max(r.spec.parallelism.dp, 1) < 2:
            yield Problem(r.path, "a CP size tp/dp of 1 splits nothing")


@rule(
    "warn",
    f"{DOCS}: a larger dense-attention threshold speeds prefill at some accuracy risk",
    f"{_ADJUST}: warns above index_topk",
)
def dense_threshold_advice(ctx: Context) -> Iterator[Problem]:
    """Short prefills run dense MHA; raising the threshold trades accuracy for speed."""
    t = ctx.spec.features.dense_attention_threshold
    if t and t > 2048:
        yield Problem(
            "spec.features.denseAttentionThreshold",
            "above 2048 (the index top-k) trades accuracy for prefill speed",
        )


def run(ctx: Context) -> tuple[list[Problem], list[str]]:
    """Every rule that applies to the chosen SGLang version: (problems, warnings)."""
    problems: list[Problem] = []
    warns: list[str] = []
    for r in RULES:
        if not r.applies(ctx.dialect.version):
            continue
        found = [replace(p, rule=r.name) for p in r.check(ctx)]
        if r.action == "warn":
            warns += [str(p) for p in found]
        else:
            problems += found
    return problems, warns
