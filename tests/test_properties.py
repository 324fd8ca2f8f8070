"""Property tests: exact gradients of random smooth functions pass; a sampled single-coordinate
corruption above the tolerance is caught, in that coordinate and its segment only; random bad
segment maps raise ValueError; theta and grad are never modified."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgrad as fg
from fastgrad.sampling import sample_coordinates

SETTINGS = settings(max_examples=30, deadline=None)


def smooth_loss(x, a, b, c, Q, w):
    return float(np.sum(c * np.sin(a * x + b)) + 0.5 * x @ Q @ x + np.log1p(np.exp(w @ x)))


def smooth_grad(x, a, b, c, Q, w):
    return c * a * np.cos(a * x + b) + Q @ x + w / (1.0 + np.exp(-(w @ x)))


@st.composite
def problems(draw):
    """A random smooth function, a point, a random segment partition and a sample count."""
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    n = sum(sizes)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n, n)) / n
    args = (rng.uniform(-3, 3, n), rng.uniform(-3, 3, n), rng.uniform(-2, 2, n), B @ B.T,
            rng.standard_normal(n) / np.sqrt(n))
    theta = rng.uniform(-2, 2, n) * draw(st.sampled_from([1e-3, 1.0, 10.0]))
    segs = fg.SegmentMap.from_shapes({f"s{k}": (size,) for k, size in enumerate(sizes)})
    samples = draw(st.one_of(st.integers(1, 6), st.just("all")))
    return theta, args, segs, samples, draw(st.integers(0, 1000))


@SETTINGS
@given(problems())
def test_exact_gradients_of_smooth_functions_pass(problem):
    theta, args, segs, samples, seed = problem
    grad = smooth_grad(theta, *args)
    before, grad_before = theta.tobytes(), grad.tobytes()
    report = fg.check(smooth_loss, theta, grad, args=args, segments=segs, samples=samples,
                      seed=seed, workers=1)
    assert report.passed, str(report)
    assert theta.tobytes() == before and grad.tobytes() == grad_before
    assert sum(s.checked for s in report.segments.values()) == len(
        sample_coordinates(segs, samples, seed))


@SETTINGS
@given(problems(), st.data())
def test_a_sampled_single_coordinate_corruption_is_caught(problem, data):
    theta, args, segs, samples, seed = problem
    grad = smooth_grad(theta, *args)
    sampled = sample_coordinates(segs, samples, seed)
    i = int(data.draw(st.sampled_from(sampled.tolist())))
    size = data.draw(st.floats(0.01, 10.0))
    sign = data.draw(st.sampled_from([-1.0, 1.0]))
    bad = grad.copy()
    # above the tolerance in relative terms, and above 1e-5 where the true gradient is ~0
    bad[i] += sign * size * max(abs(grad[i]), 1e-3)
    before, bad_before = theta.tobytes(), bad.tobytes()
    report = fg.check(smooth_loss, theta, bad, args=args, segments=segs, samples=samples,
                      seed=seed, workers=1)
    assert not report.passed
    assert [c.index for c in report.failures] == [i]
    name, _ = segs.locate(i)
    assert {s.name for s in report.segments.values() if not s.passed} == {name}
    assert theta.tobytes() == before and bad.tobytes() == bad_before


DEFECTS = ("gap", "overlap", "duplicate", "empty", "too_short", "too_long", "shape")


@st.composite
def bad_segment_maps(draw):
    sizes = draw(st.lists(st.integers(1, 5), min_size=2, max_size=5))
    defect = draw(st.sampled_from(DEFECTS))
    k = draw(st.integers(1, len(sizes) - 1))  # the segment that gets the defect
    names = [f"p{j}" for j in range(len(sizes))]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    stops = np.cumsum(sizes).tolist()
    shapes = [(s,) for s in sizes]
    n = sum(sizes)
    if defect == "gap":
        starts[k] += 1
        stops[k] += 1
    elif defect == "overlap":
        starts[k] -= 1
    elif defect == "duplicate":
        names[k] = names[k - 1]
    elif defect == "empty":
        stops[k] = starts[k]
        shapes[k] = (0,)
    elif defect == "too_short":
        n += draw(st.integers(1, 3))  # the map covers fewer values than theta has
    elif defect == "too_long":
        n -= 1
    elif defect == "shape":
        shapes[k] = (sizes[k] + 1,)
    segments = [fg.Segment(*parts) for parts in zip(names, starts, stops, shapes)]
    return segments, n, defect, names[k]


@settings(max_examples=40, deadline=None)
@given(bad_segment_maps())
def test_random_bad_segment_maps_raise_value_error(case):
    segments, n, defect, name = case
    theta = np.linspace(-1, 1, max(n, 1))
    before = theta.tobytes()
    with pytest.raises(ValueError) as info:
        fg.check(lambda t: float(np.sum(t * t)), theta, 2 * theta,
                 segments=fg.SegmentMap(segments))
    message = str(info.value)
    if defect in ("too_short", "too_long"):
        assert "theta" in message and "segment map covers" in message
    else:
        assert repr(name) in message
    assert theta.tobytes() == before
