"""Drop-in ``jax.test_util.check_grads``: jax's random directions, fastgrad's judgement.

``check_grads(f, args, order)`` checks what jax's checker checks, at no more cost: per
derivative one random tangent ``t`` (forward: ``jvp(f, x, t)`` against the centered difference
of ``f`` along ``t``; reverse: ``<vjp(c), t>`` against ``<c, numeric jvp(t)>``; "lin": the
JVP from ``jax.linearize``), the numeric values shared by the modes. A direction is judged like
a coordinate of ``fastgrad.check`` (a disagreement at the first step is re-checked at other
steps: truncation, kinks and roundoff noise are excused); the caller's tolerance is the
contract (jax's ``|a - n| <= atol + rtol |n|``, tolerances by dtype merged as jax merges
them). Only a direction that disagrees is localized: the full Jacobian of that sub-check is
judged element by element and the error names input coordinates and output elements.
Order >= 2 checks the derivative maps recursively, as jax does.

The function is called with arguments of the caller's dtypes (no 64-bit mode is switched on);
fastgrad perturbs a float64 copy on the numpy side and casts each perturbed leaf back to its
dtype; outputs are read as float64.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastgrad.jax needs JAX, which is not installed: pip install fastgrad[jax]"
    ) from exc

from .arguments import positive_int, strict_option
from .checks.jacobian import ColumnEvaluator, Judged, Layout, judge_jacobian
from .errors import GradcheckWarning, GradientCheckError, InvalidType, InvalidValue
from .jax_pytrees import key_name
from .steps import PRECISIONS, Precision, coordinate_steps

__all__ = ["CheckGradsError", "check_grads"]

try:  # jax's own table, so that a dtype-keyed override merges exactly as in jax
    from jax._src.public_test_util import default_gradient_tolerance as _JAX_GRADIENT_TOL
except ImportError:  # pragma: no cover - a jax without the private module
    _JAX_GRADIENT_TOL = {np.dtype(np.float16): 1e-2, np.dtype(np.float32): 2e-3,
                         np.dtype(np.float64): 1e-5, np.dtype(np.complex64): 1e-3,
                         np.dtype(np.complex128): 1e-5}

MODES = ("fwd", "rev", "lin")
# jax's checker spends this many evaluations of f per mode of a sub-check (the one inside
# jvp/vjp, f itself, two along the tangent): the full Jacobian is checked from the start when
# its own count (1 + 2n evaluations, n JVPs, m VJPs) is no larger
JAX_EVALUATIONS_PER_MODE = 4
BATCH_VALUES = 1 << 22
VMAP_AGREEMENT = 64.0
# assert_allclose's rtol when jax passes none (jax drops a zero rtol)
NUMPY_RTOL = 1e-7
# jax.vmap batches at least this many rows or basis vectors: eager jax compiles every primitive
# again for a batched shape (seconds for a nested derivative), a loop reuses the compiled ones
VMAP_MIN_ROWS = 16
# an automatic step leaving f's domain shrinks by this factor, at most this many times, never
# below jax's own step
DOMAIN_SHRINK, DOMAIN_SHRINKS, JAX_EPS = 1 / 16, 3, 1e-4
# the roundoff floor of a contracted output grows by at most this cancellation factor
CANCELLATION_CAP = 1e6


class CheckGradsError(GradientCheckError):
    """Raised by ``fastgrad.jax.check_grads`` when a derivative does not match.

    An ``AssertionError`` (as jax's ``check_grads`` raises) whose message names the sub-check
    (jax's "JVP of VJP", the order and the mode), the disagreeing direction and the failing
    elements; ``.report`` holds the localizing report (None for a primal mismatch).

    Parameters
    ----------
    message : str
        Which sub-check failed, then the table.
    report : fastgrad.Report
        The failing sub-check's report.

    Examples
    --------
    >>> import fastgrad.jax
    >>> issubclass(fastgrad.jax.CheckGradsError, AssertionError)
    True
    """

    def __init__(self, message: str, report: Any = None):
        AssertionError.__init__(self, message)
        self.report = report


# ---------------------------------------------------------------- tolerances and precisions

def _tolerance_arg(name: str, tol) -> float | dict | None:
    """``atol``/``rtol`` as jax takes them: None, a number, or a dict keyed by dtype."""
    if tol is None:
        return None
    if isinstance(tol, dict):
        out = {}
        for key, value in tol.items():
            try:
                dtype = np.dtype(key)
            except TypeError:
                raise InvalidType(f"{name}: {key!r} is not a dtype (keys of a tolerance dict "
                                  "are dtypes, e.g. np.float32)") from None
            out[dtype] = _non_negative(f"{name}[{dtype}]", value)
        return out
    return _non_negative(name, tol)


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidType(f"{name}: expected a non-negative number or a dict keyed by dtype, "
                          f"got {value!r}")
    if not float(value) >= 0:
        raise InvalidValue(f"{name}: expected a non-negative number, got {value!r}")
    return float(value)


def _merge_tolerance(tol, default: dict):
    """jax's ``_merge_tolerance``: a number replaces the table, a dict updates it."""
    if tol is None:
        return default
    if not isinstance(tol, dict):
        return tol
    out = dict(default)
    out.update(tol)
    return out


def _tolerance_for(dtype, tol) -> float:
    """jax's ``tolerance(dtype, tol)`` for a floating dtype (a number applies to every one)."""
    if not isinstance(tol, dict):
        return float(tol)
    dtype = jax.dtypes.canonicalize_dtype(np.dtype(dtype))
    table = {np.dtype(k): v for k, v in tol.items()}
    if dtype in table:
        return float(table[dtype])
    return float(_JAX_GRADIENT_TOL.get(dtype, 0.0))


def _precision(dtype) -> Precision:
    """fastgrad's numbers for a dtype. float16/bfloat16 have no fastgrad band finer than
    jax's: the step is eps^(1/3) as for the others, the band is jax's gradient tolerance."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        dtype = np.dtype(np.finfo(dtype).dtype)
    if dtype in PRECISIONS:
        return PRECISIONS[dtype]
    eps = float(jax.numpy.finfo(dtype).eps)
    band = float(_JAX_GRADIENT_TOL.get(dtype, 1e-1))
    return Precision(str(dtype), eps, eps ** (1 / 3), band, band, 4.0, 4.0)


def _coarsest(dtypes) -> Precision:
    return max((_precision(d) for d in dtypes), key=lambda p: p.eps,
               default=PRECISIONS[np.dtype(np.float64)])


def _steps(x: np.ndarray, h, dtype) -> np.ndarray:
    """Per-coordinate steps in ``dtype``'s precision, rounded so that x + h is representable."""
    dtype = np.dtype(dtype)
    if dtype in PRECISIONS:
        return coordinate_steps(x, h, dtype)
    raw = (_precision(dtype).step_scale * np.maximum(1.0, np.abs(x)) if h == "auto"
           else np.full(x.shape, float(h)))
    exact = (x + raw).astype(dtype).astype(np.float64) - x.astype(dtype).astype(np.float64)
    return np.where(exact > 0, exact, raw)


# ---------------------------------------------------------------- one level of the recursion

@dataclass(frozen=True)
class _Part:
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


def _layout(parts: Sequence[_Part]) -> Layout:
    return Layout(tuple(p.name for p in parts), tuple(p.shape for p in parts),
                  tuple(p.complex for p in parts))


def _real_outputs(value) -> tuple:
    """The inexact leaves of an output pytree (integer outputs have no derivative)."""
    return tuple(leaf for leaf in jax.tree_util.tree_leaves(value)
                 if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact))


def _flat64(values, count: int | None = None) -> np.ndarray:
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


class _Level:
    """A function of the differentiated leaves and the point: order 1 is the caller's ``f``
    (constant leaves closed over), order k + 1 a derivative map of order k's real-ified
    function. ``evaluate`` is the counted numeric evaluation; ``real_fun`` what jax
    differentiates."""

    def __init__(self, fun: Callable, parts: list[_Part], x: np.ndarray,
                 what: str, order: int, out_names: Callable[[int, Any], str]):
        self.fun, self.parts, self.x = fun, parts, x
        self.what, self.order = what, order
        self.layout = _layout(parts)
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
            self.out_parts.append(_Part(out_names(j, len(reals)), tuple(np.shape(leaf)),
                                        np.dtype(np.finfo(dtype).dtype) if cplx else dtype,
                                        cplx))
        self.out_layout = _layout(self.out_parts)
        self.f0 = _flat64(reals)
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
        return _flat64(_real_outputs(self.fun(*self.leaves(flat))))

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
                out = _flat64(jax.vmap(self.jax_fun)(*leaves), len(batch))
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


def _derived(level: _Level, mode: str) -> _Level:
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

        parts = list(level.parts) + [_Part(f"tangent {p.name}", p.shape, p.dtype, p.complex,
                                           p.scalar) for p in level.parts]
        x = np.concatenate([level.x, level.x])  # (args, args), as jax
        outs = [p.name for p in level.out_parts]
        names = outs + [f"tangent {n}" for n in outs]
    label = {"fwd": "JVP", "rev": "VJP", "lin": "LIN"}[mode]
    what = f"{label} of {level.what}" if level.what else label
    return _Level(fun, parts, x, what, level.order + 1,
                  lambda j, count: names[j] if j < len(names) else f"output{j}")


# ---------------------------------------------------------------- evaluators for the judge

class _Line(ColumnEvaluator):
    """f along the random tangent: pairs(index=[0], step) -> outputs at x +- s t (each
    perturbed leaf cast to its dtype); the pairs at the first step are kept, so the modes of
    one sub-check share them."""

    vmap = "jax.vmap"

    def __init__(self, level: _Level, tangent: np.ndarray):
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


class _Projected(ColumnEvaluator):
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


class _Coordinates(ColumnEvaluator):
    """The full check's columns: outputs at x +- h e_i, batched by jax.vmap when it can."""

    vmap = "jax.vmap"

    def __init__(self, level: _Level):
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


# ---------------------------------------------------------------- the checks

@dataclass
class _Options:
    atol: Any  # merged: a number or a dict keyed by dtype
    rtol: Any
    eps: float | None
    strict: bool
    full: bool
    seed: int
    tolerated: list  # (sub-check, element names, count) of passing sub-checks


def _caller_rule(dtype, size: int, opts: _Options) -> tuple[float, float]:
    """jax's check_close for one output leaf: atol and rtol of its dtype, times its size."""
    atol = _tolerance_for(dtype, opts.atol) * size
    rtol = _tolerance_for(dtype, opts.rtol) * size
    return atol, (rtol if rtol else NUMPY_RTOL)


def _jax_close(a: np.ndarray, n: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """assert_allclose's elementwise rule (equal values, NaNs included, always pass)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return (a == n) | (np.isnan(a) & np.isnan(n)) | (np.abs(a - n) <= atol + rtol * np.abs(n))


def _groups(level: _Level, opts: _Options, scaled: bool):
    """Output rows grouped by the caller's (atol, rtol) of their leaf (jax's rule by dtype;
    ``scaled``: times the leaf's size, as jax's check_close of a whole tangent)."""
    groups: dict[tuple[float, float], list[int]] = {}
    for j, part in enumerate(level.out_parts):
        dtype = np.result_type(part.dtype, np.complex64) if part.complex else part.dtype
        key = _caller_rule(dtype, math.prod(part.shape) if scaled else 1, opts)
        groups.setdefault(key, []).append(j)
    return groups


def _rows_of(level: _Level, leaves: list[int]) -> np.ndarray:
    starts = level.out_layout.starts
    return np.concatenate([np.arange(starts[j], starts[j + 1]) for j in leaves]) \
        if leaves else np.zeros(0, dtype=np.int64)


def _judge_directional(level: _Level, mode: str, line: _Line, t_eff: np.ndarray,
                       analytic_out: np.ndarray, opts: _Options, cotangent=None):
    """fastgrad's verdict on one direction: (passed, tolerated names, evidence lines).

    fwd/lin: each element of J t (the caller's rule per output leaf, scaled by its size as
    jax's check_close); rev: <c, J t> against <vjp(c), t> (one number, jax's rule of its dtype).
    Elements that are not finite at x or x +- h t are judged as jax judges them (its
    inf - inf = 0): equal values pass."""
    precision = _coarsest([p.dtype for p in level.parts] + [p.dtype for p in level.out_parts])
    f_plus, f_minus = line.pairs(np.array([0]), line.first_step)
    f_plus, f_minus = f_plus[0], f_minus[0]
    h = float(line.first_step[0])
    finite = np.isfinite(level.f0) & np.isfinite(f_plus) & np.isfinite(f_minus)
    with np.errstate(invalid="ignore", over="ignore"):
        jax_numeric = np.where(f_plus == f_minus, 0.0, (f_plus - f_minus) / (2 * h))
    evidence: list[str] = []
    tolerated: list[str] = []
    passed = True
    common = dict(tol=precision.base_tol, tol_reason=f"{precision.name} band "
                  f"{precision.base_tol:.0e}", noise_eps=precision.eps * precision.noise_factor,
                  inputs=Layout(("t",), ((),), (False,)), seed=opts.seed, lazy=True,
                  strict=opts.strict, notes=(f"sub-check: {level.what}, {mode} mode, along a "
                                             "random tangent",))
    if mode == "rev":
        ct = cotangent
        dtype = np.result_type(*[p.dtype for p in level.out_parts]) if level.out_parts \
            else np.float64
        atol, rtol = _caller_rule(dtype, 1, opts)
        if not finite.all() and not np.isfinite(jax_numeric @ ct if ct.size else 0.0):
            numeric = float(jax_numeric @ ct)
            ok = bool(_jax_close(np.array(analytic_out), np.array(numeric), atol, rtol))
            if not ok:
                evidence.append(f"<vjp(c), t> = {analytic_out:.6g}, <c, numeric jvp(t)> = "
                                f"{numeric:.6g} (not finite)")
            return ok, [], evidence
        # rows not finite along the line count 0, as jax's inf - inf
        weights = np.where(finite, ct, 0.0)[:, None]
        ev = _Projected(line, weights=weights)
        with np.errstate(invalid="ignore", over="ignore"):
            numeric = float(np.where(finite, f_plus - f_minus, 0.0) @ ct) / (2 * h)
        if abs(analytic_out - numeric) <= atol:
            return True, [], []  # never fails nor is tolerated (the judge's atol slack)
        # the roundoff of a contraction is that of its terms, not of their (cancelling) sum
        f0 = np.where(finite, level.f0, 0.0)
        terms = float(np.abs(weights[:, 0]) @ np.abs(f0))
        cancel = min(CANCELLATION_CAP, terms / max(abs(float(weights[:, 0] @ f0)), 1e-300))
        common["noise_eps"] *= max(1.0, cancel)
        judged = judge_jacobian(
            ev, np.zeros(1), np.array([float(np.where(finite, level.f0, 0.0) @ ct)]),
            np.array([[analytic_out]]), np.array([0]), line.first_step, atol=atol, rtol=rtol,
            outputs=Layout(("<c, output>",), ((),), (False,)), mode=" (rev)", **common)
        judges = [(judged, "")]
    else:
        judges = []
        for (atol, rtol), leaves in _groups(level, opts, scaled=True).items():
            rows = _rows_of(level, leaves)
            odd = rows[~finite[rows]]
            if odd.size:
                ok = _jax_close(analytic_out[odd], jax_numeric[odd], atol, rtol)
                for r in odd[~ok]:
                    passed = False
                    evidence.append(f"{level.out_layout.where(int(r))}: analytic "
                                    f"{analytic_out[r]:.6g}, numeric {jax_numeric[r]:.6g} "
                                    "(not finite along the tangent)")
            complete = bool(finite[rows].all())
            rows = rows[finite[rows]]
            if not rows.size:
                continue
            numeric = (f_plus[rows] - f_minus[rows]) / (2 * h)
            if np.all(np.abs(analytic_out[rows] - numeric) <= atol):
                continue  # never fails nor is tolerated (the judge's atol slack)
            # the group's leaves as they are laid out, or (rows left out) one name per row
            outputs = (_layout([level.out_parts[j] for j in leaves]) if complete else
                       Layout(tuple(level.out_layout.where(int(r)) for r in rows),
                              tuple(() for _ in rows), tuple(False for _ in rows)))
            judged = judge_jacobian(
                _Projected(line, rows=rows), np.zeros(1), level.f0[rows],
                analytic_out[rows][:, None], np.array([0]), line.first_step, atol=atol,
                rtol=rtol, outputs=outputs, mode=f" ({mode})", **common)
            judges.append((judged, ""))
    for judged, _ in judges:
        if not judged.passed:
            passed = False
            for c in judged.report.failures[:5]:
                evidence.append(f"{c.where.replace('t[] -> ', '').replace('[]', '')}: analytic "
                                f"{c.analytic:.6g}, numeric {c.numeric:.6g} (rel. error "
                                f"{c.rel_error:.1e})")
        else:
            tolerated += [name.replace("t[] -> ", "").replace("[]", "")
                          for name in judged.tolerated]
    return passed, tolerated, evidence


def _judge_full(level: _Level, mode: str, opts: _Options) -> Judged:
    """Every input coordinate against every output element; each output leaf by the caller's
    rule of its dtype (not scaled: an element is judged alone)."""
    analytic = _jacobian(level, mode)
    x = level.x
    index = np.flatnonzero(np.isfinite(x))
    steps = np.zeros(x.size)
    for p, part in enumerate(level.parts):
        a, b = level.bounds[p], level.bounds[p + 1]
        dtype = part.dtype if part.scalar is None else np.dtype(np.float64)
        steps[a:b] = _steps(np.where(np.isfinite(x[a:b]), x[a:b], 0.0),
                            "auto" if opts.eps is None else opts.eps, dtype)
    precision = _coarsest([p.dtype for p in level.parts] + [p.dtype for p in level.out_parts])
    ev = _Coordinates(level)
    label = {"fwd": " (fwd)", "rev": "", "lin": " (lin)"}[mode]
    worst = None
    tolerated: list[str] = []
    for (atol, rtol), leaves in _groups(level, opts, scaled=False).items():
        rows = _rows_of(level, leaves)
        outputs = _layout([level.out_parts[j] for j in leaves])
        if not np.isfinite(level.f0[rows]).all():
            # outputs not finite at x are judged as jax judges them, by the directional check
            rows = rows[np.isfinite(level.f0[rows])]
            outputs = Layout(tuple(level.out_layout.where(int(r)) for r in rows),
                             tuple(() for _ in rows), tuple(False for _ in rows))
            if not rows.size:
                continue
        judged = judge_jacobian(
            _Projected(ev, rows=rows) if rows.size != level.f0.size else ev, x, level.f0[rows],
            np.ascontiguousarray(analytic[rows]), index, steps[index], tol=precision.base_tol,
            tol_reason=f"{precision.name} band {precision.base_tol:.0e}",
            noise_eps=precision.eps * precision.noise_factor, atol=atol, rtol=rtol,
            inputs=level.layout, outputs=outputs, seed=opts.seed,
            skipped=tuple(level.layout.where(int(i)) for i in np.flatnonzero(~np.isfinite(x))),
            notes=(f"sub-check: {level.what}, {mode} mode, full Jacobian",), mode=label,
            lazy=True, strict=opts.strict)
        if not judged.passed and worst is None:
            worst = judged
        tolerated += list(judged.tolerated)
    if worst is not None:
        return worst
    judged = Judged(True, lambda: None)
    judged.tolerated = tuple(tolerated)
    return judged


def _jacobian(level: _Level, mode: str) -> np.ndarray:
    """The analytic Jacobian (outputs x inputs, float64): columns from JVPs ("fwd", "lin") or
    rows from VJPs ("rev"), batched by jax.vmap (one by one when vmap cannot run them)."""
    n_in, n_out = level.x.size, level.f0.size
    if mode == "rev":
        parts, fn, count = level.out_parts, level.pull(), n_out
    else:
        parts, fn, count = level.parts, level.push(mode), n_in
    bounds = np.cumsum([0, *(p.size for p in parts)])
    out = np.empty((count, n_in if mode == "rev" else n_out))
    chunk = max(1, BATCH_VALUES // max(1, n_in + n_out))

    def basis(a, b):
        eye = np.zeros((b - a, bounds[-1]))
        eye[np.arange(b - a), np.arange(a, b)] = 1.0
        return [p.batch(eye[:, bounds[i]:bounds[i + 1]]) for i, p in enumerate(parts)]

    batched = count >= VMAP_MIN_ROWS
    for a in range(0, count, chunk):
        b = min(count, a + chunk)
        vectors = basis(a, b)
        if batched:
            try:
                out[a:b] = _flat64(jax.vmap(fn)(*vectors), b - a)
                continue
            except Exception:  # a rule vmap cannot batch: one by one
                batched = False
        for r in range(b - a):
            one = [v[r] if p.scalar is None else p.scalar(v[r].item())
                   for v, p in zip(vectors, parts)]
            out[a + r] = _flat64(fn(*one))
    return out if mode == "rev" else out.T


def _analytic_along(level: _Level, mode: str, t_eff: np.ndarray, rng):
    """(analytic directional value, cotangent or None, primal output) of one mode."""
    primals = tuple(level.leaves(level.x))
    tangent = tuple(level.leaves(t_eff))
    if mode == "fwd":
        out, t_out = jax.jvp(level.jax_fun, primals, tangent)
        return _flat64(t_out), None, _flat64(out)
    if mode == "lin":
        out, f_lin = jax.linearize(level.jax_fun, *primals)
        return _flat64(f_lin(*tangent)), None, _flat64(out)
    out, vjp_fun = jax.vjp(level.jax_fun, *primals)
    ct = [p.leaf(rng.standard_normal(p.size)) for p in level.out_parts]
    # the real VJP of the real and imaginary parts: conj(vjp(conj(c))), as jax's check_vjp
    pulled = _flat64([np.conj(v) for v in vjp_fun(tuple(np.conj(c) for c in ct))])
    finite = np.isfinite(t_eff)
    with np.errstate(invalid="ignore", over="ignore"):
        value = float(pulled[finite] @ t_eff[finite]) if finite.any() else 0.0
    return value, _flat64(ct), _flat64(out)


def _direction(level: _Level, opts: _Options) -> tuple[_Line, np.ndarray]:
    """jax's random tangent (standard normal, in each leaf's dtype) and the first step; the
    tangent returned is the one the cast points really differ along."""
    rng = np.random.default_rng([opts.seed, level.order])
    t = np.concatenate([rng.standard_normal(p.size).astype(p.dtype).astype(np.float64)
                        for p in level.parts]) if level.parts else np.zeros(0)
    finite = np.isfinite(level.x)
    if opts.eps is not None:
        h = float(opts.eps)
    else:
        precision = _coarsest([p.dtype for p in level.parts])
        scale = float(np.max(np.abs(level.x[finite]), initial=1.0))
        h = 2.0 ** round(math.log2(precision.step_scale * max(1.0, scale)))
    line = _Line(level, t)
    line.first_step = np.array([h])
    if opts.eps is None:
        # an automatic step that leaves f's domain (finite at x, not at x +- h t) shrinks
        # towards jax's own step (1e-4) before anything is judged
        ok = np.isfinite(level.f0)
        for _ in range(DOMAIN_SHRINKS):
            f_plus, f_minus = line.pairs(np.array([0]), line.first_step)
            if np.all(np.isfinite(f_plus[0][ok]) & np.isfinite(f_minus[0][ok])):
                break
            h = max(h * DOMAIN_SHRINK, JAX_EPS)
            line.first_step = np.array([h])
    plus, minus = line.point(h), line.point(-h)
    t_eff = t.copy()
    t_eff[finite] = (plus[finite] - minus[finite]) / (2 * h)
    return line, t_eff


def _full_is_cheap(level: _Level, modes: tuple) -> bool:
    """The full check costs no more evaluations than jax's directional one."""
    n_in, n_out = level.x.size, level.f0.size
    full = 1 + 2 * n_in + sum(n_out if m == "rev" else n_in for m in modes)
    return (full <= JAX_EVALUATIONS_PER_MODE * len(modes) and bool(np.isfinite(level.x).all())
            and bool(np.isfinite(level.f0).all()))


