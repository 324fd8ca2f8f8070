"""fastgrad.jax.check_grads: a drop-in for jax.test_util.check_grads.

Wrong custom rules are caught in the mode and order they break and localized to the argument and
element; correct functions pass in the caller's dtypes (32-bit mode, strict promotion, float32
constants, bfloat16, Python scalars), with jax's dtype-keyed tolerances, at no more evaluations
than jax's own checker.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from jax import lax  # noqa: E402
from jax.test_util import check_grads as jax_check_grads  # noqa: E402

import fastgrad.jax as fj  # noqa: E402
from fastgrad.errors import GradcheckWarning  # noqa: E402
from fastgrad.jax.pytrees import x64  # noqa: E402

X = np.linspace(0.1, 1.3, 5)


@jax.custom_jvp
def sin_wrong_jvp(x):
    return jnp.sin(x)


@sin_wrong_jvp.defjvp
def _sin_wrong_jvp_rule(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.sin(x), 1.01 * jnp.cos(x) * t  # 1% off


@jax.custom_vjp
def tanh_wrong_vjp(x):
    return jnp.tanh(x)


def _tanh_fwd(x):
    return jnp.tanh(x), x


def _tanh_bwd(x, ct):
    return (ct * (1 - jnp.tanh(x) ** 2) * (1 + 0.01 * (x > 1.0)),)  # wrong where x > 1


tanh_wrong_vjp.defvjp(_tanh_fwd, _tanh_bwd)


@jax.custom_jvp
def sin_flat_second(x):
    return jnp.sin(x)


@sin_flat_second.defjvp
def _sin_flat_second_rule(primals, tangents):
    (x,), (t,) = primals, tangents
    # first derivative right, but stop_gradient drops the second: d2 = 0 instead of -sin
    return jnp.sin(x), jax.lax.stop_gradient(jnp.cos(x)) * t


@jax.custom_jvp
def scaled_product(x, y):
    """x * y, with the derivative in y wrong at y's element 2 only."""
    return x * y


@scaled_product.defjvp
def _scaled_product_rule(primals, tangents):
    (x, y), (tx, ty) = primals, tangents
    wrong = jnp.where(jnp.arange(y.shape[0]) == 2, 1.5, 1.0).astype(x.dtype)
    return x * y, tx * y + x * ty * wrong


@jax.custom_jvp
def sin_off_5e4(x):
    return jnp.sin(x)


@sin_off_5e4.defjvp
def _sin_off_5e4_rule(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.sin(x), (1 + 5e-4) * jnp.cos(x) * t  # a relative 5e-4 off


# ------------------------------------------------------------------ planted bugs, localized

def test_wrong_custom_jvp_is_localized_in_default_mode():
    """The random direction disagrees; the full Jacobian names y's element 2, and only it."""
    x = np.linspace(0.5, 1.5, 4).astype(np.float32)
    y = np.linspace(-1.0, 2.0, 4).astype(np.float32)
    with pytest.raises(fj.CheckGradsError) as info:
        fj.check_grads(scaled_product, (x, y), order=1, modes=("fwd",))
    message = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert "JVP (order 1, fwd mode)" in message and "random tangent" in message
    assert {c.where for c in info.value.report.failures} == {"arg1[2] -> output0[2]"}


def test_wrong_custom_jvp_fails_in_fwd_mode_float64():
    with x64():
        with pytest.raises(fj.CheckGradsError) as info:
            fj.check_grads(sin_wrong_jvp, (X,), order=1, modes=("fwd",))
    assert "fwd mode" in str(info.value)
    report = info.value.report
    assert report.segments["arg0/output0 (fwd)"].failed == X.size
    assert {c.where for c in report.failures} == {f"arg0[{i}] -> output0[{i}]" for i in range(5)}


def test_wrong_custom_vjp_fails_in_rev_mode_where_it_is_wrong():
    with x64():
        with pytest.raises(fj.CheckGradsError) as info:
            fj.check_grads(tanh_wrong_vjp, (X,), order=1, modes=("rev",))
    assert "VJP (order 1, rev mode)" in str(info.value)
    wrong = {c.local for c in info.value.report.failures}
    assert wrong == {(i,) for i in np.flatnonzero(X > 1.0)}


def test_wrong_second_derivative_fails_only_at_order_2():
    with x64():
        fj.check_grads(sin_flat_second, (X,), order=1)
        with pytest.raises(fj.CheckGradsError, match="JVP of JVP \\(order 2") as info:
            fj.check_grads(sin_flat_second, (X,), order=2)
        fj.check_grads(jnp.sin, (X,), order=2)
    # d(tangent out)/dx is what stop_gradient lost: element i of x -> element i of the tangent
    assert {c.where for c in info.value.report.failures} == {
        f"arg0[{i}] -> tangent output0[{i}]" for i in range(5)}


def test_lin_mode_passes_and_catches_a_wrong_rule():
    fj.check_grads(lambda x: jnp.tanh(x) * jnp.abs(x), (X.astype(np.float32),), order=2,
                   modes=("lin",))
    with x64():
        with pytest.raises(fj.CheckGradsError, match="LIN \\(order 1, lin mode\\)") as info:
            fj.check_grads(sin_wrong_jvp, (X,), order=1, modes=("lin",))
    assert info.value.report.segments["arg0/output0 (lin)"].failed == X.size


def test_full_checks_every_element():
    """full=True judges the whole Jacobian at once: 5 x 5 elements, 2 evaluations per input."""
    with x64():
        with pytest.raises(fj.CheckGradsError) as info:
            fj.check_grads(sin_wrong_jvp, (X,), order=1, modes=("fwd",), full=True)
    report = info.value.report
    assert report.segments["arg0/output0 (fwd)"].checked == X.size * X.size
    assert "random tangent" not in str(info.value)
    assert report.evaluations >= 2 * X.size


# ------------------------------------------------------------------ the caller's dtypes

def test_strict_dtype_promotion_with_float32_arguments():
    x = np.linspace(-1.0, 1.0, 6).astype(np.float32)
    w = np.float32(0.5) * np.ones(6, np.float32)

    def f(x, w):
        return jnp.sum(jax.nn.relu(x) * w) + jnp.tanh(x) * w  # relu: a kink at 0

    with jax.numpy_dtype_promotion("strict"):
        jax_check_grads(f, (x, w), order=2)
        fj.check_grads(f, (x, w), order=2)


def test_float32_constant_in_32_bit_mode():
    x = np.linspace(-1.0, 1.0, 5).astype(np.float32)
    fj.check_grads(lambda x: x * jnp.float32(2) + jnp.abs(x), (x,), order=2)
    lhs = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    kernel = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2, 3, 3)),
                         dtype=jnp.float32)

    def conv(lhs):
        return lax.conv_general_dilated(lhs, kernel, (1, 1), "SAME")

    with x64():  # the caller's float32 stays float32 even with 64-bit types on
        fj.check_grads(conv, (lhs,), order=2, atol={np.float32: 1e-2}, rtol={np.float32: 1e-2})
    fj.check_grads(conv, (lhs,), order=2, atol={np.float32: 1e-2}, rtol={np.float32: 1e-2})


