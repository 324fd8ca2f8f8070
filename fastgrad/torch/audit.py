"""Audit every parameter of a PyTorch model: ``fastgrad.torch.audit_module``.

The directional audit and group-testing localization of ``fastgrad.audit`` over a module's
parameters, for models far too large for coordinate sweeps (10^7-10^8 parameters). Memory is the
point: the parameters exist as one flat vector ``theta`` (in the audit's dtype), the analytic
gradient as one float64 vector, and one working copy per worker into which the engine writes its
perturbations; each worker's copy of the module has no parameter storage of its own, its
parameters are views of that working copy (rebound, never copied, when the engine hands over
another one). So an audit holds ``workers + 2`` copies of the parameters beside the model's
activations, and the module copies are built without ever copying a parameter (deepcopy with the
parameters memoized to empty placeholders).

Shipping to a Dask cluster: the loss pickles to the module's structure (empty parameters), its
buffers, ``loss_fn`` and the inputs; ``theta`` goes to each worker once with the engine's
problem.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .. import audit
from .._adapt import ThreadLocalLoss, check_seed
from ..checks.coordinates import Problem
from ..errors import InvalidType, InvalidValue
from ..results.audit_report import AuditReport
from .tensors import (
    ANALYTIC_ON_CALLERS_MODULE,
    CPU,
    SavedBuffers,
    backward_gradient,
    converted,
    has_forward_hooks,
    on_callers_module,
    scalar_loss,
    seeded,
)

__all__ = ["audit_module", "module_problem"]

_DTYPES = {torch.float64: np.float64, torch.float32: np.float32}


class _ModuleState:
    __slots__ = ("bound", "buffers", "module", "params")


class ModuleAuditLoss(ThreadLocalLoss):
    """``loss_fn(module(*inputs))`` as a function of the flat parameter vector, evaluated on the
    engine's working copy itself (the module's parameters are views of it).

    Parameters
    ----------
    template : torch.nn.Module
        A copy of the module in the audit's dtype whose audited parameters are empty
        placeholders (no storage); each evaluating thread deep-copies it once.
    names : list of str
        The audited parameters, in ``named_parameters()`` order.
    shapes : list of tuple
        Their shapes.
    loss_fn : callable or None
        ``loss_fn(output, *target)``; None sums the output's floating values (a scalar output
        is the loss itself).
    inputs : tuple
        The module's arguments (private copies).
    target : tuple
        ``()`` or ``(target,)``.
    seed : int
        Seeds torch's RNG before every evaluation when the loss turns out to be random.
    """

    framework = "loss_fn(module(*inputs))"
    # a forward hook may register tensor hooks on outputs: the evaluations then record autograd
    grad_in_forward = False

    def __init__(self, template: torch.nn.Module, names: list[str], shapes: list[tuple],
                 loss_fn: Callable | None, inputs: tuple, target: tuple, seed: int):
        super().__init__(seed)
        self.template, self.names, self.shapes = template, names, shapes
        self.loss_fn, self.inputs, self.target = loss_fn, inputs, target
        self.bounds = []
        start = 0
        for shape in shapes:
            size = int(np.prod(shape, dtype=np.int64))
            self.bounds.append((start, start + size))
            start += size
        self.size = start

    def rng_context(self) -> contextlib.AbstractContextManager:
        return seeded(self.seed)

    def make_state(self) -> _ModuleState:
        state = _ModuleState()
        state.module = copy.deepcopy(self.template)  # placeholders: no parameter is copied
        state.params = [state.module.get_parameter(name) for name in self.names]
        # buffers (BatchNorm running statistics) are restored before every evaluation, so the
        # loss is a function of the parameters alone
        state.buffers = SavedBuffers(state.module)
        state.bound = None
        return state

    def bind(self, state: _ModuleState, theta: np.ndarray) -> None:
        """Make the state's parameters views of ``theta`` (no copy)."""
        if state.bound is theta:
            return
        flat = torch.from_numpy(theta)
        for param, (a, b), shape in zip(state.params, self.bounds, self.shapes, strict=True):
            param.data = flat[a:b].view(shape)
        state.bound = theta

    def forward(self, state: _ModuleState) -> torch.Tensor:
        state.buffers.restore()
        return self.output_loss(state.module(*self.inputs))

    def output_loss(self, output: Any) -> torch.Tensor:
        if self.loss_fn is None:
            return scalar_loss(output, "module(*inputs)")
        return scalar_loss(self.loss_fn(output, *self.target), "loss_fn")

    def evaluate(self, state: _ModuleState, theta: np.ndarray) -> float:
        if theta.flags.writeable and theta.flags.c_contiguous:
            self.bind(state, theta)
        else:  # a read-only view (never the engine's working copies): bind a private copy
            self.bind(state, np.array(theta))
        with torch.enable_grad() if self.grad_in_forward else torch.no_grad():
            return float(self.forward(state).item())

    def callers_gradient(self, module: torch.nn.Module, theta: np.ndarray) -> np.ndarray:
        """``loss.backward()`` on the caller's own module (hooks and all), its audited
        parameters bound to views of theta for the pass (no copy of a 10^8-parameter model):
        the gradient its training gets, flat float64."""
        flat = torch.from_numpy(theta)
        bound = {name: flat[a:b].view(shape)
                 for name, (a, b), shape in zip(self.names, self.bounds, self.shapes, strict=True)}
        out = np.zeros(self.size, dtype=np.float64)
        grads = torch.from_numpy(out)
        into = [grads[a:b].view(shape) for (a, b), shape in zip(self.bounds, self.shapes,
                                                                   strict=True)]
        dtype = torch.float64 if theta.dtype == np.float64 else torch.float32
        with on_callers_module(module, bound, dtype) as params, torch.enable_grad(), \
                self.pinned():
            loss = self.output_loss(module(*self.inputs))
            backward_gradient(loss, [params[n] for n in self.names], into)
        return out


