"""The sparse-attention check itself, with a pure-torch kernel (CPU, or GPU when present)."""

from __future__ import annotations

import math
import sys

try:
    import torch
except ImportError:  # no torch in the test venv: the real-parser tests' cached torch (runs on CPU)
    from tests.sglang_compat import envs

    sys.path.append(str(envs.ensure("0.5.23")[-1]))
    import torch

from dsa_runtime import sparse_check as S

SHAPE = S.Shape(s_q=16, h_q=4, s_kv=256, topk=64)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def torch_kernel(q, kv, indices, sm_scale, d_v):
    return S.reference(q, kv, indices, sm_scale, d_v).bfloat16()


def test_correct_kernel_passes_and_is_timed():
    """A passing kernel gets a time and a rate; their size depends on the machine, so only their
    presence and sanity are checked (a slow CPU rounds the rate to 0.0)."""
    result = S.check(torch_kernel, SHAPE, DEVICE, iters=2)
    assert result["ok"], result
    assert result["relErr"] < 1e-2
    for key in ("timeMs", "tflops"):
        assert math.isfinite(result[key]) and result[key] >= 0, result


def test_failing_kernel_is_not_timed():
    def off(q, kv, idx, scale, d_v):
        return torch.zeros_like(torch_kernel(q, kv, idx, scale, d_v))

    result = S.check(off, SHAPE, DEVICE, iters=2)
    assert not result["ok"] and "timeMs" not in result and "tflops" not in result


def test_perturbed_output_fails():
    def off(q, kv, idx, scale, d_v):
        out = torch_kernel(q, kv, idx, scale, d_v)
        return out + 0.1 * out.abs().mean() * torch.randn_like(out.float()).bfloat16()

    result = S.check(off, SHAPE, DEVICE, iters=0)
    assert not result["ok"] and result["relErr"] > 1e-2
    assert "exceeds" in result["reason"]


def test_single_nan_fails():
    def nan(q, kv, idx, scale, d_v):
        out = torch_kernel(q, kv, idx, scale, d_v)
        out[3, 1, 7] = math.nan
        return out

    result = S.check(nan, SHAPE, DEVICE, iters=0)
    assert not result["ok"] and "NaN" in result["reason"]


def test_wrong_indices_fail():
    """A kernel that ignores the top-k selection (attends to the first keys) is caught."""

    def dense_prefix(q, kv, idx, scale, d_v):
        first = torch.arange(idx.shape[-1], dtype=idx.dtype, device=idx.device)
        return torch_kernel(q, kv, first.expand_as(idx).contiguous(), scale, d_v)

    assert not S.check(dense_prefix, SHAPE, DEVICE, iters=0)["ok"]


def test_reference_masks_invalid_indices():
    q, kv, idx = S.random_inputs(SHAPE, DEVICE, seed=1)
    scale = 1 / math.sqrt(SHAPE.d_qk)
    base = S.reference(q, kv, idx, scale, SHAPE.d_v)
    moved = idx.clone()
    moved[moved < 0] = SHAPE.s_kv + 5  # out of range counts as invalid, like -1
    assert torch.allclose(base, S.reference(q, kv, moved, scale, SHAPE.d_v))
    assert (idx < 0).any()


def test_flops_of_deepseek_shape():
    s = S.SHAPES["deepseek-v3.2"]
    assert s.flops() == 2 * 4096 * 128 * 2048 * (576 + 512)
