"""The fp8 sparse-decode check: the V3.2 cache layout, its de-quantization, the reference and
the comparison, with pure-torch stand-ins for FlashMLA's kernel (CPU, or GPU when present).

No test depends on the machine's speed: timings are only checked to be present and sane."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest

try:
    import torch
except ImportError:  # no torch in the test venv: the real-parser tests' cached torch (runs on CPU)
    from tests.sglang_compat import envs

    sys.path.append(str(envs.ensure("0.5.23")[-1]))
    import torch

from dsa_runtime import preflight as PF
from dsa_runtime import sparse_decode_check as D
from dsa_runtime.errors import ExitCode, RuntimeFailure
from dsa_runtime.node import Gpu
from dsa_runtime.plan import Plan
from tests.runtime.conftest import make_plan

SHAPE = D.DecodeShape(batch=3, context=512, h_q=8, topk=128, block_size=16)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def torch_kernel(q, cache, indices, sm_scale, d_v):
    return D.reference(q, cache, indices, sm_scale, d_v).bfloat16()


# --- the cache layout ----------------------------------------------------------------------


def test_layout_of_one_row_byte_by_byte():
    """NoPE 1.0 everywhere: amax/448 rounds up to the scale 2^-8, so every code is 256 (e4m3
    0x78); the 4 float32 scales follow (little-endian 0x3B800000), then the bf16 RoPE part."""
    x = torch.ones(1, 576)
    x[0, 512:] = torch.arange(64, dtype=torch.float32)
    row = D.quantize_rows(x)[0]
    assert row.shape == (656,) and row.dtype == torch.uint8
    assert (row[:512] == 0x78).all()
    assert row[512:528].tolist() == [0x00, 0x00, 0x80, 0x3B] * 4
    assert torch.equal(row[528:].view(torch.bfloat16).float(), torch.arange(64, dtype=torch.float32))
    assert torch.equal(D.dequantize_rows(row[None])[0], x[0])


def test_scales_are_powers_of_two_per_tile_and_dequantization_is_exact_in_bf16():
    x = torch.randn(64, 576) * torch.logspace(-1, 3, 64)[:, None]  # amax/448 above the 1e-4 floor
    rows = D.quantize_rows(x)
    scales = rows[:, 512:528].contiguous().view(torch.float32)  # [64, 4]
    assert scales.shape == (64, 4)
    assert torch.equal(scales, torch.pow(2.0, scales.log2().round()))
    tiles = x[:, :512].reshape(64, 4, 128).abs().amax(-1)
    assert (tiles / scales <= 448).all() and (tiles / scales > 224).all()  # the top binade
    y = D.dequantize_rows(rows)
    assert torch.equal(y.bfloat16().float(), y)  # code x 2^k: no rounding in bf16 or float32
    rel = (y[:, :512] - x[:, :512]).norm(dim=1) / x[:, :512].norm(dim=1)
    assert (rel < 0.04).all()  # e4m3 keeps 3 mantissa bits: about 2.7e-2 rms on Gaussian data
    assert torch.equal(y[:, 512:], x[:, 512:].bfloat16().float())  # RoPE stays bf16


def test_dequantizes_any_leading_shape():
    rows = D.quantize_rows(torch.randn(24, 576))
    assert torch.equal(D.dequantize_rows(rows.view(2, 3, 4, 656)).view(24, 576), D.dequantize_rows(rows))


# --- inputs --------------------------------------------------------------------------------


def test_indices_are_distinct_positions_of_the_querys_own_sequence():
    t = D.random_inputs(SHAPE, DEVICE, seed=3)
    assert t.q.shape == (3, 1, 8, 576) and t.q.dtype == torch.bfloat16
    assert t.cache.shape == (3 * 512 // 16, 16, 1, 656) and t.cache.dtype == torch.uint8
    assert t.indices.shape == (3, 1, 128) and t.indices.dtype == torch.int32
    blocks = t.cache.shape[0]
    owner = torch.full((blocks,), -1, dtype=torch.long, device=DEVICE)
    idx = t.indices.long()
    for b in range(3):
        row = idx[b, 0]
        valid = row[row >= 0]
        assert valid.unique().numel() == valid.numel()  # distinct
        seen = (valid // 16).unique()
        assert (owner[seen] == -1).all() | (owner[seen] == b).all()
        owner[seen] = b  # a block holds one sequence's tokens only
    assert (idx[..., 0] >= 0).all()  # every query sees a key
    frac = float((idx < 0).float().mean())
    assert 0.0 < frac < 0.15


def test_a_context_shorter_than_topk_pads_with_minus_one():
    short = D.DecodeShape(batch=2, context=48, h_q=4, topk=64, block_size=16)
    idx = D.random_inputs(short, DEVICE, seed=1, invalid_frac=0.0).indices
    assert ((idx >= 0).sum(-1) == 48).all() and (idx[..., 48:] == -1).all()


def test_large_caches_are_filled_from_a_pool(monkeypatch):
    monkeypatch.setattr(D, "POOL_ROWS", 100)
    t = D.random_inputs(SHAPE, DEVICE, seed=2)
    assert t.source.shape == (100, 576) and int(t.pick.max()) < 100
    rows = t.cache.view(-1, 656)
    assert torch.equal(rows[7], D.quantize_rows(t.source[t.pick[7]][None])[0])


def test_touched_rows_and_counts():
    idx = torch.tensor([[[3, 5, -1, 5]], [[0, -1, -1, 9]]], dtype=torch.int32)
    assert D.touched_rows(idx) == 4
    s = D.DecodeShape(batch=32, context=32768)
    assert s.flops() == 2 * 32 * 128 * 2048 * (576 + 512)
    assert s.io_bytes(32 * 2048) == 32 * 2048 * 656 + 2 * 32 * 128 * (576 + 512)


# --- the check -----------------------------------------------------------------------------


def test_correct_kernel_passes_and_is_timed():
    result = D.check(torch_kernel, SHAPE, DEVICE, iters=2)
    assert result["ok"], result
    assert result["relErr"] < 1e-2 and result["tolerance"] == D.DECODE_TOLERANCE
    for key in ("timeMs", "tflops", "gbps", "bytes"):
        assert math.isfinite(result[key]) and result[key] >= 0, result
    assert "V32" in result["kvCache"]


def _failing(fn) -> dict:
    result = D.check(fn, SHAPE, DEVICE, iters=2)
    assert not result["ok"] and "timeMs" not in result, result
    return result


def test_perturbed_output_fails():
    def noisy(*a):
        out = torch_kernel(*a)
        return out + 0.05 * out.float().abs().mean() * torch.randn_like(out.float()).bfloat16()

    assert "exceeds" in _failing(noisy)["reason"]


def test_single_nan_fails():
    def nan(*a):
        out = torch_kernel(*a)
        out[2, 0, 5, 11] = math.nan
        return out

    assert "NaN" in _failing(nan)["reason"]


def test_zeros_fail():
    _failing(lambda *a: torch.zeros_like(torch_kernel(*a)))


def test_wrong_output_shape_fails():
    assert "output shape" in _failing(lambda *a: torch_kernel(*a)[:, :, :4])["reason"]


def test_a_kernel_that_ignores_the_scales_fails():
    def codes_only(q, cache, idx, scale, d_v):
        raw = cache.clone()
        one = torch.tensor([1.0]).view(torch.uint8).to(raw.device)  # every scale 1.0
        raw.view(-1, 656)[:, 512:528] = one.repeat(4)
        return torch_kernel(q, raw, idx, scale, d_v)

    _failing(codes_only)


def test_a_kernel_that_reads_the_neighbouring_row_fails():
    def off_by_one(q, cache, idx, scale, d_v):
        n = cache.view(-1, 656).shape[0]
        moved = torch.where(idx >= 0, (idx + 1) % n, idx)
        return torch_kernel(q, cache, moved, scale, d_v)

    _failing(off_by_one)


def test_a_kernel_that_attends_to_padding_fails():
    def minus_one_as_row_zero(q, cache, idx, scale, d_v):
        return torch_kernel(q, cache, idx.clamp_min(0), scale, d_v)

    _failing(minus_one_as_row_zero)


def test_the_tolerance_sits_between_bf16_rounding_and_fp8_rounding():
    """The reference reads the de-quantized cache, so the fp8 rounding cancels; what it would
    change (against the un-quantized cache) is well above the tolerance."""
    err = D.fp8_rounding_error(D.DecodeShape(batch=2, context=4096, h_q=16), DEVICE, seed=5)
    assert 2 * D.DECODE_TOLERANCE < err < 5e-2


# --- FlashMLA's call, with a stand-in module -----------------------------------------------


def test_the_flash_mla_call_follows_the_wheels_interface(monkeypatch):
    """What flash_mla_decode_kernel passes: the legacy kernels, kv_format V32, an fp8 cache of
    656-byte tokens, int32 indices, and one scheduler metadata per shape, reused."""
    calls: list[dict] = []
    metas: list[object] = []

    def get_mla_metadata(*a, **k):
        metas.append(object())
        return metas[-1], None

    def flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v, meta, **kw):
        calls.append(dict(kw, meta=meta, dtype=k_cache.dtype, shape=tuple(k_cache.shape)))
        assert block_table is None and cache_seqlens is None
        out = D.reference(q, k_cache.view(torch.uint8), kw["indices"], kw["softmax_scale"], head_dim_v)
        return out.bfloat16(), None

    fake = types.ModuleType("flash_mla")
    fake.get_mla_metadata = get_mla_metadata
    fake.flash_mla_with_kvcache = flash_mla_with_kvcache
    monkeypatch.setitem(sys.modules, "flash_mla", fake)
    kernel = D.flash_mla_decode_kernel()
    assert D.check(kernel, SHAPE, DEVICE, iters=2)["ok"]
    assert len(metas) == 1 and len(calls) >= 3 and all(c["meta"] is metas[0] for c in calls)
    c = calls[0]
    assert c["use_legacy"] is True and c["kv_format"] == "V32" and c["is_fp8_kvcache"] is True
    assert c["dtype"] == torch.float8_e4m3fn and c["shape"][1:] == (16, 1, 656)
    assert c["indices"].dtype == torch.int32 and c["softmax_scale"] == pytest.approx(576**-0.5)


# --- preflight with the stand-ins ----------------------------------------------------------


def _fp8_plan(role: str = "serving") -> Plan:
    plan = make_plan(["x"], role=role)
    plan["roles"][0]["kernels"] = {"prefill": "auto", "decode": "auto", "kvCacheDtype": "fp8_e4m3"}
    return Plan.model_validate(plan)


@pytest.fixture
def node(monkeypatch):
    monkeypatch.setattr(PF, "detect_gpus", lambda: [Gpu("NVIDIA H200", "9.0")] * 8)
    monkeypatch.setitem(sys.modules, "flash_mla", types.ModuleType("flash_mla"))


def _runners(kernel):
    return {"flashmla_kv": lambda arch, shape, iters: D.check(kernel, SHAPE, DEVICE, iters=iters)}


def test_preflight_of_an_fp8_plan_runs_the_decode_kernel(node, tmp_path):
    report = PF.preflight(
        _fp8_plan(), "serving", shm_path=str(tmp_path), iters=2, runners=_runners(torch_kernel)
    )
    assert report["preflight"] == "ok" and report["kvCacheDtype"] == "fp8_e4m3"
    assert report["kernels"] == {"prefill": "flashmla_kv", "decode": "flashmla_kv"}
    [entry] = report["kernelChecks"]
    assert entry["kernel"] == "flashmla_kv" and entry["slots"] == ["prefill", "decode"]
    assert entry["check"] == "ran" and entry["ok"] and entry["function"].startswith("flash_mla_with_kvcache")
    json.dumps(report)


@pytest.mark.parametrize("how", ["noise", "nan"])
def test_preflight_fails_a_corrupted_decode_kernel_with_kernel_wrong(node, tmp_path, capsys, how):
    def bad(*a):
        out = torch_kernel(*a)
        if how == "nan":
            out[0, 0, 0, 0] = math.nan
            return out
        return out + 0.05 * out.float().abs().mean() * torch.randn_like(out.float()).bfloat16()

    with pytest.raises(RuntimeFailure) as e:
        PF.preflight(_fp8_plan("decode"), "decode", shm_path=str(tmp_path), runners=_runners(bad))
    assert e.value.code == ExitCode.KERNEL_WRONG
    assert "flash_mla_with_kvcache is wrong on this GPU" in e.value.message
    assert "spec.decode.kernels.decode" in e.value.message
    report = json.loads(capsys.readouterr().out.strip())
    assert report["preflight"] == "failed" and report["kernelChecks"][0]["ok"] is False


def test_sweep_reports_shares_and_the_roofline_bound(monkeypatch):
    """The figures' arithmetic, with the stand-in kernel (its speed is not looked at)."""
    monkeypatch.setattr(D, "flash_mla_decode_kernel", lambda *a, **k: torch_kernel)
    [row] = D.sweep(DEVICE, iters=1, shapes=[SHAPE])
    assert row["ok"] and row["roofline"] in ("compute", "memory")
    assert row["computeShare"] == pytest.approx(row["tflops"] / 989, abs=1e-3)
    assert row["bandwidthShare"] == pytest.approx(row["gbps"] / 4800, abs=1e-3)
    assert row["bytes"] == SHAPE.io_bytes(3 * 128)  # no -1 in the sweep's inputs: every slot a row
    # 128 heads share each row: 2·128·1088 FLOP per 656-byte row puts the DeepSeek shape above
    # the H200's ridge point (989 TFLOP/s / 4.8 TB/s = 206 FLOP/B) at every batch size.
    s = D.DecodeShape(batch=1, context=8192)
    assert s.flops() / s.io_bytes(2048) > 989 / 4.8
    table = D.table([row, {"ok": False, "reason": "boom", "shape": row["shape"]}])
    assert table.count("\n") == 3 and "| 3 | 512 |" in table and "failed: boom" in table
