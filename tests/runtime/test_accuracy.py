"""The pass/fail rule in plain Python: corrupted or NaN outputs must fail."""

import math
import random

from hypothesis import given
from hypothesis import strategies as st

from dsa_runtime.accuracy import BF16_TOLERANCE, compare, judge


def _ref(n=512, seed=0):
    rng = random.Random(seed)
    return [rng.gauss(0, 1) for _ in range(n)]


def test_bf16_like_rounding_passes():
    ref = _ref()
    out = [r * (1 + 2**-8 * random.Random(1).uniform(-1, 1)) for r in ref]
    v = compare(out, ref)
    assert v.ok and v.rel_err < 4e-3


def test_corrupted_output_fails():
    ref = _ref()
    out = list(ref)
    out[10:20] = [0.0] * 10  # a block never written
    v = compare(out, ref)
    assert not v.ok and v.rel_err > BF16_TOLERANCE


def test_single_nan_fails_even_if_rest_is_exact():
    ref = _ref()
    out = list(ref)
    out[5] = math.nan
    v = compare(out, ref)
    assert not v.ok and "NaN" in v.reason


def test_infinite_output_fails():
    ref = _ref()
    assert not compare([math.inf, *ref[1:]], ref).ok


def test_zero_reference_proves_nothing():
    assert not compare([0.0] * 4, [0.0] * 4).ok
    assert not compare([], []).ok


def test_judge_nan_norms_fail():
    assert not judge(math.nan, 1.0, True, 1e-2).ok
    assert not judge(1.0, math.nan, True, 1e-2).ok


@given(st.floats(min_value=0.0, max_value=1.0))
def test_threshold_is_inclusive_and_monotone(scale):
    ref = [1.0] * 100
    out = [1.0 + scale] * 100
    v = compare(out, ref, tol=0.5)
    assert v.ok == (scale <= 0.5 + 1e-12)
