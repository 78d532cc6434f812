"""The DSAModel API (`serving.dsa.dev/v1alpha1`): the typed spec and its parsing.

This module is the source of truth for the CustomResourceDefinition: `crd.py` renders
its schema from these models, and a test fails when `crds/` drifts from them. Rules that
need more than one field live in the planner (`rules.py`); the CEL rules here are the
subset the API server can check on its own, so a bad object is refused even before the
webhook sees it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from dsa_operator.catalog import FamilyName
from dsa_operator.dialects import ALL_KERNELS, DEFAULT_SGLANG_VERSION, VERSION_PATTERN
from dsa_operator.errors import PlanError, Problem
from dsa_operator.hardware import AcceleratorName

KernelName = Literal["auto", *ALL_KERNELS]  # type: ignore[valid-type]  # the dialects list them
DEFAULT_IMAGE = "ghcr.io/dsa-operator/dsa-runtime:0.1.0-sglang0.5.23"
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveInt = Annotated[int, Field(ge=1)]


# A Kubernetes label key (a qualified name): an optional DNS-subdomain prefix and `/`, then a name of
# at most 63 alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric (apimachinery's
# validation.IsQualifiedName).
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_KEY_MAX = 253 + 1 + 63  # prefix, `/`, name
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # RFC 1123 label (at most 63 characters)
_PATTERN_MEANING = {
    LABEL_KEY_PATTERN: "must be a Kubernetes label key: an optional DNS-subdomain prefix and '/', then "
    "at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit "
    "(e.g. topology.kubernetes.io/zone)",
    DNS_LABEL_PATTERN: "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending "
    "with a letter or digit, at most 63 characters",
}


def cel(*rules: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    """`x-kubernetes-validations` for a model's schema: (CEL rule, message[, fieldPath]) tuples. A
    fieldPath (relative to the object the rule is on, e.g. `.placement.exclusive`) makes the API
    server report the refusal at that field rather than at the object."""
    out = []
    for rule, message, *field in rules:
        out.append({"rule": rule, "message": message, **({"fieldPath": field[0]} if field else {})})
    return {"x-kubernetes-validations": out}


class Base(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ModelSpec(Base):
    """Which model to serve."""

    family: FamilyName = Field(description="Model family; decides layers, parsers and rules.")
    source: str | None = Field(
        None,
        min_length=1,
        description="Hub id (e.g. deepseek-ai/DeepSeek-V3.2) or an absolute path inside "
        "the model volume. Defaults to the family's published checkpoint in model.quantization's "
        "format (DeepSeek-V3.2: nvidia/DeepSeek-V3.2-NVFP4, amd/DeepSeek-V3.2-mxfp4).",
    )
    served_model_name: str | None = Field(
        None, min_length=1, description="Name clients use in the OpenAI API `model` field."
    )
    quantization: Literal["fp8", "nvfp4", "mxfp4"] = Field(
        "fp8",
        description="Checkpoint format: fp8 (the published checkpoints), nvfp4 (ModelOpt FP4, "
        "--quantization modelopt_fp4, Blackwell only) or mxfp4 (AMD Quark OCP MXFP4, read "
        "from the checkpoint, MI300X/MI355X only).",
    )
    trust_remote_code: bool = Field(True, description="Pass --trust-remote-code to SGLang.")


class RuntimeSpec(Base):
    """The serving container."""

    image: str = Field(DEFAULT_IMAGE, min_length=1, description="dsa-runtime image.")
    sglang_version: str = Field(
        DEFAULT_SGLANG_VERSION,
        pattern=VERSION_PATTERN,
        description="SGLang version inside the image; picks the flag dialect (0.5.9-0.5.23).",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description="Appended last to every engine's command line, for SGLang flags the API has "
        "no field for; checked against the chosen version's flags. Flags the planner owns "
        "(parallelism, kernels, ports...) are refused here: set their fields.",
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment.")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        "IfNotPresent", description="Pull policy of the serving image."
    )
    engine: Literal["sglang", "simulator"] = Field(
        "sglang",
        description="sglang: the real engine. simulator: dsa-runtime's engine simulator, for "
        "demos and tests on clusters without GPUs: it loads no model and its answers are not "
        "model output. Chosen only here; never substituted for SGLang.",
    )


class NetworkSpec(Base):
    """NCCL/GLOO settings handed to every engine pod."""

    nccl_socket_ifname: str | None = Field(None, description="NCCL_SOCKET_IFNAME.")
    gloo_socket_ifname: str | None = Field(None, description="GLOO_SOCKET_IFNAME.")
    nccl_ib_hca: str | None = Field(None, description="NCCL_IB_HCA.")
    nccl_ib_gid_index: int | None = Field(None, ge=0, description="NCCL_IB_GID_INDEX.")
    rdma_resource: str | None = Field(
        None, description="Extended resource for RDMA NICs (e.g. rdma/ib), one per pod."
    )
    rdma_count: int = Field(1, ge=1, description="How many of rdmaResource each pod requests.")


class HardwareSpec(Base):
    """The nodes the engines run on."""

    accelerator: AcceleratorName = Field(
        "h200", description="GPU model; decides architecture and kernel defaults."
    )
    gpus_per_node: int | None = Field(
        None,
        ge=1,
        le=16,
        description="GPUs each pod requests (one pod per node). Defaults to the "
        "accelerator's usual node (8; 4 on GB200/GB300).",
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    select_by_product: bool = Field(
        True,
        description="Also select nodes by the GPU product label (nvidia.com/gpu.product or "
        "amd.com/gpu.product) of the accelerator, so kernels meet the GPU they were planned for.",
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Pod tolerations, as in a PodSpec.",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    network: NetworkSpec = Field(default_factory=NetworkSpec, description="NCCL/GLOO/RDMA.")


class MTPSpec(Base):
    """Multi-token prediction (EAGLE speculative decoding)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "!self.enabled || self.eagleTopK != 1 || !has(self.numDraftTokens)"
                " || self.numDraftTokens == self.numSteps + 1",
                "with eagleTopK 1, numDraftTokens must be numSteps + 1 (or unset)",
            )
        )
    )
    enabled: bool = Field(False, description="Enable MTP.")
    num_steps: int = Field(3, ge=1, le=16, description="--speculative-num-steps.")
    eagle_top_k: int = Field(1, ge=1, le=16, alias="eagleTopK", description="--speculative-eagle-topk.")
    num_draft_tokens: int | None = Field(
        None,
        ge=2,
        le=64,
        description="--speculative-num-draft-tokens. Unset: numSteps + 1 with eagleTopK 1 (what "
        "SGLang sets), SGLang's choice otherwise.",
    )