def test_bfloat16_and_float16_arguments():
    for dtype in (jnp.bfloat16, np.float16):
        x = np.linspace(0.25, 2.0, 4).astype(dtype)
        seen = []

        def f(x, seen=seen):
            seen.append(np.dtype(x.dtype))
            return jnp.sin(x) * x

        fj.check_grads(f, (x,), order=1)
        assert set(seen) == {np.dtype(dtype)}


def test_python_scalars_stay_python_scalars_and_integers_constant():
    types = set()

    def f(x, n, v):
        types.add(type(x))
        return jax.nn.softplus(x) * v[0] ** n

    fj.check_grads(f, (1e-8, 3, (np.array([1.5, -0.5]),)), order=3)
    assert float in types  # the numeric evaluations got Python floats, as in jax's checker


def test_non_finite_values_equal_on_both_sides_pass_as_in_jax():
    with x64():
        for x in (-float("inf"), float("nan"), 0.0):
            jax_check_grads(jax.nn.softplus, (x,), order=1)
            fj.check_grads(jax.nn.softplus, (x,), order=1)
        inf = np.array([-np.inf, 0.5, 2.0])
        fj.check_grads(lambda x: jnp.exp(x) * 2.0, (inf,), order=1)


# ------------------------------------------------------------------ the caller's tolerance

def test_dtype_keyed_tolerances_warn_and_strict_fails():
    x = np.linspace(0.1, 0.5, 5)
    with x64():
        with pytest.raises(fj.CheckGradsError):  # float64's default rtol is 1e-5
            fj.check_grads(sin_off_5e4, (x,), order=1, strict=False)
        with pytest.warns(GradcheckWarning, match="output0"):
            fj.check_grads(sin_off_5e4, (x,), order=1, rtol={np.float64: 1e-3},
                           atol={np.float64: 1e-6}, strict=False)
        with pytest.raises(fj.CheckGradsError) as info:
            fj.check_grads(sin_off_5e4, (x,), order=1, rtol={np.float64: 1e-3},
                           atol={np.float64: 1e-6}, strict=True)
    assert {c.where for c in info.value.report.failures} == {
        f"arg0[{i}] -> output0[{i}]" for i in range(5)}


def test_tolerance_dict_of_another_dtype_leaves_the_default():
    """An entry for float32 does not loosen a float64 check (jax's merge by dtype)."""
    with x64():
        with pytest.raises(fj.CheckGradsError):
            fj.check_grads(sin_wrong_jvp, (X,), order=1, rtol={np.float32: 0.5},
                           atol={np.float32: 0.5})
        fj.check_grads(sin_wrong_jvp, (X,), order=1, rtol={np.float64: 0.5},
                       atol={np.float64: 0.5})


