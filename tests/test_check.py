"""check() on the two-layer network: correct gradients pass, each planted bug fails in its
own segment and only there; the JIT and Python paths agree; the caller's arrays are untouched."""

import re

import numpy as np
import pytest
from numba import njit

import fastgrad as fg
from fastgrad.engine.evaluator import Evaluator
from fastgrad.examples import two_layer_data, two_layer_grad, two_layer_loss, two_layer_loss_jit
from fastgrad.sampling import sample_coordinates
from fastgrad.steps import coordinate_steps
from fastgrad.tuning import DEFAULT_TUNING

from naive import centered_differences

DATA = two_layer_data()  # N=16, D=H=64, C=10: W1 is square, so its transpose is a planted bug


def set_apart(report) -> int:
    """The evaluations the path line sets apart (0: none): the thread-safety guard's serial
    re-runs, and a second timing of f at theta when its first was read as a cold call."""
    found = re.search(r"(\d+) of the evaluations were the thread-safety guard", report.path_reason)
    return (int(found.group(1)) if found else 0) + ("f timed twice at theta" in report.path_reason)


def failing_segments(report):
    return {name for name, s in report.segments.items() if not s.passed}


@pytest.mark.parametrize("loss", [two_layer_loss, two_layer_loss_jit], ids=["numpy", "njit"])
def test_correct_two_layer_gradient_passes(loss):
    theta, segs, args = DATA
    grad = two_layer_grad(theta, *args)
    report = fg.check(loss, theta, grad, segments=segs, args=args, samples=64, depth=1)
    assert report.passed, str(report)
    assert report.max_rel_error < 1e-6
    assert failing_segments(report) == set()
    python_paths = ("threads", "serial", "forked")
    assert report.path == "jit" if loss is two_layer_loss_jit else report.path in python_paths
    # f at theta twice, then two per coordinate: nothing failed at the floor assumed from eps,
    # so the noise of f was not measured (the guard's serial re-runs on threads and a second
    # timing at theta count too)
    assert report.evaluations == 2 + 2 * sum(s.checked for s in report.segments.values()) \
        + set_apart(report)
    assert report.noise_sigma is None


@pytest.mark.parametrize("loss", [two_layer_loss, two_layer_loss_jit], ids=["numpy", "njit"])
@pytest.mark.parametrize(
    "bug, where",
    [("bias", {"b1"}), ("transpose", {"W1"}), ("reg", {"W1", "W2"})],
)
def test_planted_bug_fails_in_its_own_segment_only(loss, bug, where):
    theta, segs, args = DATA
    grad = two_layer_grad(theta, *args, bug=bug)
    report = fg.check(loss, theta, grad, segments=segs, args=args, samples=32)
    assert not report.passed
    assert failing_segments(report) == where, str(report)
    assert {c.segment for c in report.failures} == where
    # a failure is judged against the measured noise of f: the probe ran
    assert report.noise_sigma is not None
    assert report.evaluations >= 2 + DEFAULT_TUNING.noise_probe_evaluations + 2 * len(report.coords)
    with pytest.raises(fg.GradientCheckError) as info:
        fg.assert_gradients(loss, theta, grad, segments=segs, args=args, samples=32)
    assert info.value.report.passed is False
    for name in where:
        assert name in str(info.value)


def test_reg_bug_is_caught_even_where_the_data_gradient_is_zero():
    # with the data term switched off the reg gradient is all there is: a missing factor 2
    theta, segs, args = DATA
    args = (args[0], args[1], 0.5) + args[3:]
    grad = two_layer_grad(theta, *args, bug="reg")
    report = fg.check(two_layer_loss, theta, grad, segments=segs, args=args, samples=16)
    assert failing_segments(report) == {"W1", "W2"}
    worst = max(report.failures, key=lambda c: c.rel_error)
    assert worst.rel_error > 0.3


@njit(cache=True)
def quadratic(theta, scale):
    total = 0.0
    for i in range(theta.shape[0]):
        total += scale[i] * theta[i] * theta[i]
    return 0.5 * total


