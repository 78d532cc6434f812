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
from dsa_operator.kernels import default_kernels, default_kv_dtype


@dataclass(frozen=True)
class RoleContext:
    name: str  # serving | prefill | decode
    path: str  # spec.<name>
    spec: EngineSpec
    attention_dp: bool
    cp_mode: str
    kv_dtype: str
    prefill_kernel: str
    decode_kernel: str
    world_size: int
    nodes: int  # 0 when the world size is not whole nodes (a rule reports it)
    pp_partition: list[int] | None


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


def _role(name: str, role: EngineSpec, ctx_arch: str, gpn: int, layers: int, d: Dialect) -> RoleContext:
    par = role.parallelism
    kv = role.kernels.kv_cache_dtype
    kv = default_kv_dtype(ctx_arch) if kv == "auto" else kv
    dp_prefill, dp_decode = default_kernels(ctx_arch, kv, d)
    world = par.tp * par.pp
    partition = par.pp_layer_partition
    if partition is None and par.pp > 1 and layers >= par.pp:
        partition = default_pp_partition(layers, par.pp)
    return RoleContext(
        name=name,
        path=f"spec.{name}",
        spec=role,
        attention_dp=(par.attention or ("dp" if par.dp > 1 else "tp")) == "dp",
        cp_mode=par.context_parallel.mode,
        kv_dtype=kv,
        prefill_kernel=dp_prefill if role.kernels.prefill == "auto" else role.kernels.prefill,
        decode_kernel=dp_decode if role.kernels.decode == "auto" else role.kernels.decode,
        world_size=world,
        nodes=world // gpn if world % gpn == 0 else 0,
        pp_partition=list(partition) if partition is not None else None,
    )


def resolve(name: str, namespace: str, spec: DSAModelSpec) -> Context:
    family = FAMILIES[spec.model.family]
    accel = ACCELERATORS[spec.hardware.accelerator]
    gpn = spec.hardware.gpus_per_node or accel.gpus_per_node
    dialect = dialect_for(spec.runtime.sglang_version)
    source = spec.model.source or family.default_source
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
