"""Run FlashMLA's sparse decode on an fp8 paged KV cache and check it against float32 torch.

The kernel is `flash_mla_with_kvcache(..., indices=..., is_fp8_kvcache=True)`: what SGLang runs
for `flashmla_kv` (decode, and prefill too: every extend token is one decode query against the
cache). The cache is FlashMLA's DeepSeek-V3.2 fp8 layout (`kv_format="V32"`, legacy kernels),
656 bytes per token:

- bytes 0..511: the 512 "NoPE" values as float8 e4m3, in 4 tiles of 128;
- bytes 512..527: 4 float32 scales, one per tile, each a power of two (FlashMLA's quantizer
  rounds amax/448 up to a power of two, so that de-quantization is exact);
- bytes 528..655: the 64 RoPE values as bf16, not quantized.

A value is code * scale. The float32 reference reads the very rows the top-k indices point at,
de-quantized, so the fp8 rounding is common to kernel and reference and cancels: an e4m3 code
times a power of two is exact in bf16 and float32. What is left is the kernel's own rounding
(bf16 softmax weights and output), so the bf16 prefill check's 1e-2 tolerance applies. The fp8
rounding itself moves the output by about 2.5e-2 against the un-quantized cache in the
DeepSeek-V3.2 shape (`fp8_rounding_error`; e4m3 keeps 3 mantissa bits), 2.5 times the
tolerance, and a kernel that decodes the layout wrongly (scales ignored or misplaced, a tile or
row misread) lands far above it: neither can pass.

Imported only where torch is present. The kernel is passed in, so tests substitute a pure-torch
stand-in on the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from dsa_runtime.accuracy import BF16_TOLERANCE
from dsa_runtime.sparse_check import compare_tensors, time_ms

D_NOPE = 512
D_ROPE = 64
TILE = 128
NUM_TILES = D_NOPE // TILE
BYTES_PER_TOKEN = D_NOPE + 4 * NUM_TILES + 2 * D_ROPE  # 656
FP8_MAX = 448.0  # largest finite float8 e4m3fn
KV_FORMAT = "V32"  # FlashMLA's name for this layout (legacy kernels)

DECODE_TOLERANCE = BF16_TOLERANCE
"""Relative error against the reference from the de-quantized cache (see the module doc)."""

H200_BF16_TFLOPS = 989.0  # dense bf16, vendor datasheet (SXM)
H200_HBM_TBPS = 4.8  # HBM3e, vendor datasheet


@dataclass(frozen=True)
class DecodeShape:
    batch: int
    context: int  # tokens in each sequence's cache
    h_q: int = 128
    s_q: int = 1  # query tokens per sequence (2 with one MTP draft token)
    topk: int = 2048
    d_qk: int = 576
    d_v: int = 512
    block_size: int = 64  # SGLang's page size for DSA models

    def flops(self) -> float:
        """2·b·s_q·h·topk·(d_qk+d_v): QK^T plus PV over every top-k slot (FlashMLA's count)."""
        return 2.0 * self.batch * self.s_q * self.h_q * self.topk * (self.d_qk + self.d_v)

    def io_bytes(self, kv_rows: int) -> int:
        """Bytes the kernel must move: the distinct fp8 KV rows the indices touch, q, output."""
        return kv_rows * BYTES_PER_TOKEN + 2 * self.batch * self.s_q * self.h_q * (self.d_qk + self.d_v)


SHAPES: dict[str, DecodeShape] = {
    "small": DecodeShape(batch=8, context=4096),
    "deepseek-v3.2": DecodeShape(batch=64, context=32768),
}

SWEEP: list[DecodeShape] = [
    DecodeShape(batch=b, context=c) for b in (1, 32, 128) for c in (8192, 32768, 131072)
]

DecodeKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, int], torch.Tensor]
"""(q [b, s_q, h, 576] bf16, cache [blocks, block_size, 1, 656] fp8 bytes, indices [b, s_q, topk]
int32, sm_scale, d_v) -> out [b, s_q, h, d_v]."""


