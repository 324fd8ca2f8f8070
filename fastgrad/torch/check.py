"""``check_module`` and ``check_function``: sampled coordinates of a module's parameters or a
function's tensor arguments, analytic gradients from autograd, numeric in float64 on copies.

Both return a ``fastgrad.Report`` and take the options of ``fastgrad.check``. The caller's
module (its parameters, their ``.grad``, its buffers and its train/eval mode), its tensors and
torch's global RNG state are left untouched.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._adapt import ThreadLocalLoss, check_seed, core_check, cotangent_rng, serial_by_default
from ..errors import InvalidType, InvalidValue
from ..results.report import Report
from ..segments import SegmentMap
from .tensors import (
    ANALYTIC_ON_CALLERS_MODULE,
    CPU,
    SavedBuffers,
    backward_gradient,
    flat_gradient,
    has_forward_hooks,
    on_callers_module,
    rebuild,
    scalar_loss,
    seeded,
)

__all__ = ["check_function", "check_module"]

_F64 = torch.float64



# ---------------------------------------------------------------- nested inputs and outputs


def _float_leaves(obj: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a (nested) output, in a fixed order."""
    leaves: list[torch.Tensor] = []

    def visit(t: torch.Tensor, path: str) -> torch.Tensor:
        if t.is_floating_point():
            leaves.append(t)
        return t

    rebuild(obj, "", visit)
    return leaves


class _Inputs:
    """Float64 CPU copies of the caller's (nested) tensor arguments.

    Floating tensors that require grad are the checked ones: they get a segment named after their
    position (``input0``, ``arg1``, ``input1.0`` for the first tensor of a tuple argument).
    """

    def __init__(self, values: tuple, prefix: str):
        self.prefix = prefix
        self.wrt: dict[str, torch.Tensor] = {}  # segment name -> float64 value

        def convert(t: torch.Tensor, path: str) -> torch.Tensor:
            if t.is_complex():
                raise InvalidType(f"{path}: complex tensors are not supported (dtype {t.dtype})")
            if not t.is_floating_point():
                return t.detach().to(CPU).clone()
            value = t.detach().to(device=CPU, dtype=_F64).clone()
            if t.requires_grad and t.numel() > 0:
                self.wrt[path] = value
            return value

        self.values = tuple(rebuild(v, f"{prefix}{i}", convert) for i, v in enumerate(values))

    def bind(self, slot: Callable[[str], torch.Tensor | None]) -> tuple:
        """A private copy: checked tensors become ``slot(name)``, other floats are cloned."""

        def visit(t: torch.Tensor, path: str) -> torch.Tensor:
            bound = slot(path) if path in self.wrt else None
            return bound if bound is not None else t.clone()

        return tuple(rebuild(v, f"{self.prefix}{i}", visit) for i, v in enumerate(self.values))


def _cotangents(output: Any, seed: int, what: str) -> list[torch.Tensor]:
    leaves = _float_leaves(output)
    if not leaves:
        raise InvalidValue(f"{what}: returned no floating-point tensor to take the gradient of")
    rng = cotangent_rng(seed)
    return [torch.from_numpy(rng.standard_normal(t.shape)) for t in leaves]


def _contract(output: Any, cotangents: list[torch.Tensor], what: str) -> torch.Tensor:
    """``sum(output * c)`` over the floating tensors of the output: a scalar loss."""
    leaves = _float_leaves(output)
    if [t.shape for t in leaves] != [c.shape for c in cotangents]:
        raise InvalidValue(
            f"{what}: output shapes changed between evaluations "
            f"({[tuple(c.shape) for c in cotangents]} then {[tuple(t.shape) for t in leaves]})"
        )
    return sum((t.to(_F64) * c).sum() for t, c in zip(leaves, cotangents, strict=True))


# ---------------------------------------------------------------- the loss of theta


class _TorchLoss(ThreadLocalLoss):
    """Per-thread: one flat float64 tensor whose views are the checked tensors."""

    framework = "the torch loss"

    # a forward hook may register tensor hooks on outputs: the evaluations then record autograd
    grad_in_forward = False

    def __init__(self, initial: dict[str, torch.Tensor], seed: int):
        super().__init__(seed)
        self.initial = initial  # segment name -> float64 value at theta
        self.slices = SegmentMap.from_shapes(
            {name: tuple(value.shape) for name, value in initial.items()}).slices()
        self.size = sum(value.numel() for value in initial.values())
        self.cotangents: list[torch.Tensor] | None = None  # set when the output is contracted

    def rng_context(self) -> contextlib.AbstractContextManager:
        return seeded(self.seed)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: flat[a:b].view(shape) for n, (a, b, shape) in self.slices.items()}

    def evaluate(self, state: Any, theta: np.ndarray) -> float:
        np.copyto(state.flat_np, theta, casting="same_kind")
        with torch.enable_grad() if self.grad_in_forward else torch.no_grad():
            return self.loss(state, state.inputs).item()

    def loss(self, state: Any, inputs: tuple) -> torch.Tensor:
        raise NotImplementedError


class _State:
    __slots__ = ("buffers", "flat", "flat_np", "inputs", "module", "params")


