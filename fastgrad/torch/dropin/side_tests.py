"""torch's side tests of a gradcheck: reentrant backward, deterministic forward, gradient
dtypes, undefined output gradients."""

from __future__ import annotations

import numpy as np
import torch

from . import analytic
from .analytic import dense
from .flatten import BATCH_VALUES, FlatFunction, close


def reentrant(fn, leaves, outputs, rows_first: np.ndarray, nondet_tol: float,
              batched: bool = False) -> str:
    """'' when a second backward pass gives the same rows (within nondet_tol), else a message.
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
        return ""
    value, row, column = worst
    return (f"Backward is not reentrant: two backward passes differ by {value:.3e} "
            f"> nondet_tol={nondet_tol} at {fn.layout.where(column)} -> "
            f"{fn.out_layout.where(row)}")


def nondeterministic(fn: FlatFunction, f0: np.ndarray, nondet_tol: float) -> str:
    """'' when a plain call at x gives the recorded values f0 (within nondet_tol or roundoff:
    composite ops may round differently with autograd on), else the message."""
    again = fn.one(fn.x64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(again - f0)
        same = (diff <= nondet_tol) | close(again, f0, fn.low) | (np.isnan(again) & np.isnan(f0))
    if same.all():
        return ""
    return (f"func returns different values for the same inputs (largest difference "
            f"{np.nanmax(diff):.3e} > nondet_tol={nondet_tol}): dropout or another random op "
            "left on; fix its seed inside func")


def grad_dtypes(fn: FlatFunction, leaves, outputs) -> str:
    diff = [outputs[j] for _, j in fn.differentiable(outputs)]
    grads = torch.autograd.grad(diff, leaves, [torch.ones_like(o) for o in diff],
                                retain_graph=True, allow_unused=True)
    for leaf, g, name in zip(leaves, grads, fn.layout.names):
        if g is not None and (g.dtype != leaf.dtype or g.device != leaf.device):
            return (f"check_grad_dtypes: the gradient of {name} has dtype {g.dtype} on "
                    f"{g.device}, the input {leaf.dtype} on {leaf.device}")
    return ""


def undefined_grad(fn: FlatFunction, leaves, outputs) -> str:
    """torch's test: backward with all (then each one of the) output gradients undefined must
    not raise and must give undefined or zero input gradients (on the recorded graph of the
    reference evaluation: no new forward pass)."""
    undefined_grad = getattr(getattr(torch._C, "_functions", None), "UndefinedGrad", None)
    if undefined_grad is None:  # pragma: no cover - depends on the torch version
        return ""
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
                return (f"check_undefined_grad: backward raised with undefined output "
                        f"gradients ({type(exc).__name__}: {exc}); treat an undefined gradient "
                        "as zeros, or pass check_undefined_grad=False")
        for g, name in zip(grads, fn.layout.names):
            if g is not None and not bool(dense(g).eq(0).all()):
                return (f"check_undefined_grad: the gradient of {name} is not zero when the "
                        "output gradients are undefined or zero")
    return ""