def module_problem(
    module: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor] | None,
    *inputs: Any,
    target: Any = None,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    **options: Any,
) -> Problem:
    """A module's loss as a ``fastgrad.Problem``: the flat parameters, autograd's gradient, the
    segment map, for ``fastgrad.audit``, ``fastgrad.check`` or ``fastgrad check MODULE:FACTORY``.

    Segments are the trainable parameters named as ``named_parameters()`` names them
    (``"blocks.3.attn.qkv.weight"``); inputs are held constant. The caller's module, its
    parameters, buffers, ``.grad`` and torch's RNG are untouched.

    Parameters
    ----------
    module : torch.nn.Module
        The model; it must be deep-copyable (and picklable to go to a Dask cluster).
    loss_fn : callable or None
        ``loss_fn(output)``, or ``loss_fn(output, target)``, returning a scalar; None: the
        module's output is the scalar loss.
    *inputs : any
        The module's positional arguments (tensors nested in tuples, lists and dicts are
        copied, floating ones to ``dtype``).
    target : any, optional
        The second argument of ``loss_fn``.
    dtype : torch.dtype, default torch.float64
        The precision of the evaluations: ``torch.float32`` when float64 copies of the
        parameters do not fit in memory; the tolerance and noise floor are then float32's.
    seed : int, default 0
        Seeds torch's RNG before every evaluation when the loss is random (dropout).
    **options
        Stored in ``Problem.options`` (options of ``fastgrad.check``/``fastgrad.audit``).

    Returns
    -------
    fastgrad.Problem
        ``f`` (picklable), ``theta`` (in ``dtype``), ``grad`` (float64), ``segments``.

    Raises
    ------
    TypeError
        When ``module`` is not a module or cannot be copied, ``loss_fn`` is not callable,
        ``dtype`` is not float32 or float64, or a parameter or input is complex.
    ValueError
        When no parameter requires grad, ``target`` is given without ``loss_fn``, ``seed`` is
        negative, or the loss is not a real scalar.
    fastgrad.NondeterminismError
        When the loss is random even with torch's RNG re-seeded.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())
    >>> p = fastgrad.torch.module_problem(net, lambda out: out.pow(2).sum(), torch.randn(5, 4))
    >>> fastgrad.audit(p.f, p.theta, p.grad, segments=p.segments).passed
    True
    """
    if not isinstance(module, torch.nn.Module):
        raise InvalidType(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise InvalidType(f"loss_fn: expected a callable or None, got {loss_fn!r}")
    if dtype not in _DTYPES:
        raise InvalidType(f"dtype: expected torch.float64 or torch.float32, got {dtype!r}")
    if target is not None and loss_fn is None:
        raise InvalidValue("target: given, but loss_fn is None; pass the loss_fn(output, target)")
    seed = check_seed({"seed": seed})
    audited = [(name, p) for name, p in module.named_parameters()
               if p.requires_grad and p.numel() > 0]
    if not audited:
        raise InvalidValue("module: nothing to audit: no parameter requires grad")
    for name, p in audited:
        if p.is_complex():
            raise InvalidType(f"module: parameter {name!r} is complex ({p.dtype}); not supported")
    # the copy shares no storage with the caller's parameters: they are memoized to empty
    # placeholders, so a 10^8-parameter model is not copied here
    memo = {id(p): torch.nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=True)
            for _, p in audited}
    try:
        template = copy.deepcopy(module, memo)
        if isinstance(loss_fn, torch.nn.Module):  # e.g. CrossEntropyLoss(weight=...)
            loss_fn = copy.deepcopy(loss_fn).to(device=CPU, dtype=dtype)
    except Exception as exc:
        raise InvalidType(f"module: cannot be deep-copied ({type(exc).__name__}: {exc})") from exc
    template.to(device=CPU, dtype=dtype)
    for p in template.parameters():
        p.grad = None
    names = [name for name, _ in audited]
    shapes = [tuple(p.shape) for _, p in audited]
    theta = np.empty(sum(p.numel() for _, p in audited), dtype=_DTYPES[dtype])
    start = 0
    for _, p in audited:  # one parameter at a time: no second full copy
        size = p.numel()
        theta[start:start + size] = p.detach().to(device=CPU).reshape(-1).numpy()
        start += size
    targets = () if target is None else (converted(target, dtype, "target"),)
    loss = ModuleAuditLoss(template, names, shapes, loss_fn, converted(inputs, dtype), targets,
                           seed)
    loss.grad_in_forward = has_forward_hooks(module)
    with torch.random.fork_rng(devices=[]):
        loss.pin_randomness(theta, options)
        grad = loss.callers_gradient(module, theta)
    return Problem(loss, theta, grad, segments=dict(zip(names, shapes, strict=True)),
                   options=dict(options))