def _sub_check(level: _Level, mode: str) -> str:
    """jax's name of a sub-check ("JVP of VJP"), with the order and the mode."""
    label = {"fwd": "JVP", "rev": "VJP", "lin": "LIN"}[mode]
    return f"{label}{f' of {level.what}' if level.what else ''} (order {level.order}, {mode} mode)"


def _fail(level: _Level, mode: str, headline: str, evidence: list[str], report) -> None:
    sub = _sub_check(level, mode)
    lines = [f"check_grads: {sub}: {headline}"] + [f"  {e}" for e in evidence]
    raise CheckGradsError("\n".join(lines) + (f"\n{report}" if report is not None else ""),
                          report)


def _check_mode(level: _Level, mode: str, opts: _Options, shared: dict) -> None:
    """One sub-check: the direction (or the full Jacobian when cheap or asked), localized by
    the full Jacobian when the direction disagrees."""
    if opts.full or shared["full"]:
        judged = _judge_full(level, mode, opts)
        if not judged.passed:
            _fail(level, mode, "the derivative does not match centered differences", [],
                  judged.report)
        if judged.tolerated:
            opts.tolerated.append((_sub_check(level, mode), judged.tolerated))
        return
    if "line" not in shared:
        shared["line"] = _direction(level, opts)
    line, t_eff = shared["line"]
    rng = np.random.default_rng([opts.seed, level.order, 0x6374])
    analytic, ct, primal = _analytic_along(level, mode, t_eff, rng)
    # jax's primal check: the output of jvp/vjp/linearize is f's
    for (atol, rtol), leaves in _groups(level, opts, scaled=True).items():
        rows = _rows_of(level, leaves)
        bad = rows[~_jax_close(primal[rows], level.f0[rows], atol, rtol)]
        if bad.size:
            _fail(level, mode, "the primal output differs from f's", [
                f"{level.out_layout.where(int(r))}: {primal[r]:.6g} vs f {level.f0[r]:.6g}"
                for r in bad[:5]], None)
    passed, tolerated, evidence = _judge_directional(level, mode, line, t_eff, analytic, opts,
                                                     cotangent=ct)
    if passed:
        if tolerated:
            opts.tolerated.append((f"{_sub_check(level, mode)}, along a random tangent",
                                   tuple(tolerated)))
        return
    # localize: the full Jacobian of this sub-check names the elements
    judged = _judge_full(level, mode, opts)
    if not judged.passed:
        _fail(level, mode, "the derivative along a random tangent does not match centered "
              "differences; the full Jacobian names the elements", evidence, judged.report)
    if judged.tolerated:
        opts.tolerated.append((_sub_check(level, mode), judged.tolerated))