def quantize_rows(x: torch.Tensor) -> torch.Tensor:
    """[n, 576] float -> [n, 656] uint8 in the V3.2 layout (FlashMLA's tests/quant.py)."""
    n = x.shape[0]
    nope = x[:, :D_NOPE].float().reshape(n, NUM_TILES, TILE)
    amax = nope.abs().amax(dim=-1) / FP8_MAX
    scale = torch.pow(2.0, torch.clamp_min(amax, 1e-4).log2().ceil())  # [n, tiles], powers of 2
    codes = (nope / scale[..., None]).to(torch.float8_e4m3fn).reshape(n, D_NOPE)
    out = torch.empty(n, BYTES_PER_TOKEN, dtype=torch.uint8, device=x.device)
    out[:, :D_NOPE] = codes.view(torch.uint8)
    out[:, D_NOPE : D_NOPE + 4 * NUM_TILES] = scale.float().contiguous().view(torch.uint8)
    out[:, D_NOPE + 4 * NUM_TILES :] = x[:, D_NOPE:].bfloat16().contiguous().view(torch.uint8)
    return out


def dequantize_rows(rows: torch.Tensor) -> torch.Tensor:
    """[..., 656] uint8 in the V3.2 layout -> [..., 576] float32 (exact)."""
    rows = rows.contiguous()
    lead = rows.shape[:-1]
    codes = rows[..., :D_NOPE].contiguous().view(torch.float8_e4m3fn).float()
    scale = rows[..., D_NOPE : D_NOPE + 4 * NUM_TILES].contiguous().view(torch.float32)
    rope = rows[..., D_NOPE + 4 * NUM_TILES :].contiguous().view(torch.bfloat16).float()
    nope = (codes.reshape(*lead, NUM_TILES, TILE) * scale[..., None]).reshape(*lead, D_NOPE)
    return torch.cat([nope, rope], dim=-1)


def _generator(device: str, seed: int | None) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(7), "little"))
    return gen


POOL_ROWS = 65536
"""Distinct quantized rows a large cache is filled from (it holds up to 16.8M tokens)."""


@dataclass
class DecodeInputs:
    q: torch.Tensor  # [b, s_q, h, d_qk] bf16
    cache: torch.Tensor  # [blocks, block_size, 1, 656] uint8
    indices: torch.Tensor  # [b, s_q, topk] int32 into the flattened cache, -1 invalid
    source: torch.Tensor  # [POOL, 576] float32: the un-quantized rows the pool was made from
    pick: torch.Tensor  # [blocks·block_size] int64: which pool row each cache row holds


