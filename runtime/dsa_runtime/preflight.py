"""Node checks before SGLang starts: GPUs, /dev/shm, model path, and the planned kernels.

The kernel checks run, on this GPU and against a float32 reference, each FlashMLA kernel the
pod's role will run: the bf16 sparse prefill (`flash_mla_sparse_fwd`) for `flashmla_sparse`,
the sparse decode on the fp8 paged KV cache (`flash_mla_with_kvcache`) for `flashmla_kv`, and
whichever of the two `flashmla_auto` resolves to. A broken wheel, a wrong architecture build or
a bad driver shows up before a 30-minute model load, not after. A planned kernel preflight has
no run check for (fa3, trtllm, tilelang, ...) is reported as import-checked only. The result
is one JSON line on stdout.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dsa_runtime import kernels as K
from dsa_runtime.errors import ExitCode, RuntimeFailure
from dsa_runtime.node import Gpu, detect_gpus, model_present, shm_size_bytes
from dsa_runtime.plan import Plan

log = logging.getLogger("dsa_runtime.preflight")

SPEC_FIELD = {"serving": "spec.serving", "prefill": "spec.prefill", "decode": "spec.decode"}


def check_gpus(plan: Plan, gpus: list[Gpu] | None) -> list[Gpu]:
    hw = plan.hardware
    if hw.vendor != "nvidia":
        return gpus or []
    if not gpus:
        why = "nvidia-smi and torch not found" if gpus is None else "none visible"
        raise RuntimeFailure(
            ExitCode.GPU_MISMATCH,
            f"plan needs {hw.gpus_per_node} NVIDIA GPUs per node, {why}: request "
            f"nvidia.com/gpu: {hw.gpus_per_node} and use the NVIDIA container runtime (on a cluster "
            f"without GPUs, spec.runtime.engine: simulator runs the engine simulator instead, whose "
            f"answers are not model output)",
        )
    if len(gpus) < hw.gpus_per_node:
        raise RuntimeFailure(
            ExitCode.GPU_MISMATCH,
            f"plan needs {hw.gpus_per_node} GPUs per node, this node has {len(gpus)} "
            f"({gpus[0].name}): set spec.hardware.gpusPerNode to {len(gpus)} or schedule "
            f"onto {hw.gpus_per_node}-GPU nodes",
        )
    node_arch = K.arch_family(gpus[0].arch)
    if node_arch != K.arch_family(hw.arch):
        raise RuntimeFailure(
            ExitCode.GPU_MISMATCH,
            f"plan is for {hw.accelerator} ({hw.arch}) but this node has {gpus[0].name} "
            f"({node_arch}): set spec.hardware.accelerator to match the node, or add a "
            f"nodeSelector for {hw.accelerator} nodes",
        )
    return gpus


def check_shm(plan: Plan, path: str) -> int | None:
    size = shm_size_bytes(path)
    want = plan.shm_size_bytes
    if want and size is not None and size < want:
        raise RuntimeFailure(
            ExitCode.SHM_TOO_SMALL,
            f"{path} is {size / 2**30:.1f} GiB, the plan needs {want / 2**30:.1f} GiB: mount a "
            f"memory emptyDir of at least that size at {path}",
        )
    return size


def check_model(plan: Plan) -> None:
    local = plan.model.local_path
    if local and not model_present(local):
        raise RuntimeFailure(
            ExitCode.MODEL_MISSING,
            f"model path {local} is absent or empty: check spec.model.source and the model "
            f"volume mounted at {plan.model.mount_path}",
        )


def check_modules(choices: list[K.KernelChoice]) -> None:
    for module, kernel in K.modules_needed(choices).items():
        try:
            importlib.import_module(module)
        except Exception as e:  # ImportError, or an ABI error raised while loading
            raise RuntimeFailure(
                ExitCode.KERNEL_MISSING,
                f"kernel {kernel} needs the Python module {module}, which does not import "
                f"here ({type(e).__name__}: {first_line(e)}): use the dsa-runtime image, which "
                f"ships {K.PACKAGES.get(module, module)}, or plan another kernel",
            ) from None


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


ROLE_SLOTS: dict[str, tuple[str, ...]] = {"prefill": ("prefill",), "decode": ("decode",)}
"""The kernel slots a role's engine runs: a PD prefill server only extends, a decode server only
decodes; a serving (combined) engine runs both."""

FUNCTIONS = {
    "flashmla_sparse": "flash_mla_sparse_fwd (bf16 sparse prefill)",
    "flashmla_kv": "flash_mla_with_kvcache (sparse decode, fp8 KV cache)",
}
"""The kernels preflight runs, by the planned name that runs them."""


def effective_kv_dtype(arch: str, kv_dtype: str) -> str:
    """bf16 | fp8_e4m3, with SGLang's `auto` resolved (bf16 on Hopper, fp8 on SM100+)."""
    kv = {"bfloat16": "bf16", "": "auto"}.get(kv_dtype, kv_dtype)
    if kv == "auto":
        return "bf16" if K.arch_family(arch) == "sm90" else "fp8_e4m3"
    return kv


