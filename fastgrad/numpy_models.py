"""Check hand-written numpy models and layers (the CS231n patterns).

>>> import fastgrad as fg
>>> fg.check_model(model, X=X, y=y)                     # model.params, model.loss(X, y)
>>> fg.check_layer(affine_forward, affine_backward, x, w, b)

``check_model`` is for a model object with a ``params`` dict (name -> array) and a method that
returns ``(loss, grads)`` with ``grads`` keyed like ``params``; ``check_layer`` is for a layer's
``forward``/``backward`` pair with an upstream gradient. Both return a ``fastgrad.Report``, take
the options of ``fastgrad.check`` and evaluate float64 copies (one per worker thread); the
caller's model, its ``params`` and the caller's arrays are never modified.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ._adapt import (
    ThreadLocalLoss,
    check_seed,
    core_check,
    cotangent_rng,
    float64_copy,
    numpy_seeded,
    serial_by_default,
)
from .errors import InvalidType, InvalidValue
from .results.report import Report
from .segments import SegmentMap

__all__ = ["check_layer", "check_model"]


class _NumpyLoss(ThreadLocalLoss):
    """Per-thread float64 working arrays; numpy's global RNG re-seeded when the loss is random."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], seed: int):
        super().__init__(seed)
        self.slices = SegmentMap.from_shapes(shapes).slices()
        self.size = sum(b - a for a, b, _ in self.slices.values())

    def rng_context(self):
        return numpy_seeded(self.seed)

    def working(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        flat = np.zeros(self.size)
        return flat, {n: flat[a:b].reshape(shape) for n, (a, b, shape) in self.slices.items()}


# ---------------------------------------------------------------- check_model


def _default_loss_and_grads(model: Any, *data: Any) -> tuple[Any, Mapping[str, Any]]:
    return model.loss(*data)


class _ModelLoss(_NumpyLoss):
    framework = "loss_and_grads(model, *data)"

    def __init__(self, template, loss_and_grads, data: tuple, shapes, seed: int):
        super().__init__(shapes, seed)
        self.template = template
        self.loss_and_grads = loss_and_grads
        self.data = data

    def make_state(self) -> tuple[np.ndarray, Any]:
        model = copy.deepcopy(self.template)
        flat, views = self.working()
        model.params = dict(model.params)
        model.params.update(views)
        return flat, model

    def call(self, state, theta: np.ndarray) -> tuple[Any, Mapping[str, Any]]:
        flat, model = state
        np.copyto(flat, theta)
        result = self.loss_and_grads(model, *self.data)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise InvalidType(
                f"loss_and_grads: must return (loss, grads), got {type(result).__name__}"
            )
        return result

    def evaluate(self, state, theta: np.ndarray) -> float:
        return _scalar(self.call(state, theta)[0], "loss_and_grads: the loss")

    def analytic(self, theta: np.ndarray) -> np.ndarray:
        with self.pinned():
            loss, grads = self.call(self.state(), theta)
        _scalar(loss, "loss_and_grads: the loss")
        if not isinstance(grads, Mapping):
            raise InvalidType(
                f"loss_and_grads: grads must be a dict name -> array, got {type(grads).__name__}"
            )
        parts = []
        for name, (_, _, shape) in self.slices.items():
            if name not in grads:
                raise InvalidValue(
                    f"loss_and_grads: grads has no entry for parameter {name!r} "
                    f"(it has {sorted(grads)})"
                )
            parts.append(_gradient_like(grads[name], shape, f"grads[{name!r}]"))
        return np.concatenate(parts)


def check_model(
    model: Any,
    loss_and_grads: Callable[..., tuple[Any, Mapping[str, Any]]] | None = None,
    *,
    X: Any = None,
    y: Any = None,
    params: list[str] | None = None,
    **check_options: Any,
) -> Report:
    """Check the gradients a numpy model returns against centered differences of its loss.

    Segments are the model's parameters, named as in ``model.params``. Losses are evaluated on
    deep copies of the model whose ``params`` are float64 working arrays, so ``model`` and
    ``model.params`` are never modified; give the model ``dtype=np.float64`` if it casts its
    parameters or data. Random losses (dropout) are made deterministic by re-seeding numpy's
    global RNG from ``seed`` before each evaluation; the caller's RNG state is restored.

    Parameters
    ----------
    model : object
        Has a non-empty ``params`` dict (name -> real array) and, unless ``loss_and_grads`` is
        given, a method ``loss(*data) -> (loss, grads)``, with ``grads`` a dict keyed like
        ``params`` (the CS231n ``TwoLayerNet``/``FullyConnectedNet`` convention). Must be
        deep-copyable.
    loss_and_grads : callable, optional
        ``loss_and_grads(model, *data) -> (loss, grads)``; by default ``model.loss(*data)``.
        ``grads`` must have an entry for every checked parameter, of its shape.
    X : array_like, optional
        The first data argument (``data = (X, y)``, only the ones given).
    y : array_like, optional
        The second data argument (labels).
    params : list of str, optional
        The names to check, in this order; by default all of ``model.params``.
    **check_options
        Every option of ``fastgrad.check`` is forwarded to it (``samples``, ``seed``,
        ``depth``, ``tol``, ``workers``, ...: see ``help(fastgrad.check)``). ``seed`` also
        seeds numpy's global RNG for random losses (dropout). ``workers`` defaults to 1 here
        (numpy already uses BLAS threads); with more, each worker thread evaluates its own copy.

    Returns
    -------
    fastgrad.Report
        The check's report, one segment per checked parameter.

    Raises
    ------
    TypeError
        When ``model`` has no non-empty ``params`` dict, has no ``loss`` method and no
        ``loss_and_grads`` is given, cannot be deep-copied, or a parameter is complex or not
        numeric; when ``loss_and_grads`` is not callable, does not return ``(loss, grads)``, or
        its ``grads`` is not a dict or holds a complex gradient.
    ValueError
        When a name in ``params`` is not in ``model.params``, ``grads`` lacks a parameter or has
        a gradient of the wrong shape, the loss is not a real scalar, ``seed`` is not a
        non-negative int, or an option is refused by ``fastgrad.check``.
    fastgrad.NondeterminismError
        When the loss differs by more than ``nondet_tol`` between two evaluations at the same
        parameters even with numpy's global RNG re-seeded (a ``default_rng()`` created inside
        the loss).
    fastgrad.LossError
        When the loss raises during the check's evaluations. An exception in the first calls,
        before the check starts, propagates as is.

    Examples
    --------
    >>> model = TwoLayerNet(input_dim=5, hidden_dim=4, num_classes=3)   # CS231n assignment 2
    >>> report = fastgrad.check_model(model, X=X, y=y)                  # calls model.loss(X, y)
    >>> report.segments["W1"].passed
    """
    values = getattr(model, "params", None)
    if not isinstance(values, Mapping) or not values:
        raise InvalidType(
            f"model: expected an object with a non-empty `params` dict, got {type(model).__name__}"
            f" with params={values!r}"[:300]
        )
    if loss_and_grads is None:
        if not callable(getattr(model, "loss", None)):
            raise InvalidType(
                f"model: {type(model).__name__} has no loss(...) method; pass loss_and_grads"
            )
        loss_and_grads = _default_loss_and_grads
    elif not callable(loss_and_grads):
        raise InvalidType(f"loss_and_grads: expected a callable or None, got {loss_and_grads!r}")
    names = list(values) if params is None else list(params)
    for name in names:
        if name not in values:
            raise InvalidValue(f"params: {name!r} is not in model.params ({list(values)})")
    seed = check_seed(check_options)
    initial = {name: float64_copy(f"model.params[{name!r}]", values[name]) for name in names}
    try:
        template = copy.deepcopy(model)
    except Exception as exc:
        raise InvalidType(f"model: cannot be deep-copied ({type(exc).__name__}: {exc})") from exc
    data = tuple(d for d in (X, y) if d is not None)
    shapes = {name: v.shape for name, v in initial.items()}
    loss = _ModelLoss(template, loss_and_grads, data, shapes, seed)
    theta = np.concatenate([v.ravel() for v in initial.values()])
    with numpy_seeded(seed):  # leaves the caller's global RNG as it was
        loss.pin_randomness(theta, check_options)
        grad = loss.analytic(theta)
        return core_check(loss, theta, grad, segments=shapes, **serial_by_default(check_options))


# ---------------------------------------------------------------- check_layer


def _argument_names(forward: Callable, count: int) -> list[str]:
    """forward's positional parameter names, "arg0", "arg1", ... where there are none."""
    names = [f"arg{i}" for i in range(count)]
    try:
        parameters = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        return names
    for i, p in enumerate(parameters[:count]):
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names[i] = p.name
        else:
            break
    return names


def _is_checked_input(value: Any) -> bool:
    return isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating)


