"""Assertions for test suites: each raises ``fastgrad.GradientCheckError`` when a check fails.

>>> from fastgrad.testing import assert_gradients, assert_module
>>> assert_gradients(loss, theta, grad, segments=segs)
>>> assert_module(net, lambda out: out.sum(), x)        # torch

``GradientCheckError`` is an ``AssertionError`` whose message is the report table and whose
``.report`` is the ``Report``; with the fastgrad pytest plugin (installed with the package) a
failing test shows that table instead of a traceback through fastgrad's internals. Every
function returns the report when the check passes. The framework adapters are imported on first
use, so this module never imports torch or jax by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .checks.coordinates import assert_gradients
from .errors import GradientCheckError
from .results.report import Report

__all__ = [
    "GradientCheckError",
    "assert_function",
    "assert_gradients",
    "assert_jax",
    "assert_layer",
    "assert_model",
    "assert_module",
    "assert_passed",
]


def assert_passed(report: Report) -> Report:
    """Raise ``GradientCheckError`` unless ``report.passed``; return the report.

    >>> report = fastgrad.check(loss, theta, grad)
    >>> assert_passed(report)
    """
    if not isinstance(report, Report):
        raise TypeError(f"report: expected a fastgrad Report, got {type(report).__name__}")
    if not report.passed:
        raise GradientCheckError(report)
    return report


def assert_module(module: Any, loss_fn: Callable | None, *inputs: Any, **check_options: Any) -> Report:
    """``fastgrad.torch.check_module`` that raises when the check fails.

    >>> net = torch.nn.Linear(3, 2)
    >>> assert_module(net, lambda out: out.pow(2).sum(), torch.randn(4, 3))
    """
    from . import torch as fg_torch

    return assert_passed(fg_torch.check_module(module, loss_fn, *inputs, **check_options))


def assert_function(fn: Callable, *tensors: Any, **check_options: Any) -> Report:
    """``fastgrad.torch.check_function`` that raises when the check fails.

    >>> x = torch.randn(3, 4, requires_grad=True)
    >>> assert_function(MyFunction.apply, x)
    """
    from . import torch as fg_torch

    return assert_passed(fg_torch.check_function(fn, *tensors, **check_options))


def assert_jax(f: Callable, params: Any, *args: Any, **check_options: Any) -> Report:
    """``fastgrad.jax.check`` that raises when the check fails.

    >>> params = {"w": jnp.ones((3, 2))}
    >>> assert_jax(lambda p, x: jnp.sum(jnp.tanh(x @ p["w"])), params, jnp.ones((4, 3)))
    """
    from . import jax as fg_jax

    return assert_passed(fg_jax.check(f, params, *args, **check_options))


def assert_model(model: Any, loss_and_grads: Callable | None = None, **options: Any) -> Report:
    """``fastgrad.models.check_model`` that raises when the check fails.

    >>> model = TwoLayerNet(input_dim=5, hidden_dim=4, num_classes=3)
    >>> assert_model(model, X=X, y=y)
    """
    from .models import check_model

    return assert_passed(check_model(model, loss_and_grads, **options))


def assert_layer(forward: Callable, backward: Callable, *inputs: Any, **check_options: Any) -> Report:
    """``fastgrad.models.check_layer`` that raises when the check fails.

    >>> x, w, b = np.random.randn(4, 5), np.random.randn(5, 3), np.random.randn(3)
    >>> assert_layer(affine_forward, affine_backward, x, w, b)
    """
    from .models import check_layer

    return assert_passed(check_layer(forward, backward, *inputs, **check_options))