@pytest.mark.slow
def test_one_wrong_coordinate_in_100k_found_with_samples_all():
    n = 100_000
    rng = np.random.default_rng(1)
    theta = rng.standard_normal(n)
    scale = rng.uniform(0.5, 2.0, n)
    grad = scale * theta
    bad = 73_421
    grad[bad] += 0.01 * max(1.0, abs(grad[bad]))
    segs = fg.SegmentMap.from_shapes({"A": (300, 200), "B": (n - 60_000,)})
    report = fg.check(quadratic, theta, grad, args=(scale,), segments=segs, samples="all")
    assert [c.index for c in report.failures] == [bad]
    assert failing_segments(report) == {"B"}
    assert report.segments["B"].worst == bad
    assert report.segments["A"].checked == 60_000 and report.segments["B"].checked == 40_000
    assert report.failures[0].local == (bad - 60_000,)


@pytest.mark.parametrize("loss", [two_layer_loss, two_layer_loss_jit], ids=["numpy", "njit"])
def test_theta_and_grad_bitwise_unchanged(loss):
    theta, segs, args = DATA
    grad = two_layer_grad(theta, *args, bug="bias")
    theta_before, grad_before = theta.tobytes(), grad.tobytes()
    fg.check(loss, theta, grad, segments=segs, args=args, samples=8)
    with pytest.raises(fg.GradientCheckError):
        fg.assert_gradients(loss, theta, grad, segments=segs, args=args, samples=8)
    assert theta.tobytes() == theta_before and grad.tobytes() == grad_before


def test_theta_unchanged_and_f_refused_when_it_writes_into_its_argument():
    def vandal(t):
        value = float(np.sum(t * t))
        t[:] = 7.0
        return value

    theta = np.linspace(-1, 1, 50)
    before = theta.copy()
    with pytest.raises(ValueError, match="writes into its argument"):
        fg.check(vandal, theta, 2 * theta, workers=1, samples=5)
    np.testing.assert_array_equal(theta, before)


def test_jit_and_python_paths_agree_with_the_naive_loop():
    theta, segs, args = DATA
    index = sample_coordinates(segs, samples=24, seed=5)
    step = coordinate_steps(theta[index])
    jit = Evaluator(two_layer_loss_jit, theta, args)
    py = Evaluator(two_layer_loss, theta, args, workers=2)
    serial = Evaluator(two_layer_loss, theta, args, workers=1)
    assert (jit.path, py.path, serial.path) == ("jit", "threads", "serial")
    results = [e.pairs(index, step) for e in (jit, py, serial)]
    ref_plus, ref_minus = centered_differences(two_layer_loss, theta, index, step, args)
    for f_plus, f_minus in results:
        np.testing.assert_allclose(f_plus[:, 0], ref_plus, rtol=1e-13, atol=0)
        np.testing.assert_allclose(f_minus[:, 0], ref_minus, rtol=1e-13, atol=0)
    numeric = [(p[:, 0] - m[:, 0]) / (2 * step) for p, m in results]
    np.testing.assert_allclose(numeric[0], numeric[1], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(numeric[1], numeric[2], rtol=0, atol=0)


def test_grad_may_be_a_callable_and_theta_must_be_flat():
    theta = np.arange(12, dtype=float) / 10
    report = fg.check(lambda t: float(np.sum(np.sin(t))), theta, lambda t: np.cos(t),
                      samples="all")
    assert report.passed and report.segments["theta"].checked == 12
    # f is called with the flat vector: a 2-D theta would reach f with a shape it never had
    with pytest.raises(fg.errors.InvalidValue, match=r"theta: expected a flat 1-D vector, got "
                                                     r"shape \(3, 4\).*theta.ravel\(\)"):
        fg.check(lambda t: float(np.sum(np.sin(t))), theta.reshape(3, 4), np.cos)


def test_report_table_and_dict():
    import json

    theta, segs, args = DATA
    grad = two_layer_grad(theta, *args, bug="bias")
    report = fg.check(two_layer_loss, theta, grad, segments=segs, args=args, samples=8)
    text = str(report)
    assert "FAILED" in text
    for name in segs.names:
        assert name in text
    assert "b1[" in text, "worst coordinates are named by segment and multi-index"
    d = json.loads(json.dumps(report.to_dict()))
    assert d["passed"] is False and d["segments"]["b1"]["failed"] == 8
    assert len(d["coords"]) == len(report.coords) == sum(s.checked for s in
                                                         report.segments.values())
    rec = report.failures[0]
    assert rec.segment == "b1" and segs.locate(rec.index) == ("b1", rec.local)
    assert rec.verdict == "wrong" and rec.analytic == 0.0
