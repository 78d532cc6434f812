"""Which sparse-attention kernel runs on which GPU and KV-cache dtype.

The defaults are SGLang's own (`_set_default_nsa_backends`): the seed's table.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsa_operator.dialects import Dialect
from dsa_operator.hardware import Arch

KV_DTYPES = ("bf16", "fp8_e4m3")


@dataclass(frozen=True)
class Kernel:
    archs: frozenset[str]
    kv_dtypes: frozenset[str]  # the KV-cache dtypes it reads
    decode_only: bool = False
    note: str = ""


_NV = frozenset({"sm90", "sm100"})
_ANY_KV = frozenset(KV_DTYPES)
_BF16 = frozenset({"bf16"})

KERNELS: dict[str, Kernel] = {
    "flashmla_sparse": Kernel(_NV, _BF16, note="FlashMLA sparse prefill: bf16 q and kv"),
    "flashmla_kv": Kernel(_NV, frozenset({"fp8_e4m3"}), note="FlashMLA: bf16 q, fp8 k-cache"),
    "flashmla_auto": Kernel(_NV, _ANY_KV, note="picks flashmla_sparse or flashmla_kv"),
    "fa3": Kernel(frozenset({"sm90"}), _BF16, note="FlashAttention 3: Hopper only, bf16"),
    "trtllm": Kernel(frozenset({"sm100"}), _ANY_KV, note="TRT-LLM sparse MLA: Blackwell only"),
    "tilelang": Kernel(frozenset({"sm90", "sm100", "amd"}), _ANY_KV),
    "aiter": Kernel(frozenset({"amd"}), _ANY_KV, decode_only=True, note="AMD only, decode only"),
    "flashmla_sparse_q8": Kernel(_NV, _ANY_KV),
    "flashinfer_sparse_mla": Kernel(_NV, _ANY_KV),
    "triton_sparse_mla": Kernel(frozenset({"sm90", "sm100", "amd"}), _ANY_KV),
    "triton": Kernel(frozenset({"sm90", "sm100", "amd"}), _ANY_KV),
    "intel_xpu": Kernel(frozenset(), _ANY_KV, note="Intel XPU only"),
}

ARCH_WORDS = {"sm90": "Hopper (SM90)", "sm100": "Blackwell (SM100)", "amd": "AMD"}


def default_kv_dtype(arch: Arch) -> str:
    """SGLang: fp8_e4m3 on SM100 and newer, bf16 elsewhere."""
    return "fp8_e4m3" if arch == "sm100" else "bf16"


def default_kernels(arch: Arch, kv_dtype: str, dialect: Dialect) -> tuple[str, str]:
    """(prefill, decode) as SGLang resolves `auto`."""
    if arch == "amd":
        return dialect.amd_default_kernel, dialect.amd_default_kernel
    if kv_dtype == "fp8_e4m3":
        return ("trtllm", "trtllm") if arch == "sm100" else ("flashmla_kv", "flashmla_kv")
    return ("flashmla_sparse", "trtllm") if arch == "sm100" else ("flashmla_sparse", "fa3")


def kernel_problems(kernel: str, phase: str, arch: Arch, kv_dtype: str, dialect: Dialect) -> list[str]:
    """Why `kernel` cannot run the `phase` (prefill|decode) here; empty when it can."""
    if kernel not in dialect.kernels:
        return [
            f"SGLang {dialect.version} has no {kernel!r} kernel; choose one of "
            f"{', '.join(dialect.kernels)} or auto"
        ]
    k = KERNELS[kernel]
    out = []
    if arch not in k.archs:
        fits = [
            n
            for n, kk in KERNELS.items()
            if arch in kk.archs and n in dialect.kernels and not (kk.decode_only and phase == "prefill")
        ]
        out.append(
            f"{kernel} does not run on {ARCH_WORDS[arch]} GPUs ({k.note or 'unsupported'}); "
            f"use auto or one of {', '.join(fits)}"
        )
    if k.decode_only and phase == "prefill":
        out.append(f"{kernel} is a decode-only kernel")
    if kv_dtype not in k.kv_dtypes:
        out.append(
            f"{kernel} needs a {' or '.join(sorted(k.kv_dtypes))} KV cache, not {kv_dtype}; "
            f"set kernels.kvCacheDtype accordingly or pick another kernel"
        )
    return out