class IndexCacheSpec(Base):
    """IndexCache (GLM-5): reuse the indexer's top-k across layers."""

    pattern: str = Field(
        "",
        pattern=r"^(F[FS]*)?$",
        description="One letter per layer: F computes the indexer top-k, S reuses the "
        "previous layer's. Empty: off. GLM-5 has 78 layers.",
    )


class FeaturesSpec(Base):
    """What the endpoint offers."""

    tool_calling: bool | None = Field(
        None,
        description="Tool-call parser (and chat template). Default: on where the "
        "family supports it (not on V3.2-Speciale).",
    )
    reasoning: bool = Field(True, description="Reasoning parser.")
    mtp: MTPSpec = Field(default_factory=MTPSpec, description="Multi-token prediction.")
    index_cache: IndexCacheSpec = Field(default_factory=IndexCacheSpec, description="GLM-5 only.")
    dense_attention_threshold: int | None = Field(
        None,
        ge=1,
        description="Prefills shorter than this many KV tokens use dense MHA "
        "(SGLANG_*_PREFILL_DENSE_ATTN_KV_LEN_THRESHOLD). Larger is faster, less accurate.",
    )


class ContextParallelSpec(Base):
    """Context parallelism for long prefills."""

    mode: Literal["none", "in-seq-split", "round-robin-split"] = Field(
        "none",
        description="in-seq-split (0.5.14+: zigzag) splits the sequence into blocks; "
        "round-robin-split (interleave) deals tokens by index. Prefill only.",
    )


