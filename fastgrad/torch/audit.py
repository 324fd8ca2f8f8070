"""Audit every parameter of a PyTorch model: ``fastgrad.torch.audit_module``.

The directional audit and group-testing localization of ``fastgrad.audit`` over a module's
parameters, for models far too large for coordinate sweeps (10^7-10^8 parameters). Memory is the
point: the parameters exist as one flat vector ``theta`` (in the audit's dtype), the analytic
gradient as one float64 vector, and one working copy per worker into which the engine writes its
perturbations; each worker's copy of the module has no parameter storage of its own, its
parameters are views of that working copy (rebound, never copied, when the engine hands over
another one). So an audit holds ``workers + 2`` copies of the parameters beside the model's
activations. The loss is ``flat_module.FlatModule``, the same that ``check_module`` evaluates;
its docstring says how the module copies are built without copying a parameter and what goes to
a Dask cluster.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import audit
from .._adapt import check_seed
from ..checks.coordinates import Problem
from ..results.audit_report import AuditReport
from .flat_module import FlatModule
from .tensors import ANALYTIC_ON_CALLERS_MODULE

__all__ = ["audit_module", "module_problem"]


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
    seed = check_seed({"seed": seed})
    loss, theta = FlatModule.build(module, loss_fn, inputs, target=target, dtype=dtype, seed=seed,
                                   wrt_inputs=False, contract=False)
    with torch.random.fork_rng(devices=[]):
        loss.pin_randomness(theta, options)
        grad = loss.callers_gradient(module, theta)
    return Problem(loss, theta, grad, segments=loss.segments, options=dict(options))


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
