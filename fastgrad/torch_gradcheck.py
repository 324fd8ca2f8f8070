"""Drop-in ``torch.autograd.gradcheck`` and ``gradgradcheck``: full Jacobians judged by fastgrad.

``from fastgrad.torch import gradcheck`` in a test suite: the same signature and calling
conventions as torch's, the same exception class (a subclass), and a verdict per Jacobian element
with fastgrad's relative errors, kink and noise re-checks. The perturbed inputs are evaluated in
one ``torch.func.vmap`` call when the function allows it (one call per perturbation otherwise,
said in the report's path line); the analytic rows are batched vector-Jacobian products.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.autograd import forward_ad
from torch.autograd.gradcheck import GradcheckError as TorchGradcheckError

from .arguments import non_negative_float, strict_option
from .checks.jacobian import ColumnEvaluator, Judged, Layout, judge_jacobian, screen_streamed
from .errors import GradcheckWarning, GradientCheckError, InvalidType, InvalidValue
from .results.jacobian_report import ChainedRecords, JacobianReport
from .results.report import max_all, overall_status
from .steps import coordinate_steps, noise_eps, precision_of, tolerance

__all__ = ["GradcheckError", "gradcheck", "gradgradcheck"]

TORCH_EPS = 1e-6  # torch.autograd.gradcheck's default step: "auto" steps replace it
# batched evaluation holds at most this many input values at once (chunks of perturbations)
BATCH_VALUES = 1 << 22
# a numeric Jacobian (coordinates x outputs) of more values than this is screened chunk by chunk
# and not kept when the check passes (screen_streamed); smaller ones are kept for the judges
STREAM_MIN_VALUES = 1 << 20
# up to this many analytic rows are one backward pass each, twice (reentrancy): a batched pass
# and its probe cost about as much as 8 plain ones
UNBATCHED_ROWS = 4
# vmap'd and one-by-one evaluations agree within this many units of roundoff of the outputs
VMAP_AGREEMENT = 64.0


class GradcheckError(TorchGradcheckError, GradientCheckError):
    """Raised by ``fastgrad.torch.gradcheck``/``gradgradcheck`` when a check fails.

    A subclass of ``torch.autograd.gradcheck.GradcheckError`` (existing ``pytest.raises`` keep
    working) and of ``fastgrad.GradientCheckError``; the message is the report's table naming
    input, output and coordinate, and ``.report`` holds the report (None for failures found
    before any Jacobian was judged, e.g. a backward that is not reentrant).

    Parameters
    ----------
    message : str
        What failed.
    report : fastgrad.Report or fastgrad.AuditReport, optional
        The report of the failing check.

    Examples
    --------
    >>> import torch, fastgrad.torch
    >>> issubclass(fastgrad.torch.GradcheckError, torch.autograd.gradcheck.GradcheckError)
    True
    """

    def __init__(self, message: str, report: Any = None):
        RuntimeError.__init__(self, message)
        self.report = report


# ---------------------------------------------------------------- real views of tensors


def _real_flat(t: torch.Tensor, batch: int | None = None) -> np.ndarray:
    """Flat float64 real view: complex as real parts then imaginary parts; batch keeps dim 0."""
    t = t.detach()
    if t._is_zerotensor():
        t = torch.zeros(t.shape, dtype=t.dtype)
    if t.is_conj() or t.is_neg():
        t = t.resolve_conj().resolve_neg()
    lead = (batch,) if batch is not None else ()
    if t.is_complex():
        parts = [t.real.reshape(*lead, -1), t.imag.reshape(*lead, -1)]
        t = torch.cat(parts, dim=-1)
    else:
        t = t.reshape(*lead, -1)
    return t.to(torch.float64).cpu().numpy()


def _from_real(values: np.ndarray, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """(B, real size) -> tensor (B, *shape) of dtype."""
    flat = torch.from_numpy(np.ascontiguousarray(values))
    batch = flat.shape[0]
    if dtype.is_complex:
        n = flat.shape[1] // 2
        real_dtype = torch.float32 if dtype == torch.complex64 else torch.float64
        t = torch.complex(flat[:, :n].to(real_dtype), flat[:, n:].to(real_dtype))
    else:
        t = flat.to(dtype)
    return t.reshape(batch, *shape).to(device)


def _close(one: np.ndarray, other: np.ndarray, low: bool) -> np.ndarray:
    """Elements of two evaluations at the same point equal within VMAP_AGREEMENT units of
    roundoff."""
    scale = VMAP_AGREEMENT * np.finfo(np.float32 if low else np.float64).eps
    with np.errstate(invalid="ignore"):
        return (one == other) | (np.abs(one - other) <= scale * (np.abs(one) + np.abs(other)))


def _first_words(message: str, limit: int = 100) -> str:
    line = (message.splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def _as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _differentiable(outputs: tuple) -> list[int]:
    """Positions of the outputs autograd can differentiate (torch's rule: requires_grad)."""
    return [j for j, o in enumerate(outputs) if isinstance(o, torch.Tensor) and o.requires_grad]


def _judged_outputs(outputs: tuple) -> list[int]:
    """The outputs whose Jacobian is judged: those that require grad, and the floating ones
    that do not (their numeric Jacobian must be zero: a function that lost its gradient path,
    ``.detach()`` or a numpy round trip, fails instead of passing unchecked). Integer outputs
    (indices, counts) are not judged: they cannot carry a gradient."""
    return [j for j, o in enumerate(outputs) if isinstance(o, torch.Tensor)
            and (o.requires_grad or o.is_floating_point() or o.is_complex())]


def _same_bits(one: np.ndarray, other: np.ndarray) -> bool:
    """Two evaluations at the same point are bitwise equal (NaN where both are NaN)."""
    return bool(np.array_equal(one, other, equal_nan=True))


def _precision_dtype(dtypes) -> np.dtype:
    """The working precision: float32 when any checked tensor is single precision."""
    low = any(d in (torch.float32, torch.complex64) for d in dtypes)
    return np.dtype(np.float32) if low else np.dtype(np.float64)


# ---------------------------------------------------------------- sparse inputs

SPARSE_LAYOUTS = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc)


def _all_specified(t: torch.Tensor) -> torch.Tensor:
    """A sparse COO/CSR/CSC tensor with every element specified (zeros where t has none):
    torch's dense semantics of a sparse input (``masked=False``)."""
    dense = t.detach().to_dense()
    full = torch.ones(dense.shape, dtype=torch.bool).nonzero().t()
    coo = torch.sparse_coo_tensor(full, dense.reshape(-1), dense.shape, is_coalesced=True)
    return coo if t.layout == torch.sparse_coo else coo.to_sparse(layout=t.layout)


