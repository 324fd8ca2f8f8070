"""The function a drop-in check sees: torch tensors as one flat real vector.

Real views of tensors (complex as real then imaginary parts), sparse inputs as the values of their
elements, ``TorchFunction`` (``func`` of the flat real vector of its checked inputs, called as
torch's gradcheck calls it: the Jacobian core's ``FlatFunction``, one call or one vmap'd call) and
``Evaluator`` (the core's chunked columns, with torch's word on vmap's randomness).
"""

from __future__ import annotations

import bisect
import functools
import math
import time
import types
import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ...checks.jacobian import CoordinateColumns, FlatFunction, Layout
from ...errors import InvalidType, InvalidValue
from ...steps import tolerance


def real_flat(t: torch.Tensor, batch: int | None = None) -> np.ndarray:
    """Flat float64 real view: complex as real parts then imaginary parts; batch keeps dim 0."""
    if t.dtype is torch.float64 and t.is_cpu and t.layout is torch.strided and \
            not t.is_neg() and not t._is_zerotensor():  # the common case, first: no copy
        return t.detach().numpy().reshape(-1 if batch is None else (batch, -1))
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


def from_real(values: np.ndarray, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
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


def as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def differentiable_outputs(outputs: tuple) -> list[int]:
    """Positions of the outputs autograd can differentiate (torch's rule: requires_grad)."""
    return [j for j, o in enumerate(outputs) if isinstance(o, torch.Tensor) and o.requires_grad]


def _judged_outputs(outputs: tuple) -> list[int]:
    """The outputs whose Jacobian is judged: those that require grad, and the floating ones
    that do not (their numeric Jacobian must be zero: a function that lost its gradient path,
    ``.detach()`` or a numpy round trip, fails instead of passing unchecked). Integer outputs
    (indices, counts) are not judged: they cannot carry a gradient."""
    return [j for j, o in enumerate(outputs) if isinstance(o, torch.Tensor)
            and (o.requires_grad or o.is_floating_point() or o.is_complex())]


def precision_dtype(dtypes) -> np.dtype:
    """The working precision: float32 when any checked tensor is single precision."""
    low = any(d in (torch.float32, torch.complex64) for d in dtypes)
    return np.dtype(np.float32) if low else np.dtype(np.float64)


def caller_tolerance(dtype, rtol: float) -> tuple[float, str]:
    tol, reason = tolerance(dtype)
    if 0.0 < rtol < tol:
        return rtol, f"rtol={rtol:.0e} given by the caller"
    return tol, reason + (f"; torch's rule |a - n| <= atol + rtol |n| also applied (rtol={rtol:.0e})"
                          if rtol else "")


SPARSE_LAYOUTS = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc)


def _all_specified(t: torch.Tensor) -> torch.Tensor:
    """A sparse COO/CSR/CSC tensor with every element specified (zeros where t has none):
    torch's dense semantics of a sparse input (``masked=False``)."""
    dense = t.detach().to_dense()
    full = torch.ones(dense.shape, dtype=torch.bool).nonzero().t()
    coo = torch.sparse_coo_tensor(full, dense.reshape(-1), dense.shape, is_coalesced=True)
    return coo if t.layout == torch.sparse_coo else coo.to_sparse(layout=t.layout)


class _Alive:
    """Stands for an object by identity while it lives: equal only to another ``_Alive`` of the
    same live object (a weak reference: a dead object matches nothing, and a new object at its
    address is another object). Unlike ``weakref.ref``, it needs no hashable referent (a
    dataclass with ``eq=True``, as PyTorch's OpInfo, is not) and never compares by value."""

    __slots__ = ("ref", "key")

    def __init__(self, obj: object):
        self.ref, self.key = weakref.ref(obj), id(obj)

    def __hash__(self) -> int:
        return self.key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Alive):
            return NotImplemented
        mine = self.ref()
        return mine is not None and mine is other.ref()


_UNKNOWN = object()  # an object that cannot stand in an identity (see _held)
HELD_ITEMS = 16  # a list, tuple or dict stands for a function by its items up to this many


def _held(obj: object, depth: int = 0) -> object:
    """What stands for an object in a function's identity without its id being reusable: a
    class, module or function itself (kept alive: cheap), a number or string by value, a short
    list, tuple or dict by its items, another object by identity while it lives (``_Alive``),
    else ``_UNKNOWN``: the function then has no identity (no memory of refusals), because a
    stand-in shared by different objects (their type, say) made every function of one shape
    one function: one refusal (batch norm's) sent 300 later checks of other ops one by one."""
    if isinstance(obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType,
                        int, float, complex, str, bytes, type(None))):
        return obj
    if isinstance(obj, (list, tuple)) and depth < 2 and len(obj) <= HELD_ITEMS:
        return (type(obj), *(_held(item, depth + 1) for item in obj))
    if isinstance(obj, dict) and depth < 2 and len(obj) <= HELD_ITEMS:
        return (dict, *((_held(k, depth + 1), _held(v, depth + 1)) for k, v in obj.items()))
    try:
        return _Alive(obj)
    except TypeError:  # no weak references
        return _UNKNOWN