class ParallelismSpec(Base):
    """How one SGLang instance (a group) spreads over GPUs and nodes."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            ("self.tp % self.dp == 0", "tp must be divisible by dp"),
            ("self.tp % self.ep == 0", "tp must be divisible by ep"),
            (
                "!has(self.ppLayerPartition) || size(self.ppLayerPartition) == self.pp",
                "ppLayerPartition needs one entry per pipeline stage (pp)",
            ),
        )
    )
    tp: PositiveInt = Field(8, le=256, description="Tensor-parallel size (GPUs per stage).")
    dp: PositiveInt = Field(1, le=256, description="Data-parallel size (attention DP groups).")
    ep: PositiveInt = Field(1, le=256, description="Expert-parallel size.")
    pp: PositiveInt = Field(1, le=64, description="Pipeline-parallel size (stages).")
    attention: Literal["tp", "dp"] | None = Field(
        None,
        description="dp: DP attention (dp > 1; high concurrency); tp: TP attention "
        "(low latency). Default: dp when dp > 1.",
    )
    moe_dense_tp_size: int | None = Field(None, ge=1, description="--moe-dense-tp-size.")
    moe_a2a_backend: str | None = Field(None, description="--moe-a2a-backend (e.g. deepep).")
    context_parallel: ContextParallelSpec = Field(
        default_factory=ContextParallelSpec, description="Prefill context parallelism."
    )
    pp_layer_partition: list[PositiveInt] | None = Field(
        None,
        min_length=1,
        description="Layers per pipeline stage (SGLANG_PP_LAYER_PARTITION). Computed as "
        "SGLang would when absent.",
    )


class KernelsSpec(Base):
    """Sparse-attention kernels and KV-cache dtype; auto follows SGLang's table."""

    prefill: KernelName = Field("auto", description="Prefill kernel (--dsa-prefill-backend).")
    decode: KernelName = Field("auto", description="Decode kernel (--dsa-decode-backend).")
    kv_cache_dtype: Literal["auto", "bf16", "bfloat16", "fp8_e4m3"] = Field(
        "auto",
        description="KV cache dtype, in SGLang's spellings (bf16 and bfloat16 are one dtype; DSA "
        "models take no other). auto: fp8_e4m3 on Blackwell, bf16 elsewhere.",
    )


class ResourcesSpec(Base):
    """CPU and memory of each engine pod (GPUs come from hardware.gpusPerNode)."""

    cpu: str | None = Field(None, description="CPU request and limit, e.g. '96'.")
    memory: str | None = Field(None, description="Memory request and limit, e.g. '1500Gi'.")


class EngineSpec(Base):
    """One role of SGLang engines: `replicas` identical groups."""

    replicas: int = Field(1, ge=1, le=64, description="Groups (SGLang instances).")
    parallelism: ParallelismSpec = Field(
        default_factory=ParallelismSpec, description="Topology of one group."
    )
    kernels: KernelsSpec = Field(default_factory=KernelsSpec, description="Attention kernels.")
    max_running_requests: int | None = Field(None, ge=1, description="--max-running-requests.")
    mem_fraction_static: float | None = Field(None, gt=0, lt=1, description="--mem-fraction-static.")
    chunked_prefill_size: int | None = Field(None, description="--chunked-prefill-size.")
    context_length: int | None = Field(None, ge=1, description="--context-length.")
    page_size: int | None = Field(None, ge=1, description="--page-size.")
    cuda_graph_max_batch_size: int | None = Field(
        None, ge=1, description="--cuda-graph-max-bs (0.5.20+: --cuda-graph-max-bs-decode)."
    )
    disable_radix_cache: bool = Field(False, description="--disable-radix-cache.")
    watchdog_timeout: int | None = Field(None, ge=1, description="--watchdog-timeout (s).")
    enable_metrics: bool = Field(False, description="--enable-metrics (Prometheus).")
    moe_runner_backend: str | None = Field(
        None, description="--moe-runner-backend; nvfp4 defaults to flashinfer_trtllm."
    )
    port: Port = Field(30000, description="HTTP port of the engine.")
    dist_init_port: Port = Field(20000, description="Port of the group's torch.distributed rendezvous.")
    extra_args: list[str] = Field(
        default_factory=list, description="Appended after runtime.extraArgs for this role."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="CPU/memory.")
    startup_timeout_seconds: int = Field(
        3600, ge=60, description="How long a model load may take before the pod is restarted."
    )
    termination_grace_period_seconds: int = Field(
        180, ge=0, description="Time SGLang gets to drain in-flight requests on shutdown."
    )


class DisaggregationSpec(Base):
    """Prefill/decode disaggregation (applies when prefill and decode are set)."""

    transfer_backend: Literal["mooncake", "nixl", "mori", "ascend"] = Field(
        "mooncake", description="KV transfer backend."
    )
    bootstrap_port: Port = Field(8998, description="Prefill bootstrap port.")
    ib_devices: str = Field("", description="Comma-separated IB devices (--disaggregation-ib-device).")


