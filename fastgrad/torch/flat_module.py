"""A module's loss as a function of one flat parameter vector: ``FlatModule``, what
``check_module`` and ``audit_module`` (``module_problem``) both evaluate.

The strategy is view binding: each evaluating thread holds a copy of the module whose checked
parameters are views of the very array the engine passes (``param.data = view``, rebound only
when the engine hands over another array), never a copy of it. The other strategy, copying
theta into a per-thread buffer the parameters live in, costs a full copy of the parameters per
evaluation and one more per thread: nothing for a small module, but the audit of a 10^8-parameter
model depends on holding ``workers + 2`` copies of theta in all (theta, the float64 gradient,
one working copy per worker). View binding gives the check the same values, bit for bit, so one
strategy serves both. What makes it safe: the engine perturbs only its own working copies, and
a forward pass that wrote into a parameter or a checked input (both views of the working copy)
would already have been refused by the analytic pass on the caller's module (an in-place change
of a leaf that requires grad, or ``on_callers_module``'s check). An array that cannot be a view
(read-only, not contiguous, another dtype) is copied for that evaluation.

The module copies are built without copying a parameter (deepcopy with the checked parameters
memoized to empty placeholders), so a loss pickles to the module's structure, its buffers,
``loss_fn`` and the inputs for the process backend and a Dask cluster; theta goes with the
engine's problem. The analytic gradient is ``loss.backward()`` on the caller's own module
(``callers_gradient``), bound to views of theta for that one pass and restored afterwards.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._adapt import ThreadLocalLoss
from ..errors import InvalidType, InvalidValue
from ..segments import SegmentMap
from .tensors import (
    CPU,
    Inputs,
    SavedBuffers,
    backward_gradient,
    contract,
    cotangents,
    has_forward_hooks,
    on_callers_module,
    scalar_loss,
    seeded,
)

__all__ = ["FlatModule"]

_DTYPES = {torch.float64: np.float64, torch.float32: np.float32}


class _ModuleState:
    """One thread's copy of the module, bound to the array it evaluated last."""

    __slots__ = ("bound", "buffers", "inputs", "module", "params")


