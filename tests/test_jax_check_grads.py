"""fastgrad.jax.check_grads: wrong custom rules are caught in the mode and order they break."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import fastgrad.jax as fj  # noqa: E402

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


def test_wrong_custom_jvp_fails_in_fwd_mode():
    with pytest.raises(fj.CheckGradsError) as info:
        fj.check_grads(sin_wrong_jvp, (X,), order=1, modes=("fwd",))
    assert isinstance(info.value, AssertionError)
    assert "fwd mode" in str(info.value)
    report = info.value.report
    assert report.segments["arg0/output0 (fwd)"].failed == X.size
    assert {c.where for c in report.failures} == {f"arg0[{i}] -> output0[{i}]" for i in range(5)}


def test_wrong_custom_vjp_fails_in_rev_mode_where_it_is_wrong():
    with pytest.raises(fj.CheckGradsError) as info:
        fj.check_grads(tanh_wrong_vjp, (X,), order=1, modes=("rev",))
    assert "rev mode" in str(info.value)
    wrong = {c.local for c in info.value.report.failures}
    assert wrong == {(i,) for i in np.flatnonzero(X > 1.0)}


def test_wrong_second_derivative_fails_only_at_order_2():
    fj.check_grads(sin_flat_second, (X,), order=1)
    with pytest.raises(fj.CheckGradsError, match="order 2"):
        fj.check_grads(sin_flat_second, (X,), order=2)
    fj.check_grads(jnp.sin, (X,), order=2)


@pytest.mark.slow  # eager jax compiles each primitive once per shape: seconds on a first run
def test_correct_functions_pass_pytrees_complex_and_kinks():
    params = {"w": np.ones((3, 2)) / 3, "b": np.zeros(2)}

    def layer(p, x):
        return {"out": jnp.tanh(x @ p["w"] + p["b"]), "norm": jnp.sum(p["w"] ** 2)}

    fj.check_grads(layer, (params, np.linspace(-1, 1, 6).reshape(2, 3)), order=1)
    z = np.array([1 + 2j, 0.5 - 1j])
    fj.check_grads(lambda z: jnp.sin(z) * jnp.conj(z), (z,), order=2)
    # relu and abs with coordinates closer to the kink than the first step
    fj.check_grads(lambda x: jax.nn.relu(x) + jnp.abs(x), (np.array([1e-7, -2e-7, 0.3]),), 1)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="modes"):
        fj.check_grads(jnp.sin, (X,), 1, modes=("backward",))
    with pytest.raises(ValueError, match="order"):
        fj.check_grads(jnp.sin, (X,), 0)
    with pytest.raises(TypeError, match="args"):
        fj.check_grads(jnp.sin, X, 1)