class _Sparse:
    """A sparse input as the values of its elements, torch's two semantics: with ``masked``
    the specified elements only (only they are perturbed and judged), else every element (the
    perturbed inputs are passed fully specified, the backward runs on the caller's tensor and
    its gradient must be the dense one, as in torch's gradcheck).

    ``positions`` are the elements' dense flat indices, in the order of the values;
    ``original`` is the caller's tensor (what the analytic passes differentiate).
    """

    def __init__(self, t: torch.Tensor, masked: bool):
        self.original = t.detach().coalesce() if t.layout == torch.sparse_coo else t.detach()
        t = self.original if masked else _all_specified(t)
        if t.layout == torch.sparse_coo:
            t = t.coalesce()
            self.structure = (t.indices(),)
            coo = t.indices()
        elif t.layout == torch.sparse_csr:
            self.structure = (t.crow_indices(), t.col_indices())
            coo = torch._convert_indices_from_csr_to_coo(*self.structure)
        else:
            self.structure = (t.ccol_indices(), t.row_indices())
            coo = torch._convert_indices_from_csr_to_coo(*self.structure, transpose=True)
        self.template, self.layout, self.shape = t, t.layout, tuple(t.shape)
        self.values_shape = tuple(t.values().shape)
        sparse_shape = self.shape[:coo.shape[0]]
        dense_count = math.prod(self.values_shape[1:])
        base = np.ravel_multi_index(coo.numpy(), sparse_shape) if coo.shape[1] else \
            np.zeros(0, dtype=np.int64)
        self.positions = (base[:, None] * dense_count
                          + np.arange(dense_count)[None, :]).ravel().astype(np.int64)

    def flat(self) -> np.ndarray:
        return _real_flat(self.template.values())

    def rebuild(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse tensor with these values (flat, in the order of ``positions``)."""
        values = values.reshape(self.values_shape)
        if self.layout == torch.sparse_coo:
            return torch.sparse_coo_tensor(self.structure[0], values, self.shape,
                                           is_coalesced=True)
        build = torch.sparse_csr_tensor if self.layout == torch.sparse_csr else \
            torch.sparse_csc_tensor
        return build(*self.structure, values, self.shape)

    def gradient(self, g: torch.Tensor, batch: int) -> torch.Tensor:
        """(batch, elements) of a gradient (batched or not, sparse or dense) at our elements."""
        if g.layout != torch.strided:
            g = g.to_dense()
        return g.reshape(batch, -1)[:, torch.from_numpy(self.positions)]


# ---------------------------------------------------------------- the function of the flat view


class _Raised(Exception):
    """func raised at a perturbed input ``row`` (the original exception is ``.error``)."""

    def __init__(self, error: BaseException, row: np.ndarray):
        super().__init__(str(error))
        self.error, self.row = error, row


class _Function:
    """``func`` as a function of the flat real vector of its checked inputs.

    ``func`` is called as torch's gradcheck calls it: with the caller's own input objects (an
    ``nn.Parameter`` stays that Parameter, a leaf stays a leaf that requires grad), grad mode
    on, in the inputs' dtypes. A perturbed evaluation writes the perturbed values into the
    caller's dense tensors in place (through ``.data``, as torch does), calls ``func``, and
    writes the saved originals back, bitwise, before anything else runs (also when func
    raises). Batched (vmap'd) evaluation uses fresh tensors, and only where the vmap'd value
    at x equals the one-by-one value bitwise. Sparse inputs are passed as rebuilt tensors.
    """

    def __init__(self, func: Callable, inputs: tuple, names: Sequence[str], needs_grad: bool,
                 out_prefix: str = "output", masked: bool = False):
        self.func, self.inputs, self.needs_grad = func, inputs, needs_grad
        self.checked = [k for k, t in enumerate(inputs)
                        if isinstance(t, torch.Tensor) and t.requires_grad]
        if not self.checked:
            raise InvalidValue(
                "inputs: gradcheck expects at least one input tensor to require gradient "
                "(none of the inputs has requires_grad=True)")
        for k in self.checked:
            t = inputs[k]
            if not (t.is_floating_point() or t.is_complex()):
                raise InvalidType(f"inputs: {names[k]} requires grad but has dtype {t.dtype}")
            if t.dtype in (torch.float16, torch.bfloat16):
                raise InvalidType(
                    f"inputs: {names[k]} has dtype {t.dtype}; centered differences need float32 "
                    "or float64 (float64 recommended, as for torch's gradcheck)")
            if t.layout != torch.strided and t.layout not in SPARSE_LAYOUTS:
                raise InvalidType(f"inputs: {names[k]} has layout {t.layout}; dense (strided) "
                                  "and sparse COO, CSR and CSC tensors are supported")
        # sparse inputs: the values of their (specified) elements
        self.sparse = {k: _Sparse(inputs[k], masked) for k in self.checked
                       if inputs[k].layout != torch.strided}
        self.layout = Layout(tuple(names[k] for k in self.checked),
                             tuple(tuple(inputs[k].shape) for k in self.checked),
                             tuple(inputs[k].is_complex() for k in self.checked),
                             tuple(self.sparse[k].positions if k in self.sparse else None
                                   for k in self.checked) if self.sparse else ())
        # a copy (concatenate): x64 must not see the in-place perturbations
        self.x64 = np.concatenate([self.sparse[k].flat() if k in self.sparse
                                   else _real_flat(inputs[k]) for k in self.checked]) \
            if self.layout.size else np.zeros(0)
        # the caller's dense values, written back after every perturbed call
        self.saved = {k: inputs[k].detach().clone() for k in self.checked
                      if k not in self.sparse}
        self.out_prefix = out_prefix
        self.batched = not self.sparse
        self.verified = False
        self.at_x: np.ndarray | None = None  # the one-by-one outputs at x (the vmap probe)
        self.probed = False  # the vmap'd value at x matched at_x (a second evaluation there)
        # what vmap batches, when not func itself (a functional twin: the same values)
        self.batched_func: Callable | None = None
        self.why_serial = ("sparse inputs (torch.func.vmap does not batch sparse tensors)"
                           if self.sparse else "")
        self.evaluations = 0
        # vmap's randomness: "error" until a random op is met, then "same" (many)
        self.randomness = "error"

    def tensors(self, flat: np.ndarray, requires_grad: bool = True) -> list[torch.Tensor]:
        """Fresh checked inputs for a batch of flat rows (vmap): tensors of shape (B, *shape)."""
        starts = self.layout.starts
        out = []
        for p, k in enumerate(self.checked):
            t = self.inputs[k]
            value = _from_real(flat[:, starts[p]:starts[p + 1]], tuple(t.shape), t.dtype,
                               t.device)
            out.append(value.requires_grad_(True) if self.needs_grad and requires_grad
                       else value)
        return out

    def call(self, checked: Sequence[torch.Tensor]) -> tuple:
        args = list(self.inputs)
        for k, value in zip(self.checked, checked):
            args[k] = value
        return _as_tuple(self.func(*args))

    def copies(self, requires_grad: bool = True) -> list[torch.Tensor]:
        """The checked inputs as values for forward AD's primals: the caller's dense tensors
        detached (their geometry: a function that reads storage directly, ``as_strided`` with
        an explicit ``storage_offset``, sees the function the numeric side evaluates), copies
        of sparse ones."""
        return [(self.sparse[k].original.clone() if k in self.sparse else
                 self.inputs[k].detach()).requires_grad_(requires_grad) for k in self.checked]

    def reference(self):
        """Outputs at x with autograd recording, on the caller's own inputs (torch's
        gradcheck differentiates those): (leaves, all outputs, judged output positions)."""
        leaves = [self.sparse[k].original.clone().requires_grad_(True) if k in self.sparse
                  else self.inputs[k] for k in self.checked]
        with torch.enable_grad():
            outputs = self.call(leaves)
        return leaves, outputs, _judged_outputs(outputs)

    def set_outputs(self, outputs: tuple, positions: list[int]) -> None:
        for j in positions:
            if outputs[j].layout != torch.strided:
                raise InvalidValue(
                    f"func: {self.out_prefix}{j} has layout {outputs[j].layout}; sparse outputs "
                    "are not supported (as in torch's gradcheck): return "
                    "out.to_dense(masked_grad=...)")
        self.positions = positions
        # outputs that do not require grad: their analytic Jacobian is zero, and the numeric
        # one must be too (torch: "Numerical gradient for function expected to be zero")
        self.no_grad = [j for j in positions if not outputs[j].requires_grad]
        chosen = [outputs[j] for j in positions]
        self.out_layout = Layout(tuple(f"{self.out_prefix}{j}" for j in positions),
                                 tuple(tuple(o.shape) for o in chosen),
                                 tuple(o.is_complex() for o in chosen))
        self.out_dtypes = [o.dtype for o in chosen]

    def differentiable(self, outputs: tuple) -> list[tuple[int, int]]:
        """(position in out_layout, output index) of the judged outputs that require grad."""
        return [(p, j) for p, j in enumerate(self.positions) if j not in self.no_grad]

    def flat_outputs(self, outputs: tuple, batch: int | None) -> np.ndarray:
        """A new array (never a view of an output: an output may alias an input that is
        perturbed in place next)."""
        parts = [_real_flat(outputs[j], batch) for j in self.positions]
        if not parts:
            return np.zeros((batch or 1, 0)) if batch is not None else np.zeros(0)
        return np.concatenate(parts, axis=-1)

    def _grad_mode(self):
        return torch.enable_grad() if self.needs_grad else torch.no_grad()

    def one(self, row: np.ndarray) -> np.ndarray:
        """The flat real outputs at one flat input (one call of func on the caller's inputs)."""
        self.evaluations += 1
        args, written = list(self.inputs), []
        starts = self.layout.starts
        try:
            with torch.no_grad():
                for p, k in enumerate(self.checked):
                    part = row[starts[p]:starts[p + 1]]
                    t = self.inputs[k]
                    if k in self.sparse:
                        value = _from_real(part[None], (self.sparse[k].positions.size,),
                                           t.dtype, t.device)[0]
                        args[k] = self.sparse[k].rebuild(value).requires_grad_(True)
                    elif not np.array_equal(part, self.x64[starts[p]:starts[p + 1]]):
                        # only the inputs that differ from x are written: an input passed
                        # twice (one tensor) is perturbed once, as torch perturbs it
                        written.append(k)
                        t.data.copy_(_from_real(part[None], tuple(t.shape), t.dtype,
                                                t.device)[0])
            with torch.enable_grad():
                outputs = _as_tuple(self.func(*args))
            return self.flat_outputs(outputs, None)
        except Exception as exc:
            raise _Raised(exc, row) from exc
        finally:
            with torch.no_grad():
                for k in written:
                    self.inputs[k].data.copy_(self.saved[k])

    def _vmapped(self, rows: np.ndarray) -> np.ndarray:
        batch = rows.shape[0]
        functional = self.batched_func is not None
        func = self.batched_func if functional else self.func
        checked = self.tensors(rows, requires_grad=not functional)
        in_dims = tuple(0 if k in self.checked else None for k in range(len(self.inputs)))
        args = list(self.inputs)
        for k, value in zip(self.checked, checked):
            args[k] = value.detach() if functional else value

        def fn(*a):
            outputs = _as_tuple(func(*a))
            return tuple(outputs[j] for j in self.positions)

        with (torch.no_grad() if functional else self._grad_mode()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outputs = torch.func.vmap(fn, in_dims=in_dims, randomness=self.randomness)(*args)
        if len(outputs) == 1:  # no copy of a large batch
            return _real_flat(outputs[0], batch)
        return np.concatenate([_real_flat(o, batch) for o in outputs], axis=-1)

    def many(self, rows: np.ndarray) -> np.ndarray:
        """Flat real outputs at each row: one vmap call per chunk, or one call per row.

        The first vmap'd batch carries one more row, the unperturbed input, compared with the
        one-by-one value there (``self.at_x``): random ops, in-place writes, a batching rule
        or a branch on ``requires_grad`` that changes a single bit sends every evaluation one
        by one (said in the path line).
        """
        if self.batched and rows.shape[0] > 1:
            probe = not self.verified and self.at_x is not None
            try:
                out = self._vmapped(np.concatenate([rows, self.x64[None]]) if probe else rows)
            except Exception as exc:  # vmap cannot run this function: say so, go one by one
                if self.randomness == "error" and "randomness" in str(exc):
                    # a random op: a function that fixes its seed at every call (torch's own
                    # test wrappers do) draws the same numbers for every row, as vmap's
                    # randomness="same" does; the probe at x tells whether it does
                    self.randomness = "same"
                    return self.many(rows)
                self.batched = False
                self.why_serial = (f"torch.func.vmap raised {type(exc).__name__}: "
                                   f"{_first_words(str(exc))}")
            else:
                self.verified = True
                if probe:
                    out, at_x = out[:-1], out[-1]
                    self.probed = _same_bits(self.at_x, at_x)
                    if not self.probed:
                        self.batched = False
                        self.why_serial = ("torch.func.vmap changed the values (the batched "
                                           "value at x differs from the one-by-one call's)")
                if self.batched:
                    self.evaluations += rows.shape[0]
                    return out
        return np.stack([self.one(r) for r in rows]) if rows.shape[0] else \
            np.zeros((0, self.out_layout.size))

    @property
    def low(self) -> bool:
        return _precision_dtype(
            [self.inputs[k].dtype for k in self.checked] + self.out_dtypes) == np.float32


class _Evaluator(ColumnEvaluator):
    """What the Judge calls: ``pairs(index, step)`` -> whole outputs at x +- h e_i."""

    vmap = "torch.func.vmap"

    @property
    def path_reason(self) -> str:
        reason = super().path_reason
        if self.fn.batched and self.fn.randomness == "same":
            reason += (" with randomness='same' (f draws random numbers: the same at every "
                       "call, as the batched value at x showed)")
        return reason

    def _pairs(self, index, step):
        k, n_out = index.size, self.fn.out_layout.size
        f_plus, f_minus = np.empty((k, n_out)), np.empty((k, n_out))
        for a, fp, fm in self.chunks(index, step):
            f_plus[a:a + fp.shape[0]], f_minus[a:a + fp.shape[0]] = fp, fm
        return f_plus, f_minus

    def chunks(self, index, step):
        """(a, f_plus, f_minus) of coordinates a:a+len(f_plus), a vmap'd chunk at a time. The
        arrays may share memory with the next chunk's inputs (a function that returns its
        input): read them before asking for the next chunk."""
        x = self.fn.x64
        k = index.size
        chunk = max(1, BATCH_VALUES // max(1, 2 * x.size))
        # one buffer of perturbed inputs for every chunk: fresh pages per chunk would cost
        # their first touch each time (a large Jacobian's chunks add up to gigabytes)
        buffer = np.empty((2 * min(chunk, k), x.size))
        for a in range(0, k, chunk):
            b = min(k, a + chunk)
            idx, h = index[a:b], np.asarray(step[a:b], dtype=np.float64)
            rows = buffer[:2 * (b - a)]
            rows[:] = x
            lanes = np.arange(b - a)
            rows[lanes, idx] += h
            rows[lanes + (b - a), idx] -= h
            out = self.fn.many(rows)
            yield a, out[: b - a], out[b - a:]


# ---------------------------------------------------------------- analytic Jacobians


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


def _dense(g: torch.Tensor) -> torch.Tensor:
    """A gradient as a strided tensor (a sparse input's gradient may be sparse)."""
    return g if g.layout == torch.strided else g.to_dense()


def _input_rows(fn: _Function, grads, batch: int, into: np.ndarray | None = None,
                zeroed: bool = False) -> np.ndarray:
    """The flat real input gradients (batch, inputs' real size), written into ``into`` when
    given (a large Jacobian's rows go straight to their place: no temporary of its size;
    ``zeroed``: it holds zeros already, and an undefined gradient's block is not written, so
    its pages are never touched). One dense real input and no ``into``: the gradient's own
    memory, not a copy."""
    if into is None and len(fn.checked) == 1 and not fn.sparse and grads[0] is not None:
        return _real_flat(grads[0], batch)
    starts = fn.layout.starts
    out = np.empty((batch, fn.layout.size)) if into is None else into
    for p, (g, k) in enumerate(zip(grads, fn.checked)):
        if g is None:
            if not zeroed:
                out[:, starts[p]:starts[p + 1]] = 0.0
            continue
        if k in fn.sparse:
            g = fn.sparse[k].gradient(g, batch)
        out[:, starts[p]:starts[p + 1]] = _real_flat(g, batch)
    return out


def _vjp_rows(fn: _Function, leaves, outputs, rows: np.ndarray, batched: bool) -> np.ndarray:
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
                    out = _input_rows(fn, grads, block.size)
                elif block[-1] - block[0] + 1 == block.size:  # contiguous (whole outputs)
                    _input_rows(fn, grads, block.size, into=out[block[0]:block[-1] + 1],
                                zeroed=True)
                else:
                    out[block] = _input_rows(fn, grads, block.size)
            continue
        basis = _unit_rows(rows[mine] - starts[p], outputs[j])
        for m, cotangent in zip(mine, basis):
            grads = torch.autograd.grad(outputs[j], leaves, cotangent, retain_graph=True,
                                        allow_unused=True)
            out[m] = _input_rows(fn, [None if g is None else _dense(g)[None] for g in grads], 1)[0]
    return out


def _batched_rows_agree(fn: _Function, leaves, outputs, jac: np.ndarray, seed: int) -> bool:
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
    cotangents = [_from_real(u[None, starts[p]:starts[p + 1]], tuple(o.shape), o.dtype,
                             o.device)[0] for (p, _), o in zip(pairs, chosen)]
    grads = torch.autograd.grad(chosen, leaves, cotangents, retain_graph=True,
                                allow_unused=True)
    single = _input_rows(fn, [None if g is None else _dense(g)[None] for g in grads], 1)[0]
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


def _tangent_basis(fn: _Function, cols: np.ndarray) -> list[torch.Tensor]:
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


def _jvp_columns(fn: _Function, cols: np.ndarray, batched: bool) -> np.ndarray:
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
        return np.concatenate([_real_flat(o, cols.size) for o in outs], axis=-1).T
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
                parts.append(_real_flat(tangent))
        out[:, c] = np.concatenate(parts) if parts else np.zeros(0)
    return out


# ---------------------------------------------------------------- the check


def _options(eps, atol, rtol, nondet_tol):
    eps = non_negative_float("eps", eps)
    if eps == 0.0:
        raise InvalidValue("eps: expected a positive step, got 0")
    return eps, non_negative_float("atol", atol), non_negative_float("rtol", rtol), \
        non_negative_float("nondet_tol", nondet_tol)


def _tolerance(dtype, rtol: float) -> tuple[float, str]:
    tol, reason = tolerance(dtype)
    if 0.0 < rtol < tol:
        return rtol, f"rtol={rtol:.0e} given by the caller"
    return tol, reason + (f"; torch's rule |a - n| <= atol + rtol |n| also applied (rtol={rtol:.0e})"
                          if rtol else "")


def _fail(message: str, report, raise_exception: bool) -> bool:
    if raise_exception:
        raise GradcheckError(message, report)
    return False


def _reentrant(fn, leaves, outputs, rows_first: np.ndarray, nondet_tol: float,
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
        second = _vjp_rows(fn, leaves, outputs, rows, batched=batched)
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


def _nondeterministic(fn: _Function, f0: np.ndarray, nondet_tol: float) -> str:
    """'' when a plain call at x gives the recorded values f0 (within nondet_tol or roundoff:
    composite ops may round differently with autograd on), else the message."""
    again = fn.one(fn.x64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(again - f0)
        same = (diff <= nondet_tol) | _close(again, f0, fn.low) | (np.isnan(again) & np.isnan(f0))
    if same.all():
        return ""
    return (f"func returns different values for the same inputs (largest difference "
            f"{np.nanmax(diff):.3e} > nondet_tol={nondet_tol}): dropout or another random op "
            "left on; fix its seed inside func")


class _Unbatched(Exception):
    """The analytic rows are computed one by one (too few to batch)."""


def _check(fn: _Function, *, eps, atol, rtol, nondet_tol, check_backward_ad, check_forward_ad,
           check_batched_grad, check_batched_forward_grad, check_undefined_grad,
           check_grad_dtypes, fast_mode, raise_exception, strict, tolerated: list,
           seed=0) -> bool:
    """The check, at fastgrad's automatic steps and, when func raises at a perturbed input
    there, again at the caller's ``eps`` (torch's default 1e-6 when not given): a solver that
    rejects one step but not another is checked where torch checks it. A raise at the caller's
    step too is re-raised (its own exception) with a note naming the coordinate and step.
    ``tolerated`` receives (elements, count) of a passing check's tolerated elements."""
    leaves, outputs, positions = fn.reference()
    fn.set_outputs(outputs, positions)
    if not positions or fn.out_layout.size == 0:
        return True  # no floating-point output: nothing to judge (torch's gradcheck passes)
    dtype = _precision_dtype([fn.inputs[k].dtype for k in fn.checked] + fn.out_dtypes)
    # the recorded evaluation is f0; the second evaluation at x that shows random ops is the
    # vmap probe of the first batch (``fn.probed``) or, without one, a plain call
    if fn.sparse:  # the perturbed inputs may be fully specified where the recorded one is not
        f0 = fn.one(fn.x64)
    else:
        f0 = fn.flat_outputs(outputs, None)
        fn.evaluations += 1
    fn.at_x = f0
    options = dict(dtype=dtype, f0=f0, atol=atol, rtol=rtol, nondet_tol=nondet_tol,
                   check_backward_ad=check_backward_ad, check_forward_ad=check_forward_ad,
                   check_batched_grad=check_batched_grad,
                   check_batched_forward_grad=check_batched_forward_grad,
                   check_undefined_grad=check_undefined_grad,
                   check_grad_dtypes=check_grad_dtypes, strict=strict, seed=seed)
    steps = ["auto", eps] if eps == TORCH_EPS else [eps]
    notes: tuple[str, ...] = ()
    for attempt, h in enumerate(steps):
        try:
            judge = _judge_fast if fast_mode else _judge_full
            failure = judge(fn, leaves, outputs, h=h, notes=notes, tolerated=tolerated,
                            **options)
        except _Raised as raised:
            where = _where_raised(fn, raised.row)
            error = raised.error
            if where and attempt + 1 < len(steps):
                notes = (f"func raised at fastgrad's automatic step ({where}: "
                         f"{type(error).__name__}: {_first_words(str(error))}); checked at "
                         f"the caller's eps={eps:g}",)
                fn.batched, fn.verified = not fn.sparse, False  # vmap may batch this step
                continue
            _add_note(error, f"fastgrad gradcheck: func raised while evaluating "
                             f"{where or 'the unperturbed inputs'}"
                      + (" (also at fastgrad's automatic step before)" if attempt else ""))
            raise error from None
        if failure is None:
            return True
        message, report = failure
        return _fail(message, report, raise_exception)
    raise AssertionError("unreachable")  # pragma: no cover


def _where_raised(fn: _Function, row: np.ndarray) -> str:
    """The perturbation of ``row`` from x in words ('' at x itself)."""
    with np.errstate(invalid="ignore"):
        moved = np.flatnonzero(~((row == fn.x64) | (np.isnan(row) & np.isnan(fn.x64))))
    if moved.size == 0:
        return ""
    if moved.size == 1:
        i = int(moved[0])
        delta = float(row[i] - fn.x64[i])
        return f"{fn.layout.where(i)} {'+' if delta > 0 else '-'} {abs(delta):.3g}"
    owners = sorted({fn.layout.names[t] for t in fn.layout.tensor_of(moved)})
    norm = float(np.linalg.norm(row[moved] - fn.x64[moved]))
    return f"a step of length {norm:.3g} along a random direction of {', '.join(owners)}"


def _add_note(error: BaseException, note: str) -> None:
    """Add a line to an exception's message (PEP 678 notes; Python 3.10: its args)."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    elif error.args and isinstance(error.args[0], str):  # pragma: no cover - Python 3.10
        error.args = (f"{error.args[0]}\n{note}", *error.args[1:])


def _no_grad_message(fn: _Function, report) -> str:
    """The first line of a failure in outputs that do not require grad, when one failed."""
    failing = {name.split("/", 1)[1].split(" ", 1)[0]
               for name, seg in getattr(report, "segments", {}).items()
               if not seg.passed and "/" in name}
    lost = [f"{fn.out_prefix}{j}" for j in fn.no_grad if f"{fn.out_prefix}{j}" in failing]
    if not lost:
        return ""
    return (f"{', '.join(lost)} does not require grad, but its numeric Jacobian is not zero: "
            "the function lost its gradient path (a .detach(), .item(), a numpy round trip or "
            "torch.no_grad() inside); torch's gradcheck fails it too\n")


def _judge_full(fn: _Function, leaves, outputs, *, h, notes, tolerated, dtype, f0, atol, rtol,
                nondet_tol, check_backward_ad, check_forward_ad, check_batched_grad,
                check_batched_forward_grad, check_undefined_grad, check_grad_dtypes, strict,
                seed) -> tuple[str, Any] | None:
    """The full Jacobians judged element by element at first steps ``h``: None when the check
    passes, else (message, report or None)."""
    x = fn.x64.astype(dtype)
    finite = np.isfinite(fn.x64)
    index = np.flatnonzero(finite)
    skipped = tuple(fn.layout.where(int(i)) for i in np.flatnonzero(~finite))
    tol, tol_reason = _tolerance(dtype, rtol)
    step = coordinate_steps(x[index], h, dtype)
    ev = _Evaluator(fn)
    # the numeric columns of a large Jacobian are screened as they come and never kept, once
    # the analytic Jacobians are known: evaluate them first then
    streamed = index.size > 1 and index.size * fn.out_layout.size > STREAM_MIN_VALUES
    if not streamed:
        ev.pairs(index, step)  # the numeric columns, kept for the judges; the vmap probe runs
        message = "" if fn.probed else _nondeterministic(fn, f0, nondet_tol)
        if message:
            return message, None
    analytic = _analytic(fn, leaves, outputs, seed=seed, nondet_tol=nondet_tol,
                         check_backward_ad=check_backward_ad,
                         check_forward_ad=check_forward_ad,
                         check_batched_grad=check_batched_grad,
                         check_batched_forward_grad=check_batched_forward_grad,
                         check_grad_dtypes=check_grad_dtypes)
    if isinstance(analytic, str):
        return analytic, None
    if not analytic:
        return None
    if fn.no_grad:
        notes += (f"{', '.join(f'{fn.out_prefix}{j}' for j in fn.no_grad)} does not require "
                  "grad: its analytic Jacobian is zero",)
    common = dict(tol=tol, tol_reason=tol_reason, noise_eps=noise_eps(dtype), atol=atol,
                  rtol=rtol, inputs=fn.layout, outputs=fn.out_layout, seed=seed,
                  skipped=skipped, strict=strict)

    def judged(jac, options, lazy=True):
        options = dict(options, notes=notes + tuple(options.get("notes", ())))
        return judge_jacobian(ev, x, f0, jac, index, step, **common, **options, lazy=lazy)

    if streamed:
        quick = screen_streamed(ev, index, step, [jac for jac, _ in analytic], tol=tol,
                                noise_eps=noise_eps(dtype), atol=atol, rtol=rtol)
        message = "" if fn.probed else _nondeterministic(fn, f0, nondet_tol)
        if message:
            return message, None
        # passed: the report (columns evaluated again) only if somebody reads it
        reports = [Judged(True, lambda a=a: judged(*a, lazy=False)) for a in analytic] \
            if quick else [judged(*a) for a in analytic]
    else:
        reports = [judged(*a) for a in analytic]

    def report():  # built only when a failure shows it
        built = [r.report for r in reports]
        return built[0] if len(built) == 1 else _merge(built)

    if not all(r.passed for r in reports):
        failed = report()
        return _no_grad_message(fn, failed) + str(failed), failed
    if check_backward_ad and check_undefined_grad and fn.differentiable(outputs):
        message = _undefined_grad(fn, leaves, outputs)
        if message:
            return message, report()
    tolerated += [(r.tolerated, r.tolerated_count) for r in reports if r.tolerated_count]
    return None


def _analytic(fn: _Function, leaves, outputs, *, seed, nondet_tol, check_backward_ad,
              check_forward_ad, check_batched_grad, check_batched_forward_grad,
              check_grad_dtypes) -> list[tuple[np.ndarray, dict]] | str:
    """The analytic Jacobians to judge, each with judge_jacobian's options: the backward's
    rows (vector-Jacobian products, batched and probed against the real backward) and the
    forward-mode columns. A string: the message of a failure found on the way (the batched
    rows differ from one-by-one ones when check_batched_grad asks, dtypes, reentrancy)."""
    out: list[tuple[np.ndarray, dict]] = []
    if check_backward_ad and not fn.differentiable(outputs):
        # no output requires grad: the analytic Jacobian is zero (no backward to test)
        out.append((np.zeros((fn.out_layout.size, fn.layout.size)), dict()))
    elif check_backward_ad:
        notes: list[str] = []
        rows = np.arange(fn.out_layout.size)
        try:
            if rows.size <= UNBATCHED_ROWS and not check_batched_grad:
                # a few backward passes cost less than one batched pass and its probe
                raise _Unbatched
            jac = _vjp_rows(fn, leaves, outputs, rows, batched=True)
            batched = True
            # the backward users run is the unbatched one: a batching rule that differs from
            # it on any row (a decomposition that is right where the real backward is not, or
            # the reverse) is not trusted
            if not _batched_rows_agree(fn, leaves, outputs, jac, seed):
                jac = _vjp_rows(fn, leaves, outputs, rows, batched=False)
                batched = False
                notes.append("batched vector-Jacobian products differ from the backward "
                             "itself: every row computed one by one")
        except _Unbatched:
            jac = _vjp_rows(fn, leaves, outputs, rows, batched=False)
            batched = False
        except Exception as exc:
            if check_batched_grad:
                return (f"check_batched_grad: vmap over the backward failed: "
                        f"{type(exc).__name__}: {exc}")
            jac = _vjp_rows(fn, leaves, outputs, rows, batched=False)
            batched = False
        if check_grad_dtypes:
            message = _grad_dtypes(fn, leaves, outputs)
            if message:
                return message
        if check_batched_grad:
            single = _vjp_rows(fn, leaves, outputs, rows, batched=False)
            if not np.allclose(single, jac, rtol=1e-10, atol=1e-12, equal_nan=True):
                bad = np.argwhere(~np.isclose(single, jac, rtol=1e-10, atol=1e-12))[0]
                return (f"check_batched_grad: the vmap'd vector-Jacobian products differ "
                        f"from the one-by-one ones at {fn.layout.where(int(bad[1]))} -> "
                        f"{fn.out_layout.where(int(bad[0]))}: {jac[tuple(bad)]!r} vs "
                        f"{single[tuple(bad)]!r}")
            message = _reentrant(fn, leaves, outputs, single, nondet_tol)
        else:
            message = _reentrant(fn, leaves, outputs, jac, nondet_tol, batched) \
                if nondet_tol > 0 or not batched else ""
        if message:
            return message

        def refine(r):
            return _vjp_rows(fn, leaves, outputs, r, batched=False)

        out.append((jac, dict(notes=tuple(notes), refine=refine if batched else None)))
    if check_forward_ad:
        cols = np.arange(fn.layout.size)
        try:
            jac_fwd = _jvp_columns(fn, cols, batched=True)
            fwd_note = "forward AD: batched torch.func.jvp"
        except Exception as exc:
            if check_batched_forward_grad:
                return (f"check_batched_forward_grad: vmap over forward AD failed: "
                        f"{type(exc).__name__}: {exc}")
            jac_fwd = _jvp_columns(fn, cols, batched=False)
            fwd_note = "forward AD: one dual-number pass per input coordinate"
        if check_batched_forward_grad:
            single = _jvp_columns(fn, cols, batched=False)
            if not np.allclose(single, jac_fwd, rtol=1e-10, atol=1e-12, equal_nan=True):
                return ("check_batched_forward_grad: the vmap'd Jacobian-vector products "
                        "differ from the one-by-one ones")
        out.append((jac_fwd, dict(notes=(fwd_note,), mode=" (forward AD)")))
    return out


def _merge(reports: list[JacobianReport]) -> JacobianReport:
    """Backward and forward reports in one: segments side by side (names say which)."""
    first = reports[0]
    segments = {}
    for r in reports:
        segments.update(r.segments)
    coords = ChainedRecords([r.coords for r in reports])
    return JacobianReport(
        status=overall_status(segments.values()),
        max_rel_error=max(r.max_rel_error for r in reports),
        max_rel_error_all=max_all(r.max_rel_error_all for r in reports),
        segments=segments, coords=coords,
        evaluations=reports[-1].evaluations, tol=first.tol, tol_reason=first.tol_reason,
        path=first.path, path_reason=first.path_reason, dtype=first.dtype, depth=1,
        seed=first.seed, loss=first.loss, rechecked=sum(r.rechecked for r in reports),
        skipped=first.skipped, notes=tuple(n for r in reports for n in r.notes),
        tolerated=tuple(t for r in reports for t in r.tolerated),
        tolerated_count=sum(r.tolerated_count for r in reports))


def _grad_dtypes(fn: _Function, leaves, outputs) -> str:
    diff = [outputs[j] for _, j in fn.differentiable(outputs)]
    grads = torch.autograd.grad(diff, leaves, [torch.ones_like(o) for o in diff],
                                retain_graph=True, allow_unused=True)
    for leaf, g, name in zip(leaves, grads, fn.layout.names):
        if g is not None and (g.dtype != leaf.dtype or g.device != leaf.device):
            return (f"check_grad_dtypes: the gradient of {name} has dtype {g.dtype} on "
                    f"{g.device}, the input {leaf.dtype} on {leaf.device}")
    return ""


def _undefined_grad(fn: _Function, leaves, outputs) -> str:
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
            if g is not None and not bool(_dense(g).eq(0).all()):
                return (f"check_undefined_grad: the gradient of {name} is not zero when the "
                        "output gradients are undefined or zero")
    return ""


# fast mode: a direction whose first-step disagreement shrinks about 4x when the step halves is
# truncation: Richardson's extrapolation (4 n(h/2) - n(h)) / 3 is then the numeric value judged
FAST_SECOND_STEP = 0.5


def _judge_fast(fn: _Function, leaves, outputs, *, h, notes, tolerated, dtype, f0, atol, rtol,
                nondet_tol, check_backward_ad, check_forward_ad, check_batched_grad,
                check_batched_forward_grad, check_undefined_grad, check_grad_dtypes, strict,
                seed) -> tuple[str, Any] | None:
    """fast_mode at torch's cost: for each checked input a random unit direction u (uniform
    entries, as torch draws them) and for each judged output a random contraction v; the
    numeric v.(J u) of two evaluations per input against the analytic (v^T J).u (one backward
    per output, twice: reentrancy) and, with check_forward_ad, v.(J u) from forward AD. A
    passing check costs 1 + 2 x inputs evaluations (+1 when vmap cannot batch them: the
    nondeterminism check). A direction beyond the caller's rule (or beyond fastgrad's band,
    with strict) is measured again at half the step (truncation), and one that still
    disagrees is localized by fastgrad's audit of a random contraction of the outputs, which
    names the wrong coordinates and gives the verdict."""
    del check_batched_grad, check_batched_forward_grad  # full-Jacobian side tests
    x = fn.x64
    index = np.flatnonzero(np.isfinite(x))
    if index.size == 0:
        return None
    owner = fn.layout.tensor_of(index)
    tensors = sorted(set(owner.tolist()))
    rng = np.random.default_rng([seed, 0x6661_7374])
    directions = np.zeros((len(tensors), x.size))
    for r, t in enumerate(tensors):
        u = rng.uniform(size=int(np.count_nonzero(owner == t)))
        directions[r, index[owner == t]] = u / np.linalg.norm(u)
    if h == "auto":
        # fastgrad's per-coordinate steps along the direction: coordinate i moves by
        # eps^(1/3) max(1, |x_i|) u_i (one scale for a whole tensor let its large entries set
        # the step of its small ones: a 3e-3 step where a 1/500 scale lives)
        directions *= np.maximum(1.0, np.abs(np.where(np.isfinite(x), x, 0.0)))[None, :]
        step = np.full(len(tensors), precision_of(dtype).step_scale)
    else:  # the caller's eps on the unit direction, as torch's fast mode
        step = np.full(len(tensors), float(h))
    out_starts = fn.out_layout.starts
    contractions = np.zeros((len(fn.positions), fn.out_layout.size))
    for p in range(len(fn.positions)):
        v = rng.uniform(size=int(out_starts[p + 1] - out_starts[p]))
        contractions[p, out_starts[p]:out_starts[p + 1]] = v / max(np.linalg.norm(v), 1e-300)

    def measure(h_r: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(f+, f-, effective directions) of the directions ``which``: outputs at x +- h u
        rounded to the inputs' dtypes, and the directions the rounded points really differ
        along, per unit of h."""
        plus = (x + h_r[:, None] * directions[which]).astype(dtype).astype(np.float64)
        minus = (x - h_r[:, None] * directions[which]).astype(dtype).astype(np.float64)
        values = fn.many(np.concatenate([plus, minus]))
        return values[:len(h_r)], values[len(h_r):], (plus - minus) / (2 * h_r[:, None])

    f_plus, f_minus, effective = measure(step, np.arange(len(tensors)))
    message = "" if fn.probed else _nondeterministic(fn, f0, nondet_tol)
    if message:
        return message, None
    # analytic: (v_p^T J) per judged output p, then dotted with each direction
    pairs = fn.differentiable(outputs)
    if check_backward_ad:
        rows = np.zeros((len(fn.positions), x.size))
        for p, _ in pairs:
            rows[p] = _vjp_contracted(fn, leaves, outputs, contractions[p])
            again = _vjp_contracted(fn, leaves, outputs, contractions[p])
            gap = np.abs(again - rows[p])
            if not (np.array_equal(again, rows[p], equal_nan=True) or np.all(gap <= nondet_tol)):
                return (f"Backward is not reentrant: two backward passes differ by "
                        f"{np.nanmax(gap):.3e} > nondet_tol={nondet_tol} (fast mode, "
                        f"{fn.out_layout.names[p]})"), None
        if check_grad_dtypes and pairs:
            message = _grad_dtypes(fn, leaves, outputs)
            if message:
                return message, None
    analytic = []  # (label, (directions, outputs) analytic contractions)
    if check_backward_ad:
        analytic.append(("", effective @ rows.T))
    if check_forward_ad:
        analytic.append((" (forward AD)", _jvp_along(fn, effective) @ contractions.T))
    tol, _ = _tolerance(dtype, rtol)
    # (where, analytic, numeric, rel. error, within the caller's atol slack) of each direction
    # that disagrees after the second step
    questioned: list[tuple[str, float, float, float, bool]] = []
    for label, values in analytic:
        numeric = _contracted_numeric(f_plus, f_minus, step, contractions)
        bad, band, slack = _fast_verdicts(values, numeric, f_plus, f_minus, step, contractions,
                                          effective, tol=tol, dtype=dtype, atol=atol, rtol=rtol)
        if (bad | band).any():
            # half the step for the directions in question: truncation shrinks about 4x
            again = np.flatnonzero((bad | band).any(axis=1))
            half_step = step[again] * FAST_SECOND_STEP
            fp2, fm2, _ = measure(half_step, again)
            half = _contracted_numeric(fp2, fm2, half_step, contractions)
            numeric[again] = (4 * half - numeric[again]) / 3
            bad[:], band[:] = False, False
            bad[again], band[again], slack[again] = _fast_verdicts(
                values[again], numeric[again], fp2, fm2, half_step, contractions,
                effective[again], tol=tol, dtype=dtype, atol=atol, rtol=rtol)
        for r, p in zip(*np.nonzero(bad | band)):
            a_rp, n_rp = float(values[r, p]), float(numeric[r, p])
            questioned.append((f"{fn.layout.names[tensors[r]]} -> {fn.out_layout.names[p]}{label}",
                               a_rp, n_rp, abs(a_rp - n_rp) / max(abs(a_rp), abs(n_rp)),
                               bool(slack[r, p])))
    warned = []
    if questioned:
        # a contraction hides one wrong element among many: the audit looks at coordinates,
        # judged by the caller's relative tolerance (fastgrad's band with strict)
        failure = _localize(fn, leaves, outputs, index, dtype=dtype,
                            tol=tol if strict else max(tol, rtol), seed=seed,
                            questioned=questioned, notes=notes)
        if failure is not None:
            return failure
        if not strict:  # the audit found no coordinate beyond the caller's tolerance
            warned = [f"{where} along a random direction (rel. error {rel:.1e})"
                      for where, _, _, rel, within_slack in questioned if not within_slack]
    if check_backward_ad and check_undefined_grad and pairs:
        message = _undefined_grad(fn, leaves, outputs)
        if message:
            return message, None
    if warned:
        tolerated.append((tuple(warned), len(warned)))
    return None


def _contracted_numeric(f_plus, f_minus, step, contractions) -> np.ndarray:
    """(directions, outputs): v_p . (f(x + h u) - f(x - h u)) / 2h."""
    return ((f_plus - f_minus) / (2 * step[:, None])) @ contractions.T


def _fast_verdicts(analytic, numeric, f_plus, f_minus, step, contractions, directions, *, tol,
                   dtype, atol, rtol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(beyond the caller's rule, beyond fastgrad's band only, within the caller's atol slack),
    each (directions, outputs).

    The caller's rule is torch's for a contraction: |a - n| <= atol sum|u| sum(v) + rtol |n|
    (u the direction actually taken).
    A disagreement within the roundoff floor (eps x the contracted magnitude of the loss values
    over the step) is not evidence either way."""
    scale = (np.abs(f_plus) + np.abs(f_minus)) @ np.abs(contractions).T  # (directions, outputs)
    floor = noise_eps(dtype) * scale / (2 * step[:, None])
    diff = np.abs(analytic - numeric)
    with np.errstate(invalid="ignore", divide="ignore"):
        allowed = (atol * np.abs(directions).sum(axis=1)[:, None]
                   * contractions.sum(axis=1)[None, :])
        caller = ~(diff <= allowed + rtol * np.abs(numeric) + floor)
        rel = diff / np.maximum(np.abs(analytic), np.abs(numeric))
        band = ~(rel <= tol) & ~(diff <= floor) & ~caller
        # within the caller's atol slack: questioned (a contraction can hide one wrong element
        # among many), but not worth a warning when the audit clears it
        slack = diff <= floor + allowed
    return caller, band, slack


def _localize(fn: _Function, leaves, outputs, index, *, dtype, tol, seed, questioned,
              notes) -> tuple[str, Any] | None:
    """fastgrad's audit of a random contraction of the outputs, run after a fast-mode direction
    disagreed: its verdict decides, and its report names the wrong coordinates. Non-finite
    (masked) input entries are held fixed."""
    from .checks.audit import audit

    rng = np.random.default_rng([seed, 0x6c6f_6361])
    u = rng.standard_normal(fn.out_layout.size)
    grad = _vjp_contracted(fn, leaves, outputs, u)[index]
    full = fn.x64.copy()
    x = fn.x64.astype(dtype)

    def loss(theta):
        full[index] = theta
        return float(fn.one(full) @ u)

    owner = fn.layout.tensor_of(index)
    segments = {n: (int(np.count_nonzero(owner == t)),) for t, n in enumerate(fn.layout.names)
                if np.any(owner == t)}
    report = audit(loss, x[index], grad, segments=segments, seed=seed, tol=tol, workers=1,
                   jit=False)
    if report.passed:
        return None
    shown = [f"{where}: analytic {a:.6g}, numeric {n:.6g} (rel. error {rel:.1e})"
             for where, a, n, rel, _ in questioned]
    head = ("fast mode: a random direction disagreed (" + "; ".join(shown[:4])
            + (" ..." if len(shown) > 4 else "") + "); fastgrad's audit localized it:\n")
    lost = [f"{fn.out_prefix}{j}" for j in fn.no_grad
            if any(where.split(" -> ")[1].split(" ")[0] == f"{fn.out_prefix}{j}"
                   for where, *_ in questioned)]
    if lost:
        head = f"{', '.join(lost)} does not require grad; " + head
    head += "".join(f"{note}\n" for note in notes)
    return head + str(report), report


def _jvp_along(fn: _Function, directions: np.ndarray) -> np.ndarray:
    """(directions, flat real outputs): J u from forward-mode AD, one dual pass per direction."""
    primals = fn.copies(requires_grad=False)
    starts = fn.layout.starts
    out = np.empty((directions.shape[0], fn.out_layout.size))
    for r, u in enumerate(directions):
        with forward_ad.dual_level():
            duals = []
            for p, primal in enumerate(primals):
                tangent = _from_real(u[None, starts[p]:starts[p + 1]], tuple(primal.shape),
                                     primal.dtype, primal.device)[0]
                duals.append(forward_ad.make_dual(
                    primal, torch.zeros_like(primal).copy_(tangent)))
            results = fn.call(duals)
            parts = []
            for j in fn.positions:
                tangent = forward_ad.unpack_dual(results[j]).tangent
                parts.append(_real_flat(torch.zeros_like(results[j]) if tangent is None
                                        else tangent))
        out[r] = np.concatenate(parts) if parts else np.zeros(0)
    return out


def _vjp_contracted(fn: _Function, leaves, outputs, u: np.ndarray) -> np.ndarray:
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
    return _input_rows(fn, [None if g is None else _dense(g)[None] for g in grads], 1)[0]


# ---------------------------------------------------------------- public API


def gradcheck(
    func: Callable[..., Any],
    inputs: Any,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    raise_exception: bool = True,
    nondet_tol: float = 0.0,
    check_undefined_grad: bool = True,
    check_grad_dtypes: bool = False,
    check_batched_grad: bool = False,
    check_batched_forward_grad: bool = False,
    check_forward_ad: bool = False,
    check_backward_ad: bool = True,
    fast_mode: bool = False,
    masked: bool | None = None,
    strict: bool | None = None,
) -> bool:
    """Check ``func``'s full Jacobian against centered differences: torch's ``gradcheck``.

    A drop-in for ``torch.autograd.gradcheck`` (same signature, same conventions): every input
    coordinate of every input that requires grad against every element of every floating-point
    output. ``func`` is called as torch calls it: with the caller's own input objects (a
    Parameter stays that Parameter, requires grad, grad mode on), perturbed in place and
    restored bitwise after every call, as torch does; perturbed inputs are batched in
    ``torch.func.vmap`` calls only where the batched value at x equals a plain call's bit for
    bit. Analytic rows are vector-Jacobian products (batched); each element is judged as
    ``fastgrad.check`` judges a coordinate: relative error, roundoff floor, kink re-checks at
    smaller steps.

    The caller's tolerance is the contract: an element fails where torch's rule
    ``|a - n| <= atol + rtol |n|`` fails at fastgrad's numeric value (after its re-checks) and
    the disagreement is not roundoff noise or an excused kink. Elements within that rule but
    beyond fastgrad's own band (relative error 1e-4 in float64, 3e-3 in float32) pass with a
    ``fastgrad.GradcheckWarning`` naming them, and fail with ``strict=True``. An output that
    does not require grad (``.detach()``, a numpy round trip) must have a zero numeric
    Jacobian, as in torch. The first step of each coordinate is fastgrad's automatic one
    (``eps^(1/3) max(1, |x|)``) when ``eps`` is torch's default 1e-6, else ``eps``; when
    ``func`` raises at the automatic step, the check runs again at ``eps``.

    Parameters
    ----------
    func : callable
        ``func(*inputs)`` returning a tensor or a tuple of tensors. Integer outputs are not
        judged; floating outputs that do not require grad must have a zero numeric Jacobian.
    inputs : tensor or tuple
        The arguments; floating or complex tensors with ``requires_grad=True`` are checked,
        everything else (integer tensors, numbers, other objects) is passed through. Entries
        that are not finite (masked ``-inf``) are not perturbed; they are listed as skipped.
    eps : float
        Torch's finite-difference step; the default means "automatic steps".
    atol : float
        Absolute tolerance: an element within it never fails.
    rtol : float
        Relative tolerance of torch's rule; also caps fastgrad's relative band.
    raise_exception : bool
        Raise ``GradcheckError`` on failure (default) or return False.
    nondet_tol : float
        Allowed difference between two evaluations (forward and backward) at the same inputs.
    check_undefined_grad : bool
        Also run backward with an undefined gradient for each output (must not raise).
    check_grad_dtypes : bool
        Also require the gradients' dtype and device to be the inputs'.
    check_batched_grad : bool
        Also compare vmap'd vector-Jacobian products with one-by-one ones.
    check_batched_forward_grad : bool
        Also compare vmap'd Jacobian-vector products with one-by-one ones.
    check_forward_ad : bool
        Also judge forward-mode AD (JVP columns) against the numeric Jacobian.
    check_backward_ad : bool
        Judge backward-mode AD (default True).
    fast_mode : bool
        Torch's fast mode at torch's cost: one random direction per input and one random
        contraction per output (1 + 2 x inputs evaluations when it passes, +1 when vmap cannot
        batch them); a direction that disagrees is re-measured at half the step and then
        localized by fastgrad's audit, which names the wrong coordinates (``.report.suspects``).
    masked : bool or None
        Sparse (COO, CSR, CSC) inputs, torch's semantics: True perturbs and judges only the
        specified elements (the gradient at unspecified ones is ignored); False or None (as in
        torch) passes each perturbed input with every element specified and requires the
        backward of the caller's tensor to give the dense gradient. Sparse inputs are evaluated
        one call per perturbation (vmap does not batch them); forward AD of sparse inputs is
        not supported.
    strict : bool or None
        Fail elements within the caller's tolerance but beyond fastgrad's band instead of
        warning; None reads ``$FASTGRAD_STRICT`` ("1": strict; ``pytest --fastgrad-strict``).

    Returns
    -------
    bool
        True when the check passes; False when it fails and ``raise_exception`` is False.

    Raises
    ------
    fastgrad.torch.GradcheckError
        When the check fails (and ``raise_exception``): the message is the report's table,
        ``.report`` the report.
    Exception
        What ``func`` raised at a perturbed input at both steps, with a note naming the
        coordinate and the step.
    ValueError
        When no input requires grad, a tolerance is negative, an output is sparse, or
        ``check_forward_ad`` is asked of sparse inputs.
    TypeError
        When a checked input is not a float32/float64/complex tensor, or has a layout other
        than strided, sparse COO, CSR or CSC.

    Examples
    --------
    >>> import torch, fastgrad.torch
    >>> x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    >>> fastgrad.torch.gradcheck(lambda x: (x.sin(), x.exp().sum(1)), (x,))
    True
    """
    eps, atol, rtol, nondet_tol = _options(eps, atol, rtol, nondet_tol)
    strict = strict_option(strict)
    inputs = _as_tuple(inputs)
    names = [f"input{k}" for k in range(len(inputs))]
    fn = _Function(func, inputs, names, needs_grad=False, masked=bool(masked))
    if check_forward_ad and fn.sparse:
        raise InvalidValue("check_forward_ad: forward-mode AD of sparse inputs is not supported "
                           "(check the backward, or pass the inputs dense)")
    tolerated: list = []
    with _no_side_effects():
        passed = _check(fn, eps=eps, atol=atol, rtol=rtol, nondet_tol=nondet_tol,
                        check_backward_ad=check_backward_ad, check_forward_ad=check_forward_ad,
                        check_batched_grad=check_batched_grad,
                        check_batched_forward_grad=check_batched_forward_grad,
                        check_undefined_grad=check_undefined_grad,
                        check_grad_dtypes=check_grad_dtypes, fast_mode=fast_mode,
                        raise_exception=raise_exception, strict=strict, tolerated=tolerated)
    _warn_tolerated("gradcheck", tolerated, atol, rtol)
    return passed


def gradgradcheck(
    func: Callable[..., Any],
    inputs: Any,
    grad_outputs: Any = None,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    gen_non_contig_grad_outputs: bool = False,
    raise_exception: bool = True,
    nondet_tol: float = 0.0,
    check_undefined_grad: bool = True,
    check_grad_dtypes: bool = False,
    check_batched_grad: bool = False,
    check_fwd_over_rev: bool = False,
    check_rev_over_rev: bool = True,
    fast_mode: bool = False,
    masked: bool | None = None,
    strict: bool | None = None,
) -> bool:
    """Check second derivatives: the Jacobian of ``func``'s backward, torch's ``gradgradcheck``.

    The function checked is ``(inputs, grad_outputs) -> autograd.grad(func(*inputs), inputs,
    grad_outputs, create_graph=True)``: its numeric Jacobian (centered differences of the
    backward) against its double-backward, with ``gradcheck``'s rules and report (inputs
    named ``input0``, ..., ``grad_output0``, ...; outputs ``grad_input0``, ...).

    Parameters
    ----------
    func : callable
        ``func(*inputs)`` returning a tensor or a tuple of tensors.
    inputs : tensor or tuple
        As for ``gradcheck``.
    grad_outputs : tensor or tuple, optional
        The cotangents of the differentiable outputs; default: random normal ones (seeded),
        which require grad (the second derivative in them is checked too).
    eps : float
        As for ``gradcheck``.
    atol : float
        As for ``gradcheck``.
    rtol : float
        As for ``gradcheck``.
    gen_non_contig_grad_outputs : bool
        Accepted for torch compatibility (the generated cotangents are contiguous).
    raise_exception : bool
        As for ``gradcheck``.
    nondet_tol : float
        As for ``gradcheck``.
    check_undefined_grad : bool
        As for ``gradcheck``.
    check_grad_dtypes : bool
        As for ``gradcheck``.
    check_batched_grad : bool
        As for ``gradcheck``.
    check_fwd_over_rev : bool
        Also check forward-mode AD of the backward (``check_forward_ad`` of the second-order
        function).
    check_rev_over_rev : bool
        Check the double backward (default True).
    fast_mode : bool
        As for ``gradcheck``.
    masked : bool or None
        As for ``gradcheck``.
    strict : bool or None
        As for ``gradcheck``.

    Returns
    -------
    bool
        True when the check passes; False when it fails and ``raise_exception`` is False.

    Raises
    ------
    fastgrad.torch.GradcheckError
        When the check fails (and ``raise_exception``).
    ValueError
        When no input requires grad, or a tolerance is negative.
    TypeError
        When a checked input is not a dense float32/float64/complex tensor.

    Examples
    --------
    >>> import torch, fastgrad.torch
    >>> x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    >>> fastgrad.torch.gradgradcheck(torch.tanh, (x,))
    True
    """
    eps, atol, rtol, nondet_tol = _options(eps, atol, rtol, nondet_tol)
    strict = strict_option(strict)
    del gen_non_contig_grad_outputs
    inputs = _as_tuple(inputs)
    checked = [k for k, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not checked:
        raise InvalidValue("inputs: gradgradcheck expects at least one input tensor to require "
                           "gradient (none of the inputs has requires_grad=True)")
    with torch.enable_grad():  # the caller's own inputs, as torch's gradgradcheck passes them
        outputs = _as_tuple(func(*inputs))
        diff = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
        # which inputs the backward reaches (torch's gradgradcheck drops the others' None)
        reached = [g is not None for g in torch.autograd.grad(
            diff, [inputs[k] for k in checked], [torch.ones_like(o) for o in diff],
            allow_unused=True)] if diff else [False] * len(checked)
    if grad_outputs is None:
        gen = torch.Generator().manual_seed(0)
        grad_outputs = tuple(
            torch.randn(o.shape, dtype=o.dtype, generator=gen).requires_grad_(True) for o in diff)
    grad_outputs = _as_tuple(grad_outputs)
    n = len(inputs)

    def backward(*args):
        xs, gos = args[:n], args[n:]
        outs = _as_tuple(func(*xs))
        outs = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
        wrt = [xs[k] for k in checked]
        grads = torch.autograd.grad(outs, wrt, gos, create_graph=True, allow_unused=True)
        return tuple(g for g in grads if g is not None)

    def functional_backward(*args):
        # the same backward as torch.func.vjp: vmap batches it (it cannot batch
        # torch.autograd.grad); the outputs the reference marked differentiable are the ones kept
        xs, gos = args[:n], args[n:]

        def of_checked(*values):
            full = list(xs)
            for k, value in zip(checked, values):
                full[k] = value
            result = _as_tuple(func(*full))
            return tuple(result[j] for j in differentiable)

        _, pull = torch.func.vjp(of_checked, *[xs[k] for k in checked])
        grads = pull(tuple(gos))
        return tuple(g for g, r in zip(grads, reached) if r)

    differentiable = _differentiable(outputs)
    names = [f"input{k}" for k in range(n)] + [f"grad_output{j}" for j in range(len(grad_outputs))]
    fn = _Function(backward, (*inputs, *grad_outputs), names, needs_grad=True,
                   out_prefix="grad_input", masked=bool(masked))
    fn.batched_func = functional_backward
    tolerated: list = []
    with _no_side_effects():
        passed = _check(fn, eps=eps, atol=atol, rtol=rtol, nondet_tol=nondet_tol,
                        check_backward_ad=check_rev_over_rev,
                        check_forward_ad=check_fwd_over_rev,
                        check_batched_grad=check_batched_grad, check_batched_forward_grad=False,
                        check_undefined_grad=False, check_grad_dtypes=check_grad_dtypes,
                        fast_mode=fast_mode, raise_exception=raise_exception, strict=strict,
                        tolerated=tolerated)
    _warn_tolerated("gradgradcheck", tolerated, atol, rtol)
    return passed


def _warn_tolerated(what: str, tolerated: list, atol: float, rtol: float) -> None:
    """One GradcheckWarning naming the elements the caller's tolerance accepted beyond
    fastgrad's band (pytest lists it; strict=True fails them instead)."""
    if not tolerated:
        return
    elements = tuple(e for shown, _ in tolerated for e in shown)
    count = sum(n for _, n in tolerated)
    more = count - len(elements)
    warnings.warn(GradcheckWarning(
        f"fastgrad {what} passed by the caller's tolerance (atol={atol:g}, rtol={rtol:g}), "
        f"but {count} element(s) are beyond fastgrad's relative band: {', '.join(elements)}"
        + (f" and {more} more" if more > 0 else "")
        + "; strict=True (or pytest --fastgrad-strict) fails them", elements), stacklevel=3)


@contextlib.contextmanager
def _no_side_effects():
    """torch's RNG as the caller left it (a function may draw random numbers)."""
    with torch.random.fork_rng(devices=[]):
        yield