def random_inputs(
    shape: DecodeShape, device: str, seed: int | None = None, invalid_frac: float = 0.05
) -> DecodeInputs:
    """Fresh q and a paged fp8 cache; per query `topk` distinct positions of its own sequence,
    through a shuffled block table (as SGLang's pages lie), about `invalid_frac` of them -1."""
    gen = _generator(device, seed)
    b, bs = shape.batch, shape.block_size
    q = torch.randn(b, shape.s_q, shape.h_q, shape.d_qk, generator=gen, device=device).bfloat16()
    blocks_per_seq = -(-shape.context // bs)
    n_blocks = b * blocks_per_seq
    n_rows = n_blocks * bs
    n_pool = min(n_rows, POOL_ROWS)
    source = torch.randn(n_pool, shape.d_qk, generator=gen, device=device)
    pool = quantize_rows(source)
    if n_pool < n_rows:
        pick = torch.randint(0, n_pool, (n_rows,), generator=gen, device=device)
    else:
        pick = torch.randperm(n_rows, generator=gen, device=device)
    cache = pool[pick].view(n_blocks, bs, 1, BYTES_PER_TOKEN)
    table = torch.randperm(n_blocks, generator=gen, device=device).view(b, blocks_per_seq)

    k = min(shape.topk, shape.context)
    rows = b * shape.s_q
    pos = torch.rand(rows, shape.context, generator=gen, device=device).topk(k, dim=1).indices
    seq = torch.arange(b, device=device).repeat_interleave(shape.s_q)[:, None]
    idx = table[seq, pos // bs] * bs + pos % bs
    if k < shape.topk:  # a context shorter than top-k: the rest is padding, as SGLang sends it
        pad = torch.full((rows, shape.topk - k), -1, dtype=idx.dtype, device=device)
        idx = torch.cat([idx, pad], dim=1)
    invalid = torch.rand(rows, shape.topk, generator=gen, device=device) < invalid_frac
    invalid[:, 0] = False  # every query sees at least one key
    idx = torch.where(invalid, torch.full_like(idx, -1), idx)
    indices = idx.to(torch.int32).view(b, shape.s_q, shape.topk)
    return DecodeInputs(q, cache, indices, source, pick)


def touched_rows(indices: torch.Tensor) -> int:
    """Distinct valid cache rows the indices point at."""
    flat = indices.reshape(-1)
    return int(flat[flat >= 0].unique().numel())


def reference(
    q: torch.Tensor,
    cache: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    d_v: int,
    chunk: int = 8,
    rows_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """float32 sparse attention over each query's selected rows, de-quantized; -1 masked.

    `rows_of` maps flat row numbers to float32 [..., 576] rows (default: de-quantize the cache)."""
    b, s_q, h_q, _ = q.shape
    flat = cache.reshape(-1, BYTES_PER_TOKEN)
    n = flat.shape[0]
    if rows_of is None:

        def rows_of(i: torch.Tensor) -> torch.Tensor:
            return dequantize_rows(flat[i])

    out = torch.empty(b, s_q, h_q, d_v, dtype=torch.float32, device=q.device)
    for start in range(0, b, chunk):
        sl = slice(start, start + chunk)
        idx = indices[sl].long()
        valid = (idx >= 0) & (idx < n)
        keys = rows_of(idx.clamp(0, n - 1))  # [c, s_q, topk, 576]
        scores = torch.einsum("cshd,cstd->csht", q[sl].float(), keys) * sm_scale
        scores = scores.masked_fill(~valid[:, :, None, :], -math.inf)
        probs = torch.softmax(scores, dim=-1)
        out[sl] = torch.einsum("csht,cstd->cshd", probs, keys[..., :d_v])
    return out


def fp8_rounding_error(shape: DecodeShape, device: str, seed: int | None = None) -> float:
    """|ref(de-quantized cache) - ref(un-quantized cache)| / |ref(un-quantized)| (2-norms): what
    the fp8 cache itself changes, the scale the check's tolerance is set against."""
    t = random_inputs(shape, device, seed)
    scale = 1.0 / math.sqrt(shape.d_qk)
    deq = reference(t.q, t.cache, t.indices, scale, shape.d_v)
    raw = reference(t.q, t.cache, t.indices, scale, shape.d_v, rows_of=lambda i: t.source[t.pick[i]])
    return float((deq - raw).norm() / raw.norm())


def flash_mla_decode_kernel(use_legacy: bool = True) -> DecodeKernel:
    """FlashMLA's sparse fp8 decode. The V3.2 layout exists only in the legacy kernels (on
    SM100 too: the current ones take the V4.1 formats), hence `use_legacy` and `kv_format`."""
    from flash_mla import flash_mla_with_kvcache, get_mla_metadata

    metas: dict[tuple[Any, ...], Any] = {}

    def run(q, cache, indices, sm_scale, d_v):
        # The scheduler metadata depends on the shapes only; SGLang computes it once a step and
        # reuses it for every layer, so it is kept per shape here too.
        key = (tuple(q.shape), tuple(cache.shape), tuple(indices.shape))
        if key not in metas:
            metas[key] = get_mla_metadata()[0]
        out, _lse = flash_mla_with_kvcache(
            q,
            cache.view(torch.float8_e4m3fn),
            None,
            None,
            d_v,
            metas[key],
            softmax_scale=sm_scale,
            is_fp8_kvcache=True,
            indices=indices,
            use_legacy=use_legacy,
            kv_format=KV_FORMAT if use_legacy else None,
        )
        return out

    return run


L2_FLUSH_BYTES = 256 * 2**20  # over 4x the H200's 50 MB L2


def check(
    kernel: DecodeKernel,
    shape: DecodeShape,
    device: str,
    tol: float = DECODE_TOLERANCE,
    iters: int = 20,
    seed: int | None = None,
    invalid_frac: float = 0.05,
    flush_bytes: int | None = None,
) -> dict[str, Any]:
    """One correctness check on fresh random inputs, then (if it passed) timing."""
    torch.backends.cuda.matmul.allow_tf32 = False
    t = random_inputs(shape, device, seed, invalid_frac)
    sm_scale = 1.0 / math.sqrt(shape.d_qk)
    out = kernel(t.q, t.cache, t.indices, sm_scale, shape.d_v)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ref = reference(t.q, t.cache, t.indices, sm_scale, shape.d_v)
    if tuple(out.shape) != tuple(ref.shape):
        verdict_ok, rel = False, math.nan
        reason = f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}"
    else:
        v = compare_tensors(out, ref, tol)
        verdict_ok, rel, reason = v.ok, v.rel_err, v.reason
    result: dict[str, Any] = {
        "ok": verdict_ok,
        "relErr": rel,
        "tolerance": tol,
        "reason": reason,
        "shape": asdict(shape),
        "kvCache": f"fp8 e4m3, FlashMLA {KV_FORMAT} layout, {BYTES_PER_TOKEN} B/token",
    }
    if verdict_ok and iters > 0:
        if flush_bytes is None:
            flush_bytes = L2_FLUSH_BYTES if device.startswith("cuda") else 0
        del ref
        ms = time_ms(
            lambda: kernel(t.q, t.cache, t.indices, sm_scale, shape.d_v),
            device,
            iters=iters,
            flush_bytes=flush_bytes,
        )
        moved = shape.io_bytes(touched_rows(t.indices))
        result["timeMs"] = round(ms, 4)
        result["tflops"] = round(shape.flops() / (ms * 1e-3) / 1e12, 3)
        result["gbps"] = round(moved / (ms * 1e-3) / 1e9, 1)
        result["bytes"] = moved
    return result


def sweep(device: str = "cuda", iters: int = 50, shapes: list[DecodeShape] | None = None) -> list[dict]:
    """The figures: every shape in SWEEP (cold L2), with shares of the H200's datasheet limits.

    The inputs have no -1 indices here (a context of at least top-k tokens, as in serving)."""
    kernel = flash_mla_decode_kernel()
    rows = []
    for shape in shapes or SWEEP:
        r = check(kernel, shape, device, iters=iters, invalid_frac=0.0)
        if r["ok"]:
            t_compute = shape.flops() / (H200_BF16_TFLOPS * 1e12) * 1e3
            t_memory = r["bytes"] / (H200_HBM_TBPS * 1e12) * 1e3
            r["computeShare"] = round(r["tflops"] / H200_BF16_TFLOPS, 3)
            r["bandwidthShare"] = round(r["gbps"] / (H200_HBM_TBPS * 1e3), 3)
            r["floorMs"] = {"compute": round(t_compute, 4), "memory": round(t_memory, 4)}
            r["roofline"] = "compute" if t_compute >= t_memory else "memory"
            r["noFlushMs"] = round(_no_flush_ms(kernel, shape, device, iters), 4)
        rows.append(r)
        print(json.dumps(r), flush=True)
        torch.cuda.empty_cache()
    return rows


def _no_flush_ms(kernel: DecodeKernel, shape: DecodeShape, device: str, iters: int) -> float:
    """Back to back without the flush. Not a warm-L2 figure: with the GPU idle between calls the
    events also time the host's launch path (FlashMLA's Python wrapper, two kernels), which
    SGLang's CUDA graphs remove; on the H200 it is slower than the flushed time (45-50 µs at
    batch 1 against 21)."""
    t = random_inputs(shape, device, invalid_frac=0.0)
    scale = 1.0 / math.sqrt(shape.d_qk)
    return time_ms(lambda: kernel(t.q, t.cache, t.indices, scale, shape.d_v), device, iters=iters)


def _tokens(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def table(rows: list[dict]) -> str:
    lines = [
        "| batch | context | µs (cold L2) | µs (no flush) | TFLOP/s | of 989 | GB/s | of 4.8 TB/s | err |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        s = r["shape"]
        if not r["ok"]:
            lines.append(f"| {s['batch']} | {s['context']} | failed: {r['reason']} | | | | | | |")
            continue
        lines.append(
            f"| {s['batch']} | {_tokens(s['context'])} | {r['timeMs'] * 1e3:.1f} "
            f"| {r['noFlushMs'] * 1e3:.1f} "
            f"| {r['tflops']:.0f} | {r['computeShare']:.0%} | {r['gbps']:.0f} | {r['bandwidthShare']:.0%} "
            f"| {r['relErr']:.2e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="FlashMLA sparse fp8 decode: check and figures")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--fp8-error", action="store_true", help="also report fp8_rounding_error")
    args = ap.parse_args(argv)
    rows = sweep("cuda", args.iters)
    if args.fp8_error:
        err = fp8_rounding_error(DecodeShape(batch=8, context=8192), "cuda")
        print(json.dumps({"fp8RoundingError": err}), flush=True)
    print(table(rows), flush=True)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
