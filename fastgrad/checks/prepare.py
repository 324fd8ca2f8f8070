"""The one preparation step that check() and audit() share: every argument validated once, f
evaluated at theta, and the result as one immutable value (Prepared) beside the engine.

Both callers get the same exception types and messages for the same mistakes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ..arguments import extra_args, non_negative_float, positive_int
from ..engine.blas import blas_limited
from ..engine.evaluator import Evaluator
from ..engine.faults import check_timeout
from ..engine.planner import resolve_workers, theta_blas_limit
from ..engine.values import LossPart, as_loss, loss_terms
from ..errors import (
    InvalidType,
    InvalidValue,
    LossError,
    LossValueError,
    NondeterminismError,
)
from ..segments import SegmentMap, as_segment_map
from ..steps import noise_eps, precision_of, tolerance
from ..tuning import DEFAULT_TUNING, Tuning, as_tuning


@dataclass(frozen=True)
class Prepared:
    """A validated problem: what the checks read, never change.

    ``x`` is a read-only flat view of theta; ``grads`` maps each loss term (None for a plain
    loss) to a read-only flat float64 gradient; ``f0`` holds f at theta per term.
    """

    f: Callable  # the loss as evaluated (the loss part of f when grad=True)
    x: np.ndarray
    args: tuple
    segments: SegmentMap
    grads: dict
    f0: np.ndarray
    terms: tuple[str, ...] | None
    tol: float
    tol_reason: str
    depth: int
    seed: int

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    @property
    def eps(self) -> float:
        """Relative roundoff assumed for a loss value (steps.noise_eps)."""
        return noise_eps(self.x.dtype)

    def describe(self, i: int) -> str:
        """``W1[4, 0] (flat index 99)``."""
        return describe_index(self.segments, i)


def describe_index(segments: SegmentMap, i: int) -> str:
    """A flat index as a person reads it: ``W1[4, 0] (flat index 99)``."""
    name, local = segments.locate(int(i))
    return f"{name}[{', '.join(map(str, local))}] (flat index {i})"


def flat_theta(theta) -> np.ndarray:
    """theta as a read-only flat view (a copy only when it is not contiguous): every evaluation
    runs on a worker's own copy, and nothing can write through this one, whatever f does.

    A list or tuple of numbers is taken as ``np.asarray(theta, float64)`` (f receives that
    array); any other theta must be a 1-D float array: f is called with the flat vector, so a
    2-D theta would reach f with a shape it never had."""
    if isinstance(theta, (list, tuple)):
        try:
            theta = np.asarray(theta, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidType(
                f"theta: expected a flat list of numbers or a float array, got {theta!r}"[:300]
            ) from None
    elif not isinstance(theta, np.ndarray):
        try:
            theta = np.asarray(theta)
        except Exception:
            raise InvalidType(f"theta: expected a float array, got {type(theta).__name__}") \
                from None
    if theta.dtype.kind != "f":
        raise InvalidType(
            f"theta: dtype {theta.dtype} cannot be perturbed by a small step; "
            f"pass a float64 (or float32) array, e.g. theta.astype(np.float64)"
        )
    precision_of(theta.dtype)
    if theta.size == 0:
        raise InvalidValue("theta: is empty; there is nothing to check")
    if theta.ndim != 1:
        raise InvalidValue(
            f"theta: expected a flat 1-D vector, got shape {theta.shape}; f is called with the "
            f"flat vector: pass theta.ravel() and reshape inside f, or fastgrad.flatten("
            f"{{name: array}}) for several arrays")
    x = np.ascontiguousarray(theta).reshape(-1).view()
    x.flags.writeable = False
    return x


def _first_nonfinite(values: np.ndarray) -> int | None:
    bad = np.flatnonzero(~np.isfinite(values))
    return int(bad[0]) if bad.size else None


def _flat_grad(g, n: int, argument: str) -> np.ndarray:
    if isinstance(g, Mapping):
        raise InvalidType(f"{argument}: got a mapping where one gradient array was expected")
    try:
        arr = np.asarray(g)
    except Exception:
        raise InvalidType(f"{argument}: expected an array, got {type(g).__name__}") from None
    if arr.dtype.kind not in "fiu":
        raise InvalidType(f"{argument}: expected a real float array, got dtype {arr.dtype}")
    if arr.size != n:
        raise InvalidValue(
            f"{argument}: has {arr.size} values (shape {arr.shape}) but theta has {n}"
        )
    if arr.shape != (n,):  # a column or row of the right size: refused, never reinterpreted
        raise InvalidValue(
            f"{argument}: expected shape ({n},) like theta, got {arr.shape}: pass "
            f"np.ravel({argument}) if its values are in theta's order")
    # only read from here on: a float64 gradient is not copied (one copy of theta less)
    flat = np.ascontiguousarray(arr, dtype=np.float64).reshape(-1).view()
    flat.flags.writeable = False
    return flat


def _gradients(grad, x, args, terms, describe) -> dict:
    """The analytic gradient(s), flat float64, one per loss term."""
    n = x.size
    if callable(grad) and not isinstance(grad, np.ndarray):
        try:
            grad = grad(x.copy(), *args)
        except Exception as exc:
            raise LossError(f"grad raised at theta: {type(exc).__name__}: {exc}") from exc
    if terms is None:
        out = {None: _flat_grad(grad, n, "grad")}
    else:
        if not isinstance(grad, Mapping) or set(map(str, grad)) != set(terms):
            raise InvalidValue(
                f"grad: f returns the loss terms {list(terms)}, so grad must be a mapping with "
                f"the same names; got {type(grad).__name__}"
                + (f" with {list(grad)}" if isinstance(grad, Mapping) else "")
            )
        out = {t: _flat_grad(grad[t], n, f"grad[{t!r}]") for t in terms}
    for term, g in out.items():
        bad = _first_nonfinite(g)
        if bad is not None:
            name = "grad" if term is None else f"grad[{term!r}]"
            raise InvalidValue(f"{name}: non-finite value {g[bad]} at {describe(bad)}")
    return out


def _check_deterministic(first: np.ndarray, second: np.ndarray, nondet_tol: float,
                         dtype) -> None:
    allowed = np.maximum(nondet_tol * np.maximum(1.0, np.abs(first)),
                         noise_eps(dtype) * np.abs(first))
    if np.any(np.abs(first - second) > allowed):
        raise NondeterminismError(
            f"f: two evaluations at the same theta gave different losses ({first.tolist()} and "
            f"{second.tolist()}): the loss is not deterministic. Likely causes: dropout left on, "
            f"data augmentation, or unseeded randomness (a fresh minibatch each call). Fix: turn "
            f"dropout/augmentation off for the check, or fix the seed inside f (e.g. "
            f"np.random.default_rng(0) created in f); pass nondet_tol=... to accept a known tiny "
            f"level of nondeterminism."
        )


def prepare(f: Callable, theta, grad, *, args: tuple, segments, seed, depth, tol,
            workers, executor, progress, jit="auto", nondet_tol=0.0,
            terms_allowed: bool = True, backend: str | None = None,
            timeout: float | None = None,
            tuning: Tuning = DEFAULT_TUNING) -> tuple[Prepared, Evaluator]:
    """Validate, evaluate f at theta (twice: the second time as a nondeterminism check) and
    build the engine. Returns the Prepared problem and its Evaluator, which carries ``tuning``
    to every engine and judge step of the check.

    f at theta runs with BLAS on the threads the check will give it (planner.theta_blas_limit)
    on a copy of theta that becomes the engine's first working copy.
    """
    args = extra_args(args)
    tuning = as_tuning(tuning)
    seed = positive_int("seed", seed, minimum=0)
    nondet_tol = non_negative_float("nondet_tol", nondet_tol)
    x = flat_theta(theta)
    segs = as_segment_map(segments, x.size)

    def describe(i: int) -> str:
        return describe_index(segs, i)

    bad = _first_nonfinite(x)
    if bad is not None:
        raise InvalidValue(f"theta: non-finite value {x[bad]} at {describe(bad)}")
    tol_value, tol_reason = tolerance(x.dtype, depth, tol, tuning)
    if not callable(f):
        raise InvalidType(f"f: expected a callable loss f(theta, *args), got {f!r}")
    if not (grad is True or callable(grad) or isinstance(grad, (Mapping, np.ndarray))
            or hasattr(grad, "__array__") or isinstance(grad, (list, tuple))):
        raise InvalidType(f"grad: expected an array, a callable grad(theta, *args), a mapping "
                          f"of loss terms or True, got {type(grad).__name__}")
    resolve_workers(workers)  # a bad value is refused before f runs
    timeout = check_timeout(timeout)
    work = x.copy()
    try:
        with blas_limited(theta_blas_limit(workers)):
            first_value = f(work, *args)
    except Exception as exc:
        raise LossError(f"f raised at theta: {type(exc).__name__}: {exc}") from exc
    if not np.array_equal(work, x):
        changed = int(np.flatnonzero(work != x)[0])
        raise InvalidValue(
            f"f: writes into its argument (it changed {describe(changed)} from {x[changed]!r} "
            f"to {work[changed]!r}): every later evaluation would start from a changed point "
            f"and the numeric gradient would be wrong. Copy inside f before changing anything "
            f"(theta = theta.copy()). The caller's theta is untouched.")
    loss = f
    if grad is True:
        if not isinstance(first_value, tuple) or len(first_value) != 2:
            raise LossValueError(
                f"f: grad=True expects f to return (loss, gradient); at theta it returned "
                f"{type(first_value).__name__}")
        first_value, grad = first_value
        loss = LossPart(f)
    terms = loss_terms(first_value)
    if terms is not None and not terms_allowed:
        raise InvalidType("f: returned a mapping of loss terms; audit needs one scalar loss "
                          "(sum the terms, or audit each term with its own f and grad)")
    try:
        f0 = as_loss(first_value, terms, "at theta")
    except LossError as exc:
        raise LossValueError(str(exc)) from None
    if not np.all(np.isfinite(f0)):
        raise InvalidValue(f"f: the loss at theta is not finite ({f0.tolist()}); "
                           f"check the starting point before its gradient")
    ev = Evaluator(loss, x, args, workers=workers, executor=executor, progress=progress,
                   describe=describe, terms=terms, jit=jit, first_copy=work, spent=1,
                   backend=backend, timeout=timeout, tuning=tuning)
    del work  # the engine's now (which may let it go)
    _check_deterministic(f0, ev.at(x), nondet_tol, x.dtype)
    grads = _gradients(grad, x, args, terms, describe)
    problem = Prepared(f=loss, x=x, args=args, segments=segs, grads=grads, f0=f0, terms=terms,
                       tol=tol_value, tol_reason=tol_reason, depth=positive_int("depth", depth),
                       seed=seed)
    return problem, ev
