"""Run FlashMLA's sparse prefill kernel on random inputs and check it against float32 torch.

Imported only where torch is present (preflight on a GPU node). The kernel is passed in, so
tests can substitute a pure-torch stand-in on the CPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from dsa_runtime.accuracy import BF16_TOLERANCE, Verdict, judge


@dataclass(frozen=True)
class Shape:
    s_q: int
    h_q: int
    s_kv: int
    topk: int
    d_qk: int = 576
    d_v: int = 512

    def flops(self) -> float:
        """2·s_q·h·topk·(d_qk+d_v): QK^T plus PV over the selected keys."""
        return 2.0 * self.s_q * self.h_q * self.topk * (self.d_qk + self.d_v)


SHAPES: dict[str, Shape] = {
    "small": Shape(s_q=256, h_q=128, s_kv=4096, topk=512),
    "deepseek-v3.2": Shape(s_q=4096, h_q=128, s_kv=32768, topk=2048),
}

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float, int], torch.Tensor]


def random_inputs(shape: Shape, device: str, seed: int | None = None):
    """Fresh q, kv, indices: distinct valid key positions per query, some -1 (invalid)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(7), "little"))
    q = torch.randn(shape.s_q, shape.h_q, shape.d_qk, generator=gen, device=device)
    kv = torch.randn(shape.s_kv, 1, shape.d_qk, generator=gen, device=device)
    keys = torch.rand(shape.s_q, shape.s_kv, generator=gen, device=device)
    idx = keys.topk(shape.topk, dim=1).indices
    invalid = torch.rand(shape.s_q, shape.topk, generator=gen, device=device) < 0.05
    invalid[:, 0] = False  # every query sees at least one key
    idx = torch.where(invalid, torch.full_like(idx, -1), idx)
    return q.bfloat16(), kv.bfloat16(), idx.to(torch.int32).unsqueeze(1)


def reference(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    d_v: int,
    chunk: int = 256,
) -> torch.Tensor:
    """float32 sparse attention: softmax over each query's selected keys; -1 entries masked."""
    s_q, h_q, _ = q.shape
    out = torch.empty(s_q, h_q, d_v, dtype=torch.float32, device=q.device)
    kv32 = kv[:, 0, :].float()
    for start in range(0, s_q, chunk):
        sl = slice(start, start + chunk)
        idx = indices[sl, 0, :].long()
        valid = (idx >= 0) & (idx < kv.shape[0])
        keys = kv32[idx.clamp(0, kv.shape[0] - 1)]  # [c, topk, d_qk]
        scores = torch.einsum("chd,ctd->cht", q[sl].float(), keys) * sm_scale
        scores = scores.masked_fill(~valid[:, None, :], -math.inf)
        probs = torch.softmax(scores, dim=-1)
        out[sl] = torch.einsum("cht,ctd->chd", probs, keys[..., :d_v])
    return out


def compare_tensors(out: torch.Tensor, ref: torch.Tensor, tol: float) -> Verdict:
    out32 = out.float()
    finite = bool(torch.isfinite(out32).all())
    diff = torch.nan_to_num(out32 - ref, nan=0.0, posinf=0.0, neginf=0.0)
    return judge(float(diff.square().sum()), float(ref.square().sum()), finite, tol)


def flash_mla_kernel(use_legacy: bool) -> Kernel:
    from flash_mla import flash_mla_sparse_fwd

    def run(q, kv, indices, sm_scale, d_v):
        return flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v, use_legacy=use_legacy)[0]

    return run


def time_ms(
    fn: Callable[[], Any], device: str, warmup: int = 3, iters: int = 20, flush_bytes: int = 0
) -> float:
    """Median of device-event timings after warm-up (host clock on the CPU).

    With `flush_bytes`, a buffer that size is written before each timed call, outside the timed
    region: the call starts with a cold L2, as one layer's does after the other 60 layers ran.
    The flush also keeps the GPU busy while the host queues the call, so launch gaps stay out."""
    import statistics
    import time

    for _ in range(warmup):
        fn()
    samples = []
    if device.startswith("cuda"):
        flush = torch.empty(flush_bytes, dtype=torch.uint8, device=device) if flush_bytes else None
        torch.cuda.synchronize()
        for _ in range(iters):
            if flush is not None:
                flush.fill_(iters & 0xFF)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def check(
    kernel: Kernel,
    shape: Shape,
    device: str,
    tol: float = BF16_TOLERANCE,
    iters: int = 20,
    seed: int | None = None,
) -> dict[str, Any]:
    """One correctness check on fresh random inputs, then (if it passed) timing."""
    torch.backends.cuda.matmul.allow_tf32 = False
    q, kv, idx = random_inputs(shape, device, seed)
    sm_scale = 1.0 / math.sqrt(shape.d_qk)
    out = kernel(q, kv, idx, sm_scale, shape.d_v)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    ref = reference(q, kv, idx, sm_scale, shape.d_v)
    verdict = compare_tensors(out, ref, tol)
    result: dict[str, Any] = {
        "ok": verdict.ok,
        "relErr": verdict.rel_err,
        "tolerance": tol,
        "reason": verdict.reason,
        "shape": asdict(shape),
    }
    if verdict.ok and iters > 0:
        ms = time_ms(lambda: kernel(q, kv, idx, sm_scale, shape.d_v), device, iters=iters)
        result["timeMs"] = round(ms, 4)
        result["tflops"] = round(shape.flops() / (ms * 1e-3) / 1e12, 3)
    return result