class RouterSpec(Base):
    """The SGLang router in front of the engines."""

    enabled: bool | None = Field(
        None,
        description="Run a router. Required for prefill/decode; default for serving: on when replicas > 1.",
    )
    replicas: int = Field(1, ge=1, le=16, description="Router pods.")
    policy: Literal["cache_aware", "round_robin", "random", "power_of_two"] = Field(
        "cache_aware", description="Load-balancing policy."
    )
    port: Port = Field(8000, description="Port of the OpenAI-compatible endpoint.")
    discovery: Literal["kubernetes", "static"] = Field(
        "kubernetes",
        description="kubernetes: watch rank-0 pods by label; static: list the groups' "
        "stable rank-0 DNS names.",
    )
    prometheus_port: Port = Field(29000, description="Router metrics port.")
    extra_args: list[str] = Field(default_factory=list, description="Appended to the router.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Router pods' nodeSelector (the router needs no GPU)."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Router pods' tolerations, as in a PodSpec. None by default: GPU nodes' taints "
        "keep the router off them.",
        json_schema_extra={"items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    )
    affinity: dict[str, Any] | None = Field(
        None,
        description="Router pods' affinity, as in a PodSpec. Unset: a required node affinity that keeps "
        "them off GPU nodes (nodes with a GPU product label: nvidia.com/gpu.product, "
        "amd.com/gpu.product-name). {}: no affinity, the router may land anywhere. Anything else "
        "replaces that default.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class PlacementSpec(Base):
    """Where engine groups land: one topology domain per group, and all-or-nothing admission."""

    topology_key: str | None = Field(
        None,
        max_length=LABEL_KEY_MAX,
        pattern=LABEL_KEY_PATTERN,
        description="A node label naming a topology domain (a rack, an NVLink domain, an IB switch), "
        "e.g. topology.dsa-operator.io/rack or topology.kubernetes.io/zone. Set: all pods of a "
        "multi-node group must land in one domain (required pod affinity), and groups of one role "
        "prefer distinct domains (preferred pod anti-affinity).",
    )
    exclusive: bool = Field(
        False,
        description="One group per domain of topologyKey: no engine pod of another group (of any "
        "DSAModel, in any namespace) may share it (as LeaderWorkerSet's "
        "leaderworkerset.sigs.k8s.io/exclusive-topology). Needs topologyKey.",
    )
    queue_name: str | None = Field(
        None,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="A Kueue LocalQueue in this namespace. Set: each group's StatefulSet is labelled "
        "kueue.x-k8s.io/queue-name and Kueue admits a group's pods all together or not at all; with "
        "topologyKey, Kueue also picks one domain with room for the whole group "
        "(kueue.x-k8s.io/podset-required-topology). Needs Kueue's StatefulSet integration.",
    )


class StorageSpec(Base):
    """Where the weights live."""

    mount_path: str = Field("/models", pattern=r"^/", description="Where the model volume is mounted.")
    volume: dict[str, Any] = Field(
        default_factory=lambda: {"emptyDir": {}},
        description="A Kubernetes volume source for the weights (persistentVolumeClaim, "
        "hostPath, ...). Default: an emptyDir (downloaded at every start).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    download: bool | None = Field(
        None,
        description="Download a hub source into the volume before starting. "
        "Default: on for hub ids, off for paths.",
    )
    shm_size: str = Field("64Gi", description="Size of /dev/shm (a memory emptyDir).")


class RolloutGateSpec(Base):
    """A canary: the rollout's first group must pass an accuracy evaluation before the others follow."""

    evaluation: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="A DSAEvaluation in this namespace: its suite, settings, reference and tolerance "
        "are run against the first updated group's rank 0 alone, not the shared endpoint.",
    )


class RolloutSpec(Base):
    """How spec changes reach running groups."""

    max_unavailable_groups: int = Field(1, ge=1, description="Groups restarted at once during a rollout.")
    gate: RolloutGateSpec | None = Field(
        None, description="Hold the rollout after its first group until that group passes an evaluation."
    )


class DSAModelSpec(Base):
    """A DSA model served by SGLang: unified (`serving`) or disaggregated (`prefill` + `decode`)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            (
                "has(self.serving) ? !has(self.prefill) && !has(self.decode)"
                " : has(self.prefill) && has(self.decode)",
                "set either serving, or both prefill and decode",
            ),
            (
                "!(self.model.family == 'deepseek-v3.2-speciale' && has(self.features)"
                " && has(self.features.toolCalling) && self.features.toolCalling)",
                "DeepSeek-V3.2-Speciale does not support tool calling",
            ),
            (
                "!has(self.placement) || !has(self.placement.exclusive) || !self.placement.exclusive"
                " || has(self.placement.topologyKey)",
                "exclusive needs placement.topologyKey: one group per domain needs the node label "
                "that names the domains",
                ".placement.exclusive",
            ),
        )
    )
    model: ModelSpec = Field(description="The model.")
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec, description="Serving container.")
    hardware: HardwareSpec = Field(default_factory=HardwareSpec, description="GPU nodes.")
    features: FeaturesSpec = Field(default_factory=FeaturesSpec, description="Features.")
    serving: EngineSpec | None = Field(None, description="Unified engines (no PD).")
    prefill: EngineSpec | None = Field(None, description="PD: prefill engines.")
    decode: EngineSpec | None = Field(None, description="PD: decode engines.")
    disaggregation: DisaggregationSpec = Field(
        default_factory=DisaggregationSpec, description="PD transfer settings."
    )
    router: RouterSpec = Field(default_factory=RouterSpec, description="The router.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Model weights.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Update policy.")
    placement: PlacementSpec = Field(
        default_factory=PlacementSpec, description="Topology domains and Kueue admission of engine groups."
    )


class Condition(Base):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class RoleStatus(Base):
    role: str
    desired_groups: int = 0
    ready_groups: int = 0
    nodes_per_group: int = 0


class FailureStatus(Base):
    """The evidence of a group's last failure restart."""

    time: str | None = None
    pod: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    message: str | None = None


class GroupStatus(Base):
    """One engine group's restart history (from the record on its StatefulSet)."""

    name: str = Field(description="<role>-<index>, e.g. prefill-0.")
    restarts: int = Field(0, description="Failure restarts of this group since it was created.")
    failures_in_a_row: int = Field(0, description="Failure restarts without 10 minutes ready between them.")
    last_restart_time: str | None = Field(
        None, description="When the operator last restarted it (any reason)."
    )
    next_restart_after: str | None = Field(None, description="Failed, restart backing off until then.")
    last_failure: FailureStatus | None = None


class DSAModelStatus(Base):
    """What the operator observed; written by the operator only."""

    observed_generation: int | None = None
    phase: str | None = Field(None, description="Pending | Progressing | Ready | Degraded | Invalid.")
    ready_groups: str | None = Field(None, description="Ready/desired engine groups, e.g. 2/3.")
    endpoint: str | None = Field(None, description="In-cluster URL of the OpenAI API.")
    conditions: list[Condition] = Field(default_factory=list)
    roles: list[RoleStatus] = Field(default_factory=list)
    groups: list[GroupStatus] = Field(
        default_factory=list, description="Restarts and last failure per group."
    )
    plan: dict[str, Any] = Field(
        default_factory=dict,
        description="Summary of the resolved plan.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


_ROLES = ("serving", "prefill", "decode")


def _path(loc: tuple[Any, ...]) -> str:
    parts = ["spec"]
    for item in loc:
        if isinstance(item, int):
            parts[-1] += f"[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts)


def parse_spec(spec: Any) -> DSAModelSpec:
    """Validate a CR's `spec` dict; every problem is reported with its field path."""
    if not isinstance(spec, dict):
        raise PlanError([Problem("spec", "must be an object")])
    try:
        return DSAModelSpec.model_validate(spec)
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            loc = tuple(err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            elif err["type"] == "literal_error":
                msg = f"must be one of {err['ctx']['expected']}"
            elif err["type"] == "string_pattern_mismatch" and err["ctx"]["pattern"] in _PATTERN_MEANING:
                msg = f"{_PATTERN_MEANING[err['ctx']['pattern']]}; got {err['input']!r}"
            problems.append(Problem(_path(loc), msg))
        raise PlanError(problems) from None


def engine_roles(spec: DSAModelSpec) -> list[tuple[str, EngineSpec]]:
    """The engine roles a spec sets, in a stable order."""
    return [(r, getattr(spec, r)) for r in _ROLES if getattr(spec, r) is not None]
