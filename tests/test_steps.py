"""fastgrad/steps.py: tolerances by dtype and depth, steps, noise estimates and verdict bands."""

import math

import numpy as np
import pytest

from fastgrad.errors import InvalidType, InvalidValue
from fastgrad.steps import (
    BAND_OK,
    BAND_SUSPECT,
    BAND_WRONG,
    PRECISIONS,
    band_name,
    coordinate_steps,
    measured_noise,
    noise_eps,
    noise_sigma,
    pooled_noise_sigma,
    precision_of,
    tolerance,
)
from fastgrad.tuning import DEFAULT_TUNING

DEPTH_EXPONENT = DEFAULT_TUNING.depth_exponent
MAX_STEP_GAIN = DEFAULT_TUNING.max_step_gain
NOISE_AGREEMENT = DEFAULT_TUNING.noise_agreement
NOISE_SIGMAS = DEFAULT_TUNING.noise_sigmas


# -- tolerance ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tolerance_grows_with_depth_up_to_the_cap_and_says_why(dtype):
    p = PRECISIONS[np.dtype(dtype)]
    value, reason = tolerance(dtype)
    assert value == p.base_tol and reason == f"{p.name} default {p.base_tol:.0e} at depth 1"
    for depth in (2, 3, 7):
        value, reason = tolerance(dtype, depth)
        assert value == pytest.approx(min(p.max_tol, p.base_tol * depth ** DEPTH_EXPONENT))
        assert f"depth {depth}" in reason and p.name in reason and "capped" in reason
    values = [tolerance(dtype, d)[0] for d in range(1, 200, 7)]
    assert values == sorted(values) and values[-1] == p.max_tol
    assert tolerance(dtype, 10**6)[0] == p.max_tol


def test_tolerance_per_dtype():
    assert tolerance(np.float64) == (1e-4, "float64 default 1e-04 at depth 1")
    assert tolerance(np.float32)[0] == 3e-3 > tolerance(np.float64)[0]
    assert tolerance("float32", 1000)[0] == 5e-2


def test_tol_override_wins_over_dtype_and_depth():
    for dtype in (np.float64, np.float32):
        assert tolerance(dtype, 50, tol=1e-6) == (1e-6, "tol=1e-06 given by the caller")
    assert tolerance(np.float64, tol="0.001")[0] == 1e-3  # a number in any form float() takes


@pytest.mark.parametrize("tol, error", [(0.0, InvalidValue), (1.0, InvalidValue),
                                        (-1e-3, InvalidValue), (float("nan"), InvalidValue),
                                        ("tight", InvalidValue), ([1e-3], InvalidType),
                                        (None, None)])
def test_bad_tol_is_refused_naming_it(tol, error):
    if error is None:
        tolerance(np.float64, tol=tol)
        return
    with pytest.raises(error, match=r"^tol: expected a relative error in \(0, 1\)"):
        tolerance(np.float64, tol=tol)


@pytest.mark.parametrize("depth", [0, -2, 1.5, True, "3"])
def test_bad_depth_is_refused_naming_it(depth):
    with pytest.raises(InvalidValue, match=r"^depth: expected a positive int \(number of layers\)"):
        tolerance(np.float64, depth)


@pytest.mark.parametrize("dtype", [np.float16, np.int64, np.complex128, "longdouble"])
def test_precision_of_refuses_other_dtypes_naming_theta(dtype):
    with pytest.raises(InvalidType, match="^theta: dtype .* is not supported"):
        precision_of(dtype)
    with pytest.raises(InvalidType, match="theta"):
        tolerance(dtype)


def test_precision_of_known_dtypes():
    assert precision_of("float64").eps == np.finfo(np.float64).eps
    assert precision_of(np.dtype(np.float32)).name == "float32"
    assert noise_eps(np.float32) == pytest.approx(4 * np.finfo(np.float32).eps)