class _LayerLoss(_NumpyLoss):
    framework = "sum(forward(*inputs)[0] * dout)"

    def __init__(self, forward, backward, inputs: tuple, checked: dict[str, int], shapes, seed):
        super().__init__(shapes, seed)
        self.forward = forward
        self.backward = backward
        self.inputs = inputs  # float64 copies of the checked arrays, the rest as given
        self.checked = checked  # segment name -> position in inputs
        self.dout: np.ndarray | None = None

    def make_state(self) -> tuple[np.ndarray, list]:
        flat, views = self.working()
        args = list(self.inputs)
        for name, position in self.checked.items():
            args[position] = views[name]
        return flat, args

    def run_forward(self, state, theta: np.ndarray) -> tuple[np.ndarray, Any]:
        flat, args = state
        np.copyto(flat, theta)
        # Layer parameters such as bn_param are updated in place by some layers (running
        # means): every evaluation gets a fresh copy, so the caller's dict never changes.
        call = [a if _is_checked_input(a) else copy.deepcopy(a) for a in args]
        result = self.forward(*call)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise InvalidType(
                f"forward: must return (out, cache), got {type(result).__name__}; "
                "see fastgrad.check_layer for the calling convention"
            )
        out = np.asarray(result[0])
        if not np.issubdtype(out.dtype, np.floating):
            raise InvalidType(f"forward: out must be a floating-point array, got dtype {out.dtype}")
        if self.dout is None:
            self.dout = cotangent_rng(self.seed).standard_normal(out.shape)
        elif out.shape != self.dout.shape:
            raise InvalidValue(
                f"forward: out changed shape between evaluations ({self.dout.shape} -> {out.shape})"
            )
        return out, result[1]

    def evaluate(self, state, theta: np.ndarray) -> float:
        out, _ = self.run_forward(state, theta)
        return float(np.sum(out * self.dout))

    def analytic(self, theta: np.ndarray, count: int) -> np.ndarray:
        with self.pinned():
            _, cache = self.run_forward(self.state(), theta)
            grads = self.backward(self.dout.copy(), cache)
        if isinstance(grads, np.ndarray) or not isinstance(grads, (tuple, list)):
            grads = (grads,)
        if len(grads) != count:
            raise InvalidValue(
                f"backward: returned {len(grads)} gradient(s) but forward has {count} "
                "floating-point array input(s); it must return one gradient per float array "
                "input, in order"
            )
        names = list(self.checked)
        return np.concatenate([
            _gradient_like(g, self.slices[n][2], f"backward: the gradient of {n!r}")
            for n, g in zip(names, grads, strict=True)
        ])