def audit_module(
    module: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor] | None,
    *inputs: Any,
    target: Any = None,
    budget: int | None = None,
    dtype: torch.dtype = torch.float64,
    **audit_options: Any,
) -> AuditReport:
    """Audit autograd's gradient of ``loss_fn(module(*inputs))`` over every parameter.

    ``fastgrad.audit`` on the module's parameters: random-direction derivatives of every
    parameter tensor (a segment named as ``named_parameters()`` names it), then group-testing
    localization of the disagreeing ones, so that a wrong row among 10^8 parameters is found in
    a few hundred forward passes. Suspects carry their parameter name and index
    (``report.suspect_records[0].where == "0.weight[3, 1]"``, ``report.blocks`` for whole rows).
    Memory: ``workers + 2`` copies of the parameters (theta, the float64 gradient, one working
    copy per worker that the workers' module copies use as their parameters) beside the
    activations. The analytic gradient is ``loss.backward()`` on your module itself (hooks,
    parametrizations and tied parameters as your training sees them), its parameters bound to
    views of theta for that pass; the caller's module, parameters, buffers, ``.grad`` and
    torch's RNG are bitwise unchanged afterwards.

    Parameters
    ----------
    module : torch.nn.Module
        The model (deep-copyable; picklable for a Dask ``executor``). Parameters with
        ``requires_grad=False`` are held constant.
    loss_fn : callable or None
        ``loss_fn(output)``, or ``loss_fn(output, target)``, returning a scalar; None: the
        module's output is the scalar loss.
    *inputs : any
        The module's positional arguments, held constant (copied; floating ones to ``dtype``).
    target : any, optional
        The second argument of ``loss_fn``.
    budget : int, optional
        The most loss evaluations (forward passes) to spend.
    dtype : torch.dtype, default torch.float64
        ``torch.float32`` audits in single precision when float64 copies do not fit: the
        tolerance, steps and noise floors are float32's, and the report's header says so.
    **audit_options
        Options of ``fastgrad.audit`` (``seed``, ``depth``, ``tol``, ``workers``, ``executor``
        (a ``concurrent.futures`` executor or a Dask ``Client``), ``progress``, ...).
        ``workers`` defaults to 1: torch parallelizes inside its ops.

    Returns
    -------
    fastgrad.AuditReport
        The same report as ``fastgrad.audit``.

    Raises
    ------
    TypeError
        When ``module``, ``loss_fn`` or ``dtype`` is of the wrong kind, or a parameter is
        complex.
    ValueError
        When no parameter requires grad, the loss is not a real scalar, or an option is
        refused by ``fastgrad.audit`` (the message names it).
    fastgrad.NondeterminismError
        When the loss is random even with torch's RNG re-seeded.
    fastgrad.LossError
        When the module or ``loss_fn`` raises at a perturbed point.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    >>> report = fastgrad.torch.audit_module(net, lambda out: out.pow(2).sum(), torch.randn(4, 8))
    >>> report.passed, list(report.segments)[:2]
    (True, ['0.weight', '0.bias'])
    """
    seed = audit_options.pop("seed", 0)
    problem = module_problem(module, loss_fn, *inputs, target=target, dtype=dtype, seed=seed,
                             nondet_tol=audit_options.get("nondet_tol", 0.0))
    options = {"workers": 1, **audit_options}
    with torch.random.fork_rng(devices=[]):
        report = audit(problem.f, problem.theta, problem.grad, segments=problem.segments,
                       budget=budget, seed=seed, **options)
    report.path_reason += f"; {ANALYTIC_ON_CALLERS_MODULE}"
    return report