def runs_as(kernel: str, arch: str, kv_dtype: str) -> tuple[str, ...]:
    """The FlashMLA kernels (by FUNCTIONS key) SGLang runs for a planned kernel; () for others.

    `flashmla_sparse` reads bf16 (SGLang de-quantizes an fp8 cache for it); `flashmla_kv` reads
    the fp8 cache (SGLang quantizes a bf16 one for it); `flashmla_auto` is `flashmla_sparse` on a
    bf16 cache, `flashmla_kv` on an fp8 one, and on SM100 either, per batch
    (`NativeSparseAttnBackend.set_nsa_prefill_impl`)."""
    if kernel in FUNCTIONS:
        return (kernel,)
    if kernel == "flashmla_auto":
        if effective_kv_dtype(arch, kv_dtype) == "bf16":
            return ("flashmla_sparse",)
        return ("flashmla_kv",) if K.arch_family(arch) == "sm90" else ("flashmla_kv", "flashmla_sparse")
    return ()


@dataclass
class KernelCheck:
    kernel: str  # a FUNCTIONS key when runnable, else the planned kernel
    runnable: bool
    slots: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)


def plan_checks(choices: list[K.KernelChoice], role: str, arch: str, kv_dtype: str) -> list[KernelCheck]:
    """What preflight checks for this role: one entry per distinct kernel, in slot order."""
    slots = ROLE_SLOTS.get(role, ("prefill", "decode"))
    out: dict[str, KernelCheck] = {}
    for c in choices:
        if c.slot not in slots:
            continue
        runs = runs_as(c.resolved, arch, kv_dtype)
        for name in runs or (c.resolved,):
            kc = out.setdefault(name, KernelCheck(name, bool(runs)))
            if c.slot not in kc.slots:
                kc.slots.append(c.slot)
            if c.resolved not in kc.planned:
                kc.planned.append(c.resolved)
    return list(out.values())


Runner = Callable[[str, str, int], dict[str, Any]]
"""(arch, shape name, timed iterations) -> the check's result (sparse_check.check's keys)."""


def _torch_modules():
    try:
        from dsa_runtime import sparse_check as S
        from dsa_runtime import sparse_decode_check as D
    except ImportError as e:
        raise RuntimeFailure(
            ExitCode.KERNEL_MISSING, f"torch does not import here ({e}): use the dsa-runtime image"
        ) from None
    return S, D


def run_sparse_check(arch: str, shape_name: str, iters: int) -> dict[str, Any]:
    """The real prefill kernel on this GPU; SM90 needs FlashMLA's legacy ops."""
    S, _ = _torch_modules()
    legacy = K.arch_family(arch) == "sm90"
    result = S.check(S.flash_mla_kernel(legacy), S.SHAPES[shape_name], "cuda", iters=iters)
    result["useLegacy"] = legacy
    return result


def run_decode_check(arch: str, shape_name: str, iters: int) -> dict[str, Any]:
    """The real fp8 sparse decode kernel on this GPU (the V3.2 cache layout is legacy-only)."""
    del arch
    _, D = _torch_modules()
    result = D.check(D.flash_mla_decode_kernel(use_legacy=True), D.SHAPES[shape_name], "cuda", iters=iters)
    result["useLegacy"] = True
    return result


RUNNERS: dict[str, Runner] = {"flashmla_sparse": run_sparse_check, "flashmla_kv": run_decode_check}


def _guarded(runner: Runner, arch: str, shape: str, iters: int) -> dict[str, Any]:
    """A kernel that raises (an assertion, a CUDA error) fails like a wrong one, in one line."""
    try:
        return runner(arch, shape, iters)
    except RuntimeFailure:
        raise
    except Exception as e:
        return {"ok": False, "reason": f"it raised {type(e).__name__}: {first_line(e)}"}


