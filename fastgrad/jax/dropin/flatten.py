"""The function a drop-in check sees: a level of jax's recursion (the caller's ``f`` of its inexact
leaves, or a derivative map of the order below) as a function of one flat float64 vector (the Jacobian core's
``FlatFunction``: one call or one ``jax.vmap`` call), and the evaluators of the directional
check (outputs along a tangent, some rows kept or contracted); the full check's columns are
the core's ``CoordinateColumns``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ...checks.jacobian import VMAP_AGREEMENT, ColumnEvaluator, FlatFunction, Layout
from ...errors import InvalidValue
from ..pytrees import key_name
from .tolerances import Options, caller_rule

# jax.vmap batches at least this many rows or basis vectors: eager jax compiles every primitive
# again for a batched shape (seconds for a nested derivative), a loop reuses the compiled ones
VMAP_MIN_ROWS = 16


@dataclass(frozen=True)
class Part:
    """One differentiated leaf: its real dtype, shape, and whether it is complex (real parts,
    then imaginary) or a Python scalar (passed as one, as jax's checker does)."""

    name: str
    shape: tuple
    dtype: np.dtype  # real dtype (float32 for complex64)
    complex: bool = False
    scalar: type | None = None

    @property
    def part_shape(self) -> tuple:
        return (2, *self.shape) if self.complex else self.shape

    @property
    def size(self) -> int:
        return math.prod(self.part_shape)

    def leaf(self, flat: np.ndarray):
        """The leaf from its float64 slice, cast to its dtype (numpy, or a Python scalar)."""
        value = self.batch(flat[None])[0]
        if self.scalar is not None:
            return self.scalar(value.item())
        return value

    def batch(self, rows: np.ndarray) -> np.ndarray:
        """Leaves from rows of float64 slices (complex: real parts, then imaginary)."""
        count = rows.shape[0]
        value = rows.astype(self.dtype).reshape(count, *self.part_shape)
        if self.complex:
            value = value[:, 0] + 1j * value[:, 1].astype(np.result_type(self.dtype,
                                                                          np.complex64))
        return value


def conj_rows(parts: Sequence[Part], rows: np.ndarray) -> np.ndarray:
    """Rows of flat leaves (real parts, then imaginary, per complex leaf) conjugated: the
    imaginary parts negated."""
    rows = rows.copy()
    start = 0
    for p in parts:
        if p.complex:
            rows[:, start + p.size // 2:start + p.size] *= -1
        start += p.size
    return rows


def layout_of(parts: Sequence[Part]) -> Layout:
    return Layout(tuple(p.name for p in parts), tuple(p.shape for p in parts),
                  tuple(p.complex for p in parts))


def _real_outputs(value) -> tuple:
    """The inexact leaves of an output pytree (integer outputs have no derivative)."""
    return tuple(leaf for leaf in jax.tree_util.tree_leaves(value)
                 if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact))


def flat64(values, count: int | None = None) -> np.ndarray:
    """Leaves as one float64 vector (complex: real parts, then imaginary, per leaf); with
    ``count``, leaves of batches as (count, n) rows."""
    parts = []
    for v in values:
        v = np.asarray(v)
        v = v.reshape(-1) if count is None else v.reshape(count, -1)
        if np.iscomplexobj(v):
            parts += [v.real, v.imag]
        else:
            parts.append(v)
    if not parts:
        return np.zeros(0 if count is None else (count, 0))
    return np.concatenate([p.astype(np.float64) for p in parts], axis=-1)


class Level(FlatFunction):
    """A function of the differentiated leaves and the point: order 1 is the caller's ``f``
    (constant leaves closed over), order k + 1 a derivative map of order k's real-ified
    function. The Jacobian core's ``FlatFunction``: ``one`` is the counted numeric evaluation,
    ``many`` batches rows in ``jax.vmap`` calls where they keep f's values (within
    VMAP_AGREEMENT units of roundoff); ``jax_fun`` is what jax differentiates."""

    vmap = "jax.vmap"
    min_batch = VMAP_MIN_ROWS
    agreement = VMAP_AGREEMENT

    def __init__(self, fun: Callable, parts: list[Part], x: np.ndarray,
                 what: str, order: int, out_names: Callable[[int, Any], str],
                 out_at_x: Any = None):
        # Python scalars are passed as such (as jax's checker does): vmap cannot batch them
        super().__init__(x, batchable=all(p.scalar is None for p in parts),
                         why_serial="the perturbed inputs evaluated one by one")
        self.fun, self.parts = fun, parts
        self.what, self.order = what, order
        self.layout = layout_of(parts)
        self.bounds = np.cumsum([0, *(p.size for p in parts)])
        # jax.vjp(jax_fun) at x as the analytic VJP computed it: (primal output, vjp map),
        # so the VJP map of the next order reuses its linearization at x
        self.vjp_at_x: tuple | None = None
        # the output parts, from one evaluation at x (also f0) unless given
        if out_at_x is None:
            out_at_x = self.fun(*self.leaves(x))
            self.evaluations += 1
        out = out_at_x
        reals = _real_outputs(out)
        self.out_parts = []
        for j, leaf in enumerate(reals):
            dtype = np.dtype(jnp.result_type(leaf))
            cplx = bool(jnp.issubdtype(dtype, jnp.complexfloating))
            self.out_parts.append(Part(out_names(j, len(reals)), tuple(np.shape(leaf)),
                                        np.dtype(np.finfo(dtype).dtype) if cplx else dtype,
                                        cplx))
        self.out_layout = layout_of(self.out_parts)
        self.f0 = flat64(reals)
        self.at_x = self.f0

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        return [flat[self.bounds[i]:self.bounds[i + 1]] for i in range(len(self.parts))]

    def split_rows(self, rows: np.ndarray) -> list[np.ndarray]:
        return [rows[:, self.bounds[i]:self.bounds[i + 1]] for i in range(len(self.parts))]

    def leaves(self, flat: np.ndarray) -> list:
        return [p.leaf(v) for p, v in zip(self.parts, self.split(flat))]

    def jax_fun(self, *leaves):
        """What jax differentiates: the leaves in, the inexact output leaves out."""
        return _real_outputs(self.fun(*leaves))

    def call_one(self, row: np.ndarray) -> np.ndarray:
        return flat64(_real_outputs(self.fun(*self.leaves(row))))

    def call_batch(self, rows: np.ndarray) -> np.ndarray:
        count = rows.shape[0]
        padded = 1 << (count - 1).bit_length()  # one compile per power of two
        rows = np.concatenate([rows, np.repeat(rows[-1:], padded - count, axis=0)])
        leaves = [p.batch(b) for p, b in zip(self.parts, self.split_rows(rows))]
        return flat64(jax.vmap(self.jax_fun)(*leaves), padded)[:count]

    # analytic derivatives
    def push(self, mode: str) -> Callable:
        """The JVP map tangent leaves -> output tangent leaves at x ("fwd" or "lin")."""
        primals = tuple(self.leaves(self.x))
        if mode == "lin":
            _, f_lin = jax.linearize(self.jax_fun, *primals)
            return lambda *ts: f_lin(*ts)
        return lambda *ts: jax.jvp(self.jax_fun, primals, ts)[1]

    def pull(self) -> Callable:
        """The VJP map cotangent leaves -> input cotangent leaves at x. jax's check_vjp takes
        conj(vjp(conj(c))): the caller conjugates on the numpy side (``conj_rows``), as jax's
        checker does (jnp.conj would compile an executable per shape, even of real leaves)."""
        out, vjp_fun = jax.vjp(self.jax_fun, *self.leaves(self.x))
        self.vjp_at_x = (out, vjp_fun)
        return lambda *cs: vjp_fun(cs)


def rule_groups(level: Level, opts: Options, scaled: bool):
    """Output rows grouped by the caller's (atol, rtol) of their leaf (jax's rule by dtype;
    ``scaled``: times the leaf's size, as jax's check_close of a whole tangent)."""
    groups: dict[tuple[float, float], list[int]] = {}
    for j, part in enumerate(level.out_parts):
        dtype = np.result_type(part.dtype, np.complex64) if part.complex else part.dtype
        key = caller_rule(dtype, math.prod(part.shape) if scaled else 1, opts)
        groups.setdefault(key, []).append(j)
    return groups


def rows_of(level: Level, leaves: list[int]) -> np.ndarray:
    starts = level.out_layout.starts
    return np.concatenate([np.arange(starts[j], starts[j + 1]) for j in leaves]) \
        if leaves else np.zeros(0, dtype=np.int64)


def derived(level: Level, mode: str) -> Level:
    """jax's derivative map of the next order: ``partial(jvp, f)`` on (args, args) for "fwd"
    (``_jvp_from_lin`` for "lin"), ``x -> vjp(f, x)(f(x))`` for "rev"."""
    k = len(level.parts)
    at_x = None
    if mode == "rev":
        def fun(*leaves):
            out, vjp_fun = jax.vjp(level.jax_fun, *leaves)
            return vjp_fun(out)

        parts, x = list(level.parts), level.x
        names = [f"VJP wrt {p.name}" for p in level.parts]
        if level.vjp_at_x is not None:
            # fun at x from the linearization the analytic VJP made there (the same trace,
            # the same values): one linearization of f fewer per order
            out, vjp_fun = level.vjp_at_x
            at_x = vjp_fun(out)
            level.vjp_at_x = None  # its residuals are not needed again
    else:
        def fun(*leaves):
            primals, tangents = tuple(leaves[:k]), tuple(leaves[k:])
            if mode == "lin":
                out, f_lin = jax.linearize(level.jax_fun, *primals)
                return out, f_lin(*tangents)
            return jax.jvp(level.jax_fun, primals, tangents)

        parts = list(level.parts) + [Part(f"tangent {p.name}", p.shape, p.dtype, p.complex,
                                           p.scalar) for p in level.parts]
        x = np.concatenate([level.x, level.x])  # (args, args), as jax
        outs = [p.name for p in level.out_parts]
        names = outs + [f"tangent {n}" for n in outs]
    label = {"fwd": "JVP", "rev": "VJP", "lin": "LIN"}[mode]
    what = f"{label} of {level.what}" if level.what else label
    return Level(fun, parts, x, what, level.order + 1,
                  lambda j, count: names[j] if j < len(names) else f"output{j}", at_x)


def top_level(f: Callable, args: tuple) -> Level:
    """Order 1: the caller's f of its inexact leaves (other leaves held constant)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(args)
    values = [leaf for _, leaf in leaves]
    parts, checked, flat = [], [], []
    for p, (path, leaf) in enumerate(leaves):
        # Python scalars (not numpy's, which subclass them) stay Python scalars, as in jax
        scalar = type(leaf) if type(leaf) in (float, complex) else None
        dtype = (jax.dtypes.canonicalize_dtype(np.float64 if scalar is float else np.complex128)
                 if scalar is not None else np.asarray(leaf).dtype)
        if not jnp.issubdtype(dtype, jnp.inexact):
            continue  # integer and boolean leaves are held constant
        dtype = jax.dtypes.canonicalize_dtype(dtype)
        keys = [key_name(e) for e in path]
        name = f"arg{keys[0]}" + "".join(f"/{k}" for k in keys[1:])
        cplx = jnp.issubdtype(dtype, jnp.complexfloating)
        value = np.asarray(leaf, dtype=dtype)
        real_dtype = np.dtype(np.finfo(dtype).dtype) if cplx else np.dtype(dtype)
        parts.append(Part(name, tuple(value.shape), real_dtype, bool(cplx), scalar))
        checked.append(p)
        flat.append(np.concatenate([value.real.ravel(), value.imag.ravel()]).astype(np.float64)
                    if cplx else value.astype(np.float64).ravel())
    if not parts:
        raise InvalidValue("args: no floating-point argument to differentiate")

    def fun(*checked_leaves):
        full = list(values)
        for p, leaf in zip(checked, checked_leaves):
            full[p] = leaf
        return f(*jax.tree_util.tree_unflatten(treedef, full))

    return Level(fun, parts, np.concatenate(flat), "", 1,
                  lambda j, count: f"output{j}")


class Line(ColumnEvaluator):
    """f along the random tangent: pairs(index=[0], step) -> outputs at x +- s t (each
    perturbed leaf cast to its dtype); the pairs at the first step are kept, so the modes of
    one sub-check share them."""

    def __init__(self, level: Level, tangent: np.ndarray):
        super().__init__(level)
        self.level, self.tangent = level, tangent
        self.finite = np.isfinite(level.x)

    @property
    def path(self) -> str:
        return "per-call"

    @property
    def path_reason(self) -> str:
        return "f evaluated along one random tangent, one call per point"

    def point(self, s: float) -> np.ndarray:
        """x + s t, each leaf cast to its dtype (as float64); non-finite entries stay."""
        x = self.level.x.copy()
        x[self.finite] += s * self.tangent[self.finite]
        return np.concatenate([v.astype(p.dtype).astype(np.float64)
                               for p, v in zip(self.level.parts, self.level.split(x))])

    def _pairs(self, index, step):
        values = [(self.level.one(self.point(s)), self.level.one(self.point(-s)))
                  for s in np.asarray(step, dtype=np.float64)]
        return (np.stack([v[0] for v in values]), np.stack([v[1] for v in values]))


class Projected(ColumnEvaluator):
    """Another evaluator's outputs, some rows kept (``rows``, an index array) or contracted
    with a cotangent (``weights``, a column)."""

    def __init__(self, ev: ColumnEvaluator, rows: np.ndarray | None = None,
                 weights: np.ndarray | None = None):
        super().__init__(ev.fn)
        self.ev, self.rows, self.weights = ev, rows, weights

    @property
    def path(self) -> str:
        return self.ev.path

    @property
    def path_reason(self) -> str:
        return self.ev.path_reason

    def _pairs(self, index, step):
        f_plus, f_minus = self.ev.pairs(index, step)
        if self.weights is None:
            return f_plus[:, self.rows], f_minus[:, self.rows]
        with np.errstate(invalid="ignore", over="ignore"):
            return f_plus @ self.weights, f_minus @ self.weights
