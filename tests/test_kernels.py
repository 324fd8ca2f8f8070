"""The Numba kernels of fastgrad/engine/kernels.py against the slow references in naive.py."""

import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from fastgrad.engine import random_directions
from fastgrad.engine.kernels import (
    centered_losses,
    direction_dot,
    direction_fill,
    direction_value,
    directional_losses,
    first_class_loss,
)
from fastgrad.sampling import direction_key
from fastgrad.steps import DIRECTION_MIN_MAGNITUDE, coordinate_steps

import naive


@njit(cache=True, nogil=True)
def sine_loss(theta):
    return np.sum(np.sin(theta) * theta) + 0.5 * theta[0] * theta[-1]


@njit(cache=True, nogil=True)
def least_squares_loss(theta, A, b, scale):
    r = A @ theta - b
    return scale * np.sum(r * r)


@njit(cache=True, nogil=True)
def softplus_loss(theta):  # float32 arithmetic when theta is float32
    total = theta.dtype.type(0.0)
    for i in range(theta.shape[0]):
        total += np.log1p(np.exp(theta[i] * theta[(i + 1) % theta.shape[0]]))
    return total


@njit(cache=True, nogil=True)
def vector_loss(theta):
    return theta * 2.0


def _problems():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(40)
    A, b = rng.standard_normal((15, 40)), rng.standard_normal(15)
    x32 = rng.standard_normal(33).astype(np.float32)
    return {
        "sine": (sine_loss, x, ()),
        "least squares, with args": (least_squares_loss, x * 100.0, (A, b, 0.5)),
        "softplus, float32 theta": (softplus_loss, x32, ()),
    }


PROBLEMS = _problems()


@pytest.mark.parametrize("name", list(PROBLEMS))
@pytest.mark.parametrize("n_chunks", [1, 2, 5])
def test_centered_losses_match_the_cs231n_loop(name, n_chunks):
    f, theta, args = PROBLEMS[name]
    before = theta.copy()
    index = np.array([0, 3, 4, theta.size - 1, 17, 3], dtype=np.int64)  # a repeat too
    step = coordinate_steps(theta[index], dtype=theta.dtype)
    loss = first_class_loss(f, theta, args)
    assert loss is not None
    f_plus, f_minus = np.full(index.size, np.nan), np.full(index.size, np.nan)
    centered_losses(loss, theta, index, step, args, f_plus, f_minus, n_chunks)
    ref_plus, ref_minus = naive.centered_differences(f, theta, index, step, args,
                                                     dtype=theta.dtype)
    np.testing.assert_allclose(f_plus, ref_plus, rtol=1e-14, atol=0)
    np.testing.assert_allclose(f_minus, ref_minus, rtol=1e-14, atol=0)
    assert not np.array_equal(f_plus, f_minus)  # the perturbation really happened
    assert theta.tobytes() == before.tobytes()  # the kernel works on copies


def test_float32_kernel_evaluates_in_float32():
    """The working copy keeps theta's dtype: a float64 reference gives other values."""
    f, theta, args = PROBLEMS["softplus, float32 theta"]
    index = np.arange(theta.size, dtype=np.int64)
    step = coordinate_steps(theta, dtype=np.float32)
    f_plus, f_minus = np.empty(index.size), np.empty(index.size)
    centered_losses(first_class_loss(f, theta, args), theta, index, step, args, f_plus,
                    f_minus, 2)
    wide_plus, _ = naive.centered_differences(f, theta, index, step, args, dtype=np.float64)
    assert not np.allclose(f_plus, wide_plus, rtol=1e-12, atol=0)


def test_first_class_loss_refuses_what_the_kernels_cannot_call():
    x = np.ones(4)
    assert first_class_loss(vector_loss, x, ()) is None  # an array, not a scalar
    assert first_class_loss(lambda t: float(t @ t), x, ()) is None  # not a Numba function
    assert first_class_loss(sine_loss, x, ()) is not None


def _directions(n, rng):
    key = np.array([direction_key(5, j) for j in range(6)], dtype=np.uint64)
    lo = np.array([0, 0, 7, n - 1, 3, 20], dtype=np.int64)
    hi = np.array([n, 1, 19, n, 30, 21], dtype=np.int64)
    step = rng.uniform(1e-5, 1e-3, key.size)
    return key, lo, hi, step


@pytest.mark.parametrize("name", list(PROBLEMS))
@pytest.mark.parametrize("n_chunks", [1, 2, 4])
def test_directional_losses_match_the_plain_loop(name, n_chunks):
    f, theta, args = PROBLEMS[name]
    before = theta.copy()
    key, lo, hi, step = _directions(theta.size, np.random.default_rng(1))
    f_plus, f_minus = np.full(key.size, np.nan), np.full(key.size, np.nan)
    directional_losses(first_class_loss(f, theta, args), theta, key, lo, hi, step, args,
                       f_plus, f_minus, n_chunks)
    ref_plus, ref_minus = naive.directional_differences(f, theta, key, lo, hi, step, args)
    np.testing.assert_allclose(f_plus, ref_plus, rtol=1e-14, atol=0)
    np.testing.assert_allclose(f_minus, ref_minus, rtol=1e-14, atol=0)
    assert np.all(f_plus != f_minus)
    assert theta.tobytes() == before.tobytes()