class _ModuleLoss(_TorchLoss):
    framework = "loss_fn(module(*inputs))"

    def __init__(self, template, loss_fn, target: tuple, inputs: _Inputs, params, initial, seed):
        super().__init__(initial, seed)
        self.template = template
        self.loss_fn = loss_fn
        self.target = target  # () or (the float64 copy of target,)
        self.inputs = inputs
        self.params = params

    def make_state(self) -> _State:
        state = _State()
        state.module = copy.deepcopy(self.template)
        state.flat = torch.zeros(self.size, dtype=_F64)
        state.flat_np = state.flat.numpy()
        views = self.views(state.flat)
        state.params = []
        for name in self.params:
            param = state.module.get_parameter(name)
            param.data = views[name]  # the same Parameter object, its storage now in flat
            state.params.append(param)
        state.inputs = self.inputs.bind(views.get)
        # restored before every evaluation: no evaluation sees another's updates
        state.buffers = SavedBuffers(state.module)
        return state

    def loss(self, state: _State, inputs: tuple) -> torch.Tensor:
        state.buffers.restore()
        return self.output_loss(state.module(*inputs))

    def output_loss(self, output: Any) -> torch.Tensor:
        if self.loss_fn is not None:
            return scalar_loss(self.loss_fn(output, *self.target), "loss_fn")
        if self.cotangents is None:
            self.cotangents = _cotangents(output, self.seed, "module(*inputs)")
        return _contract(output, self.cotangents, "module(*inputs)")

    def callers_gradient(self, module: torch.nn.Module, theta: np.ndarray) -> np.ndarray:
        """``loss.backward()`` on the caller's own module (hooks and all), its parameters
        bound to views of theta for the pass: the gradient its training gets."""
        values = self.views(torch.from_numpy(np.array(theta, dtype=np.float64)))
        out = np.zeros(theta.size, dtype=np.float64)
        into = self.views(torch.from_numpy(out))
        leaves = {name: values[name].clone().requires_grad_(True)
                  for name in self.initial if name not in self.params}
        with on_callers_module(module, {n: values[n] for n in self.params}, _F64) as bound, \
                torch.enable_grad(), self.pinned():
            loss = self.output_loss(module(*self.inputs.bind(leaves.get)))
            backward_gradient(loss, [bound[n] for n in self.params] + list(leaves.values()),
                              [into[n] for n in self.params] + [into[n] for n in leaves])
        return out


class _FunctionLoss(_TorchLoss):
    framework = "fn(*tensors)"

    def __init__(self, fn, inputs: _Inputs, seed):
        super().__init__(dict(inputs.wrt), seed)
        self.fn = fn
        self.inputs = inputs

    def make_state(self) -> _State:
        state = _State()
        state.flat = torch.zeros(self.size, dtype=_F64)
        state.flat_np = state.flat.numpy()
        state.inputs = self.inputs.bind(self.views(state.flat).get)
        return state

    def loss(self, state: _State, inputs: tuple) -> torch.Tensor:
        output = self.fn(*inputs)
        if self.cotangents is None:
            self.cotangents = _cotangents(output, self.seed, "fn(*tensors)")
        return _contract(output, self.cotangents, "fn(*tensors)")

    def analytic(self, theta: np.ndarray) -> np.ndarray:
        state = self.state()
        leaves = {name: torch.from_numpy(theta[a:b].copy()).view(shape).requires_grad_(True)
                  for name, (a, b, shape) in self.slices.items()}
        inputs = self.inputs.bind(leaves.get)
        with torch.enable_grad(), self.pinned():
            loss = self.loss(state, inputs)
        return flat_gradient(loss, list(leaves.values()))


def _run(loss: _TorchLoss, check_options: dict,
         analytic: Callable[[np.ndarray], np.ndarray] | None = None, path_note: str = ""):
    theta = np.concatenate([v.reshape(-1).numpy() for v in loss.initial.values()])
    # The first evaluations (main thread) fix the cotangents from the output shapes and tell
    # whether the loss is random, before any worker thread runs.
    loss.pin_randomness(theta, check_options)
    grad = (analytic or loss.analytic)(theta)
    segments = {name: shape for name, (_, _, shape) in loss.slices.items()}
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
    if not isinstance(module, torch.nn.Module):
        raise InvalidType(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise InvalidType(f"loss_fn: expected a callable or None, got {loss_fn!r}")
    seed = check_seed(check_options)
    for name, param in module.named_parameters():
        if param.is_complex():
            raise InvalidType(f"module: parameter {name!r} is complex ({param.dtype}); not supported")
    try:
        template = copy.deepcopy(module)
        if isinstance(loss_fn, torch.nn.Module):  # e.g. CrossEntropyLoss(weight=...)
            loss_fn = copy.deepcopy(loss_fn).to(device=CPU, dtype=_F64)
    except Exception as exc:
        raise InvalidType(f"module: cannot be deep-copied ({type(exc).__name__}: {exc})") from exc
    template.to(device=CPU, dtype=_F64)
    initial: dict[str, torch.Tensor] = {}
    for name, param in template.named_parameters():
        param.grad = None
        if param.requires_grad and param.numel() > 0:
            initial[name] = param.detach().clone()
    params = list(initial)
    args = _Inputs(inputs, "input")
    for name, value in args.wrt.items():
        if name in initial:
            raise InvalidValue(f"inputs: segment name {name!r} is also a parameter name")
        initial[name] = value
    if not initial:
        raise InvalidValue(
            "module: nothing to check: no parameter requires grad and no input tensor requires grad"
        )
    targets = () if target is None else (_Inputs((target,), "target").values[0],)
    if targets and loss_fn is None:
        raise InvalidValue("target: given, but loss_fn is None; pass the loss_fn(output, target)")
    loss = _ModuleLoss(template, loss_fn, targets, args, params, initial, seed)
    loss.grad_in_forward = has_forward_hooks(module)
    with torch.random.fork_rng(devices=[]):
        return _run(loss, serial_by_default(check_options),
                    analytic=lambda theta: loss.callers_gradient(module, theta),
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
    args = _Inputs(tensors, "arg")
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
    with torch.random.fork_rng(devices=[]):
        return _run(loss, serial_by_default(check_options))
