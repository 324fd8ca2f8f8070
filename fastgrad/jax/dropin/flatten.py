"""The function a drop-in check sees: a level of jax's recursion (the caller's ``f`` of its inexact
leaves, or a derivative map of the order below) as a function of one flat float64 vector, and the
evaluators that give the judge its perturbed outputs (along a tangent, or coordinate columns)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ...checks.jacobian import ColumnEvaluator, Layout
from ...errors import InvalidValue
from ..pytrees import key_name
from .tolerances import Options, caller_rule

BATCH_VALUES = 1 << 22


VMAP_AGREEMENT = 64.0


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


class Level:
    """A function of the differentiated leaves and the point: order 1 is the caller's ``f``
    (constant leaves closed over), order k + 1 a derivative map of order k's real-ified
    function. ``evaluate`` is the counted numeric evaluation; ``real_fun`` what jax
    differentiates."""

    def __init__(self, fun: Callable, parts: list[Part], x: np.ndarray,
                 what: str, order: int, out_names: Callable[[int, Any], str]):
        self.fun, self.parts, self.x = fun, parts, x
        self.what, self.order = what, order
        self.layout = layout_of(parts)
        self.bounds = np.cumsum([0, *(p.size for p in parts)])
        self.evaluations, self.batched, self.why_serial = 0, False, "the perturbed inputs " \
            "evaluated one by one"
        self.vmap_ok = all(p.scalar is None for p in parts)
        self.at_value: np.ndarray | None = None
        self.verified = False
        # the output parts, from one evaluation at x (also f0)
        out = self.fun(*self.leaves(x))
        self.evaluations += 1
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
        self.at_value = self.f0

    def split(self, flat: np.ndarray) -> list[np.ndarray]:
        return [flat[self.bounds[i]:self.bounds[i + 1]] for i in range(len(self.parts))]

    def split_rows(self, rows: np.ndarray) -> list[np.ndarray]:
        return [rows[:, self.bounds[i]:self.bounds[i + 1]] for i in range(len(self.parts))]

    def leaves(self, flat: np.ndarray) -> list:
        return [p.leaf(v) for p, v in zip(self.parts, self.split(flat))]

    def jax_fun(self, *leaves):
        """What jax differentiates: the leaves in, the inexact output leaves out."""
        return _real_outputs(self.fun(*leaves))

    def evaluate(self, flat: np.ndarray) -> np.ndarray:
        self.evaluations += 1
        return flat64(_real_outputs(self.fun(*self.leaves(flat))))

    def many(self, rows: np.ndarray) -> np.ndarray:
        """Outputs at each row: one jax.vmap call when it runs f and keeps its values (the
        first batch carries x too, compared with f there), else one call per row."""
        count = rows.shape[0]
        if self.vmap_ok and count >= VMAP_MIN_ROWS:
            probe = not self.verified
            batch = np.concatenate([rows, self.x[None]]) if probe else rows
            padded = 1 << (batch.shape[0] - 1).bit_length()  # one compile per power of two
            batch = np.concatenate([batch, np.repeat(batch[-1:], padded - len(batch), axis=0)])
            leaves = [p.batch(b) for p, b in zip(self.parts, self.split_rows(batch))]
            try:
                out = flat64(jax.vmap(self.jax_fun)(*leaves), len(batch))
            except Exception as exc:  # vmap cannot run f (Python control flow on values...)
                self.vmap_ok = False
                line = (str(exc).splitlines() or [""])[0][:100]
                self.why_serial = f"jax.vmap raised {type(exc).__name__}: {line}"
            else:
                if probe:
                    one, got = self.at_value, out[count]
                    eps = VMAP_AGREEMENT * np.finfo(np.float64).eps
                    with np.errstate(invalid="ignore"):
                        ok = (one == got) | (np.abs(one - got)
                                             <= eps * (np.abs(one) + np.abs(got)))
                    self.verified = True
                    if not np.all(ok | (np.isnan(one) & np.isnan(got))):
                        self.vmap_ok, self.why_serial = False, "jax.vmap changed the values"
                if self.vmap_ok:
                    self.batched = True
                    self.evaluations += count
                    return out[:count]
        self.batched = False
        return np.stack([self.evaluate(r) for r in rows]) if count else \
            np.zeros((0, self.f0.size))

    # analytic derivatives
    def push(self, mode: str) -> Callable:
        """The JVP map tangent leaves -> output tangent leaves at x ("fwd" or "lin")."""
        primals = tuple(self.leaves(self.x))
        if mode == "lin":
            _, f_lin = jax.linearize(self.jax_fun, *primals)
            return lambda *ts: f_lin(*ts)
        return lambda *ts: jax.jvp(self.jax_fun, primals, ts)[1]

    def pull(self) -> Callable:
        """The real VJP: cotangent leaves -> conj(vjp(conj(c))), as jax's check_vjp."""
        _, vjp_fun = jax.vjp(self.jax_fun, *self.leaves(self.x))
        return lambda *cs: tuple(jnp.conj(v) for v in vjp_fun(tuple(jnp.conj(c) for c in cs)))


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
    if mode == "rev":
        def fun(*leaves):
            out, vjp_fun = jax.vjp(level.jax_fun, *leaves)
            return vjp_fun(out)

        parts, x = list(level.parts), level.x
        names = [f"VJP wrt {p.name}" for p in level.parts]
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
                  lambda j, count: names[j] if j < len(names) else f"output{j}")


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

    vmap = "jax.vmap"

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
        values = [(self.level.evaluate(self.point(s)), self.level.evaluate(self.point(-s)))
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


class Coordinates(ColumnEvaluator):
    """The full check's columns: outputs at x +- h e_i, batched by jax.vmap when it can."""

    vmap = "jax.vmap"

    def __init__(self, level: Level):
        super().__init__(level)
        self.level = level

    @property
    def path(self) -> str:
        return "vmap" if self.level.batched else "per-call"

    @property
    def path_reason(self) -> str:
        if self.level.batched:
            return "the perturbed inputs evaluated in batched jax.vmap calls"
        return f"{self.level.why_serial}; one call per perturbed input"

    def _pairs(self, index, step):
        x, k, n_out = self.level.x, index.size, self.level.f0.size
        f_plus, f_minus = np.empty((k, n_out)), np.empty((k, n_out))
        chunk = max(1, BATCH_VALUES // max(1, 2 * x.size))
        for a in range(0, k, chunk):
            b = min(k, a + chunk)
            lanes = np.arange(b - a)
            rows = np.repeat(x[None, :], 2 * (b - a), axis=0)
            rows[lanes, index[a:b]] += step[a:b]
            rows[lanes + (b - a), index[a:b]] -= step[a:b]
            out = self.level.many(rows)
            f_plus[a:b], f_minus[a:b] = out[: b - a], out[b - a:]
        return f_plus, f_minus

