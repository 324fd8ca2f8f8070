"""``check_module`` and ``check_function``: sampled coordinates of a module's parameters or a
function's tensor arguments, analytic gradients from autograd, numeric in float64 on copies.

Both return a ``fastgrad.Report`` and take the options of ``fastgrad.check``. The caller's
module (its parameters, their ``.grad``, its buffers and its train/eval mode), its tensors and
torch's global RNG state are left untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._adapt import ThreadLocalLoss, check_seed, core_check, serial_by_default
from ..errors import InvalidType, InvalidValue
from ..results.report import Report
from ..segments import SegmentMap
from .flat_module import FlatModule
from .tensors import (
    ANALYTIC_ON_CALLERS_MODULE,
    Inputs,
    contract,
    cotangents,
    flat_gradient,
    seeded,
)

__all__ = ["check_function", "check_module"]

_F64 = torch.float64


class _FunctionState:
    __slots__ = ("flat", "flat_np", "inputs")


class _FunctionLoss(ThreadLocalLoss):
    """``sum(fn(*tensors) * c)`` of the flat vector of the checked tensors. Per thread: one flat
    float64 tensor whose views are the checked tensors, theta copied in (a function's tensors
    are small; a module's loss binds views instead: ``FlatModule``)."""

    framework = "fn(*tensors)"

    def __init__(self, fn, inputs: Inputs, seed: int):
        super().__init__(seed)
        self.fn = fn
        self.inputs = inputs
        self.slices = SegmentMap.from_shapes(
            {name: tuple(value.shape) for name, value in inputs.wrt.items()}).slices()
        self.size = sum(value.numel() for value in inputs.wrt.values())
        self.cotangents: list[torch.Tensor] | None = None  # set when the output is contracted

    def rng_context(self) -> contextlib.AbstractContextManager:
        return seeded(self.seed)

    def make_state(self) -> _FunctionState:
        state = _FunctionState()
        state.flat = torch.zeros(self.size, dtype=_F64)
        state.flat_np = state.flat.numpy()
        state.inputs = self.inputs.bind(
            {n: state.flat[a:b].view(shape) for n, (a, b, shape) in self.slices.items()}.get)
        return state

    def evaluate(self, state: _FunctionState, theta: np.ndarray) -> float:
        np.copyto(state.flat_np, theta, casting="same_kind")
        with torch.no_grad():
            return self.loss(state.inputs).item()

    def loss(self, inputs: tuple) -> torch.Tensor:
        output = self.fn(*inputs)
        if self.cotangents is None:
            self.cotangents = cotangents(output, self.seed, "fn(*tensors)")
        return contract(output, self.cotangents, "fn(*tensors)")

    def analytic(self, theta: np.ndarray) -> np.ndarray:
        leaves = {name: torch.from_numpy(theta[a:b].copy()).view(shape).requires_grad_(True)
                  for name, (a, b, shape) in self.slices.items()}
        inputs = self.inputs.bind(leaves.get)
        with torch.enable_grad(), self.pinned():
            loss = self.loss(inputs)
        return flat_gradient(loss, list(leaves.values()))


def _run(loss: ThreadLocalLoss, theta: np.ndarray, analytic: Callable[[np.ndarray], np.ndarray],
         segments: dict, check_options: dict, path_note: str = "") -> Report:
    # The first evaluations (main thread) fix the cotangents from the output shapes and tell
    # whether the loss is random, before any worker thread runs.
    loss.pin_randomness(theta, check_options)
    grad = analytic(theta)
    report = core_check(loss, theta, grad, segments=segments, **check_options)
    if path_note:
        report.path_reason += f"; {path_note}"
    return report


# ---------------------------------------------------------------- public API


def check_module(
    module: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor] | None,
    *inputs: Any,
    target: Any = None,
    **check_options: Any,
) -> Report:
    """Check autograd's gradient of ``loss_fn(module(*inputs))`` against centered differences.

    Segments are the module's trainable parameters, named as ``named_parameters()`` names them
    (``"0.weight"``), followed by one segment per input tensor that requires grad (``"input0"``;
    ``"input1.0"`` for the first tensor of a tuple argument such as an LSTM's ``(h0, c0)``).
    The numeric side evaluates float64 CPU copies of the module (one per worker thread), in the
    module's current train/eval mode; the analytic gradient is ``loss.backward()`` on your
    module itself, as your training runs it (parameter and post-accumulate-grad hooks, module
    hooks, forward hooks that register tensor hooks, parametrizations, tied parameters), its
    parameters bound to the same float64 values for that one pass and put back afterwards.
    Buffers such as BatchNorm running statistics are restored before every evaluation, and when
    the loss is random (dropout in train mode) torch's RNG is re-seeded from ``seed`` before
    every evaluation, so the same dropout mask is used throughout. The caller's module (its
    parameters, ``.grad``, buffers, hooks and mode), its tensors and torch's RNG are bitwise
    unchanged afterwards.

    Parameters
    ----------
    module : torch.nn.Module
        The model. Parameters with ``requires_grad=False`` and empty ones are not checked; the
        module must be deep-copyable.
    loss_fn : callable or None
        ``loss_fn(output)``, or ``loss_fn(output, target)`` when ``target`` is given, returning a
        scalar (a one-element tensor or a number); ``output`` is the float64 output of
        ``module(*inputs)``. A loss module such as ``nn.CrossEntropyLoss(weight=w)`` can be passed
        as is (it is copied to float64 too). ``None``: the output's floating tensors are
        contracted with a fixed standard-normal cotangent drawn from ``seed``.
    *inputs : tensor or any
        The positional arguments of ``module``; tensors may be nested in tuples, lists and dicts.
        Floating tensors are passed as float64 copies, and those with ``requires_grad=True`` are
        checked too; anything else is passed through.
    target : tensor or any, optional
        The second argument of ``loss_fn`` (labels, regression targets); floating tensors are
        passed as float64 copies. Needs a ``loss_fn``.
    **check_options
        Every option of ``fastgrad.check`` is forwarded to it (``samples``, ``seed``,
        ``depth``, ``tol``, ``workers``, ...: see ``help(fastgrad.check)``). ``seed`` also
        draws the random cotangent and seeds torch's RNG when the loss is random. ``workers``
        defaults to 1 here: torch parallelizes inside its ops; with more, each worker thread
        evaluates its own copy.

    Returns
    -------
    fastgrad.Report
        The check's report (``report.passed``, ``report.segments["0.weight"]``, ``print(report)``
        for the table).

    Raises
    ------
    TypeError
        When ``module`` is not a ``torch.nn.Module`` or cannot be deep-copied, ``loss_fn`` is
        neither callable nor None, a parameter or input is complex, or ``loss_fn`` returns
        something that is not a scalar number.
    ValueError
        When there is nothing to check (no parameter or input requires grad), ``target`` is given
        without ``loss_fn``, ``loss_fn`` returns a tensor of more than one value or a complex
        one, ``seed`` is not a non-negative int, or an option is refused by ``fastgrad.check``.
    fastgrad.NondeterminismError
        When the loss differs by more than ``nondet_tol`` between two evaluations at the same
        parameters even with torch's RNG re-seeded (randomness from numpy or an unseeded
        generator inside the module).
    fastgrad.LossError
        When ``module`` or ``loss_fn`` raises during the check's evaluations (the message names
        the coordinate, or says "at theta"). An exception in the first forward passes, before the
        check starts, propagates as is.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    >>> fastgrad.torch.check_module(net, torch.nn.CrossEntropyLoss(), x, target=y).passed
    True
    """
    seed = check_seed(check_options)
    loss, theta = FlatModule.build(module, loss_fn, inputs, target=target, dtype=_F64, seed=seed,
                                   wrt_inputs=True, contract=True)
    with torch.random.fork_rng(devices=[]):
        return _run(loss, theta, lambda theta: loss.callers_gradient(module, theta),
                    loss.segments, serial_by_default(check_options),
                    path_note=ANALYTIC_ON_CALLERS_MODULE)


