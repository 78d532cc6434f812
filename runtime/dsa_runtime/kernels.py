"""Which DSA attention kernels run on which GPU architecture, and what each needs.

The planner's table, read on the node: a pod refuses a plan made for other hardware (e.g.
Blackwell's trtllm on a Hopper node) with a message naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsa_operator import kernels as _planner  # pure: the runtime image installs both packages
from dsa_operator.dialects import DSA_EXTRA_KERNELS
from dsa_runtime.errors import ExitCode, RuntimeFailure

ARCHS: dict[str, frozenset[str]] = {name: k.archs for name, k in _planner.KERNELS.items()}
"""Kernel -> the GPU families it runs on: the planner's table (traced to SGLang's NSA backend),
so a plan the planner accepts is not refused by the pod on the same GPU."""

FROM_DSA_DIALECT = frozenset(DSA_EXTRA_KERNELS)
"""Kernels SGLang's parser offers only from the 0.5.20+ ("dsa") flag dialect on."""

DEFAULTS: dict[tuple[str, str], tuple[str, str]] = {
    ("sm90", "bf16"): ("flashmla_sparse", "fa3"),
    ("sm90", "fp8_e4m3"): ("flashmla_kv", "flashmla_kv"),
    ("sm100", "bf16"): ("flashmla_sparse", "trtllm"),
    ("sm100", "fp8_e4m3"): ("trtllm", "trtllm"),
}
"""(arch, KV cache dtype) -> SGLang's (prefill, decode) defaults, as the seed documents."""


MODULES: dict[str, str] = {
    "flashmla_sparse": "flash_mla",
    "flashmla_kv": "flash_mla",
    "flashmla_auto": "flash_mla",
    "flashmla_sparse_q8": "flash_mla",
    "fa3": "sgl_kernel",
    "trtllm": "flashinfer",
    "flashinfer_sparse_mla": "flashinfer",
    "tilelang": "tilelang",
    "aiter": "aiter",
    "triton": "triton",
    "triton_sparse_mla": "triton",
}
"""Kernel -> the Python module SGLang imports for it."""

PACKAGES: dict[str, str] = {
    "flash_mla": "sgl-flash-mla",
    "sgl_kernel": "sglang-kernel",
    "flashinfer": "flashinfer-python",
    "tilelang": "tilelang",
    "aiter": "amd-aiter",
    "triton": "triton",
}
"""Module -> the distribution that provides it (named in the fix)."""


def arch_family(arch: str, vendor: str = "nvidia") -> str:
    """Map 'sm90', 'sm100', 'sm103', '9.0', 'gfx942' ... onto a family of ARCHS."""
    if vendor == "amd" or arch.startswith("gfx") or arch == "amd":
        return "amd"
    a = arch.lower().removeprefix("sm").removeprefix("_")
    if "." in a:
        major, _, minor = a.partition(".")
        a = major + minor
    if a.isdigit():
        n = int(a)
        if 90 <= n < 100:
            return "sm90"
        if 100 <= n < 110:
            return "sm100"
        return f"sm{n}"
    return arch


def allowed(arch: str, dialect: str, slot: str) -> list[str]:
    """Kernels this GPU runs for `slot` (prefill and decode alike: SGLang's NSA backend has a
    path for every kernel in both phases) under this flag dialect."""
    del slot
    family = arch_family(arch)
    return sorted(
        k for k, archs in ARCHS.items() if family in archs and (dialect == "dsa" or k not in FROM_DSA_DIALECT)
    )


def default_kernels(arch: str, kv_dtype: str, dialect: str) -> tuple[str, str]:
    """What SGLang picks for `auto` (its kv dtype `auto` is bf16 on Hopper, fp8 on SM100+)."""
    family = arch_family(arch)
    if family == "amd":
        k = "triton" if dialect == "dsa" else "tilelang"  # the dsa dialect (0.5.20+) moved it
        return k, k
    if kv_dtype in ("auto", ""):
        kv_dtype = "bf16" if family == "sm90" else "fp8_e4m3"
    return DEFAULTS.get((family, kv_dtype), ("flashmla_sparse", "flashmla_kv"))


@dataclass(frozen=True)
class KernelChoice:
    slot: str  # prefill | decode
    planned: str  # as in the plan, maybe "auto"
    resolved: str  # what SGLang will run


def resolve(arch: str, prefill: str, decode: str, kv_dtype: str, dialect: str) -> list[KernelChoice]:
    dp, dd = default_kernels(arch, kv_dtype, dialect)
    return [
        KernelChoice("prefill", prefill, dp if prefill == "auto" else prefill),
        KernelChoice("decode", decode, dd if decode == "auto" else decode),
    ]


def check_compatible(
    arch: str, choices: list[KernelChoice], dialect: str, spec_path: str, kv_dtype: str = "auto"
) -> None:
    """Raise KERNEL_UNSUPPORTED naming the spec field and the values that would work."""
    for c in choices:
        ok = allowed(arch, dialect, c.slot)
        if c.resolved in ok:
            continue
        family = arch_family(arch)
        dp, dd = default_kernels(arch, kv_dtype, dialect)
        suggestion = dp if c.slot == "prefill" else dd
        others = ", ".join(k for k in ok if k != suggestion)
        raise RuntimeFailure(
            ExitCode.KERNEL_UNSUPPORTED,
            f"{c.slot} kernel {c.resolved} does not run on {family} "
            f"(this node's GPU): set {spec_path}.kernels.{c.slot} to {suggestion} or auto"
            + (f" (also possible: {others})" if others else ""),
        )


def modules_needed(choices: list[KernelChoice]) -> dict[str, str]:
    """module -> the kernel that needs it."""
    out: dict[str, str] = {}
    for c in choices:
        mod = MODULES.get(c.resolved)
        if mod:
            out.setdefault(mod, c.resolved)
    return out
