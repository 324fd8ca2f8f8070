"""fastgrad.jax: jax.nn functions and an MLP pass; a wrong custom_vjp fails in its segment."""

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason='the jax adapter needs jax: pip install -e ".[test,jax]"')

import jax.numpy as jnp  # noqa: E402

import fastgrad  # noqa: E402
import fastgrad.jax as fgj  # noqa: E402
from fastgrad.testing import assert_jax  # noqa: E402


def normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize(
    "fn",
    [jax.nn.relu, jax.nn.gelu, jax.nn.silu, jax.nn.sigmoid, jax.nn.softplus, jax.nn.elu,
     jax.nn.softmax, jax.nn.log_softmax, jnp.tanh],
    ids=lambda fn: getattr(fn, "__name__", str(fn)),
)
def test_jax_nn_functions(fn):
    cotangent = normal(4, 5, seed=1)
    report = fgj.check(lambda p: jnp.sum(fn(p["x"]) * cotangent), {"x": normal(4, 5)})
    assert report.passed, str(report)
    assert list(report.segments) == ["x"]


def test_mlp_segments_named_by_key_path():
    params = {
        "layers": [
            {"w": normal(4, 8, seed=1) * 0.5, "b": normal(8, seed=2) * 0.1},
            {"w": normal(8, 3, seed=3) * 0.5, "b": normal(3, seed=4) * 0.1},
        ],
        "temperature": 1.5,
    }
    x, y = normal(6, 4, seed=5), np.array([0, 2, 1, 1, 0, 2])

    def loss(p, x, y):
        h = x
        for i, layer in enumerate(p["layers"]):
            h = h @ layer["w"] + layer["b"]
            if i < len(p["layers"]) - 1:
                h = jax.nn.gelu(h)
        logp = jax.nn.log_softmax(h / p["temperature"])
        return -jnp.mean(logp[jnp.arange(y.size), y])

    report = fgj.check(loss, params, x, y, samples=12)
    assert report.passed, str(report)
    assert list(report.segments) == [
        "layers/0/b", "layers/0/w", "layers/1/b", "layers/1/w", "temperature",
    ]
    assert report.segments["layers/0/w"].checked == 12
    assert report.dtype == "float64"


def test_float32_params_are_checked_in_float64():
    params = {"w": jnp.asarray(normal(3, 3), dtype=jnp.float32)}
    report = assert_jax(lambda p, x: jnp.sum(jnp.sin(x @ p["w"])), params, normal(2, 3))
    assert report.max_rel_error < 1e-6  # float32 would not get this close
    assert params["w"].dtype == jnp.float32


def test_bare_array_and_integer_leaves():
    report = fgj.check(lambda w: jnp.sum(w**3), normal(5))
    assert list(report.segments) == ["params"]
    report = fgj.check(lambda p: jnp.sum(p["w"] ** p["n"]), {"w": normal(3), "n": 3})
    assert list(report.segments) == ["w"] and report.passed


def test_non_array_args_are_closed_over():
    report = fgj.check(lambda p, act: jnp.sum(act(p["w"])), {"w": normal(4)}, jnp.cos)
    assert report.passed


@jax.custom_vjp
def scaled_product(x, w):
    return jnp.sin(x) * w


def _fwd(x, w):
    return scaled_product(x, w), (x, w)


def _bwd_right(res, g):
    x, w = res
    return jnp.cos(x) * w * g, jnp.sin(x) * g


scaled_product.defvjp(_fwd, _bwd_right)


@jax.custom_vjp
def scaled_product_bad(x, w):
    return jnp.sin(x) * w


def _bwd_wrong(res, g):
    x, w = res
    return jnp.cos(x) * w * g, jnp.cos(x) * g  # d/dw is wrong: cos instead of sin


scaled_product_bad.defvjp(_fwd, _bwd_wrong)


def test_custom_vjp_right_rule_passes():
    params = {"x": normal(5), "w": normal(5, seed=1)}
    assert fgj.check(lambda p: jnp.sum(scaled_product(p["x"], p["w"]) ** 2), params).passed


def test_custom_vjp_wrong_rule_fails_in_its_segment():
    params = {"x": normal(5), "w": normal(5, seed=1)}
    report = fgj.check(lambda p: jnp.sum(scaled_product_bad(p["x"], p["w"]) ** 2), params)
    assert not report.passed
    assert report.segments["x"].passed
    assert not report.segments["w"].passed
    assert {rec.segment for rec in report.failures} == {"w"}
    with pytest.raises(fastgrad.GradientCheckError):
        assert_jax(lambda p: jnp.sum(scaled_product_bad(p["x"], p["w"])), params)


def test_threads_evaluate_in_float64():
    # jax's x64 switch is thread-local: every worker thread must evaluate in 64-bit too
    params = {"w": normal(40)}
    serial = fgj.check(lambda p: jnp.sum(jnp.tanh(p["w"]) ** 2), params, workers=1)
    threaded = fgj.check(lambda p: jnp.sum(jnp.tanh(p["w"]) ** 2), params, workers=2)
    assert threaded.path == "threads" and threaded.passed
    assert [r.numeric for r in serial.coords] == [r.numeric for r in threaded.coords]


def test_caller_config_untouched():
    fgj.check(lambda p: jnp.sum(p**2), normal(3))
    assert jnp.zeros(1).dtype == jnp.float32 or jax.config.jax_enable_x64


def test_errors():
    with pytest.raises(ValueError, match="f: must return a real scalar"):
        fgj.check(lambda p: p * 2, normal(3))
    with pytest.raises(ValueError, match="params: no floating-point leaf"):
        fgj.check(lambda p: 1.0, {"n": 3})
    with pytest.raises(TypeError, match="f: expected a callable"):
        fgj.check("loss", normal(3))


def test_missing_jax_says_how_to_install():
    code = (
        "import sys; sys.modules['jax'] = None\n"
        "try:\n    import fastgrad.jax\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "pip install fastgrad[jax]" in out.stdout
