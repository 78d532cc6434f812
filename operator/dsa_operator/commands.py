"""Command lines: what each engine rank and the router run, in the dialect's spelling.

Flags are generated with their full names (`--tp-size`, never `--tp`): short forms only
work as argparse prefixes and some are ambiguous in newer SGLang. Kernel and KV-dtype
flags appear only when the user chose them; `auto` is left to SGLang, whose resolution
the planner mirrors (and reports) in the plan.
"""

from __future__ import annotations

import json

from dsa_operator import labels
from dsa_operator.resolve import Context, RoleContext

ENGINE_MODULE = ["python3", "-m", "sglang.launch_server"]
ROUTER_MODULE = ["python3", "-m", "sglang_router.launch_router"]
NVFP4_DEFAULT_MOE_RUNNER = "flashinfer_trtllm"


def statefulset_name(ctx: Context, role: str, group: int) -> str:
    return f"{ctx.name}-{role}-{group}"


def leader_host(ctx: Context, role: str, group: int) -> str:
    """Rank 0's stable DNS name: `<sts>-0.<headless service>.<ns>.svc` (service = sts name)."""
    sts = statefulset_name(ctx, role, group)
    return f"{sts}-0.{sts}.{ctx.namespace}.svc"


def _opt(flag: str, value: object | None) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _parallelism(ctx: Context, r: RoleContext) -> list[str]:
    p = r.spec.parallelism
    args = ["--tp-size", str(p.tp)]
    if r.attention_dp:
        if ctx.dialect.attn_dp_size:
            args += ["--attn-dp-size", str(p.dp)]
        else:
            args += ["--dp-size", str(p.dp), "--enable-dp-attention"]
    elif p.dp > 1:
        args += ["--dp-size", str(p.dp)]
    if p.ep > 1:
        args += ["--ep-size", str(p.ep)]
    if p.pp > 1:
        args += ["--pp-size", str(p.pp)]
        if r.cp_mode != "none" and p.dp == 1:
            args += ["--dp-size", "1"]  # the documented PP + CP command states it
    args += _opt("--moe-dense-tp-size", p.moe_dense_tp_size)
    args += _opt("--moe-a2a-backend", p.moe_a2a_backend)
    if r.cp_mode != "none":
        args += ctx.dialect.cp_flags(r.cp_mode)
    return args


def _kernels(ctx: Context, r: RoleContext) -> list[str]:
    k = r.spec.kernels
    args = []
    if k.prefill != "auto":
        args += [ctx.dialect.prefill_backend_flag, k.prefill]
    if k.decode != "auto":
        args += [ctx.dialect.decode_backend_flag, k.decode]
    if k.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", k.kv_cache_dtype]
    return args


def _model(ctx: Context, r: RoleContext) -> list[str]:
    m = ctx.spec.model
    args = ["--model-path", ctx.source]
    if m.trust_remote_code:
        args.append("--trust-remote-code")
    args += _opt("--served-model-name", m.served_model_name)
    if m.quantization == "nvfp4":  # mxfp4 (AMD Quark) is read from the checkpoint: no flag
        args += ["--quantization", "modelopt_fp4"]
        args += ["--moe-runner-backend", r.spec.moe_runner_backend or NVFP4_DEFAULT_MOE_RUNNER]
    else:
        args += _opt("--moe-runner-backend", r.spec.moe_runner_backend)
    return args


def _features(ctx: Context) -> list[str]:
    f = ctx.spec.features
    args = []
    if f.mtp.enabled:
        args += [
            "--speculative-algorithm",
            "EAGLE",
            "--speculative-num-steps",
            str(f.mtp.num_steps),
            "--speculative-eagle-topk",
            str(f.mtp.eagle_top_k),
        ]
        draft = f.mtp.num_draft_tokens
        if draft is None and f.mtp.eagle_top_k == 1:
            draft = f.mtp.num_steps + 1  # what SGLang sets; the documented command states it
        args += _opt("--speculative-num-draft-tokens", draft)
    if ctx.tool_calling:
        args += ["--tool-call-parser", str(ctx.family.tool_call_parser)]
        args += _opt("--chat-template", ctx.family.chat_template)
    if f.reasoning:
        args += ["--reasoning-parser", ctx.family.reasoning_parser]
    if f.index_cache.pattern:
        override = json.dumps({"index_topk_pattern": f.index_cache.pattern})
        args += ["--json-model-override-args", override]
    return args


def _disaggregation(ctx: Context, r: RoleContext) -> list[str]:
    if not ctx.pd:
        return []
    d = ctx.spec.disaggregation
    args = ["--disaggregation-mode", r.name]
    if r.name == "prefill":
        args += ["--disaggregation-bootstrap-port", str(d.bootstrap_port)]
    if d.transfer_backend != "mooncake":
        args += ["--disaggregation-transfer-backend", d.transfer_backend]
    if d.ib_devices:
        args += ["--disaggregation-ib-device", d.ib_devices]
    return args