def _known(key: object) -> bool:
    """False when ``key`` holds an ``_UNKNOWN`` anywhere."""
    if key is _UNKNOWN:
        return False
    if isinstance(key, tuple):
        return all(_known(part) for part in key)
    return True


def function_identity(func: Callable) -> object:
    """What identifies ``func`` across checks, for the memory of vmap refusals: a module's class
    with its submodules' classes and modes (one loss class checked on many inputs; a Sequential
    of other layers is another function, and so is the same module in eval mode), a
    function's code with what its closure holds and what it is bound to (a lambda wrapping
    another operator is another function; ``Function.apply`` of each autograd.Function class
    is its own), a partial's function with its arguments; None when there is no such thing,
    or when something it holds cannot be told apart from another object (``_held``). A wrong
    match could only send a check one by one: the values are the same, the time is not."""
    key = _identity(func)
    return key if key is not None and _known(key) else None


def _identity(func: Callable) -> object:
    if isinstance(func, torch.nn.Module):  # in train or eval mode: batch norm vmaps in eval
        return ("module",) + tuple((type(m), m.training) for m in func.modules())
    if isinstance(func, functools.partial):
        inner = _identity(func.func)
        return None if inner is None else ("partial", inner,
                                           tuple(_held(a) for a in func.args),
                                           tuple(sorted(func.keywords)))
    plain = getattr(func, "__func__", func)
    code = getattr(plain, "__code__", None)
    if code is None:
        return None
    cells = []
    for cell in getattr(plain, "__closure__", None) or ():
        try:
            cells.append(_held(cell.cell_contents))
        except ValueError:  # an empty cell
            cells.append(None)
    return ("code", code, tuple(cells), _held(getattr(func, "__self__", None)))


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
        return real_flat(self.template.values())

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


class Raised(Exception):
    """func raised at a perturbed input ``row`` (the original exception is ``.error``)."""

    def __init__(self, error: BaseException, row: np.ndarray):
        super().__init__(str(error))
        self.error, self.row = error, row


