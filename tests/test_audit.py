"""fg.audit: directional checks + group-testing localization at n = 10^6 (API section 3).

Every detection test asserts WHICH coordinates (or which segment) were found, that nothing else
was, and that the evaluations stay within 40 k log2(n).
"""

import json
import math
import re
import time

import numpy as np
import pytest

from fastgrad import AuditReport, audit
from fastgrad.engine.kernels import direction_dot as _direction_dot
from fastgrad.engine.kernels import direction_fill as _direction_fill
from fastgrad.examples import two_layer_data, two_layer_grad, two_layer_loss
from fastgrad.examples.problems import (
    plant,
    weighted_logcosh,
    weighted_logcosh_data,
    weighted_logcosh_grad,
)
from fastgrad.sampling import direction_key as _direction_key

from naive import naive_direction

N = 1_000_000
A, C, THETA = weighted_logcosh_data(N, seed=1)


def separable_loss(theta):
    """sum a_i log cosh(x_i) + c_i x_i: ~3 ms per evaluation at n = 10^6."""
    return weighted_logcosh(theta, A, C)


GRAD = weighted_logcosh_grad(THETA, A, C)
SCALE = float(np.sqrt(np.mean(GRAD ** 2)))


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """The audit already runs evaluations in parallel; BLAS threads on top only oversubscribe
    the cores (a 1e6-parameter network loss goes from ~1.5 ms to tens of ms)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - slower, same results
        yield
        return
    with threadpool_limits(1):
        yield


def limit(k, n=N):
    return 40 * k * math.log2(n)


# -- the direction generator against a plain-Python reference ------------------------------------
def test_direction_values_match_reference_and_are_rademacher_like():
    key = _direction_key(3, 7)
    v = np.empty(5000)
    _direction_fill(key, 100, 5100, v)
    np.testing.assert_array_equal(v, naive_direction(key, 100, 5100))
    assert 0.25 <= np.abs(v).min() and np.abs(v).max() <= 1.0
    assert 0.45 < np.mean(v > 0) < 0.55
    other = np.empty(5000)
    _direction_fill(_direction_key(3, 8), 100, 5100, other)
    assert abs(np.corrcoef(v, other)[0, 1]) < 0.05
    g = np.random.default_rng(0).standard_normal(5100)
    x = np.zeros(5100)
    dot, _ = _direction_dot(g, x, key, 100, 5100, 1e-5)
    assert dot == pytest.approx(g[100:] @ v, rel=1e-9)


def test_directional_losses_match_a_plain_loop():
    from fastgrad.engine.evaluator import Evaluator

    x = np.random.default_rng(2).standard_normal(300)
    f = lambda t: float(np.sum(np.sin(t) * t))
    keys = np.array([_direction_key(0, j) for j in range(3)], dtype=np.uint64)
    lo, hi, step = np.array([0, 10, 150]), np.array([300, 20, 151]), np.full(3, 1e-4)
    expected = []
    for j in range(3):
        v = np.zeros(300)
        v[lo[j]:hi[j]] = naive_direction(keys[j], lo[j], hi[j])
        expected.append((f(x + step[j] * v), f(x - step[j] * v)))
    for workers in (1, 2):
        ev = Evaluator(f, x, workers=workers)
        fp, fm = ev.directions(keys, lo, hi, step)
        np.testing.assert_allclose(np.c_[fp[:, 0], fm[:, 0]], expected, rtol=1e-15)
        assert ev.evaluations == 6 + ev.guard_evaluations  # every call of f is counted


# -- separable loss, n = 10^6 ------------------------------------------------------------------
def test_correct_gradient_passes():
    before = THETA.copy(), GRAD.copy()
    report = audit(separable_loss, THETA, GRAD, workers=2)
    assert report.passed and report.complete
    assert report.suspects.size == 0 and not report.blocks
    # the thread-safety guard's serial re-runs are counted too, and said in the path line
    found = re.search(r"(\d+) of the evaluations were the thread-safety guard", report.path_reason)
    assert report.evaluations - (int(found.group(1)) if found else 0) < 40
    np.testing.assert_array_equal(THETA, before[0])
    np.testing.assert_array_equal(GRAD, before[1])


@pytest.mark.parametrize("k", [1, 3, pytest.param(10, marks=pytest.mark.slow)])
def test_separable_planted_coordinates_found(k):
    wrong, index = plant(GRAD, k, seed=10 + k, scale=SCALE)
    report = audit(separable_loss, THETA, wrong, workers=2)
    assert not report.passed
    np.testing.assert_array_equal(report.suspects, index)  # all of them, nothing else
    assert [r.index for r in report.suspect_records] == index.tolist()
    assert all(r.verdict in ("suspect", "wrong") for r in report.suspect_records)
    assert report.evaluations <= limit(k)
    assert report.complete
    assert sum(report.phases.values()) == report.evaluations


def test_budget_respected_and_partial_report_says_so():
    wrong, index = plant(GRAD, 3, seed=13, scale=SCALE)
    report = audit(separable_loss, THETA, wrong, workers=2, budget=60)
    assert report.evaluations <= 60
    assert not report.complete and report.incomplete and not report.passed
    assert "INCOMPLETE" in str(report)
    assert report.to_dict()["complete"] is False
    # what is localized so far: every unresolved range still holds planted coordinates only
    # where the search was heading, and no false suspect was reported
    assert set(report.suspects.tolist()) <= set(index.tolist())
    assert report.unresolved
    covered = {int(i) for i in index
               if any(lo <= i < hi for _, lo, hi in report.unresolved)}
    assert covered | set(report.suspects.tolist()) == set(index.tolist())
    with pytest.raises(ValueError, match="budget"):
        audit(separable_loss, THETA, wrong, budget=2)


def test_budget_ending_in_a_threaded_block_confirmation_ends_the_audit_incomplete():
    """A block's sampled coordinates evaluated on threads must be confirmed serially; when that
    no longer fits in the budget the audit ends incomplete (it used to raise BudgetExhausted)."""
    rows = cols = 64
    rng = np.random.default_rng(4)
    a, c, theta = rng.uniform(0.5, 2.0, rows * cols), rng.normal(size=rows * cols), \
        rng.normal(size=rows * cols)
    wrong = weighted_logcosh_grad(theta, a, c)
    row = np.arange(5 * cols, 6 * cols)
    wrong[row] *= 1.5

    def slow_loss(t, a, c):  # long enough that a block's sample runs on the threads
        time.sleep(5e-4)
        return weighted_logcosh(t, a, c)

    def run(budget=None):
        return audit(slow_loss, theta, wrong, args=(a, c), segments={"W": (rows, cols)},
                     workers=2, backend="threads", budget=budget)

    full = run()
    assert full.suspects.tolist() == row.tolist() and full.blocks and full.phases["blocks"]
    for budget in range(full.evaluations - 1, 3, -1):
        report = run(budget)
        assert report.evaluations <= budget
        if report.phases.get("blocks") and not report.blocks:
            break  # the block's sample was evaluated, its serial confirmation did not fit
    else:
        pytest.fail("no budget ran out in a block's confirmation")
    assert report.status == "inconclusive" and report.incomplete
    assert set(report.suspects.tolist()) <= set(row.tolist())
    assert all(any(lo <= i < hi for _, lo, hi in report.unresolved) for i in row)


# -- a two-layer network, 1,001,010 parameters -------------------------------------------------
@pytest.fixture(scope="module")
def network():
    theta, segs, args = two_layer_data(N=8, D=990, H=1000, C=10, seed=0)
    grad = two_layer_grad(theta, *args)
    return theta, segs, args, grad, float(np.sqrt(np.mean(grad ** 2)))


def test_network_correct_gradient_passes(network):
    theta, segs, args, grad, _ = network
    report = audit(two_layer_loss, theta, grad, args=args, segments=segs, workers=2)
    assert report.passed, str(report)
    assert set(report.segments) == {"W1", "b1", "W2", "b2"}
    assert all(s.passed and s.suspects == 0 for s in report.segments.values())


@pytest.mark.parametrize("k", [1, pytest.param(3, marks=pytest.mark.slow),
                               pytest.param(10, marks=pytest.mark.slow)])
def test_network_planted_coordinates_found(network, k):
    theta, segs, args, grad, scale = network
    wrong, index = plant(grad, k, seed=20 + k, scale=scale)
    report = audit(two_layer_loss, theta, wrong, args=args, segments=segs, workers=2)
    assert not report.passed
    np.testing.assert_array_equal(report.suspects, index)
    for r in report.suspect_records:
        assert (r.segment, r.local) == segs.locate(r.index)
    failing = {name for name, s in report.segments.items() if not s.passed}
    assert failing == {segs.locate(int(i))[0] for i in index}
    assert report.evaluations <= limit(k, theta.size)


def test_network_wrong_bias_segment_found_as_a_whole(network):
    theta, segs, args, _, _ = network
    buggy = two_layer_grad(theta, *args, bug="bias")  # the b1 gradient is missing
    report = audit(two_layer_loss, theta, buggy, args=args, segments=segs, workers=2)
    assert not report.passed
    assert [(b.segment, b.start, b.stop) for b in report.blocks] == [
        ("b1", segs["b1"].start, segs["b1"].stop)]
    assert not report.suspect_records
    np.testing.assert_array_equal(report.suspects, np.arange(segs["b1"].start, segs["b1"].stop))
    assert [n for n, s in report.segments.items() if not s.passed] == ["b1"]
    assert report.evaluations <= limit(1, theta.size)
    # judged as a block before any halving: its two ends, then the rest of the sample
    assert "localize" not in report.phases and report.blocks[0].sampled == 6


def test_a_segment_wrong_at_both_ends_and_right_inside_is_not_one_block(network):
    """The segment-as-block test starts at its ends: here both are wrong (W1's first and last
    rows scaled), the sampled inside is right, so W1 is halved down to the two rows."""
    theta, segs, args, grad, _ = network
    W1 = segs["W1"]
    wrong = grad.copy()
    rows = [slice(W1.start, W1.start + 1000), slice(W1.stop - 1000, W1.stop)]  # W1[0], W1[-1]
    for r in rows:
        wrong[r] *= 1.5
    report = audit(two_layer_loss, theta, wrong, args=args, segments=segs, workers=2)
    assert not report.passed
    assert set(report.suspects.tolist()) == {i for r in rows for i in range(r.start, r.stop)}
    assert "localize" in report.phases
    assert all(b.segment == "W1" and b.first[0] == b.last[0] in (0, 989)
               for b in report.blocks)
    assert [n for n, s in report.segments.items() if not s.passed] == ["W1"]


def test_wrong_row_of_a_matrix_found_as_blocks(network):
    theta, segs, args, grad, _ = network
    W1 = segs["W1"]
    wrong = grad.copy()
    row = slice(W1.start + 37 * 1000, W1.start + 38 * 1000)  # W1[37, :]
    wrong[row] *= 1.5
    report = audit(two_layer_loss, theta, wrong, args=args, segments=segs, workers=2)
    found = set(report.suspects.tolist())
    expected = set(range(row.start, row.stop))
    assert not report.passed
    assert found == expected  # the whole row, nothing outside it
    assert report.blocks and all(b.segment == "W1" and b.first[0] == b.last[0] == 37
                                 for b in report.blocks)
    assert [n for n, s in report.segments.items() if not s.passed] == ["W1"]


# -- report ------------------------------------------------------------------------------------
def test_report_table_and_dict():
    wrong, index = plant(GRAD, 1, seed=5, scale=SCALE)
    report = audit(separable_loss, THETA, wrong, workers=1)
    assert isinstance(report, AuditReport)
    text = str(report)
    assert "FAILED" in text and f"theta[{index[0]}]" in text
    d = json.loads(json.dumps(report.to_dict()))
    assert d["suspects"][0]["index"] == int(index[0])
    assert d["evaluations"] == report.evaluations == sum(d["phases"].values())
    assert d["segments"]["theta"]["passed"] is False
    # one segment: its own directions are the whole vector's, so there is no "global" phase
    assert {"theta", "segments", "localize", "confirm"} <= set(d["phases"])
    assert "global" not in d["phases"]


def test_bad_input_is_refused_like_check():
    x = np.ones(10)
    f = lambda t: float(np.sum(t ** 2))
    with pytest.raises(ValueError, match="grad"):
        audit(f, x, np.ones(9))
    bad = x.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="theta"):
        audit(f, bad, 2 * x)
    with pytest.raises(TypeError, match="mapping of loss terms"):
        audit(lambda t: {"a": 1.0}, x, 2 * x)
    calls = iter(range(100))
    with pytest.raises(ValueError, match="not deterministic"):
        audit(lambda t: float(next(calls)), x, 2 * x)


def test_progress_bar_when_asked(capsys):
    wrong, _ = plant(GRAD, 1, seed=6, scale=SCALE)
    audit(separable_loss, THETA, wrong, workers=2, progress=True)
    err = capsys.readouterr().err
    assert "audit" in err and "evals" in err and "/s" in err
    audit(separable_loss, THETA, wrong, workers=2, progress=False)
    assert capsys.readouterr().err == ""


def test_equal_errors_nearly_cancelling_in_a_segment_direction_are_still_found():
    # Two equal errors: in the first direction of segment "a" (seed 72) their entries are
    # 0.60809 and -0.60808, so that direction agrees within its floor. One direction would
    # have cleared the segment (its floor is far below tol); the direction over the whole
    # vector disagrees, so every segment gets all its directions and the errors are found.
    n = 1000
    x = np.random.default_rng(0).standard_normal(n) * 0.5
    grad = np.tanh(x) + 0.2 * x
    wrong = grad.copy()
    wrong[[10, 20]] += 1e-3

    def loss(theta):
        return float(np.sum(np.log(np.cosh(theta)) + 0.1 * theta * theta))

    report = audit(loss, x, wrong, segments={"a": (500,), "b": (500,)}, seed=72, workers=1)
    first = next(d for d in report.directions if d.phase == "segments" and d.segment == "a")
    assert not first.significant  # the near cancellation this test is about
    assert not report.passed
    np.testing.assert_array_equal(report.suspects, [10, 20])
    assert report.segments["b"].passed


def test_one_direction_clears_a_correct_segment_when_its_floor_is_far_below_tol():
    n = 1000
    x = np.random.default_rng(0).standard_normal(n) * 0.5
    grad = np.tanh(x) + 0.2 * x
    segments = {"a": (500,), "b": (500,)}

    def loss(theta):
        return float(np.sum(np.log(np.cosh(theta)) + 0.1 * theta * theta))

    report = audit(loss, x, grad, segments=segments, workers=1)
    assert report.passed
    assert [len(s.rel_errors) for s in report.segments.values()] == [1, 1]
    # f's floor near tol times the gradient (a sum of 10^6 terms): every direction is used
    report = audit(separable_loss, THETA, GRAD, segments={"a": (N // 2,), "b": (N // 2,)},
                   workers=1)
    assert report.passed
    assert [len(s.rel_errors) for s in report.segments.values()] == [3, 3]
