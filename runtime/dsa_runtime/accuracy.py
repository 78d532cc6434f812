"""The pass/fail rule for a kernel against its float32 reference, free of torch and NumPy.

Relative error is ||out - ref||_2 / ||ref||_2 over all elements. NaN or infinity anywhere
fails: a NaN makes every comparison false, so it must be tested for, never thresholded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

BF16_TOLERANCE = 1e-2
"""bf16 operands land between 1e-3 and 1e-2; a wrong kernel lands near 1."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    rel_err: float
    reason: str


def judge(diff_sq_sum: float, ref_sq_sum: float, finite: bool, tol: float) -> Verdict:
    """Decide from the two squared norms and whether the output was all finite."""
    if not finite or math.isnan(diff_sq_sum) or math.isinf(diff_sq_sum):
        return Verdict(False, math.nan, "output has NaN or infinite values")
    if ref_sq_sum <= 0.0 or math.isnan(ref_sq_sum):
        return Verdict(False, math.nan, "reference is zero or NaN: the check proves nothing")
    rel = math.sqrt(diff_sq_sum / ref_sq_sum)
    if not rel <= tol:
        return Verdict(False, rel, f"relative error {rel:.3g} exceeds {tol:.3g}")
    return Verdict(True, rel, "ok")


def compare(out: Iterable[float], ref: Iterable[float], tol: float = BF16_TOLERANCE) -> Verdict:
    """`judge` over two flat sequences of the same length (plain Python)."""
    diff_sq = ref_sq = 0.0
    finite = True
    n = 0
    for o, r in zip(out, ref, strict=True):
        n += 1
        if not math.isfinite(o):
            finite = False
            continue
        diff_sq += (o - r) ** 2
        ref_sq += r * r
    if n == 0:
        return Verdict(False, math.nan, "no elements to compare")
    return judge(diff_sq, ref_sq, finite, tol)