def run_kernel_checks(
    checks: list[KernelCheck],
    report: dict[str, Any],
    *,
    arch: str,
    role: str,
    shape: str,
    iters: int,
    run_kernel: bool,
    vendor: str,
    runners: Mapping[str, Runner],
) -> None:
    """Fill report["kernelChecks"]; on a wrong kernel print the report and raise KERNEL_WRONG."""
    entries: list[dict[str, Any]] = []
    report["kernelChecks"] = entries
    spec = SPEC_FIELD.get(role, f"spec.{role}")
    for kc in checks:
        entry: dict[str, Any] = {"kernel": kc.kernel, "slots": kc.slots}
        if kc.planned != [kc.kernel]:
            entry["planned"] = kc.planned
        entries.append(entry)
        module = K.MODULES.get(kc.kernel)
        if not kc.runnable:
            entry["check"] = "import-checked only"
            entry["why"] = f"preflight has no run check for {kc.kernel}" + (
                f"; its module {module} imports" if module else ""
            )
            continue
        if not run_kernel or vendor != "nvidia":
            entry["check"] = "import-checked only"
            entry["why"] = (
                "runs skipped (--no-run-kernel)" if not run_kernel else f"no run check on {vendor} GPUs"
            )
            continue
        entry["check"] = "ran"
        entry["function"] = FUNCTIONS[kc.kernel]
        result = _guarded(runners[kc.kernel], arch, shape, iters)
        entry.update(result)
        if not result["ok"]:
            report["preflight"] = "failed"
            print(json.dumps(report), flush=True)
            fields = " and ".join(f"{spec}.kernels.{slot}" for slot in kc.slots)
            name = FUNCTIONS[kc.kernel].split(" ")[0]
            raise RuntimeFailure(
                ExitCode.KERNEL_WRONG,
                f"{name} is wrong on this GPU: {result['reason']}: check the driver and that "
                f"sgl-flash-mla matches this torch; set {fields} to another kernel meanwhile",
            )


def preflight(
    plan: Plan,
    role: str,
    *,
    shm_path: str = "/dev/shm",
    shape: str = "small",
    iters: int = 20,
    run_kernel: bool = True,
    engine: str = "sglang",
    runners: Mapping[str, Runner] | None = None,
) -> dict[str, Any]:
    """Every check in order; raises RuntimeFailure on the first problem, else a report.

    The simulator on a node without GPUs skips the GPU and kernel checks and says so; on a node
    with GPUs it is checked like SGLang (a wrong GPU fails). It loads no model, so the model
    path is not checked for it.
    """
    report: dict[str, Any] = {"preflight": "ok", "role": role, "engine": engine}
    visible = detect_gpus()
    if engine == "simulator" and not visible:
        log.warning("no GPU present: GPU and kernel checks skipped (engine simulator)")
        report.update(gpus=0, kernelChecks="skipped: no GPU present (engine simulator)")
        report["shmBytes"] = check_shm(plan, shm_path)
        return report
    gpus = check_gpus(plan, visible)
    if gpus:
        first = gpus[0]
        report.update(gpu=first.name, gpus=len(gpus), computeCapability=first.compute_capability)
    report["shmBytes"] = check_shm(plan, shm_path)
    if engine != "simulator":
        check_model(plan)
    role_plan = plan.role(role)
    if role == "router" or role_plan is None or role_plan.kernels is None:
        return report
    arch = gpus[0].arch if gpus and plan.hardware.vendor == "nvidia" else plan.hardware.arch
    kn = role_plan.kernels
    choices = K.resolve(arch, kn.prefill, kn.decode, kn.kv_cache_dtype, plan.dialect)
    K.check_compatible(arch, choices, plan.dialect, SPEC_FIELD.get(role, f"spec.{role}"), kn.kv_cache_dtype)
    report["kernels"] = {c.slot: c.resolved for c in choices}
    report["kvCacheDtype"] = effective_kv_dtype(arch, kn.kv_cache_dtype)
    check_modules(choices)
    run_kernel_checks(
        plan_checks(choices, role, arch, kn.kv_cache_dtype),
        report,
        arch=arch,
        role=role,
        shape=shape,
        iters=iters,
        run_kernel=run_kernel,
        vendor=plan.hardware.vendor,
        runners=RUNNERS if runners is None else runners,
    )
    return report


def emit(report: dict[str, Any]) -> None:
    print(json.dumps(report), file=sys.stdout, flush=True)


def shm_path_default() -> str:
    return os.environ.get("DSA_SHM_PATH", "/dev/shm")