def test_directional_derivative_of_a_linear_loss_is_grad_dot_v():
    """The naive directional derivative itself, on a loss where it is exact: c . v."""
    c = np.random.default_rng(2).standard_normal(50)
    x = np.zeros(50)
    key, lo, hi, step = _directions(50, np.random.default_rng(3))
    numeric = naive.directional_numeric(lambda t: float(c @ t), x, key, lo, hi, step)
    for j in range(key.size):
        v = naive.naive_direction(key[j], lo[j], hi[j])
        assert numeric[j] == pytest.approx(c[lo[j]:hi[j]] @ v, rel=1e-8)


@pytest.mark.parametrize("key", [direction_key(0, 1), direction_key(3, 7), np.uint64(0),
                                 np.uint64(2**64 - 1)])
def test_direction_value_and_fill_match_the_python_splitmix(key):
    lo, hi = 2**40 - 5, 2**40 + 300  # far indices: the 64-bit products wrap
    expected = naive.naive_direction(key, lo, hi)
    out = np.empty(hi - lo)
    direction_fill(key, lo, hi, out)
    np.testing.assert_array_equal(out, expected)
    assert [direction_value(key, i) for i in (lo, lo + 1, hi - 1)] == \
        [expected[0], expected[1], expected[-1]]
    assert DIRECTION_MIN_MAGNITUDE <= np.abs(out).min() and np.abs(out).max() <= 1.0


@pytest.mark.parametrize("key", [direction_key(0, 1), direction_key(3, 7), np.uint64(0),
                                 np.uint64(2**64 - 1)])
def test_numpy_directions_are_the_kernels_entries_bit_for_bit(key):
    # the serial loops and the audit take entries from numpy, the prange kernels from Numba: a
    # direction must be the same vector on every backend
    for lo, hi in ((2**40 - 5, 2**40 + 300), (0, 70_000), (12_345, 12_346)):
        ours, kernels = np.empty(hi - lo), np.empty(hi - lo)
        random_directions.fill(key, lo, hi, ours)
        direction_fill(key, lo, hi, kernels)
        assert ours.tobytes() == kernels.tobytes()
    # past NUMPY_MAX_SUPPORT the kernels fill it: the same entries
    hi = random_directions.NUMPY_MAX_SUPPORT + 10
    big = np.empty(hi)
    random_directions.fill(key, 0, hi, big)
    np.testing.assert_array_equal(big[-300:], naive.naive_direction(key, hi - 300, hi))


def test_a_serial_audit_of_a_python_loss_does_not_load_numba():
    # a drop-in's fast mode localizes a disagreeing direction with a small serial audit: loading
    # Numba and its cached kernels (0.7-0.9 s in a fresh process) would cost more than the audit
    code = """if True:
        import sys
        import numpy as np
        import fastgrad as fg
        rng = np.random.default_rng(0)
        A, x = rng.standard_normal((40, 30)), rng.standard_normal(30)
        def f(t):
            return float(np.sum(np.tanh(A @ t)))
        grad = A.T @ (1 - np.tanh(A @ x) ** 2)
        grad[12] *= 1.5
        report = fg.audit(f, x, grad, segments={"a": (10,), "b": (20,)}, workers=1, jit=False)
        print(report.passed, report.suspects, "numba" in sys.modules)
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["False", "[12]", "False"], done.stdout + done.stderr


def test_direction_magnitudes_are_uniform_from_the_minimum_the_miss_bound_assumes():
    # steps.direction_miss_bound relies on |v_i| uniform in [DIRECTION_MIN_MAGNITUDE, 1] and a
    # random sign: a cached kernel compiled with another minimum would void the bound
    out = np.empty(200_000)
    direction_fill(np.uint64(12345), 0, out.size, out)
    magnitude = np.abs(out)
    assert magnitude.min() == pytest.approx(DIRECTION_MIN_MAGNITUDE, abs=1e-3)
    assert magnitude.max() == pytest.approx(1.0, abs=1e-3)
    assert np.mean(magnitude) == pytest.approx((1 + DIRECTION_MIN_MAGNITUDE) / 2, abs=5e-3)
    assert np.mean(out > 0) == pytest.approx(0.5, abs=5e-3)


# the kernel, and the numpy version the serial loops and the audit use below 2^17 entries
@pytest.mark.parametrize("direction_dot", [direction_dot, random_directions.dot],
                         ids=["kernel", "numpy"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_direction_dot_matches_grad_dot_the_rounded_displacement(dtype, direction_dot):
    rng = np.random.default_rng(4)
    theta = (rng.standard_normal(500) * 10.0 ** rng.integers(-3, 4, 500)).astype(dtype)
    grad = rng.standard_normal(500)
    before = theta.copy()
    key, step = direction_key(9, 2), 1e-3
    for lo, hi in ((0, 500), (17, 18), (100, 350)):
        dot, abs_gd = direction_dot(grad, theta, key, lo, hi, step)
        ref_dot, ref_abs = naive.direction_dot(grad, theta, key, lo, hi, step)
        assert dot == pytest.approx(ref_dot, rel=1e-12, abs=1e-12 * ref_abs)
        assert abs_gd == pytest.approx(ref_abs, rel=1e-12)
    assert theta.tobytes() == before.tobytes()
    # the rounding matters: in float32 the displacement of |x| ~ 1e3 is not h v
    v = naive.naive_direction(key, 0, 500)
    unrounded = float(grad @ v)
    dot, _ = direction_dot(grad, theta, key, 0, 500, step)
    if dtype is np.float32:
        assert abs(dot - unrounded) > 1e-3 * abs(unrounded)
    else:
        assert dot == pytest.approx(unrounded, rel=1e-6)