class TorchFunction(FlatFunction):
    """``func`` as a function of the flat real vector of its checked inputs (the Jacobian core's
    ``FlatFunction``: one call, or one ``torch.func.vmap`` call of a batch).

    ``func`` is called as torch's gradcheck calls it: with the caller's own input objects (an
    ``nn.Parameter`` stays that Parameter, a leaf stays a leaf that requires grad), grad mode
    on, in the inputs' dtypes. A perturbed evaluation writes the perturbed values into the
    caller's dense tensors in place (through ``.data``, as torch does), calls ``func``, and
    writes the saved originals back, bitwise, before anything else runs (also when func
    raises). Batched (vmap'd) evaluation uses fresh tensors, and only where the vmap'd value
    at x equals the one-by-one value bitwise. Sparse inputs are passed as rebuilt tensors.
    """

    vmap = "torch.func.vmap"
    # one torch.func.vmap call's own cost, beyond its rows' work: a fast-mode check's batched
    # call of 3 rows took 127 us for torch.sin, 153 us for kornia's deg2rad, where one plain
    # call takes 9 and 21 us (2-core VM, medians of 180 checks). Rows that cost less one by one
    # go one by one: a fast-mode check of a cheap function makes plain calls, as torch's does
    batch_call_seconds = 150e-6

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
        # a copy (concatenate): x must not see the in-place perturbations
        x = np.concatenate([self.sparse[k].flat() if k in self.sparse
                            else real_flat(inputs[k]) for k in self.checked]) \
            if self.layout.size else np.zeros(0)
        super().__init__(x, batchable=not self.sparse, why_serial=(
            "sparse inputs (torch.func.vmap does not batch sparse tensors)" if self.sparse
            else ""), identity=function_identity(func))
        # the caller's dense values, written back after every perturbed call
        self.saved = {k: inputs[k].detach().clone() for k in self.checked
                      if k not in self.sparse}
        # one-coordinate perturbations write one element (None: whole inputs are copied)
        self.elements = self._element_views()
        self.starts = self.layout.starts.tolist()
        self.checked_inputs = [inputs[k] for k in self.checked]
        self.out_prefix = out_prefix
        # what vmap batches, when not func itself (a functional twin: the same values)
        self.batched_func: Callable | None = None
        # vmap's randomness: "error" until a random op is met, then "same" (many)
        self.randomness = "error"
        # a second plain call at x gave the recorded values (side_tests.nondeterministic)
        self.repeatable = False

    def tensors(self, flat: np.ndarray, requires_grad: bool = True) -> list[torch.Tensor]:
        """Fresh checked inputs for a batch of flat rows (vmap): tensors of shape (B, *shape)."""
        starts = self.layout.starts
        out = []
        for p, k in enumerate(self.checked):
            t = self.inputs[k]
            value = from_real(flat[:, starts[p]:starts[p + 1]], tuple(t.shape), t.dtype,
                               t.device)
            out.append(value.requires_grad_(True) if self.needs_grad and requires_grad
                       else value)
        return out

    def call(self, checked: Sequence[torch.Tensor]) -> tuple:
        args = list(self.inputs)
        for k, value in zip(self.checked, checked):
            args[k] = value
        return as_tuple(self.func(*args))

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
            started = time.perf_counter()
            outputs = self.call(leaves)
            # a plain call's cost, with autograd recording as every numeric call runs: a few
            # cheap rows go one by one instead of paying for a vmap call
            self.call_seconds = time.perf_counter() - started
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

    def ignored_by_torch(self, strict: bool) -> list[int]:
        """Positions (in out_layout) of the judged outputs that do not require grad while
        another one does, unless ``strict``: torch's gradcheck ignores such an output (it checks
        numeric Jacobians for zero only when no output requires grad), so a nonzero numeric
        Jacobian there (an auxiliary output such as native_layer_norm's mean, or a stray
        ``.detach()``) warns instead of failing."""
        if strict or len(self.no_grad) == len(self.positions):
            return []
        return [p for p, j in enumerate(self.positions) if j in self.no_grad]

    def differentiable(self, outputs: tuple) -> list[tuple[int, int]]:
        """(position in out_layout, output index) of the judged outputs that require grad."""
        return [(p, j) for p, j in enumerate(self.positions) if j not in self.no_grad]

    def flat_outputs(self, outputs: tuple, batch: int | None) -> np.ndarray:
        """A new array (never a view of an output: an output may alias an input that is
        perturbed in place next)."""
        if len(self.positions) == 1:  # a copy: the view may be the caller's memory
            return np.array(real_flat(outputs[self.positions[0]], batch), dtype=np.float64)
        parts = [real_flat(outputs[j], batch) for j in self.positions]
        if not parts:
            return np.zeros((batch or 1, 0)) if batch is not None else np.zeros(0)
        return np.concatenate(parts, axis=-1)

    def _grad_mode(self):
        return torch.enable_grad() if self.needs_grad else torch.no_grad()

    def call_one(self, row: np.ndarray) -> np.ndarray:
        """The flat real outputs at one flat input (one call of func on the caller's inputs)."""
        if self.elements is not None:
            return self._call_in_place(row, np.flatnonzero(row != self.x))
        args, written = list(self.inputs), []
        starts = self.layout.starts
        try:
            with torch.no_grad():
                for p, k in enumerate(self.checked):
                    part = row[starts[p]:starts[p + 1]]
                    t = self.inputs[k]
                    if k in self.sparse:
                        value = from_real(part[None], (self.sparse[k].positions.size,),
                                           t.dtype, t.device)[0]
                        args[k] = self.sparse[k].rebuild(value).requires_grad_(True)
                    elif not np.array_equal(part, self.x[starts[p]:starts[p + 1]]):
                        # only the inputs that differ from x are written: an input passed
                        # twice (one tensor) is perturbed once, as torch perturbs it
                        written.append(k)
                        t.data.copy_(from_real(part[None], tuple(t.shape), t.dtype,
                                                t.device)[0])
            with torch.enable_grad():
                outputs = as_tuple(self.func(*args))
            return self.flat_outputs(outputs, None)
        except Exception as exc:
            raise Raised(exc, row) from exc
        finally:
            with torch.no_grad():
                for k in written:
                    self.inputs[k].data.copy_(self.saved[k])

    def _element_views(self) -> list[tuple[np.ndarray, np.ndarray, bool]] | None:
        """Per checked input (the order of ``checked``): a numpy view of the caller's storage,
        the same of its saved copy, and whether they are flat (C-contiguous inputs: a flat
        index is the element; otherwise it is unravelled over the view's shape, its strides).
        A perturbation of one coordinate is then one element written and written back. None
        when an input is sparse, complex, not on the CPU or not viewable by numpy, or has
        elements sharing memory: every evaluation then copies whole inputs."""
        views = []
        for k in self.checked:
            t = self.inputs[k]
            if k in self.sparse or t.is_complex() or t.device.type != "cpu":
                return None
            try:
                view, saved = t.detach().numpy(), self.saved[k].numpy()
            except (RuntimeError, TypeError):  # a negative-bit view, a dtype numpy lacks
                return None
            if any(stride == 0 and size > 1 for stride, size in zip(view.strides, view.shape)):
                return None  # elements that share memory (expand): whole inputs, as before
            flat = view.flags.c_contiguous and saved.flags.c_contiguous
            views.append((view.reshape(-1), saved.reshape(-1), True) if flat
                         else (view, saved, False))
        return views

    def _call_in_place(self, row: np.ndarray, changed: np.ndarray) -> np.ndarray:
        """``call_one`` through the numpy views of the caller's tensors: the ``changed``
        coordinates' values are written into the caller's storage and the saved values written
        back afterwards (torch's gradcheck does the same). One changed coordinate (a column of
        a Jacobian) writes that one element; more (a random direction) write the inputs they
        fall in, whole. The same values as writing through ``from_real``: numpy rounds to the
        input's dtype as torch does."""
        writes = []  # (view, saved, where, value)
        if changed.size == 1:
            i = int(changed[0])
            p = bisect.bisect_right(self.starts, i) - 1
            view, saved, flat = self.elements[p]
            where = i - self.starts[p]
            if not flat:
                where = np.unravel_index(where, view.shape) if view.ndim else ()
            writes.append((view, saved, where, row[i]))
        elif changed.size:
            # the inputs holding a changed coordinate: only those are written (one tensor passed
            # twice is written once, as torch perturbs it)
            touched = (range(1) if len(self.elements) == 1 else
                       np.flatnonzero(np.diff(np.searchsorted(changed, self.layout.starts))))
            for p in touched:
                a, b = self.starts[p], self.starts[p + 1]
                view, saved, flat = self.elements[p]
                writes.append((view, saved, ...,
                               row[a:b] if flat else row[a:b].reshape(view.shape)))
        versions = [t._version for t in self.checked_inputs]
        try:
            for view, _, where, value in writes:
                view[where] = value  # rounded to the input's dtype, as from_real rounds it
            if torch.is_grad_enabled():  # as torch's gradcheck calls func: grad mode on
                outputs = as_tuple(self.func(*self.inputs))
            else:
                with torch.enable_grad():
                    outputs = as_tuple(self.func(*self.inputs))
            return self.flat_outputs(outputs, None)
        except Exception as exc:
            raise Raised(exc, row) from exc
        finally:
            for view, saved, where, _ in writes:
                view[where] = saved[where]
            for k, t, version in zip(self.checked, self.checked_inputs, versions):
                if t._version != version:  # func wrote into its input: all of it back
                    with torch.no_grad():
                        t.data.copy_(self.saved[k])

    def call_batch(self, rows: np.ndarray) -> np.ndarray:
        """The flat real outputs at each row in one ``torch.func.vmap`` call."""
        try:
            return self._vmapped(rows)
        except Exception as exc:
            if self.randomness == "error" and "randomness" in str(exc):
                # a random op: a function that fixes its seed at every call (torch's own test
                # wrappers do) draws the same numbers for every row, as vmap's
                # randomness="same" does; the probe at x tells whether it does
                self.randomness = "same"
                return self._vmapped(rows)
            raise

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
            outputs = as_tuple(func(*a))
            return tuple(outputs[j] for j in self.positions)

        with (torch.no_grad() if functional else self._grad_mode()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outputs = torch.func.vmap(fn, in_dims=in_dims, randomness=self.randomness)(*args)
        if len(outputs) == 1:  # no copy of a large batch
            return real_flat(outputs[0], batch)
        return np.concatenate([real_flat(o, batch) for o in outputs], axis=-1)

    @property
    def low(self) -> bool:
        return precision_dtype(
            [self.inputs[k].dtype for k in self.checked] + self.out_dtypes) == np.float32


class Evaluator(CoordinateColumns):
    """What the Judge calls: ``pairs(index, step)`` -> whole outputs at x +- h e_i, the core's
    chunked columns; the path line says when vmap ran with randomness="same"."""

    @property
    def path_reason(self) -> str:
        reason = super().path_reason
        if self.fn.batched and self.fn.randomness == "same":
            reason += (" with randomness='same' (f draws random numbers: the same at every "
                       "call, as the batched value at x showed)")
        return reason
