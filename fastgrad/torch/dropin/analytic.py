"""Analytic Jacobians from autograd: vector-Jacobian product rows (batched or one by one) and
forward-mode Jacobian-vector product columns, as flat real arrays."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch.autograd import forward_ad

from ...checks.jacobian import BATCH_VALUES
from .flatten import TorchFunction, from_real, real_flat


def _unit_rows(local: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """(len(local), *like.shape): row m is the unit vector e_local[m] of like's flat real view
    (positions past the element count are imaginary parts: 1j there)."""
    count = like.numel()
    if not like.is_complex() and local.size == count and np.array_equal(local, np.arange(count)):
        return torch.eye(count, dtype=like.dtype, device=like.device).reshape(count, *like.shape)
    g = torch.zeros((local.size, count), dtype=like.dtype, device=like.device)
    if local.size:
        lanes = torch.arange(local.size)
        if like.is_complex():
            imag = torch.from_numpy(local >= count)
            value = torch.where(imag, torch.tensor(1j, dtype=like.dtype),
                                torch.tensor(1, dtype=like.dtype))
            g[lanes, torch.from_numpy(local % max(count, 1))] = value.to(like.device)
        else:
            g[lanes, torch.from_numpy(local)] = 1
    return g.reshape(local.size, *like.shape)


def dense(g: torch.Tensor) -> torch.Tensor:
    """A gradient as a strided tensor (a sparse input's gradient may be sparse)."""
    return g if g.layout == torch.strided else g.to_dense()


def input_rows(fn: TorchFunction, grads, batch: int, into: np.ndarray | None = None,
               zeroed: bool = False) -> np.ndarray:
    """The flat real input gradients (batch, inputs' real size), written into ``into`` when
    given (a large Jacobian's rows go straight to their place: no temporary of its size;
    ``zeroed``: it holds zeros already, and an undefined gradient's block is not written, so
    its pages are never touched). One dense real input and no ``into``: the gradient's own
    memory, not a copy."""
    if into is None and len(fn.checked) == 1 and not fn.sparse and grads[0] is not None:
        return real_flat(grads[0], batch)
    starts = fn.layout.starts
    out = np.empty((batch, fn.layout.size)) if into is None else into
    for p, (g, k) in enumerate(zip(grads, fn.checked)):
        if g is None:
            if not zeroed:
                out[:, starts[p]:starts[p + 1]] = 0.0
            continue
        if k in fn.sparse:
            g = fn.sparse[k].gradient(g, batch)
        out[:, starts[p]:starts[p + 1]] = real_flat(g, batch)
    return out


def vjp_rows(fn: TorchFunction, leaves, outputs, rows: np.ndarray, batched: bool) -> np.ndarray:
    """Analytic Jacobian rows ``rows`` (flat real outputs x flat real inputs).

    As torch's gradcheck: each output is differentiated on its own, the other outputs'
    gradients left undefined (a backward that mishandles an undefined gradient shows).
    """
    out = np.zeros((rows.size, fn.layout.size))
    if rows.size == 0:
        return out
    owner = fn.out_layout.tensor_of(rows)
    starts = fn.out_layout.starts
    for p, j in fn.differentiable(outputs):
        mine = np.flatnonzero(owner == p)
        if mine.size == 0:
            continue
        if batched:
            # blocks of rows: the unit cotangents and the gradients of a block stay small
            # (reused memory); only the Jacobian itself is new
            per = max(1, BATCH_VALUES // max(1, fn.layout.size + outputs[j].numel()))
            for a in range(0, mine.size, per):
                block = mine[a:a + per]
                basis = _unit_rows(rows[block] - starts[p], outputs[j])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    grads = torch.autograd.grad(outputs[j], leaves, basis, retain_graph=True,
                                                allow_unused=True, is_grads_batched=True)
                if block.size == rows.size == out.shape[0] and owner.size == mine.size:
                    # every row of one output: the gradients' memory
                    out = input_rows(fn, grads, block.size)
                elif block[-1] - block[0] + 1 == block.size:  # contiguous (whole outputs)
                    input_rows(fn, grads, block.size, into=out[block[0]:block[-1] + 1],
                                zeroed=True)
                else:
                    out[block] = input_rows(fn, grads, block.size)
            continue
        basis = _unit_rows(rows[mine] - starts[p], outputs[j])
        for m, cotangent in zip(mine, basis):
            grads = torch.autograd.grad(outputs[j], leaves, cotangent, retain_graph=True,
                                        allow_unused=True)
            out[m] = input_rows(fn, [None if g is None else dense(g)[None] for g in grads], 1)[0]
    return out


def batched_rows_agree(fn: TorchFunction, leaves, outputs, jac: np.ndarray, seed: int) -> bool:
    """Do the batched analytic rows ``jac`` agree with the backward users run? One unbatched
    backward of a random combination u of every output element (u^T J, all outputs at once)
    against u^T jac: a batching rule that differs from the real backward on any row shows,
    at the cost of one plain backward pass."""
    # made per check (~10 us): a cached vector would be module state that a backward writing
    # into its grad_output could change for every later check
    u = np.random.default_rng([seed, fn.out_layout.size]).standard_normal(fn.out_layout.size)
    starts = fn.out_layout.starts
    pairs = fn.differentiable(outputs)
    chosen = [outputs[j] for _, j in pairs]
    cotangents = [from_real(u[None, starts[p]:starts[p + 1]], tuple(o.shape), o.dtype,
                             o.device)[0] for (p, _), o in zip(pairs, chosen)]
    grads = torch.autograd.grad(chosen, leaves, cotangents, retain_graph=True,
                                allow_unused=True)
    single = input_rows(fn, [None if g is None else dense(g)[None] for g in grads], 1)[0]
    # u^T jac and |u|^T |jac| a block of rows at a time: no Jacobian-sized temporary
    combined, scale = np.zeros(jac.shape[1]), np.zeros(jac.shape[1])
    bad = np.zeros(jac.shape[1], dtype=bool)  # columns with a non-finite entry
    block = max(1, BATCH_VALUES // 4 // max(1, jac.shape[1]))
    for a in range(0, jac.shape[0], block):
        part = jac[a:a + block]
        finite = np.isfinite(part)
        if not finite.all():
            bad |= ~finite.all(axis=0)
            part = np.where(finite, part, 0.0)
        combined += u[a:a + block] @ part
        scale += np.abs(u[a:a + block]) @ np.abs(part)
    if np.any(bad != ~np.isfinite(single)):  # the single pass shows the same columns
        return False
    rtol = 1e-10 if not fn.low else 1e-4  # roundoff of a different summation order
    ok = np.abs(single - combined) <= rtol * scale + 1e-12
    return bool((ok | bad).all())


def _tangent_basis(fn: TorchFunction, cols: np.ndarray) -> list[torch.Tensor]:
    """For each flat real input column c, the tangent e_c (times 1j for imaginary parts)."""
    starts, sizes = fn.layout.starts, fn.layout.sizes
    basis = []
    for p, k in enumerate(fn.checked):
        local = cols - starts[p]
        inside = (local >= 0) & (local < sizes[p])
        t = fn.inputs[k]
        part = _unit_rows(np.where(inside, local, 0), t)
        if not inside.all():
            part[torch.from_numpy(~inside)] = 0
        basis.append(part)
    return basis


def jvp_columns(fn: TorchFunction, cols: np.ndarray, batched: bool) -> np.ndarray:
    """Analytic Jacobian columns from forward-mode AD: (flat real outputs, cols.size)."""
    primals = fn.copies(requires_grad=False)
    basis = _tangent_basis(fn, cols)
    if batched:
        def tangent_out(*tangents):
            def f(*xs):
                outputs = fn.call(xs)
                return tuple(outputs[j] for j in fn.positions)
            return torch.func.jvp(f, tuple(primals), tuple(tangents))[1]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs = torch.func.vmap(tangent_out)(*basis)
        return np.concatenate([real_flat(o, cols.size) for o in outs], axis=-1).T
    out = np.empty((fn.out_layout.size, cols.size))
    for c in range(cols.size):
        with forward_ad.dual_level():
            # fresh tangents: a view into the basis would carry its storage offset into ops
            # that read storage directly (as_strided)
            # (with the primal's strides, as torch's gradcheck makes them: zeros_like)
            duals = [forward_ad.make_dual(p, torch.zeros_like(p).copy_(b[c]))
                     for p, b in zip(primals, basis)]
            outputs = fn.call(duals)
            parts = []
            for j in fn.positions:
                tangent = forward_ad.unpack_dual(outputs[j]).tangent
                if tangent is None:
                    tangent = torch.zeros_like(outputs[j])
                parts.append(real_flat(tangent))
        out[:, c] = np.concatenate(parts) if parts else np.zeros(0)
    return out


def jvp_along(fn: TorchFunction, directions: np.ndarray) -> np.ndarray:
    """(directions, flat real outputs): J u from forward-mode AD, one dual pass per direction."""
    primals = fn.copies(requires_grad=False)
    starts = fn.layout.starts
    out = np.empty((directions.shape[0], fn.out_layout.size))
    for r, u in enumerate(directions):
        with forward_ad.dual_level():
            duals = []
            for p, primal in enumerate(primals):
                tangent = from_real(u[None, starts[p]:starts[p + 1]], tuple(primal.shape),
                                     primal.dtype, primal.device)[0]
                duals.append(forward_ad.make_dual(
                    primal, torch.zeros_like(primal).copy_(tangent)))
            results = fn.call(duals)
            parts = []
            for j in fn.positions:
                tangent = forward_ad.unpack_dual(results[j]).tangent
                parts.append(real_flat(torch.zeros_like(results[j]) if tangent is None
                                        else tangent))
        out[r] = np.concatenate(parts) if parts else np.zeros(0)
    return out


def vjp_contracted(fn: TorchFunction, leaves, outputs, u: np.ndarray) -> np.ndarray:
    """The gradient of sum(u * flat real outputs) (outputs that require grad): one backward."""
    cot, diff = [], []
    starts = fn.out_layout.starts
    for p, j in fn.differentiable(outputs):
        o = outputs[j]
        part = torch.from_numpy(u[starts[p]:starts[p + 1]].copy())
        if o.is_complex():
            n = part.numel() // 2
            part = torch.complex(part[:n], part[n:])
        cot.append(part.to(o.dtype).reshape(o.shape))
        diff.append(o)
    if not diff:
        return np.zeros(fn.layout.size)
    grads = torch.autograd.grad(diff, leaves, cot, retain_graph=True, allow_unused=True)
    return input_rows(fn, [None if g is None else dense(g)[None] for g in grads], 1)[0]