class FlatModule(ThreadLocalLoss):
    """``loss_fn(module(*inputs))`` as a function of the flat vector of the checked parameters
    (and checked inputs), evaluated on the engine's array itself. Built by ``FlatModule.build``.

    Parameters
    ----------
    template : torch.nn.Module
        A copy of the module in ``dtype`` whose checked parameters are empty placeholders (no
        storage); each evaluating thread deep-copies it once.
    names : list of str
        The checked parameters, in ``named_parameters()`` order.
    segments : dict
        Segment name -> shape in flat order: the parameters of ``names``, then the checked
        inputs (``inputs.wrt``).
    loss_fn : callable or None
        ``loss_fn(output, *target)``; None: see ``contract``.
    inputs : Inputs
        The module's arguments (private copies, shared by the threads; checked ones are bound
        to views of theta).
    target : tuple
        ``()`` or ``(target,)``.
    seed : int
        Seeds torch's RNG before every evaluation when the loss turns out to be random, and
        draws the cotangent.
    dtype : torch.dtype
        The precision of the evaluations (float64 or float32).
    contract : bool
        What a None ``loss_fn`` means: True contracts the output's floating tensors with a fixed
        random cotangent drawn from ``seed`` (``check_module``); False takes the output as the
        scalar loss (``audit_module``).
    """

    framework = "loss_fn(module(*inputs))"
    # a forward hook may register tensor hooks on outputs: the evaluations then record autograd
    grad_in_forward = False

    def __init__(self, template: torch.nn.Module, names: list[str], segments: dict,
                 loss_fn: Callable | None, inputs: Inputs, target: tuple, seed: int,
                 dtype: torch.dtype, contract: bool):
        super().__init__(seed)
        self.template, self.names, self.segments = template, names, segments
        self.loss_fn, self.inputs, self.target = loss_fn, inputs, target
        self.dtype, self.contract = dtype, contract
        self.slices = SegmentMap.from_shapes(segments).slices()
        self.size = sum(int(np.prod(shape, dtype=np.int64)) for shape in segments.values())
        self.cotangents: list[torch.Tensor] | None = None  # fixed by the first evaluation

    @classmethod
    def build(cls, module: torch.nn.Module, loss_fn: Callable | None, inputs: tuple, *,
              target: Any, dtype: torch.dtype, seed: int, wrt_inputs: bool,
              contract: bool) -> tuple[FlatModule, np.ndarray]:
        """The loss of ``module`` and theta (in ``dtype``), with the caller's module untouched.

        ``wrt_inputs``: input tensors that require grad are checked too (segments after the
        parameters); otherwise every input is a constant. Raises ``InvalidType`` /
        ``InvalidValue`` naming the argument (module, loss_fn, dtype, target, a complex
        parameter, nothing to check).
        """
        if not isinstance(module, torch.nn.Module):
            raise InvalidType(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        if loss_fn is not None and not callable(loss_fn):
            raise InvalidType(f"loss_fn: expected a callable or None, got {loss_fn!r}")
        if dtype not in _DTYPES:
            raise InvalidType(f"dtype: expected torch.float64 or torch.float32, got {dtype!r}")
        if target is not None and loss_fn is None:
            raise InvalidValue("target: given, but loss_fn is None; pass the loss_fn(output, target)")
        for name, p in module.named_parameters():
            if p.is_complex():
                raise InvalidType(f"module: parameter {name!r} is complex ({p.dtype}); not supported")
        checked = [(name, p) for name, p in module.named_parameters()
                   if p.requires_grad and p.numel() > 0]
        args = Inputs(inputs, "input", dtype, wrt=wrt_inputs)
        segments = {name: tuple(p.shape) for name, p in checked}
        for name, value in args.wrt.items():
            if name in segments:
                raise InvalidValue(f"inputs: segment name {name!r} is also a parameter name")
            segments[name] = tuple(value.shape)
        if not segments:
            raise InvalidValue(
                "module: nothing to check: no parameter requires grad and no input tensor "
                "requires grad" if wrt_inputs else
                "module: nothing to audit: no parameter requires grad")
        # the copy shares no storage with the caller's parameters: they are memoized to empty
        # placeholders, so a 10^8-parameter model is not copied here
        memo = {id(p): torch.nn.Parameter(torch.empty(0, dtype=dtype), requires_grad=True)
                for _, p in checked}
        try:
            template = copy.deepcopy(module, memo)
            if isinstance(loss_fn, torch.nn.Module):  # e.g. CrossEntropyLoss(weight=...)
                loss_fn = copy.deepcopy(loss_fn).to(device=CPU, dtype=dtype)
        except Exception as exc:
            raise InvalidType(
                f"module: cannot be deep-copied ({type(exc).__name__}: {exc})") from exc
        template.to(device=CPU, dtype=dtype)
        for p in template.parameters():
            p.grad = None
        targets = () if target is None else (Inputs((target,), "target", dtype, wrt=False)
                                             .values[0],)
        loss = cls(template, [name for name, _ in checked], segments, loss_fn, args, targets,
                   seed, dtype, contract)
        loss.grad_in_forward = has_forward_hooks(module)
        theta = np.empty(loss.size, dtype=_DTYPES[dtype])
        values = [p.detach() for _, p in checked] + list(args.wrt.values())
        for (a, b, _), value in zip(loss.slices.values(), values, strict=True):
            # one tensor at a time: no second full copy
            theta[a:b] = value.to(device=CPU, dtype=dtype).reshape(-1).numpy()
        return loss, theta

    def rng_context(self) -> contextlib.AbstractContextManager:
        return seeded(self.seed)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every segment as a view of ``flat``."""
        return {name: flat[a:b].view(shape) for name, (a, b, shape) in self.slices.items()}

    def make_state(self) -> _ModuleState:
        state = _ModuleState()
        state.module = copy.deepcopy(self.template)  # placeholders: no parameter is copied
        state.params = [state.module.get_parameter(name) for name in self.names]
        # buffers (BatchNorm running statistics) are restored before every evaluation, so the
        # loss is a function of theta alone
        state.buffers = SavedBuffers(state.module)
        state.inputs = self.inputs.values
        state.bound = None
        return state

    def bind(self, state: _ModuleState, theta: np.ndarray) -> None:
        """Make the state's parameters and checked inputs views of ``theta`` (no copy)."""
        if state.bound is theta:
            return
        views = self.views(torch.from_numpy(theta))
        for name, param in zip(self.names, state.params, strict=True):
            param.data = views[name]  # the same Parameter object, its storage now theta's
        if self.inputs.wrt:
            state.inputs = self.inputs.bind(views.get, clone=False)
        state.bound = theta

    def forward(self, state: _ModuleState) -> torch.Tensor:
        """The loss tensor at the array the state is bound to."""
        state.buffers.restore()
        return self.output_loss(state.module(*state.inputs))

    def output_loss(self, output: Any) -> torch.Tensor:
        if self.loss_fn is not None:
            return scalar_loss(self.loss_fn(output, *self.target), "loss_fn")
        if not self.contract:
            return scalar_loss(output, "module(*inputs)")
        if self.cotangents is None:
            self.cotangents = cotangents(output, self.seed, "module(*inputs)")
        return contract(output, self.cotangents, "module(*inputs)")

    def evaluate(self, state: _ModuleState, theta: np.ndarray) -> float:
        if theta.dtype == _DTYPES[self.dtype] and theta.flags.writeable and \
                theta.flags.c_contiguous:
            self.bind(state, theta)
        else:  # a read-only view (never the engine's working copies): bind a private copy
            self.bind(state, np.array(theta, dtype=_DTYPES[self.dtype]))
        with torch.enable_grad() if self.grad_in_forward else torch.no_grad():
            return self.forward(state).item()

    def callers_gradient(self, module: torch.nn.Module, theta: np.ndarray) -> np.ndarray:
        """``loss.backward()`` on the caller's own module (hooks and all), its checked
        parameters bound to views of theta for the pass (no copy of a 10^8-parameter model),
        checked inputs as leaves that require grad: the gradient its training gets, flat
        float64."""
        values = self.views(torch.from_numpy(theta))
        out = np.zeros(self.size, dtype=np.float64)
        into = self.views(torch.from_numpy(out))
        leaves = {name: values[name].clone().requires_grad_(True) for name in self.inputs.wrt}
        with on_callers_module(module, {n: values[n] for n in self.names}, self.dtype) as \
                bound, torch.enable_grad(), self.pinned():
            loss = self.output_loss(module(*self.inputs.bind(leaves.get, clone=False)))
            backward_gradient(loss, [bound[n] for n in self.names] + list(leaves.values()),
                              [into[n] for n in self.names] + [into[n] for n in leaves])
        return out
