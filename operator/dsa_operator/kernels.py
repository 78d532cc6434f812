"""Which sparse-attention kernel runs on which GPU and KV-cache dtype, as SGLang runs them.

The defaults are SGLang's own (`ServerArgs._set_default_nsa_backends` in 0.5.12,
`arg_groups/overrides.py::_dsa_split_backend_resolution` in 0.5.23): the seed's table.
What each kernel does with a KV-cache dtype it does not store natively is read off the NSA
backend (`sglang/srt/layers/attention/nsa_backend.py` in 0.5.12):
- native: the kernel reads that cache as it is;
- converts: SGLang converts the cache on every call (flashmla_kv quantizes a bf16 cache,
  "inefficiently quantize the whole cache"; flashmla_sparse prefill dequantizes an fp8 cache
  with `dequantize_k_cache_paged`): it runs, slowly, so the planner warns;
- anything else has no path in the backend (the fp8 cache is a packed layout with scales, and
  fa3 / flashmla_sparse decode read it as bf16): the planner refuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from dsa_operator.dialects import Dialect
from dsa_operator.hardware import Arch

KV_DTYPES = ("bf16", "fp8_e4m3")
KV_SPELLINGS = {"bf16": "bf16", "bfloat16": "bf16", "fp8_e4m3": "fp8_e4m3"}  # SGLang's names


@dataclass(frozen=True)
class Kernel:
    archs: frozenset[str]
    native: frozenset[str]  # KV-cache dtypes it reads as stored
    converts: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())  # (prefill, decode)
    note: str = ""

    def kv_path(self, phase: str, kv_dtype: str) -> str:
        """native | converts | none."""
        if kv_dtype in self.native:
            return "native"
        return "converts" if kv_dtype in self.converts[phase == "decode"] else "none"


_NV = frozenset({"sm90", "sm100"})
_ANY_KV = frozenset(KV_DTYPES)
_BF16 = frozenset({"bf16"})
_FP8 = frozenset({"fp8_e4m3"})
_NONE = frozenset[str]()

KERNELS: dict[str, Kernel] = {
    "flashmla_sparse": Kernel(_NV, _BF16, (_FP8, _NONE), note="FlashMLA sparse: bf16 q and kv"),
    "flashmla_kv": Kernel(_NV, _FP8, (_BF16, _BF16), note="FlashMLA: bf16 q, fp8 k-cache"),
    "flashmla_auto": Kernel(_NV, _ANY_KV, note="picks flashmla_sparse or flashmla_kv per batch"),
    "fa3": Kernel(frozenset({"sm90"}), _BF16, note="FlashAttention 3: Hopper only"),
    "trtllm": Kernel(frozenset({"sm100"}), _ANY_KV, note="TRT-LLM sparse MLA: Blackwell only"),
    "tilelang": Kernel(frozenset({"sm90", "sm100", "amd"}), _ANY_KV),
    "aiter": Kernel(frozenset({"amd"}), _ANY_KV, note="AMD only"),
    "flashmla_sparse_q8": Kernel(_NV, _ANY_KV),
    "flashinfer_sparse_mla": Kernel(_NV, _ANY_KV),
    "triton_sparse_mla": Kernel(frozenset({"sm90", "sm100", "amd"}), _ANY_KV),
    "triton": Kernel(frozenset({"amd"}), _ANY_KV, note="SGLang 0.5.23: ROCm/HIP only"),
    "intel_xpu": Kernel(frozenset(), _ANY_KV, note="Intel XPU only"),
}

ARCH_WORDS = {"sm90": "Hopper (SM90)", "sm100": "Blackwell (SM100)", "amd": "AMD"}


def canonical_kv(kv_dtype: str) -> str:
    """SGLang's spellings of one dtype (bf16, bfloat16) as one name; auto stays auto."""
    return KV_SPELLINGS.get(kv_dtype, kv_dtype)


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


def unknown_kernel(kernel: str, dialect: Dialect) -> str | None:
    """SGLang's parser of this version has no such `--*-backend` choice."""
    if kernel in dialect.kernels:
        return None
    choices = ", ".join(dialect.kernels)
    return f"SGLang {dialect.version} has no {kernel!r} kernel; choose one of {choices} or auto"


def wrong_gpu(kernel: str, phase: str, arch: Arch, dialect: Dialect) -> str | None:
    """Why `kernel` cannot run on `arch`; None when it can."""
    k = KERNELS[kernel]
    if arch in k.archs:
        return None
    fits = [n for n, kk in KERNELS.items() if arch in kk.archs and n in dialect.kernels]
    return (
        f"{kernel} does not run on {ARCH_WORDS[arch]} GPUs ({k.note or 'unsupported'}); "
        f"use auto or one of {', '.join(fits)}"
    )