def test_strict_default_from_the_environment(monkeypatch):
    x = np.linspace(0.1, 0.5, 5)
    monkeypatch.setenv("FASTGRAD_STRICT", "1")
    with x64(), pytest.raises(fj.CheckGradsError):
        fj.check_grads(sin_off_5e4, (x,), order=1, rtol={np.float64: 1e-3},
                       atol={np.float64: 1e-6})


# ------------------------------------------------------------------ cost

@pytest.mark.parametrize("order", [1, 2])
def test_default_mode_spends_no_more_evaluations_than_jax(order):
    """Calls of f (each a real evaluation or one trace under jvp/vjp) on a passing check."""
    calls = {"n": 0}

    def f(x, y):
        calls["n"] += 1
        return jnp.tanh(x @ y) + jnp.abs(x).sum()

    args = (np.linspace(-1, 1, 6).reshape(2, 3), np.linspace(0.2, 1, 12).reshape(3, 4))
    with x64():
        jax_check_grads(f, args, order=order)
        jax_calls, calls["n"] = calls["n"], 0
        with warnings.catch_warnings():
            warnings.simplefilter("error", GradcheckWarning)
            fj.check_grads(f, args, order=order)
    assert calls["n"] <= jax_calls


def test_the_next_orders_vjp_map_reuses_the_linearization_at_the_point():
    """Order 2, rev mode: f is called 4 times at order 1 (at x, at x +- h t, and traced once by
    jax.vjp) and 3 at order 2 (x -> vjp(f, x)(f(x)) at x +- h t, and vjp of it); its value at
    x comes from order 1's linearization. jax's checker calls f 8 times."""
    calls = {"n": 0}

    def f(x):
        calls["n"] += 1
        return jnp.tanh(x) * x

    x = np.linspace(-1, 1, 6).reshape(2, 3)
    with x64():
        fj.check_grads(f, (x,), order=2, modes=("rev",))
        assert calls["n"] == 7
        # the VJP map of order 2 is still checked: a second derivative stop_gradient lost
        fj.check_grads(sin_flat_second, (X,), order=1, modes=("rev",))
        with pytest.raises(fj.CheckGradsError, match=r"VJP of VJP \(order 2, rev mode\)"):
            fj.check_grads(sin_flat_second, (X,), order=2, modes=("rev",))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="modes"):
        fj.check_grads(jnp.sin, (X,), 1, modes=("backward",))
    with pytest.raises(ValueError, match="order"):
        fj.check_grads(jnp.sin, (X,), 0)
    with pytest.raises(TypeError, match="args"):
        fj.check_grads(jnp.sin, X, 1)
    with pytest.raises(TypeError, match="atol"):
        fj.check_grads(jnp.sin, (X,), 1, atol={"not a dtype": 1e-3})
    with pytest.raises(ValueError, match="rtol"):
        fj.check_grads(jnp.sin, (X,), 1, rtol=-1.0)


@pytest.mark.slow  # eager jax compiles each primitive once per shape: seconds on a first run
def test_correct_functions_pass_pytrees_complex_and_kinks():
    params = {"w": np.ones((3, 2)) / 3, "b": np.zeros(2)}

    def layer(p, x):
        return {"out": jnp.tanh(x @ p["w"] + p["b"]), "norm": jnp.sum(p["w"] ** 2)}

    with x64():
        fj.check_grads(layer, (params, np.linspace(-1, 1, 6).reshape(2, 3)), order=1)
        z = np.array([1 + 2j, 0.5 - 1j])
        fj.check_grads(lambda z: jnp.sin(z) * jnp.conj(z), (z,), order=2)
        # relu and abs with coordinates closer to the kink than the first step
        fj.check_grads(lambda x: jax.nn.relu(x) + jnp.abs(x), (np.array([1e-7, -2e-7, 0.3]),),
                       1, full=True)


@pytest.mark.slow  # complex eager jax: a few seconds of compiles on a first run
def test_full_vjp_of_complex_leaves_conjugates_as_jax():
    """The full Jacobian of a VJP is conj(vjp(conj(c))) per basis cotangent, as jax's
    check_vjp: a correct non-holomorphic function passes and a conjugation error planted in
    a custom VJP fails, naming the input's real or imaginary part."""
    z = np.array([1 + 2j, 0.5 - 1j])

    @jax.custom_vjp
    def square(z):
        return z * z

    # jax's VJP of z * z is g * 2z; this conjugates the derivative
    square.defvjp(lambda z: (z * z, z), lambda z, g: (g * jnp.conj(2 * z),))
    with x64():
        fj.check_grads(lambda z: jnp.sin(z) * jnp.conj(z), (z,), order=1, full=True)
        fj.check_grads(lambda z: z * z, (z,), order=1, modes=("rev",), full=True)
        with pytest.raises(AssertionError, match=r"VJP \(order 1, rev mode\)") as failed:
            fj.check_grads(square, (z,), order=1, modes=("rev",), full=True)
    assert "arg0" in str(failed.value)
