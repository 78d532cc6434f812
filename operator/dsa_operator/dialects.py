"""SGLang versions and how each spells the DSA flags.

Read off the release wheels (`sglang/srt/server_args.py`, `sglang/srt/arg_groups/`):
- 0.5.9-0.5.12 ("nsa"): `--nsa-*` kernels, `--enable-nsa-prefill-context-parallel`.
- 0.5.13-0.5.19 ("transitional"): `--dsa-*` kernels (nsa aliased); from 0.5.14
  `--enable-prefill-cp --cp-strategy` and `--cuda-graph-max-bs-decode`.
- 0.5.20-0.5.23 ("dsa"): every `--nsa-*` flag gone; 0.5.21 drops the `SGLANG_NSA_` env
  alias; 0.5.22 adds `--attn-dp-size` and deprecates `--enable-dp-attention`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

DEFAULT_SGLANG_VERSION = "0.5.23"
SUPPORTED_MINORS = range(9, 24)  # 0.5.9 … 0.5.23
VERSION_PATTERN = r"^0\.5\.(9|1[0-9]|2[0-3])(\.post[0-9]+)?$"

# The user-facing CP mode names (the seed's) and their 0.5.14+ spelling.
CP_STRATEGY = {"in-seq-split": "zigzag", "round-robin-split": "interleave"}

# Kernel names each dialect's `--*-prefill-backend` / `--*-decode-backend` accepts.
_NSA_KERNELS = (
    "flashmla_sparse",
    "flashmla_kv",
    "flashmla_auto",
    "fa3",
    "tilelang",
    "aiter",
    "trtllm",
)
DSA_EXTRA_KERNELS = (  # offered by SGLang's parser from 0.5.20 (the dsa dialect) on
    "flashmla_sparse_q8",
    "flashinfer_sparse_mla",
    "triton_sparse_mla",
    "triton",
    "intel_xpu",
)


ALL_KERNELS = _NSA_KERNELS + DSA_EXTRA_KERNELS


@dataclass(frozen=True)
class Dialect:
    """Flag spelling of one SGLang version."""

    version: str
    name: str  # nsa | transitional | dsa
    prefill_backend_flag: str
    decode_backend_flag: str
    cp_new_spelling: bool  # --enable-prefill-cp --cp-strategy
    attn_dp_size: bool  # --attn-dp-size N instead of --dp-size N --enable-dp-attention
    cuda_graph_max_bs_flag: str
    dense_threshold_env: str
    kernels: tuple[str, ...]
    amd_default_kernel: str

    def cp_flags(self, mode: str) -> list[str]:
        if self.cp_new_spelling:
            return ["--enable-prefill-cp", "--cp-strategy", CP_STRATEGY[mode]]
        return ["--enable-nsa-prefill-context-parallel", "--nsa-prefill-cp-mode", mode]


def parse_version(version: str) -> tuple[int, int, int]:
    """`0.5.12.post1` -> (0, 5, 12); raises ValueError outside the supported range."""
    if not re.match(VERSION_PATTERN, version):
        raise ValueError(f"unsupported SGLang version {version!r}: supported are 0.5.9 to 0.5.23")
    major, minor, patch = (int(x) for x in version.split(".")[:3])
    return major, minor, patch


@cache
def dialect_for(version: str) -> Dialect:
    _, _, patch = parse_version(version)
    name = "nsa" if patch <= 12 else ("transitional" if patch <= 19 else "dsa")
    kernel_prefix = "nsa" if name == "nsa" else "dsa"
    return Dialect(
        version=version,
        name=name,
        prefill_backend_flag=f"--{kernel_prefix}-prefill-backend",
        decode_backend_flag=f"--{kernel_prefix}-decode-backend",
        cp_new_spelling=patch >= 14,
        attn_dp_size=patch >= 22,
        cuda_graph_max_bs_flag="--cuda-graph-max-bs-decode" if patch >= 20 else "--cuda-graph-max-bs",
        dense_threshold_env=(
            "SGLANG_NSA_PREFILL_DENSE_ATTN_KV_LEN_THRESHOLD"
            if name == "nsa"
            else "SGLANG_DSA_PREFILL_DENSE_ATTN_KV_LEN_THRESHOLD"
        ),
        kernels=_NSA_KERNELS + (DSA_EXTRA_KERNELS if name == "dsa" else ()),
        amd_default_kernel="triton" if name == "dsa" else "tilelang",
    )