def _tuning(ctx: Context, r: RoleContext) -> list[str]:
    s = r.spec
    args = _opt("--mem-fraction-static", s.mem_fraction_static)
    args += _opt("--max-running-requests", s.max_running_requests)
    args += _opt("--chunked-prefill-size", s.chunked_prefill_size)
    args += _opt("--context-length", s.context_length)
    args += _opt("--page-size", s.page_size)
    args += _opt(ctx.dialect.cuda_graph_max_bs_flag, s.cuda_graph_max_batch_size)
    args += _opt("--watchdog-timeout", s.watchdog_timeout)
    if s.disable_radix_cache:
        args.append("--disable-radix-cache")
    if s.enable_metrics:
        args.append("--enable-metrics")
    return args


def engine_argv(ctx: Context, r: RoleContext, group: int, rank: int) -> list[str]:
    """The full command of rank `rank` of group `group` of role `r`."""
    args = ENGINE_MODULE + _model(ctx, r) + _parallelism(ctx, r)
    if r.nodes > 1:
        addr = f"{leader_host(ctx, r.name, group)}:{r.spec.dist_init_port}"
        args += ["--nnodes", str(r.nodes), "--node-rank", str(rank), "--dist-init-addr", addr]
    args += _kernels(ctx, r) + _features(ctx) + _disaggregation(ctx, r) + _tuning(ctx, r)
    args += ["--host", "0.0.0.0", "--port", str(r.spec.port)]
    return args + list(ctx.spec.runtime.extra_args) + list(r.spec.extra_args)


def engine_env(ctx: Context, r: RoleContext) -> dict[str, str]:
    env: dict[str, str] = {}
    if r.pp_partition is not None:
        env["SGLANG_PP_LAYER_PARTITION"] = ",".join(str(n) for n in r.pp_partition)
    threshold = ctx.spec.features.dense_attention_threshold
    if threshold is not None:
        env[ctx.dialect.dense_threshold_env] = str(threshold)
    if ctx.download:
        env["HF_HOME"] = f"{ctx.spec.storage.mount_path.rstrip('/')}/huggingface"
    net = ctx.spec.hardware.network
    for key, value in (
        ("NCCL_SOCKET_IFNAME", net.nccl_socket_ifname),
        ("GLOO_SOCKET_IFNAME", net.gloo_socket_ifname),
        ("NCCL_IB_HCA", net.nccl_ib_hca),
        ("NCCL_IB_GID_INDEX", net.nccl_ib_gid_index),
    ):
        if value is not None:
            env[key] = str(value)
    env.update(ctx.spec.runtime.env)
    env.update(r.spec.env)
    return env


def router_selectors(ctx: Context) -> dict[str, dict[str, str]]:
    return {r.name: labels.rank0_selector(ctx.name, r.name) for r in ctx.roles}


def _selector_args(selector: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in selector.items()]


def _worker_url(ctx: Context, r: RoleContext, group: int) -> str:
    return f"http://{leader_host(ctx, r.name, group)}:{r.spec.port}"


def router_argv(ctx: Context) -> list[str]:
    """The router: Kubernetes discovery of rank-0 pods, or the groups' stable DNS names."""
    rt = ctx.spec.router
    args = list(ROUTER_MODULE)
    selectors = router_selectors(ctx)
    if ctx.pd:
        args.append("--pd-disaggregation")
    if rt.discovery == "kubernetes":
        engine_port = ctx.roles[0].spec.port
        args += [
            "--service-discovery",
            "--service-discovery-namespace",
            ctx.namespace,
            "--service-discovery-port",
            str(engine_port),
        ]
        if ctx.pd:
            args += ["--prefill-selector", *_selector_args(selectors["prefill"])]
            args += ["--decode-selector", *_selector_args(selectors["decode"])]
        else:
            args += ["--selector", *_selector_args(selectors["serving"])]
    else:
        workers = []
        for r in ctx.roles:
            for g in range(r.spec.replicas):
                url = _worker_url(ctx, r, g)
                if r.name == "prefill":
                    args += ["--prefill", url, str(ctx.spec.disaggregation.bootstrap_port)]
                elif r.name == "decode":
                    args += ["--decode", url]
                else:
                    workers.append(url)
        if workers:
            args += ["--worker-urls", *workers]
    # /health_generate: a real generation, which only a rank-0 SGLang answers (ranks > 0 answer
    # /health for kubelet): a worker URL that now belongs to another rank fails and is dropped.
    args += ["--health-check-endpoint", "/health_generate"]
    args += ["--policy", rt.policy, "--host", "0.0.0.0", "--port", str(rt.port)]
    args += ["--prometheus-port", str(rt.prometheus_port)]
    return args + list(rt.extra_args)
