"""torch's side tests of a gradcheck, each named: reentrant backward, deterministic forward,
gradient dtypes, undefined output gradients, batched backward and forward AD. Each raises the
Jacobian core's ``SubcheckFailed`` (its name, the message, a report when there is one); the
public functions catch it once (``raise_exception``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...checks.jacobian import BATCH_VALUES, SubcheckFailed, close
from . import analytic
from .analytic import dense
from .flatten import TorchFunction


def reentrant(fn, leaves, outputs, rows_first: np.ndarray, nondet_tol: float,
              batched: bool = False) -> None:
    """A second backward pass gives the same rows (within nondet_tol).
    ``batched``: the first rows came from the batched backward (probed against the real one),
    and so does the second pass (one batched call instead of a backward per row). The second
    pass runs a block of rows at a time, each compared as it comes: no second Jacobian and no
    Jacobian-sized difference (adaptive_avg_pool3d's 4,096-row gradgradcheck, nondet_tol > 0,
    late in the op_db benchmark's process: 4.5 s -> 1.0 s for the whole check)."""
    n = fn.out_layout.size
    block = max(1, BATCH_VALUES // max(1, fn.layout.size))
    worst: tuple[float, int, int] | None = None  # (difference, row, column)
    for a in range(0, n, block):
        rows = np.arange(a, min(n, a + block))
        second = analytic.vjp_rows(fn, leaves, outputs, rows, batched=batched)
        first = rows_first[a:a + rows.size]
        if np.array_equal(second, first, equal_nan=True):
            continue
        diff = np.abs(second - first)
        if np.all(diff <= nondet_tol):
            continue
        # the largest difference (a NaN on one side only counts as the largest)
        nan = np.isnan(diff)
        at = np.unravel_index(int(np.argmax(nan)) if nan.any() else int(np.argmax(diff)),
                              diff.shape)
        value = float(diff[at])
        if worst is None or not (value <= worst[0]):
            worst = (value, a + int(at[0]), int(at[1]))
    if worst is None:
        return
    value, row, column = worst
    raise SubcheckFailed("reentrant backward", (
        f"Backward is not reentrant: two backward passes differ by {value:.3e} "
        f"> nondet_tol={nondet_tol} at {fn.layout.where(column)} -> {fn.out_layout.where(row)}"))


def reentrant_contracted(fn: TorchFunction, first: np.ndarray, again: np.ndarray,
                         nondet_tol: float, output: str) -> None:
    """Fast mode's reentrancy: two backward passes of one contraction of ``output`` agree."""
    gap = np.abs(again - first)
    if not (np.array_equal(again, first, equal_nan=True) or np.all(gap <= nondet_tol)):
        raise SubcheckFailed("reentrant backward", (
            f"Backward is not reentrant: two backward passes differ by {np.nanmax(gap):.3e} > "
            f"nondet_tol={nondet_tol} (fast mode, {output})"))


def nondeterministic(fn: TorchFunction, f0: np.ndarray, nondet_tol: float) -> None:
    """A plain call at x gives the recorded values f0 (within nondet_tol or roundoff: composite
    ops may round differently with autograd on). Skipped when the batched evaluation's probe at
    x was that second evaluation (``fn.probed``), or when this ran already (``fn.repeatable``).
    The judges ask for it only once the first step leaves something in question, before any
    re-check: a passing check makes torch's evaluations, and a function that changes between
    calls (dropout left on) is refused before its re-checks could mistake the noise for kinks
    crossed (its one-sided slopes are random, so any analytic value lies between them)."""
    if fn.probed or fn.repeatable:
        return
    again = fn.one(fn.x)
    with np.errstate(invalid="ignore"):
        diff = np.abs(again - f0)
        same = (diff <= nondet_tol) | close(again, f0, fn.low) | (np.isnan(again) & np.isnan(f0))
    if not same.all():
        raise SubcheckFailed("nondeterminism", (
            f"func returns different values for the same inputs (largest difference "
            f"{np.nanmax(diff):.3e} > nondet_tol={nondet_tol}): dropout or another random op "
            "left on; fix its seed inside func"))
    fn.repeatable = True


def grad_dtypes(fn: TorchFunction, leaves, outputs) -> None:
    """check_grad_dtypes: each input's gradient has the input's dtype and device."""
    diff = [outputs[j] for _, j in fn.differentiable(outputs)]
    grads = torch.autograd.grad(diff, leaves, [torch.ones_like(o) for o in diff],
                                retain_graph=True, allow_unused=True)
    for leaf, g, name in zip(leaves, grads, fn.layout.names):
        if g is not None and (g.dtype != leaf.dtype or g.device != leaf.device):
            raise SubcheckFailed("check_grad_dtypes", (
                f"check_grad_dtypes: the gradient of {name} has dtype {g.dtype} on {g.device}, "
                f"the input {leaf.dtype} on {leaf.device}"))


def undefined_grad(fn: TorchFunction, leaves, outputs,
                   report: Callable[[], Any] = lambda: None) -> None:
    """torch's test: backward with all (then each one of the) output gradients undefined must
    not raise and must give undefined or zero input gradients (on the recorded graph of the
    reference evaluation: no new forward pass). ``report()`` is the judged Jacobian's report,
    attached to a failure."""
    undefined_grad = getattr(getattr(torch._C, "_functions", None), "UndefinedGrad", None)
    if undefined_grad is None:  # pragma: no cover - depends on the torch version
        return
    judged = [j for _, j in fn.differentiable(outputs)]
    count = len(judged)
    cases = [set(range(count))] + ([{u} for u in range(count)] if count > 1 else [])
    for undefined in cases:
        with torch.enable_grad():
            diff = [undefined_grad()(outputs[j]) if p in undefined else outputs[j]
                    for p, j in enumerate(judged)]
            try:
                grads = torch.autograd.grad(diff, leaves, [torch.zeros_like(o) for o in diff],
                                            allow_unused=True, retain_graph=True)
            except RuntimeError as exc:
                raise SubcheckFailed("check_undefined_grad", (
                    f"check_undefined_grad: backward raised with undefined output gradients "
                    f"({type(exc).__name__}: {exc}); treat an undefined gradient as zeros, or "
                    "pass check_undefined_grad=False"), report()) from None
        for g, name in zip(grads, fn.layout.names):
            if g is not None and not bool(dense(g).eq(0).all()):
                raise SubcheckFailed("check_undefined_grad", (
                    f"check_undefined_grad: the gradient of {name} is not zero when the output "
                    "gradients are undefined or zero"), report())


def batched_rows(fn: TorchFunction, jac: np.ndarray, single: np.ndarray) -> None:
    """check_batched_grad: the vmap'd vector-Jacobian products are the one-by-one ones."""
    if not np.allclose(single, jac, rtol=1e-10, atol=1e-12, equal_nan=True):
        bad = np.argwhere(~np.isclose(single, jac, rtol=1e-10, atol=1e-12))[0]
        raise SubcheckFailed("check_batched_grad", (
            f"check_batched_grad: the vmap'd vector-Jacobian products differ from the "
            f"one-by-one ones at {fn.layout.where(int(bad[1]))} -> "
            f"{fn.out_layout.where(int(bad[0]))}: {jac[tuple(bad)]!r} vs {single[tuple(bad)]!r}"))


def batched_columns(jac: np.ndarray, single: np.ndarray) -> None:
    """check_batched_forward_grad: the vmap'd Jacobian-vector products are the one-by-one
    ones."""
    if not np.allclose(single, jac, rtol=1e-10, atol=1e-12, equal_nan=True):
        raise SubcheckFailed("check_batched_forward_grad", (
            "check_batched_forward_grad: the vmap'd Jacobian-vector products differ from the "
            "one-by-one ones"))

