"""`plan(manifest) -> Plan`: a pure function from a DSAModel to every pod's command line.

Steps: parse the spec (field errors), resolve defaults from the knowledge tables, run
every rule (all problems at once), then emit per role, group and rank the argv and env.
No I/O: the operator, the webhook and the CLI all call this one function.
"""

from __future__ import annotations

from typing import Any

from dsa_operator import commands
from dsa_operator.api import parse_spec
from dsa_operator.errors import PlanError, Problem
from dsa_operator.plan import (
    EndpointPlan,
    GroupPlan,
    HardwarePlan,
    Kernels,
    ModelPlan,
    Plan,
    PodPlan,
    RolePlan,
    RouterPlan,
)
from dsa_operator.resolve import Context, resolve
from dsa_operator.rules import RULES, warnings

DEFAULT_NAMESPACE = "default"


def _metadata(manifest: dict[str, Any]) -> tuple[str, str, list[Problem]]:
    meta = manifest.get("metadata")
    if not isinstance(meta, dict):
        return "", DEFAULT_NAMESPACE, [Problem("metadata", "must be an object with a name")]
    name, ns = meta.get("name"), meta.get("namespace") or DEFAULT_NAMESPACE
    problems = []
    if not isinstance(name, str) or not name:
        problems.append(Problem("metadata.name", "required"))
        name = ""
    if not isinstance(ns, str):
        problems.append(Problem("metadata.namespace", "must be a string"))
        ns = DEFAULT_NAMESPACE
    return name, ns, problems


def plan(manifest: Any, sglang_version: str | None = None) -> Plan:
    """Plan a DSAModel manifest (a dict). Raises `PlanError` listing every problem."""
    if not isinstance(manifest, dict):
        raise PlanError([Problem("", "a DSAModel must be a mapping (apiVersion, kind, metadata, spec)")])
    name, namespace, problems = _metadata(manifest)
    spec_dict = manifest.get("spec")
    if sglang_version is not None and isinstance(spec_dict, dict):
        runtime = dict(spec_dict.get("runtime") or {})
        runtime["sglangVersion"] = sglang_version
        spec_dict = {**spec_dict, "runtime": runtime}
    try:
        spec = parse_spec(spec_dict)
    except PlanError as e:
        raise PlanError(problems + e.problems) from None
    ctx = resolve(name, namespace, spec)
    for rule in RULES:
        problems.extend(rule(ctx))
    if problems:
        raise PlanError(problems)
    return _emit(ctx)


def _emit(ctx: Context) -> Plan:
    pods: list[PodPlan] = []
    roles: list[RolePlan] = []
    for r in ctx.roles:
        env = commands.engine_env(ctx, r)
        groups = []
        for g in range(r.spec.replicas):
            sts = commands.statefulset_name(ctx, r.name, g)
            leader = (
                f"{commands.leader_host(ctx, r.name, g)}:{r.spec.dist_init_port}" if r.nodes > 1 else None
            )
            groups.append(GroupPlan(group=g, stateful_set=sts, headless_service=sts, leader_address=leader))
            for rank in range(r.nodes):
                argv = commands.engine_argv(ctx, r, g, rank)
                pods.append(PodPlan(role=r.name, group=g, rank=rank, argv=argv, env=dict(env)))
        roles.append(
            RolePlan(
                role=r.name,
                replicas=r.spec.replicas,
                nodes_per_group=r.nodes,
                gpus_per_node=ctx.gpus_per_node,
                world_size=r.world_size,
                attention="dp" if r.attention_dp else "tp",
                context_parallel=r.cp_mode,
                pp_layer_partition=r.pp_partition,
                kernels=Kernels(prefill=r.prefill_kernel, decode=r.decode_kernel, kv_cache_dtype=r.kv_dtype),
                port=r.spec.port,
                groups=groups,
            )
        )
    router = None
    if ctx.router_enabled:
        rt = ctx.spec.router
        argv = commands.router_argv(ctx)
        router = RouterPlan(
            deployment=f"{ctx.name}-router",
            replicas=rt.replicas,
            port=rt.port,
            discovery=rt.discovery,
            argv=argv,
            selectors=commands.router_selectors(ctx),
        )
        pods.append(PodPlan(role="router", group=0, rank=0, argv=argv, env=dict(ctx.spec.runtime.env)))
    port = ctx.spec.router.port if router else ctx.roles[0].spec.port
    a = ctx.accelerator
    return Plan(
        name=ctx.name,
        namespace=ctx.namespace,
        sglang_version=ctx.dialect.version,
        dialect=ctx.dialect.name,
        family=ctx.family.name,
        engine=ctx.spec.runtime.engine,
        hardware=HardwarePlan(
            accelerator=a.name,
            arch=a.arch,
            vendor=a.vendor,
            gpus_per_node=ctx.gpus_per_node,
            resource=a.resource,
            product=a.product,
            product_label=a.product_label,
        ),
        model=ModelPlan(
            family=ctx.family.name,
            source=ctx.source,
            local_path=ctx.local_path,
            mount_path=ctx.spec.storage.mount_path,
            download=ctx.download,
        ),
        shm_size_bytes=ctx.shm_bytes or 0,
        roles=roles,
        router=router,
        endpoint=EndpointPlan(
            service=ctx.name, port=port, url=f"http://{ctx.name}.{ctx.namespace}.svc:{port}/v1"
        ),
        pods=pods,
        warnings=warnings(ctx) + _engine_warnings(ctx),
    )


SIMULATOR_WARNING = (
    "spec.runtime.engine: the engine simulator runs instead of SGLang (for clusters without GPUs): "
    "no model is loaded and its answers are not model output"
)


def _engine_warnings(ctx: Context) -> list[str]:
    return [SIMULATOR_WARNING] if ctx.spec.runtime.engine == "simulator" else []