# -- coordinate_steps --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_automatic_steps_are_exactly_representable(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(2000) * 10.0 ** rng.uniform(-8, 6, 2000)).astype(dtype)
    x[:3] = [0.0, 1.0, -1.0]
    h = coordinate_steps(x, dtype=dtype)
    assert h.dtype == np.float64 and np.all(h > 0)
    wide = x.astype(np.float64)
    plus = wide + h  # the point the kernels evaluate: a number of theta's dtype, exactly
    np.testing.assert_array_equal(plus.astype(dtype).astype(np.float64), plus)
    np.testing.assert_array_equal(plus - wide, h)
    # the step is eps^(1/3) max(1, |x|), moved by at most the rounding of x + h
    p = PRECISIONS[np.dtype(dtype)]
    want = p.step_scale * np.maximum(1.0, np.abs(wide))
    np.testing.assert_allclose(h, want, rtol=2 * p.eps ** (2 / 3))
    assert np.any(h != want)  # some steps did move


def test_float32_steps_are_float32_sized():
    x = np.array([0.0, 3.0], dtype=np.float32)
    h32 = coordinate_steps(x, dtype=np.float32)
    h64 = coordinate_steps(x.astype(np.float64))
    assert h32[0] == pytest.approx(np.finfo(np.float32).eps ** (1 / 3), rel=1e-6)
    assert np.all(h32 > 500 * h64)


def test_a_float_step_is_used_everywhere_after_rounding():
    x = np.array([0.0, 0.1, -7.3, 1e5])
    h = coordinate_steps(x, h=1e-4)
    np.testing.assert_allclose(h, 1e-4, rtol=1e-6)  # not scaled by |x| as "auto" is
    np.testing.assert_array_equal((x + h) - x, h)
    assert h[0] == 1e-4 and h[1] != 1e-4  # 0.1 + 1e-4 is not exact: the step moved


def test_a_step_below_the_spacing_of_x_becomes_the_spacing():
    x = np.array([1e30, -1e20, 1.0])
    h = coordinate_steps(x, h=1e-10)
    assert h[0] == np.spacing(1e30) and h[1] == np.spacing(1e20)  # never 0
    assert h[2] == pytest.approx(1e-10, rel=1e-6)
    tiny = np.array([5e-324, 1e-310, -1e-300])  # tiny |x|: an absolute step, x + h exact
    h = coordinate_steps(tiny, h=1e-8)
    np.testing.assert_array_equal(h, 1e-8)


@pytest.mark.parametrize("h, error, words", [
    ("big", InvalidValue, "h: expected a positive float or 'auto'"),
    (None, InvalidType, "h: expected a positive float or 'auto'"),
    (0.0, InvalidValue, "h: expected a positive finite step"),
    (-1e-5, InvalidValue, "h: expected a positive finite step"),
    (float("inf"), InvalidValue, "h: expected a positive finite step"),
    (float("nan"), InvalidValue, "h: expected a positive finite step"),
])
def test_bad_steps_are_refused_naming_h(h, error, words):
    with pytest.raises(error, match="^" + words.replace("(", r"\(")):
        coordinate_steps(np.ones(3), h=h)


# -- noise estimates ---------------------------------------------------------------------------
def test_noise_estimate_on_known_noise():
    rng = np.random.default_rng(1)
    estimates = [noise_sigma(5.0 + 0.1 * np.arange(13.0) + rng.standard_normal(13) * 1e-6)
                 for _ in range(400)]
    assert 0.8e-6 < np.median(estimates) < 1.2e-6
    assert noise_sigma(np.arange(13.0) ** 2) == 0.0  # a parabola has no 3rd difference
    # two estimates of the same noise agree within NOISE_AGREEMENT nearly always
    pairs = np.array(estimates).reshape(200, 2)
    assert np.mean(pairs.max(1) <= NOISE_AGREEMENT * pairs.min(1)) > 0.95
    # a kink inside the stencils grows with the spacing: not noise, nothing is raised
    assert pooled_noise_sigma([1e-8, 1e-9]) == 0.0
    assert pooled_noise_sigma([1e-3, 1e-9]) == 0.0
    assert pooled_noise_sigma([2e-9, 1e-9]) > 1e-9


