"""Node checks before SGLang starts: GPUs, /dev/shm, model path, and the planned kernels.

The kernel check runs FlashMLA's sparse prefill on this GPU against a float32 reference, so
a broken wheel, a wrong architecture build or a bad driver shows up before a 30-minute model
load, not after. Its result is one JSON line on stdout.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
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


def run_sparse_check(arch: str, shape_name: str, iters: int) -> dict[str, Any]:
    """The real kernel on this GPU; SM90 needs FlashMLA's legacy ops."""
    try:
        from dsa_runtime import sparse_check as S
    except ImportError as e:
        raise RuntimeFailure(
            ExitCode.KERNEL_MISSING, f"torch does not import here ({e}): use the dsa-runtime image"
        ) from None
    legacy = K.arch_family(arch) == "sm90"
    result = S.check(S.flash_mla_kernel(legacy), S.SHAPES[shape_name], "cuda", iters=iters)
    result["useLegacy"] = legacy
    return result


def preflight(
    plan: Plan,
    role: str,
    *,
    shm_path: str = "/dev/shm",
    shape: str = "small",
    iters: int = 20,
    run_kernel: bool = True,
    engine: str = "sglang",
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
    check_modules(choices)
    sparse = [c.resolved for c in choices if c.resolved in K.SPARSE_PREFILL]
    if run_kernel and sparse and plan.hardware.vendor == "nvidia":
        report["kernel"] = "flashmla_sparse"  # what flashmla_auto runs for bf16 prefill
        result = run_sparse_check(arch, shape, iters)
        report.update(result)
        if not result["ok"]:
            report["preflight"] = "failed"
            print(json.dumps(report), flush=True)
            raise RuntimeFailure(
                ExitCode.KERNEL_WRONG,
                f"flash_mla_sparse_fwd is wrong on this GPU: {result['reason']}: check the "
                f"driver and that sgl-flash-mla matches this torch; set "
                f"{SPEC_FIELD.get(role, 'spec')}.kernels.prefill to another kernel meanwhile",
            )
    return report


def emit(report: dict[str, Any]) -> None:
    print(json.dumps(report), file=sys.stdout, flush=True)


def shm_path_default() -> str:
    return os.environ.get("DSA_SHM_PATH", "/dev/shm")
