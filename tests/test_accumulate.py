"""The C accumulator against the plain numpy/Python reference in naive.py."""

import numpy as np
import pytest

from fastgrad.judge import verdicts as accumulate

from naive import HIST_BINS, log10_histogram
from naive import coordinate_stats as naive_coords
from naive import segment_stats as naive_segments


def random_inputs(rng, n):
    analytic = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 3, n)
    h = 10.0 ** rng.uniform(-7, -3, n)
    f0 = float(rng.standard_normal() * 10)
    # numeric values near the analytic ones, some far, some exactly equal
    numeric = analytic * (1 + 10.0 ** rng.uniform(-12, 0.5, n) * rng.choice([-1, 1], n))
    curvature = rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3, n)
    f_plus = f0 + numeric * h + 0.5 * curvature * h * h
    f_minus = f0 - numeric * h + 0.5 * curvature * h * h
    # zeros, ties, kinks, NaN and inf sprinkled in
    analytic[:5] = 0.0
    f_plus[:3] = f_minus[:3] = f0  # both zero: rel 0
    f_plus[5:8] = f0 + 2.0 * h[5:8]  # one-sided slopes 2 and 0: a kink crossing
    f_minus[5:8] = f0
    analytic[5:8] = 2.0
    f_plus[10] = np.nan
    f_minus[11] = np.inf
    analytic[20:25] = analytic[19]  # ties in the analytic values
    f_plus[20:25], f_minus[20:25], h[20:25] = f_plus[19], f_minus[19], h[19]
    return analytic, f_plus, f_minus, f0, h


@pytest.mark.parametrize("seed", range(5))
def test_coordinate_stats_match_reference(seed):
    rng = np.random.default_rng(seed)
    analytic, f_plus, f_minus, f0, h = random_inputs(rng, 500)
    tol, eps = 1e-4, 32 * np.finfo(float).eps
    noise_abs = [0.0, 1e-12, 1e-9][seed % 3]
    fast = accumulate.coordinate_stats(analytic, f_plus, f_minus, f0, h, tol, eps, noise_abs)
    slow = naive_coords(analytic, f_plus, f_minus, f0, h, tol, eps, noise_abs)
    for key in ("numeric", "rel_error", "noise", "kink_score"):
        np.testing.assert_allclose(getattr(fast, key), slow[key], rtol=1e-12, atol=0,
                                   equal_nan=True, err_msg=key)
    np.testing.assert_array_equal(fast.verdict, slow["verdict"])
    np.testing.assert_array_equal(fast.failed, slow["failed"].astype(bool))
    np.testing.assert_array_equal(fast.kink, slow["kink"].astype(bool))
    # the planted cases come out as planted
    assert np.all(fast.rel_error[:3] == 0.0)
    assert fast.verdict[10] == accumulate.NAN and fast.failed[10]
    assert fast.verdict[11] == accumulate.NAN and fast.failed[11]
    assert np.all(fast.kink[5:8]), "a slope jump 2 -> 0 is a kink candidate"
    assert len(set(fast.rel_error[19:25])) == 1


@pytest.mark.parametrize("seed", range(5))
def test_segment_stats_match_reference(seed):
    rng = np.random.default_rng(100 + seed)
    analytic, f_plus, f_minus, f0, h = random_inputs(rng, 400)
    c = accumulate.coordinate_stats(analytic, f_plus, f_minus, f0, h, 1e-4, 1e-14)
    verdict = c.verdict.copy()
    verdict[30:40] = accumulate.KINK  # as the driver marks excused kinks
    # as the judge marks coordinates the measured noise leaves unjudgeable (large errors among
    # them: they must not reach max_rel)
    verdict[40:50] = accumulate.INCONCLUSIVE
    rel = c.rel_error.copy()
    rel[40:50] = 5.0
    segment = np.sort(rng.integers(0, 6, 400))
    segment[segment == 4] = 3  # an empty segment: zeros and argmax -1
    fast = accumulate.segment_stats(segment, rel, verdict, c.failed, c.kink, 6)
    slow = naive_segments(segment, rel, verdict, c.failed, c.kink, 6)
    for got, want in zip((fast.checked, fast.failed, fast.kinks, fast.max_rel, fast.argmax,
                          fast.hist), slow):
        np.testing.assert_array_equal(got, want)
    assert fast.checked[4] == 0 and fast.argmax[4] == -1
    assert fast.hist.sum() == np.count_nonzero(~np.isnan(rel))
    assert np.all(fast.max_rel < 5.0)  # inconclusive coordinates never reach max_rel


def test_log10_histogram_bin_edges_match_reference():
    """The FG_HIST_BINS rule at its edges: below 1e-16 (zero too), each decade closed on the
    left, 1 and above in the last bin, NaN not binned."""
    rel = np.array([0.0, 5e-324, 9.9e-17, 1e-16, 1.5e-16, 1e-15, 3e-9, 1e-8, 0.0999, 0.1,
                    np.nextafter(1.0, 0.0), 1.0, 7.0, np.inf, np.nan])
    n = rel.size
    fast = accumulate.segment_stats(np.zeros(n, int), rel, np.zeros(n, np.int8),
                                    np.zeros(n, bool), np.zeros(n, bool), 1)
    want = log10_histogram(rel)
    np.testing.assert_array_equal(fast.hist[0], want)
    assert want.size == HIST_BINS and want.sum() == n - 1
    assert want[0] == 3 and want[1] == 2 and want[2] == 1 and want[-1] == 3
    assert want[16] == 2 and want[15] == 1  # [0.1, 1) and [0.01, 0.1)


def test_max_ties_take_the_first_position():
    rel = np.array([0.5, 0.5, 0.1])
    zeros = np.zeros(3, dtype=np.int8)
    out = accumulate.segment_stats(np.zeros(3, int), rel, zeros, np.zeros(3, bool),
                                   np.zeros(3, bool), 1)
    assert out.argmax[0] == 0 and out.max_rel[0] == 0.5


def test_noise_floor_excuses_roundoff_but_not_real_errors():
    # |f| = 1e8 with h = 1e-6: roundoff of f alone moves the numeric value by ~1e-1
    f0, h = 1e8, np.array([1e-6, 1e-6])
    f_plus = np.array([f0 + 2e-8, f0 + 2e-6])
    f_minus = np.array([f0, f0 - 2e-6])
    analytic = np.array([0.0, 1000.0])
    c = accumulate.coordinate_stats(analytic, f_plus, f_minus, f0, h, 1e-4, 32 * 2.2e-16)
    assert c.verdict[0] == accumulate.NOISE and not c.failed[0]
    assert c.verdict[1] == accumulate.WRONG and c.failed[1]


def test_bad_segment_id_is_refused():
    with pytest.raises(RuntimeError, match="segment id"):  # our own arrays: a bug, not bad input
        accumulate.segment_stats(np.array([0, 3]), np.zeros(2), np.zeros(2, np.int8),
                                 np.zeros(2, bool), np.zeros(2, bool), 2)
