"""The exceptions the adapters' and segment map's docstrings promise are the ones raised."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest

import fastgrad


def test_unflatten_accepts_shapes_and_refuses_other_maps():
    theta, segs = fastgrad.flatten({"W": np.arange(6.0).reshape(2, 3), "b": np.ones(2)})
    by_shapes = fastgrad.unflatten(theta, {"W": (2, 3), "b": (2,)})
    assert by_shapes["W"].shape == (2, 3) and np.shares_memory(by_shapes["W"], theta)
    with pytest.raises(TypeError, match="segments: expected a SegmentMap"):
        fastgrad.unflatten(theta, [("W", 0, 6, (2, 3))])
    with pytest.raises(ValueError, match="theta: has 7 values but the segment map covers 8"):
        fastgrad.unflatten(theta[:7], segs)


def test_flatten_refuses_an_empty_array_by_name():
    with pytest.raises(ValueError, match="segment 'b': non-positive size"):
        fastgrad.flatten({"W": np.ones(3), "b": np.zeros(0)})


def _dropout_forward(x):
    mask = np.random.default_rng().random(x.shape) < 0.5  # a generator no re-seeding reaches
    return x * mask, mask


def test_check_layer_random_beyond_numpy_global_rng_is_nondeterminism():
    with pytest.raises(fastgrad.NondeterminismError, match="different values"):
        # 48 elements: two masks are equal with chance 2^-48 (6 elements: 1 in 64, when the
        # adapter's two forward calls agreed and only the check's own test at theta caught it)
        fastgrad.check_layer(_dropout_forward, lambda dout, mask: dout * mask, np.ones((6, 8)))


def test_torch_function_random_beyond_torch_rng_is_nondeterminism():
    torch = pytest.importorskip("torch")
    import fastgrad.torch

    def noisy(x):
        return x * float(np.random.default_rng().random())

    with pytest.raises(fastgrad.NondeterminismError, match="different values"):
        fastgrad.torch.check_function(noisy, torch.ones(3, requires_grad=True))


def test_tiny_randomness_within_nondet_tol_is_accepted_by_the_adapters():
    def forward(x):
        jitter = 1 + 1e-13 * np.random.default_rng().random()  # no re-seeding reaches it
        return x * x * jitter, x

    def backward(dout, x):
        return 2 * x * dout

    x = np.linspace(0.5, 1.5, 6)
    assert fastgrad.check_layer(forward, backward, x, nondet_tol=1e-9).passed
    with pytest.raises(fastgrad.NondeterminismError):
        fastgrad.check_layer(forward, backward, x)
    torch = pytest.importorskip("torch")
    fg_torch = importlib.import_module("fastgrad.torch")

    report = fg_torch.check_function(
        lambda t: forward(t)[0], torch.tensor(x, requires_grad=True), nondet_tol=1e-9)
    assert report.passed


def test_torch_function_raising_at_a_perturbed_point_is_a_loss_error():
    torch = pytest.importorskip("torch")
    import fastgrad.torch

    def fails_off_theta(x):
        if x[0].item() != 1.0:  # x[0] is 1 at theta, perturbed only when coordinate 0 is
            raise RuntimeError("off theta")
        return x * x

    with pytest.raises(fastgrad.LossError, match="RuntimeError: off theta") as caught:
        fastgrad.torch.check_function(fails_off_theta, torch.ones(3, requires_grad=True))
    assert "arg0" in str(caught.value)


def test_torch_function_raising_before_the_check_propagates_as_is():
    torch = pytest.importorskip("torch")
    import fastgrad.torch

    def broken(x):
        raise KeyError("broken")

    with pytest.raises(KeyError, match="broken"):
        fastgrad.torch.check_function(broken, torch.ones(3, requires_grad=True))


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_adapter_without_its_framework_says_how_to_install_it(framework, monkeypatch):
    monkeypatch.setitem(sys.modules, framework, None)  # `import torch` now raises ImportError
    monkeypatch.delitem(sys.modules, f"fastgrad.{framework}", raising=False)
    with pytest.raises(ImportError, match=rf"pip install fastgrad\[{framework}\]"):
        importlib.import_module(f"fastgrad.{framework}")
