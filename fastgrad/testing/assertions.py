"""The assertions of ``fastgrad.testing``: each wraps one check and raises
``fastgrad.GradientCheckError`` when it does not pass (the package's docstring says more)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..checks.audit import audit
from ..checks.coordinates import assert_gradients
from ..errors import GradientCheckError, InvalidType
from ..results.audit_report import AuditReport
from ..results.report import Report

__all__ = [
    "GradientCheckError",
    "assert_audit",
    "assert_function",
    "assert_gradients",
    "assert_jax",
    "assert_layer",
    "assert_model",
    "assert_module",
    "assert_passed",
]


def assert_passed(report: Report | AuditReport) -> Report | AuditReport:
    """Raise unless ``report.passed``; return the report.

    For a report computed elsewhere (``fastgrad.check``, ``fastgrad.audit``, an adapter, a
    drop-in's ``JacobianReport``, a saved problem).

    Parameters
    ----------
    report : fastgrad.Report or fastgrad.AuditReport
        A check's report (a ``JacobianReport`` is a ``Report``) or an audit's.

    Returns
    -------
    fastgrad.Report or fastgrad.AuditReport
        ``report`` itself, when it passed.

    Raises
    ------
    fastgrad.GradientCheckError
        When the check does not pass: an ``AssertionError`` whose message is the report table
        and whose ``.report`` is the report.
    fastgrad.errors.InvalidType
        When ``report`` is none of these (a ``TypeError``).

    Examples
    --------
    >>> theta, grad = np.array([1.0, 2.0]), np.array([2.0, 4.0])
    >>> report = fastgrad.check(lambda t: float(t @ t), theta, grad)
    >>> assert_passed(report).passed
    True
    """
    if not isinstance(report, (Report, AuditReport)):
        raise InvalidType(f"report: expected a fastgrad Report or AuditReport, got "
                          f"{type(report).__name__}")
    if not report.passed:
        raise GradientCheckError(report)
    return report


def assert_audit(loss: Callable, theta: Any, grad: Any, **audit_options: Any) -> AuditReport:
    """``fastgrad.audit``, raising when the audit does not pass.

    The audit tests every coordinate through random directions and localizes the wrong ones,
    so a bug in one bias entry is found without checking each coordinate on its own.

    Parameters
    ----------
    loss : callable
        The loss, ``loss(theta, *args) -> float``.
    theta : numpy.ndarray
        The flat parameter vector.
    grad : numpy.ndarray or callable
        The analytic gradient at theta, or ``grad(theta, *args)``.
    **audit_options
        ``segments=``, ``args=``, ``budget=`` and the other options of ``fastgrad.audit``.

    Returns
    -------
    fastgrad.AuditReport
        The report of the passing audit.

    Raises
    ------
    fastgrad.GradientCheckError
        When the audit does not pass (failed or inconclusive): an ``AssertionError`` whose
        message is the audit's table, naming the failing segments and coordinates, and whose
        ``.report`` is the ``AuditReport``.
    TypeError, ValueError, fastgrad.NondeterminismError, fastgrad.LossError
        As ``fastgrad.audit`` raises them (bad input is a ``fastgrad.errors.InputError``).

    Examples
    --------
    >>> theta, segs = fastgrad.flatten({"W": W, "b": b})
    >>> assert_audit(loss, theta, grad, segments=segs, args=(X, y)).passed
    True
    """
    return assert_passed(audit(loss, theta, grad, **audit_options))


def assert_module(module: Any, loss_fn: Callable | None, *inputs: Any, **check_options: Any) -> Report:
    """``fastgrad.torch.check_module``, raising when the check does not pass.

    Parameters
    ----------
    module : torch.nn.Module
        The model; see ``fastgrad.torch.check_module``.
    loss_fn : callable or None
        ``loss_fn(output)`` (or ``loss_fn(output, target)``) returning a scalar; ``None``
        contracts the output with a fixed random cotangent.
    *inputs : tensor or any
        The arguments of ``module``; those that require grad are checked too.
    **check_options
        ``target=`` and the options of ``fastgrad.check`` (``samples``, ``seed``, ``depth``,
        ``tol``, ...), forwarded with the other arguments to ``fastgrad.torch.check_module``.

    Returns
    -------
    fastgrad.Report
        The report of the passing check.

    Raises
    ------
    fastgrad.GradientCheckError
        When the check does not pass: an ``AssertionError`` whose message is the report table
        and whose ``.report`` is the report.
    ImportError
        When PyTorch is not installed.
    TypeError, ValueError, fastgrad.NondeterminismError, fastgrad.LossError
        As ``fastgrad.torch.check_module`` raises them, for bad arguments or a failing loss.

    Examples
    --------
    >>> net = torch.nn.Linear(3, 2)
    >>> assert_module(net, lambda out: out.pow(2).sum(), torch.randn(4, 3)).passed
    True
    """
    from .. import torch as fg_torch

    return assert_passed(fg_torch.check_module(module, loss_fn, *inputs, **check_options))


def assert_function(fn: Callable, *tensors: Any, **check_options: Any) -> Report:
    """``fastgrad.torch.check_function``, raising when the check does not pass.

    Parameters
    ----------
    fn : callable
        ``fn(*tensors)`` returning a tensor or a tuple/list/dict of tensors, e.g. a custom
        ``torch.autograd.Function``'s ``apply``.
    *tensors : tensor or any
        The arguments of ``fn``; floating tensors with ``requires_grad=True`` are checked.
    **check_options
        The options of ``fastgrad.check`` (``samples``, ``seed``, ``depth``, ``tol``, ...),
        forwarded with the other arguments to ``fastgrad.torch.check_function``.

    Returns
    -------
    fastgrad.Report
        The report of the passing check.

    Raises
    ------
    fastgrad.GradientCheckError
        When the check does not pass: an ``AssertionError`` whose message is the report table
        and whose ``.report`` is the report.
    ImportError
        When PyTorch is not installed.
    TypeError, ValueError, fastgrad.NondeterminismError, fastgrad.LossError
        As ``fastgrad.torch.check_function`` raises them.

    Examples
    --------
    >>> x = torch.randn(3, 4, requires_grad=True)
    >>> assert_function(torch.tanh, x).passed
    True
    """
    from .. import torch as fg_torch

    return assert_passed(fg_torch.check_function(fn, *tensors, **check_options))


def assert_jax(f: Callable, params: Any, *args: Any, **check_options: Any) -> Report:
    """``fastgrad.jax.check``, raising when the check does not pass.

    Parameters
    ----------
    f : callable
        ``f(params, *args)`` returning a real scalar.
    params : pytree
        The point at which the gradient is checked; its floating leaves are the segments.
    *args : any
        Passed to ``f`` unchanged.
    **check_options
        The options of ``fastgrad.check`` (``samples``, ``seed``, ``depth``, ``tol``, ...),
        forwarded with the other arguments to ``fastgrad.jax.check``.

    Returns
    -------
    fastgrad.Report
        The report of the passing check.

    Raises
    ------
    fastgrad.GradientCheckError
        When the check does not pass: an ``AssertionError`` whose message is the report table
        and whose ``.report`` is the report.
    ImportError
        When JAX is not installed.
    TypeError, ValueError, fastgrad.LossError
        As ``fastgrad.jax.check`` raises them.

    Examples
    --------
    >>> params = {"w": jnp.ones((3, 2))}
    >>> assert_jax(lambda p, x: jnp.sum(jnp.tanh(x @ p["w"])), params, jnp.ones((4, 3))).passed
    True
    """
    from .. import jax as fg_jax

    return assert_passed(fg_jax.check(f, params, *args, **check_options))


def assert_model(model: Any, loss_and_grads: Callable | None = None, **options: Any) -> Report:
    """``fastgrad.check_model``, raising when the check does not pass.

    Parameters
    ----------
    model : object
        Has a ``params`` dict and, unless ``loss_and_grads`` is given, ``loss(*data) ->
        (loss, grads)``; see ``fastgrad.check_model``.
    loss_and_grads : callable, optional
        ``loss_and_grads(model, *data) -> (loss, grads)``; by default ``model.loss(*data)``.
    **options
        ``X=``, ``y=``, ``params=`` and the options of ``fastgrad.check``, forwarded to
        ``fastgrad.check_model``.

    Returns
    -------
    fastgrad.Report
        The report of the passing check.

    Raises
    ------
    fastgrad.GradientCheckError
        When the check does not pass: an ``AssertionError`` whose message is the report table
        and whose ``.report`` is the report.
    TypeError, ValueError, fastgrad.NondeterminismError, fastgrad.LossError
        As ``fastgrad.check_model`` raises them.

    Examples
    --------
    >>> model = TwoLayerNet(input_dim=5, hidden_dim=4, num_classes=3)   # CS231n assignment 2
    >>> assert_model(model, X=X, y=y)
    """
    from ..numpy_models import check_model

    return assert_passed(check_model(model, loss_and_grads, **options))


def assert_layer(forward: Callable, backward: Callable, *inputs: Any, **check_options: Any) -> Report:
    """``fastgrad.check_layer``, raising when the check does not pass.

    Parameters
    ----------
    forward : callable
        ``forward(*inputs) -> (out, cache)``.
    backward : callable
        ``backward(dout, cache)`` returning one gradient per floating-point ndarray input.
    *inputs : numpy.ndarray or any
        The arguments of ``forward``; floating-point ndarrays are checked.
    **check_options
        The options of ``fastgrad.check`` (``samples``, ``seed``, ``depth``, ``tol``, ...),
        forwarded with the other arguments to ``fastgrad.check_layer``.

    Returns
    -------
    fastgrad.Report
        The report of the passing check.

    Raises
    ------
    fastgrad.GradientCheckError
        When the check does not pass: an ``AssertionError`` whose message is the report table
        and whose ``.report`` is the report.
    TypeError, ValueError, fastgrad.NondeterminismError, fastgrad.LossError
        As ``fastgrad.check_layer`` raises them.

    Examples
    --------
    >>> x, w, b = np.random.randn(4, 5), np.random.randn(5, 3), np.random.randn(3)
    >>> assert_layer(affine_forward, affine_backward, x, w, b)          # CS231n layers
    """
    from ..numpy_models import check_layer

    return assert_passed(check_layer(forward, backward, *inputs, **check_options))
