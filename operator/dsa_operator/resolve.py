"""Defaults resolved from the spec and the knowledge tables, before any rule runs.

Resolution never fails: values that make no sense (a world size that is not whole
nodes) are carried as they are, and the rules in `rules.py` report them.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubernetes.utils.quantity import parse_quantity

from dsa_operator.api import DSAModelSpec, EngineSpec, engine_roles
from dsa_operator.catalog import FAMILIES, Family
from dsa_operator.dialects import Dialect, dialect_for
from dsa_operator.hardware import ACCELERATORS, Accelerator
from dsa_operator.kernels import canonical_kv, default_kernels, default_kv_dtype


@dataclass(frozen=True)
class RoleContext:
    """One engine role with SGLang's own resolution applied.

    `ep`, `moe_dense_tp_size`, `moe_a2a_backend`, `page_size` and `attention_dp` are the values
    SGLang will run with, including those it sets silently (`sglang_overrides`); `explicit`
    names the parallelism fields the user set, so a rule can refuse only an explicit value
    that SGLang would override.
    """

    name: str  # serving | prefill | decode
    path: str  # spec.<name>
    spec: EngineSpec
    attention_dp: bool
    cp_mode: str
    kv_dtype: str  # bf16 | fp8_e4m3 (SGLang's `auto` resolved, spellings unified)
    prefill_kernel: str
    decode_kernel: str
    world_size: int  # GPUs of one group: tp * pp, times dp for DP replicas (TP attention)
    nodes: int  # 0 when the world size is not whole nodes (a rule reports it)
    pp_partition: list[int] | None
    ep: int
    moe_dense_tp_size: int | None
    moe_a2a_backend: str | None
    page_size: int | None
    explicit: frozenset[str]
    sglang_overrides: dict[str, object]


@dataclass(frozen=True)
class Context:
    name: str
    namespace: str
    spec: DSAModelSpec
    family: Family
    accelerator: Accelerator
    gpus_per_node: int
    dialect: Dialect
    source: str
    local_path: str | None
    download: bool
    tool_calling: bool
    router_enabled: bool
    pd: bool
    roles: list[RoleContext]
    shm_bytes: int | None

    @property
    def arch(self) -> str:
        return self.accelerator.arch


def default_pp_partition(layers: int, pp: int) -> list[int]:
    """SGLang's `get_pp_indices`: even split, the last `layers % pp` stages one layer more."""
    base, extra = divmod(layers, pp)
    return [base + (1 if i >= pp - extra else 0) for i in range(pp)]


# MoE all-to-all backends for which SGLang sets ep_size = tp_size (`_handle_a2a_moe` in 0.5.12).
EP_EQUALS_TP_A2A = ("deepep", "mooncake", "nixl", "mori", "flashinfer", "megamoe", "ascend_fuseep")
DSA_PAGE_SIZE = 64  # SGLang's DSA page size on CUDA, and on ROCm with aiter (0.5.12 and 0.5.23)


def _sglang_overrides(role: EngineSpec, d: Dialect, cp_mode: str) -> dict[str, object]:
    """The values SGLang sets itself for a DSA model, whatever the command line says.

    0.5.12 `ServerArgs._handle_model_specific_adjustments` (CP branch) and `_handle_a2a_moe`;
    0.5.23 `arg_groups/model_overrides/deepseek_v2.py::_deepseek_family_overrides`.
    """
    par = role.parallelism
    out: dict[str, object] = {}
    patch = int(d.version.split(".")[2])
    if cp_mode == "in-seq-split":
        out.update(moe_dense_tp_size=1, moe_a2a_backend="deepep", ep_size=par.tp)
    elif cp_mode == "round-robin-split" and patch <= 12:
        out["moe_dense_tp_size"] = 1
    if cp_mode != "none" and par.dp > 1:
        out["enable_dp_attention"] = True  # CP runs its DP groups as attention DP
    a2a = out.get("moe_a2a_backend", par.moe_a2a_backend)
    if a2a in EP_EQUALS_TP_A2A:
        out["ep_size"] = par.tp
    out["page_size"] = DSA_PAGE_SIZE  # ROCm too, with aiter's paged-MQA kernel (SGLang's ROCm images)
    return out


def _role(name: str, role: EngineSpec, ctx_arch: str, gpn: int, layers: int, d: Dialect) -> RoleContext:
    par = role.parallelism
    kv = canonical_kv(role.kernels.kv_cache_dtype)
    kv = default_kv_dtype(ctx_arch) if kv == "auto" else kv
    dp_prefill, dp_decode = default_kernels(ctx_arch, kv, d)
    cp_mode = par.context_parallel.mode
    overrides = _sglang_overrides(role, d, cp_mode)
    attention_dp = (par.attention or ("dp" if par.dp > 1 else "tp")) == "dp" or bool(
        overrides.get("enable_dp_attention")
    )
    world = par.tp * par.pp * (1 if attention_dp else par.dp)
    partition = par.pp_layer_partition
    if partition is None and par.pp > 1 and layers >= par.pp:
        partition = default_pp_partition(layers, par.pp)
    return RoleContext(
        name=name,
        path=f"spec.{name}",
        spec=role,
        attention_dp=attention_dp,
        cp_mode=cp_mode,
        kv_dtype=kv,
        prefill_kernel=dp_prefill if role.kernels.prefill == "auto" else role.kernels.prefill,
        decode_kernel=dp_decode if role.kernels.decode == "auto" else role.kernels.decode,
        world_size=world,
        nodes=world // gpn if world % gpn == 0 else 0,
        pp_partition=list(partition) if partition is not None else None,
        ep=int(overrides.get("ep_size", par.ep)),  # type: ignore[call-overload]
        moe_dense_tp_size=overrides.get("moe_dense_tp_size", par.moe_dense_tp_size),  # type: ignore[arg-type]
        moe_a2a_backend=overrides.get("moe_a2a_backend", par.moe_a2a_backend),  # type: ignore[arg-type]
        page_size=overrides.get("page_size", role.page_size),  # type: ignore[arg-type]
        explicit=frozenset(par.model_fields_set) | {f"engine.{f}" for f in role.model_fields_set},
        sglang_overrides=overrides,
    )


def resolve(name: str, namespace: str, spec: DSAModelSpec) -> Context:
    family = FAMILIES[spec.model.family]
    accel = ACCELERATORS[spec.hardware.accelerator]
    gpn = spec.hardware.gpus_per_node or accel.gpus_per_node
    dialect = dialect_for(spec.runtime.sglang_version)
    source = spec.model.source or family.source_for(spec.model.quantization) or family.default_source
    local = source if source.startswith("/") else None
    download = spec.storage.download if spec.storage.download is not None else local is None
    pd = spec.serving is None
    roles = [_role(n, r, accel.arch, gpn, family.layers, dialect) for n, r in engine_roles(spec)]
    tool_calling = (
        spec.features.tool_calling
        if spec.features.tool_calling is not None
        else family.tool_call_parser is not None
    )
    router_enabled = (
        spec.router.enabled
        if spec.router.enabled is not None
        else pd or (spec.serving is not None and spec.serving.replicas > 1)
    )
    try:
        shm = int(parse_quantity(spec.storage.shm_size))
    except ValueError:
        shm = None
    return Context(
        name=name,
        namespace=namespace,
        spec=spec,
        family=family,
        accelerator=accel,
        gpus_per_node=gpn,
        dialect=dialect,
        source=source,
        local_path=local,
        download=download,
        tool_calling=tool_calling,
        router_enabled=router_enabled,
        pd=pd,
        roles=roles,
        shm_bytes=shm,
    )