def check_function(fn: Callable[..., Any], *tensors: Any, **check_options: Any) -> Report:
    """Check the gradient of ``sum(fn(*tensors) * c)`` for a fixed random cotangent ``c``.

    This is the check for a custom ``torch.autograd.Function``: ``check_function(MyFn.apply, x,
    w)`` compares its ``backward`` with centered differences of its ``forward``. The gradient is
    taken with respect to every floating tensor argument that requires grad; segments are named
    by position: ``"arg0"``, ``"arg1"``, ... (``"arg2.0"`` inside a tuple or list argument).
    ``fn`` is called on float64 CPU copies; the caller's tensors and torch's RNG are untouched.

    Parameters
    ----------
    fn : callable
        ``fn(*tensors)`` returning a tensor or a tuple/list/dict of tensors; its floating
        outputs are contracted with ``c`` (standard normal, drawn from ``seed``, one per output).
    *tensors : tensor or any
        The arguments of ``fn``, possibly nested in tuples, lists and dicts. Floating tensors
        with ``requires_grad=True`` are checked; other floating tensors are passed as float64
        copies and anything else as is.
    **check_options
        Every option of ``fastgrad.check`` is forwarded to it (``samples``, ``seed``,
        ``depth``, ``tol``, ``workers``, ...: see ``help(fastgrad.check)``). ``seed`` also
        draws the random cotangent and seeds torch's RNG when the loss is random. ``workers``
        defaults to 1 here: torch parallelizes inside its ops; with more, each worker thread
        evaluates its own copy.

    Returns
    -------
    fastgrad.Report
        The check's report, one segment per checked tensor.

    Raises
    ------
    TypeError
        When ``fn`` is not callable or a tensor is complex.
    ValueError
        When no floating tensor requires grad (the message lists the arguments), ``fn`` returns
        no floating tensor or changes its output shapes between evaluations, ``seed`` is not a
        non-negative int, or an option is refused by ``fastgrad.check``.
    fastgrad.NondeterminismError
        When ``fn`` differs by more than ``nondet_tol`` between two evaluations at the same
        tensors even with torch's RNG re-seeded.
    fastgrad.LossError
        When ``fn`` raises during the check's evaluations (the message names the coordinate, or
        says "at theta"). An exception in the first calls, before the check starts, propagates
        as is.

    Examples
    --------
    >>> x, w = torch.randn(3, 4, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    >>> fastgrad.torch.check_function(lambda x, w: torch.tanh(x @ w), x, w).passed
    True
    """
    if not callable(fn):
        raise InvalidType(f"fn: expected a callable, got {fn!r}")
    seed = check_seed(check_options)
    args = Inputs(tensors, "arg")
    if not args.wrt:
        described = ", ".join(
            f"arg{i}: {type(t).__name__}"
            + (f"(requires_grad={t.requires_grad})" if isinstance(t, torch.Tensor) else "")
            for i, t in enumerate(tensors)
        )
        raise InvalidValue(
            "tensors: no floating tensor requires grad, so there is nothing to check "
            f"({described or 'no arguments'}); call .requires_grad_() on the ones to check"
        )
    loss = _FunctionLoss(fn, args, seed)
    theta = np.concatenate([value.reshape(-1).numpy() for value in args.wrt.values()])
    segments = {name: shape for name, (_, _, shape) in loss.slices.items()}
    with torch.random.fork_rng(devices=[]):
        return _run(loss, theta, loss.analytic, segments, serial_by_default(check_options))
