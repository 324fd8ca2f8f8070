"""Bad input gets exactly the errors of API section 2, each naming the argument, where, and what."""

from __future__ import annotations

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.errors import LossError, NondeterminismError

SHAPES = {"W1": (4, 5), "b1": (5,)}


def loss(t):
    return float(np.sum(np.sin(t)))


def grad_of(t):
    return np.cos(t)


@pytest.fixture
def theta():
    return np.linspace(-1.0, 1.0, 25)


def unchanged(before, after):
    return before.tobytes() == after.tobytes()


def test_nan_in_theta_names_segment_index_value(theta):
    theta[7] = np.nan
    with pytest.raises(ValueError, match=r"theta: non-finite value nan at W1\[1, 2\] \(flat index 7\)"):
        fg.check(loss, theta, grad_of(theta), segments=SHAPES)


def test_inf_in_grad_names_segment_index_value(theta):
    grad = grad_of(theta)
    grad[21] = -np.inf
    before = grad.copy()
    with pytest.raises(ValueError, match=r"grad: non-finite value -inf at b1\[1\] \(flat index 21\)"):
        fg.check(loss, theta, grad, segments=SHAPES)
    assert unchanged(before, grad)


def test_size_mismatch(theta):
    with pytest.raises(ValueError, match=r"grad: has 24 values .* theta has 25"):
        fg.check(loss, theta, grad_of(theta)[:-1])
    with pytest.raises(ValueError, match=r"theta: has 25 values but the segment map covers 26"):
        fg.check(loss, theta, grad_of(theta), segments={"W1": (4, 5), "b1": (6,)})


def test_dtype_mismatch(theta):
    with pytest.raises(TypeError, match=r"theta: dtype int64"):
        fg.check(loss, np.arange(25), grad_of(theta))
    with pytest.raises(TypeError, match=r"theta: dtype float16 is not supported"):
        fg.check(loss, theta.astype(np.float16), grad_of(theta))
    with pytest.raises(TypeError, match=r"grad: expected a real float array, got dtype complex128"):
        fg.check(loss, theta, grad_of(theta).astype(complex))


def test_non_scalar_loss_at_theta(theta):
    with pytest.raises(ValueError, match=r"shape \(25,\); the loss must be a scalar"):
        fg.check(lambda t: np.sin(t), theta, grad_of(theta))
    with pytest.raises(LossError):  # also a LossError, for callers that catch those
        fg.check(lambda t: np.sin(t), theta, grad_of(theta))
    with pytest.raises(ValueError, match=r"not a number"):
        fg.check(lambda t: "loss", theta, grad_of(theta))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_loss_at_theta(theta, bad):
    with pytest.raises(ValueError, match=r"the loss at theta is not finite"):
        fg.check(lambda t: bad + np.sum(t), theta, np.ones(25))


@pytest.mark.parametrize("segments, message", [
    ({"W1": (4, 5), "b1": (0,)}, "segment 'b1': non-positive size"),
    ([fg.Segment("W1", 0, 20, (4, 5)), fg.Segment("b1", 21, 26, (5,))], "segment 'b1': gap"),
    ([fg.Segment("W1", 0, 20, (4, 5)), fg.Segment("b1", 19, 24, (5,))], "segment 'b1': overlaps"),
    ([fg.Segment("W1", 0, 20, (4, 5)), fg.Segment("W1", 20, 25, (5,))],
     "segment 'W1': duplicate name"),
    ([fg.Segment("W1", 0, 20, (4, 4)), fg.Segment("b1", 20, 25, (5,))],
     "segment 'W1': shape"),
])
def test_bad_segment_map(theta, segments, message):
    with pytest.raises(ValueError, match=message):
        segs = segments if isinstance(segments, dict) else fg.SegmentMap(segments)
        fg.check(loss, theta, grad_of(theta), segments=segs)


def test_loss_non_finite_only_at_a_perturbed_point_marks_it_nan(theta):
    segs = fg.SegmentMap.from_shapes(SHAPES)
    theta[12] = 0.0

    def f(t):  # finite at theta, infinite once t_12 steps below 0
        return float(np.sum(np.sin(t)) + (np.inf if t[12] < 0 else 0.0))

    report = fg.check(f, theta, grad_of(theta), segments=segs, samples="all")
    assert not report.passed
    assert [c.index for c in report.failures] == [12]
    assert report.failures[0].verdict == "nan" and report.failures[0].segment == "W1"
    assert report.segments["W1"].failed == 1 and report.segments["b1"].passed
    assert report.segments["W1"].checked == 20  # the check went on past it
    assert all(c.verdict in ("excellent", "ok") for c in report.coords if c.index != 12)


def test_nondeterminism_is_bad_input_too(theta):
    rng = np.random.default_rng()
    with pytest.raises(NondeterminismError, match="seed"):
        fg.check(lambda t: loss(t) + rng.random(), theta, grad_of(theta))
    assert issubclass(NondeterminismError, ValueError)


def test_grad_mapping_must_match_the_terms(theta):
    def terms(t):
        return {"data": loss(t), "reg": float(np.sum(t * t))}

    with pytest.raises(ValueError, match=r"grad: f returns the loss terms \['data', 'reg'\]"):
        fg.check(terms, theta, grad_of(theta))
    with pytest.raises(ValueError, match=r"with \['data'\]"):
        fg.check(terms, theta, {"data": grad_of(theta)})


@pytest.mark.parametrize("option, value, error", [
    ("h", 0.0, ValueError), ("h", "big", ValueError), ("depth", 0, ValueError),
    ("tol", 2.0, ValueError), ("kinks", "sometimes", ValueError), ("seed", -1, ValueError),
    ("nondet_tol", -1.0, ValueError), ("samples", 0, ValueError), ("workers", 0, ValueError),
])
def test_bad_options_name_the_argument(theta, option, value, error):
    before = theta.copy()
    with pytest.raises(error, match=option):
        fg.check(loss, theta, grad_of(theta), **{option: value})
    assert unchanged(before, theta)


def test_f_that_writes_into_its_argument_is_refused_and_theta_unchanged(theta):
    grad = grad_of(theta)
    before, grad_before = theta.copy(), grad.copy()

    def vandal(t):
        value = float(np.sum(np.sin(t)))
        t[:] = 123.0  # a loss that scribbles on its input
        return value

    for workers in (1, 2):
        # every later evaluation would start from the scribbled point: a clear error, not a
        # report of wrong numbers
        with pytest.raises(ValueError, match="f: writes into its argument") as info:
            fg.check(vandal, theta, grad, samples="all", workers=workers)
        assert "theta[0]" in str(info.value) and "123" in str(info.value)
        assert unchanged(before, theta) and unchanged(grad_before, grad)
        with pytest.raises(ValueError, match="writes into its argument"):
            fg.audit(vandal, theta, grad, workers=workers)
        assert unchanged(before, theta) and unchanged(grad_before, grad)

    def tidy(t):  # changes its argument and puts it back exactly: fine
        saved = t[0]
        t[0] = 5.0
        t[0] = saved
        return float(np.sum(np.sin(t)))

    assert fg.check(tidy, theta, np.cos(theta), samples="all").passed