def check_layer(
    forward: Callable[..., tuple[Any, Any]],
    backward: Callable[[np.ndarray, Any], Any],
    *inputs: Any,
    **check_options: Any,
) -> Report:
    """Check a layer's ``backward`` against centered differences of its ``forward``.

    Calling convention (CS231n): ``out, cache = forward(*inputs)`` and
    ``grads = backward(dout, cache)``. The checked loss is ``sum(out * dout)`` with a fixed
    standard-normal upstream gradient ``dout`` drawn from the check's ``seed``. Segments are the
    floating-point ndarray inputs, named after ``forward``'s parameters (``"x"``, ``"w"``,
    ``"b"``), or ``"arg0"``, ``"arg1"``, ... for ``*args``.

    Parameters
    ----------
    forward : callable
        ``forward(*inputs) -> (out, cache)``, ``out`` a floating-point array of a fixed shape.
    backward : callable
        ``backward(dout, cache)`` returning one gradient per floating-point ndarray input, in
        order (``dx, dw, db = affine_backward(dout, cache)``), or a single array when there is
        one (``dx = relu_backward(dout, cache)``).
    *inputs : numpy.ndarray or any
        The arguments of ``forward``. Floating-point ndarrays are checked (as float64 copies);
        anything else (``bn_param``/``conv_param`` dicts, integer labels) is passed through,
        a fresh deep copy to every call, so running statistics never drift and the caller's
        dicts stay as they were.
    **check_options
        Every option of ``fastgrad.check`` is forwarded to it (``samples``, ``seed``,
        ``depth``, ``tol``, ``workers``, ...: see ``help(fastgrad.check)``). ``seed`` also
        seeds numpy's global RNG for random losses (dropout masks drawn in ``forward``).
        ``workers`` defaults to 1 here (numpy already uses BLAS threads); with more, each worker
        thread evaluates its own copy.

    Returns
    -------
    fastgrad.Report
        The check's report, one segment per floating-point ndarray input.

    Raises
    ------
    TypeError
        When ``forward`` or ``backward`` is not callable, an input array is complex,
        ``forward`` does not return ``(out, cache)`` or its ``out`` is not floating-point, or a
        gradient is complex.
    ValueError
        When no input is a floating-point ndarray, ``backward`` returns the wrong number of
        gradients or one of the wrong shape, ``out`` changes shape between calls, ``seed`` is
        not a non-negative int, or an option is refused by ``fastgrad.check``.
    fastgrad.NondeterminismError
        When ``forward`` differs by more than ``nondet_tol`` between two calls at the same inputs
        even with numpy's global RNG re-seeded.
    fastgrad.LossError
        When ``forward`` raises during the check's evaluations. An exception in the first calls,
        before the check starts, propagates as is.

    Examples
    --------
    >>> x, w, b = np.random.randn(4, 5), np.random.randn(5, 3), np.random.randn(3)
    >>> report = fastgrad.check_layer(affine_forward, affine_backward, x, w, b)   # CS231n layers
    >>> report.segments["w"].passed
    """
    if not callable(forward):
        raise InvalidType(f"forward: expected a callable, got {forward!r}")
    if not callable(backward):
        raise InvalidType(f"backward: expected a callable, got {backward!r}")
    seed = check_seed(check_options)
    names = _argument_names(forward, len(inputs))
    args: list[Any] = []
    checked: dict[str, int] = {}
    for position, (name, value) in enumerate(zip(names, inputs, strict=True)):
        if _is_checked_input(value):
            if np.iscomplexobj(value):
                raise InvalidType(f"{name}: complex arrays are not supported")
            value = float64_copy(name, value)
            checked[name] = position
        args.append(value)
    if not checked:
        raise InvalidValue(
            "inputs: no floating-point ndarray among the inputs, so there is nothing to check "
            f"(got {[type(v).__name__ for v in inputs]})"
        )
    shapes = {name: args[position].shape for name, position in checked.items()}
    loss = _LayerLoss(forward, backward, tuple(args), checked, shapes, seed)
    theta = np.concatenate([args[position].ravel() for position in checked.values()])
    with numpy_seeded(seed):  # leaves the caller's global RNG as it was
        loss.pin_randomness(theta, check_options)
        grad = loss.analytic(theta, len(checked))
        return core_check(loss, theta, grad, segments=shapes, **serial_by_default(check_options))


# ---------------------------------------------------------------- helpers


def _scalar(value: Any, what: str) -> float:
    arr = np.asarray(value)
    if arr.size != 1:
        raise InvalidValue(f"{what} must be a scalar, got an array of shape {arr.shape}")
    if np.iscomplexobj(arr):
        raise InvalidValue(f"{what} must be real, got {arr.dtype}")
    return float(arr.reshape(()))


def _gradient_like(value: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != tuple(shape):
        if arr.size == int(np.prod(shape, dtype=np.int64)) and arr.ndim != len(shape):
            pass  # e.g. a (1, n) gradient for an (n,) bias: same values, accept
        else:
            raise InvalidValue(f"{what}: has shape {arr.shape}, expected {tuple(shape)}")
    if np.iscomplexobj(arr):
        raise InvalidType(f"{what}: complex gradients are not supported")
    return np.asarray(arr, dtype=np.float64).ravel()