@pytest.mark.parametrize("sigma", [1e-10, 1e-6, 3.0])
def test_noise_sigma_recovers_seeded_noise_within_a_factor(sigma):
    rng = np.random.default_rng(7)
    smooth = 2.0 + 0.25 * np.arange(13.0)  # a line: its third differences are 0
    estimate = noise_sigma(smooth + rng.standard_normal(13) * sigma)
    assert sigma / 4 < estimate < 4 * sigma


def test_noise_sigma_edge_cases():
    assert noise_sigma(np.full(7, 2.5)) == 0.0
    assert noise_sigma(1.0 + 0.5 * np.arange(9.0)) == 0.0  # a line
    values = np.arange(13.0)
    values[4] = np.inf
    assert math.isnan(noise_sigma(values))
    for bad in (np.zeros(6), np.zeros((7, 2))):
        with pytest.raises(ValueError, match="^values: expected f at 7 or more"):
            noise_sigma(bad)


def test_pooled_noise_sigma_agreement_rule():
    low = 1e-9
    at_edge = NOISE_AGREEMENT * low
    assert pooled_noise_sigma([low, at_edge]) == pytest.approx(math.sqrt((low**2 + at_edge**2) / 2))
    assert pooled_noise_sigma([at_edge * 1.001, low]) == 0.0  # just past the factor
    assert pooled_noise_sigma([3e-7]) == 3e-7
    assert pooled_noise_sigma([float("nan"), 2e-9]) == 2e-9  # a failed estimate is left out
    assert pooled_noise_sigma([float("nan"), float("inf")]) == 0.0
    assert pooled_noise_sigma([]) == 0.0


def test_measured_noise_floor_and_step_gain():
    f0 = 10.0
    assumed = 2.0 * noise_eps(np.float64) * f0
    # noise at the level the automatic step assumes: floor added, no gain
    sigma = assumed / (NOISE_SIGMAS * math.sqrt(2.0))
    noise_abs, gain = measured_noise(sigma, f0, np.float64)
    assert noise_abs == pytest.approx(assumed) and gain == 1.0
    # 1000x noisier: the step grows by the cube root, 10x ...
    noise_abs, gain = measured_noise(8.0 * sigma, f0, np.float64)
    assert gain == pytest.approx(2.0)
    # ... and never by more than MAX_STEP_GAIN
    assert measured_noise(1e12 * sigma, f0, np.float64)[1] == MAX_STEP_GAIN
    # |f| below 1 is treated as 1; nothing measured, nothing added
    assert measured_noise(sigma, 1e-3, np.float64)[1] == pytest.approx(10 ** (1 / 3))
    for nothing in (0.0, float("nan"), float("inf"), -1.0):
        assert measured_noise(nothing, f0, np.float64) == (0.0, 1.0)
    assert measured_noise(8.0 * sigma, f0, np.float32)[1] == 1.0  # float32 assumes more noise


# -- verdict bands -----------------------------------------------------------------------------
def test_band_name_edges():
    assert BAND_OK < BAND_SUSPECT < BAND_WRONG
    for edge, below_or_at, above in ((BAND_WRONG, "suspect", "wrong"),
                                     (BAND_SUSPECT, "ok", "suspect"),
                                     (BAND_OK, "excellent", "ok")):
        assert band_name(edge) == below_or_at
        assert band_name(np.nextafter(edge, 1.0)) == above
        assert band_name(np.nextafter(edge, 0.0)) == below_or_at
    assert band_name(0.0) == "excellent" and band_name(1.0) == "wrong"
    assert band_name(float("inf")) == "wrong"