def _check_level(level: _Level, order: int, modes: tuple, opts: _Options) -> None:
    shared = {"full": _full_is_cheap(level, modes)}
    for mode in modes:
        _check_mode(level, mode, opts, shared)
        if order > 1:
            _check_level(_derived(level, mode), order - 1, modes, opts)


def _top_level(f: Callable, args: tuple) -> _Level:
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
        parts.append(_Part(name, tuple(value.shape), real_dtype, bool(cplx), scalar))
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

    return _Level(fun, parts, np.concatenate(flat), "", 1,
                  lambda j, count: f"output{j}")


def check_grads(
    f: Callable[..., Any],
    args: Sequence[Any],
    order: int,
    modes: Sequence[str] = ("fwd", "rev"),
    atol: float | dict | None = None,
    rtol: float | dict | None = None,
    eps: float | None = None,
    *,
    strict: bool | None = None,
    full: bool = False,
) -> None:
    """Check ``f``'s derivatives up to ``order``, like ``jax.test_util.check_grads``.

    As jax's checker: per derivative one random tangent ``t``; "fwd" compares ``jvp(f, x, t)``
    with the centered difference of ``f`` along ``t``, "rev" ``<vjp(c), t>`` with
    ``<c, numeric jvp(t)>``, "lin" the JVP of ``jax.linearize``; order >= 2 checks
    ``partial(jvp, f)`` on ``(args, args)`` and ``x -> vjp(f, x)(f(x))`` recursively. A direction
    is judged with fastgrad's method (a disagreement at the first step is re-checked at other
    steps, so truncation, kinks and roundoff do not fail it); one that disagrees is localized:
    the full Jacobian of that sub-check is judged element by element and the error names the
    input coordinates and output elements. ``f`` is called with arguments of the caller's
    dtypes (Python scalars stay Python scalars).

    Parameters
    ----------
    f : callable
        ``f(*args)`` returning an array or a pytree of arrays; traceable by jax.
    args : tuple
        The point; each argument an array, a number or a pytree of them. Floating and complex
        leaves are checked (as real and imaginary parts); other leaves are held constant.
    order : int
        The highest derivative order checked (1, 2, ...).
    modes : sequence of str
        "fwd", "rev" and/or "lin".
    atol, rtol : float or dict, optional
        jax's tolerances: a number, or a dict keyed by dtype merged into jax's
        ``default_gradient_tolerance``; an output is judged by the value of its dtype, by jax's
        rule ``|a - n| <= atol + rtol |n|`` (a whole tangent scaled by its size, as jax's
        ``check_close``; an element of a full Jacobian alone). An element beyond fastgrad's own
        band but within this rule passes with a ``GradcheckWarning``.
    eps : float, optional
        The first finite-difference step; None: fastgrad's automatic step (eps^(1/3) of the
        working precision, times max(1, |x|)).
    strict : bool, optional
        Fail elements beyond fastgrad's band that the caller's tolerance accepts; None: the
        environment's default (``FASTGRAD_STRICT``, ``pytest --fastgrad-strict``).
    full : bool
        Check every Jacobian element from the start (the default checks directions, and does so
        anyway when the full check costs no more evaluations than jax's).

    Returns
    -------
    None
        When every derivative matches.

    Raises
    ------
    fastgrad.jax.CheckGradsError
        An ``AssertionError`` naming the sub-check ("JVP of VJP", order, mode) and the
        failing elements, with ``.report``.
    ValueError
        When ``order`` is not a positive int, ``modes`` holds something else than "fwd",
        "rev" and "lin", a tolerance is negative, or no argument has a floating leaf.
    TypeError
        When ``f`` is not callable, ``args`` is not a tuple or list, or a tolerance is not a
        number or a dict keyed by dtype.

    Examples
    --------
    >>> import jax.numpy as jnp, fastgrad.jax
    >>> fastgrad.jax.check_grads(lambda x, y: jnp.sin(x) * y, (jnp.ones(3), 2.0), order=2)
    """
    if not callable(f):
        raise InvalidType(f"f: expected a callable, got {f!r}")
    if not isinstance(args, (tuple, list)):
        raise InvalidType(f"args: expected a tuple of arguments, got {type(args).__name__}")
    order = positive_int("order", order)
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    for mode in modes:
        if mode not in MODES:
            raise InvalidValue(f"modes: expected 'fwd', 'rev' and/or 'lin', got {mode!r}")
    atol = _merge_tolerance(_tolerance_arg("atol", atol), _JAX_GRADIENT_TOL)
    rtol = _merge_tolerance(_tolerance_arg("rtol", rtol), _JAX_GRADIENT_TOL)
    if eps is not None and not _non_negative("eps", eps) > 0:
        raise InvalidValue(f"eps: expected a positive step, got {eps!r}")
    opts = _Options(atol, rtol, None if eps is None else float(eps), strict_option(strict),
                    bool(full), 0, [])
    _check_level(_top_level(f, tuple(args)), order, modes, opts)
    if opts.tolerated:
        names = [f"{sub}: {e}" for sub, elements in opts.tolerated for e in elements]
        warnings.warn(GradcheckWarning(
            f"fastgrad check_grads passed by the caller's tolerance, but {len(names)} "
            f"element(s) are beyond fastgrad's relative band: {'; '.join(names[:10])}"
            + (f" and {len(names) - 10} more" if len(names) > 10 else "")
            + "; strict=True (or pytest --fastgrad-strict) fails them", tuple(names)),
            stacklevel=2)
