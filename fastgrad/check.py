"""check() and assert_gradients(): the driver that ties the steps together.

segments -> sampling -> steps -> evaluate (kernels) -> accumulate -> report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from . import accumulate
from .accumulate import KINK, NAN, NOISE
from .evaluate import (
    Evaluator,
    LossError,
    as_loss,
    blas_limited,
    loss_terms,
    resolve_workers,
    theta_blas_limit,
)
from .report import CoordRecords, Report, SegmentReport
from .sampling import direction_key, sample_coordinates
from .segments import SegmentMap, as_segment_map
from .steps import (
    KINK_SHRINK,
    NOISE_PROBE_POINTS,
    NOISE_PROBE_SPACINGS,
    coordinate_steps,
    measured_noise,
    noise_eps,
    noise_growth,
    noise_sigma,
    pooled_noise_sigma,
    precision_of,
    tolerance,
)

__all__ = ["check", "assert_gradients", "GradientCheckError", "NondeterminismError", "Problem"]


class GradientCheckError(AssertionError):
    """Raised by assert_gradients; the message is the report table, ``.report`` the Report."""

    def __init__(self, report: Report):
        super().__init__(str(report))
        self.report = report


class LossValueError(LossError, ValueError):
    """The loss at theta is unusable (not a scalar, not a number): bad input, not a crash."""


class NondeterminismError(ValueError):
    """The loss gave two different values at the same theta."""


@dataclass
class Problem:
    """What ``fastgrad check MODULE:FACTORY`` expects FACTORY() to return."""

    f: Callable
    theta: np.ndarray
    grad: np.ndarray | Callable
    segments: SegmentMap | Mapping | None = None
    args: tuple = ()
    options: dict = field(default_factory=dict)  # more check() options, e.g. {"depth": 3}


def _flat_theta(theta) -> np.ndarray:
    if not isinstance(theta, np.ndarray):
        try:
            theta = np.asarray(theta)
        except Exception:
            raise TypeError(f"theta: expected a float array, got {type(theta).__name__}") from None
    if theta.dtype.kind != "f":
        raise TypeError(
            f"theta: dtype {theta.dtype} cannot be perturbed by a small step; "
            f"pass a float64 (or float32) array, e.g. theta.astype(np.float64)"
        )
    precision_of(theta.dtype)
    if theta.size == 0:
        raise ValueError("theta: is empty; there is nothing to check")
    # a read-only flat view (a copy only when theta is not contiguous): every evaluation runs on
    # a worker's own copy, and nothing can write through this one, whatever f does
    x = np.ascontiguousarray(theta).reshape(-1).view()
    x.flags.writeable = False
    return x


def _first_nonfinite(values: np.ndarray) -> int | None:
    bad = np.flatnonzero(~np.isfinite(values))
    return int(bad[0]) if bad.size else None


def _describe(segs: SegmentMap):
    def describe(i: int) -> str:
        name, local = segs.locate(int(i))
        return f"{name}[{', '.join(map(str, local))}] (flat index {i})"
    return describe


def _flat_grad(g, n: int, argument: str) -> np.ndarray:
    if isinstance(g, Mapping):
        raise TypeError(f"{argument}: got a mapping where one gradient array was expected")
    try:
        arr = np.asarray(g)
    except Exception:
        raise TypeError(f"{argument}: expected an array, got {type(g).__name__}") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{argument}: expected a real float array, got dtype {arr.dtype}")
    if arr.size != n:
        raise ValueError(
            f"{argument}: has {arr.size} values (shape {arr.shape}) but theta has {n}"
        )
    # only read from here on: a float64 gradient is not copied (one copy of theta less)
    return np.ascontiguousarray(arr, dtype=np.float64).reshape(-1)


def _gradients(grad, theta, args, n, terms, segs) -> dict[str | None, np.ndarray]:
    """The analytic gradient(s), flat float64 copies, one per loss term."""
    if callable(grad) and not isinstance(grad, np.ndarray):
        try:
            grad = grad(theta.copy(), *args)
        except Exception as exc:
            raise LossError(f"grad raised at theta: {type(exc).__name__}: {exc}") from exc
    if terms is None:
        out = {None: _flat_grad(grad, n, "grad")}
    else:
        if not isinstance(grad, Mapping) or set(map(str, grad)) != set(terms):
            raise ValueError(
                f"grad: f returns the loss terms {list(terms)}, so grad must be a mapping with "
                f"the same names; got {type(grad).__name__}"
                + (f" with {list(grad)}" if isinstance(grad, Mapping) else "")
            )
        out = {t: _flat_grad(grad[t], n, f"grad[{t!r}]") for t in terms}
    describe = _describe(segs)
    for term, g in out.items():
        bad = _first_nonfinite(g)
        if bad is not None:
            name = "grad" if term is None else f"grad[{term!r}]"
            raise ValueError(f"{name}: non-finite value {g[bad]} at {describe(bad)}")
    return out


# the direction number of the noise probe (far from the numbers audits use for their tests)
NOISE_DIRECTION = (1 << 62) + 1


@dataclass
class NoiseLevel:
    """The roundoff noise of f near theta, measured, and what the check does about it."""

    sigma: tuple[float, ...]  # standard deviation of f's noise, per loss term
    noise_abs: tuple[float, ...]  # absolute noise of f(x+h) - f(x-h) the floor adds, per term
    step_gain: float  # automatic steps are multiplied by this (1.0: f is as quiet as assumed)
    note: str  # one sentence for the report; empty when nothing was raised


# the noise of f was not measured: no coordinate failed at the floor assumed from eps
UNMEASURED = NoiseLevel((), (), 1.0, "")


def measure_noise(ev: Evaluator, x: np.ndarray, f0: np.ndarray, seed: int,
                  coordinate: int | None = None) -> NoiseLevel:
    """Measure the noise of f near theta (steps.NOISE_PROBE_EVALUATIONS), ECnoise-style.

    The default floor assumes a few eps |f| of roundoff; an f computed with an iterative solver,
    in lower precision inside, or summed in a long sequence along the perturbation can have far
    more, which would read as gradient errors. f is evaluated at x + j d v, j = -6..6, at the two
    spacings NOISE_PROBE_SPACINGS (fractions of the automatic step), with v the unit vector of
    ``coordinate`` (what check() perturbs) or, when it is None, a random direction over the whole
    vector (what audit() perturbs: that moves every term of f, and its noise is larger).
    steps.noise_sigma turns each set of 13 values into an estimate; steps.pooled_noise_sigma keeps
    them only when they agree (a kink inside the stencils grows with the spacing, noise does not).
    """
    n = x.size
    if coordinate is None:
        spacing = precision_of(x.dtype).step_scale * max(1.0, float(np.sqrt(np.mean(x * x))))
    else:
        spacing = precision_of(x.dtype).step_scale * max(1.0, abs(float(x[coordinate])))
    points = np.arange(1.0, NOISE_PROBE_POINTS + 1.0)
    offsets = np.concatenate([d * spacing * points for d in NOISE_PROBE_SPACINGS])
    k = offsets.size
    if coordinate is None:
        key = direction_key(seed, NOISE_DIRECTION)
        f_plus, f_minus = ev.directions(np.full(k, key, dtype=np.uint64), np.zeros(k, np.int64),
                                        np.full(k, n, np.int64), offsets, label="noise probe")
    else:
        f_plus, f_minus = ev.pairs(np.full(k, coordinate, dtype=np.int64), offsets,
                                   label="noise probe", plan=False)
    sigmas, levels, gain = [], [], 1.0
    for m in range(f0.size):
        per_spacing = []
        for p in range(len(NOISE_PROBE_SPACINGS)):
            rows = slice(NOISE_PROBE_POINTS * p, NOISE_PROBE_POINTS * (p + 1))
            per_spacing.append(noise_sigma(np.concatenate(
                [f_minus[rows, m][::-1], [f0[m]], f_plus[rows, m]])))
        sigma = pooled_noise_sigma(per_spacing)
        level, term_gain = measured_noise(sigma, f0[m], x.dtype)
        sigmas.append(sigma)
        levels.append(level)
        gain = max(gain, term_gain)
    note = ""
    if gain > 1.0:
        note = (f"f is noisier than assumed (measured noise sigma {max(sigmas):.1e} against "
                f"eps max(1, |f|) = {precision_of(x.dtype).eps * max(1.0, float(np.max(np.abs(f0)))):.1e}): "
                f"noise floors raised to match, automatic steps grown {gain:.1f}x")
    return NoiseLevel(tuple(sigmas), tuple(levels), gain, note)


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


def start(f: Callable, theta, *, args: tuple, segments, seed, depth: int, tol: float | None,
          workers=None):
    """What check() and audit() validate first, in the same words: the arguments, theta (as a
    private flat copy), the segment map, the tolerance, and f at theta (evaluated once, timed,
    with BLAS on the threads the check will give it: see evaluate.theta_blas_limit).

    Returns (x, segments, describe, tol, tol_reason, value of f at theta, the copy of theta it
    ran on: the evaluator's first working copy).
    """
    if not isinstance(args, tuple):
        raise TypeError(f"args: expected a tuple of extra arguments, got {type(args).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    x = _flat_theta(theta)
    segs = as_segment_map(segments, x.size)
    describe = _describe(segs)
    bad = _first_nonfinite(x)
    if bad is not None:
        raise ValueError(f"theta: non-finite value {x[bad]} at {describe(bad)}")
    tol_value, tol_reason = tolerance(x.dtype, depth, tol)
    if not callable(f):
        raise TypeError(f"f: expected a callable loss f(theta, *args), got {f!r}")
    resolve_workers(workers)  # a bad value is refused before f runs
    blas = theta_blas_limit(workers)
    try:
        work = x.copy()
        with blas_limited(blas):
            first_value = f(work, *args)
    except Exception as exc:
        raise LossError(f"f raised at theta: {type(exc).__name__}: {exc}") from exc
    if not np.array_equal(work, x):
        changed = int(np.flatnonzero(work != x)[0])
        raise ValueError(
            f"f: writes into its argument (it changed {describe(changed)} from {x[changed]!r} to "
            f"{work[changed]!r}): every later evaluation would start from a changed point and "
            f"the numeric gradient would be wrong. Copy inside f before changing anything "
            f"(theta = theta.copy()). The caller's theta is untouched.")
    return x, segs, describe, tol_value, tol_reason, first_value, work


def check(
    f: Callable,
    theta: np.ndarray,
    grad: np.ndarray | Callable | Mapping,
    *,
    args: tuple = (),
    segments: SegmentMap | Mapping | None = None,
    samples: int | str | Mapping = 16,
    h: float | str = "auto",
    seed: int = 0,
    depth: int = 1,
    tol: float | None = None,
    kinks: str | Callable = "detect",
    workers: int | None = None,
    executor: Executor | None = None,
    progress: bool | None = None,
    nondet_tol: float = 0.0,
    jit: bool | str = "auto",
) -> Report:
    """Compare the analytic gradient with centered differences on sampled coordinates.

    >>> theta, segs = fg.flatten({"W": W, "b": b})
    >>> report = fg.check(loss, theta, grad, segments=segs, samples=32)
    >>> print(report)            # one row per segment, then the worst coordinates
    """
    if not (kinks in ("detect", "ignore") or callable(kinks)):
        raise ValueError(f"kinks: expected 'detect', 'ignore' or a callable, got {kinks!r}")
    if not (np.isfinite(nondet_tol) and nondet_tol >= 0):
        raise ValueError(f"nondet_tol: expected a non-negative float, got {nondet_tol!r}")
    x, segs, describe, tol_value, tol_reason, first_value, first_copy = start(
        f, theta, args=args, segments=segments, seed=seed, depth=depth, tol=tol, workers=workers)
    n = x.size
    # the loss at theta, twice: its terms, and a nondeterminism check
    terms = loss_terms(first_value)
    ev = Evaluator(f, x, args, workers=workers, executor=executor, progress=progress,
                   describe=describe, terms=terms, jit=jit, first_copy=first_copy)
    del first_copy  # the evaluator's now (which may let it go)
    try:
        f0 = as_loss(first_value, terms, "at theta")
    except LossError as exc:
        raise LossValueError(str(exc)) from None
    ev.evaluations += 1
    if not np.all(np.isfinite(f0)):
        raise ValueError(f"f: the loss at theta is not finite ({f0.tolist()}); "
                         f"check the starting point before its gradient")
    _check_deterministic(f0, ev.at(x), nondet_tol, x.dtype)
    grads = _gradients(grad, x, args, n, terms, segs)

    index = sample_coordinates(segs, samples, seed)
    step = coordinate_steps(x[index], h, x.dtype)
    f_plus, f_minus = ev.pairs(index, step)
    term_names = list(grads)
    eps = noise_eps(x.dtype)

    def judge(noise_abs):
        return [accumulate.coordinate_stats(grads[t][index], f_plus[:, m], f_minus[:, m], f0[m],
                                            step, tol_value, eps, noise_abs[m])
                for m, t in enumerate(term_names)]

    # first against the roundoff floor assumed from eps; the noise of f is measured only when
    # a coordinate fails there (a floor only ever excuses a failure, so a pass stands)
    stats = judge([0.0] * len(term_names))
    noise = UNMEASURED
    failing = np.zeros(index.size, dtype=bool)
    for s in stats:
        failing |= s.failed
    if failing.any():
        # along what the check perturbs: one coordinate (the first sampled)
        noise = measure_noise(ev, x, f0, seed, coordinate=int(index[0]))
        if h == "auto" and noise.step_gain > 1.0:
            # f is noisier than assumed: the failing coordinates again, at grown steps
            bad = np.flatnonzero(failing)
            step[bad] = _scaled(x[index[bad]], step[bad], noise.step_gain, x.dtype)
            f_plus[bad], f_minus[bad] = ev.pairs(index[bad], step[bad], label="noise re-check")
        stats = judge(noise.noise_abs)
    noise_abs = noise.noise_abs if noise is not UNMEASURED else (0.0,) * len(term_names)
    steps = [step.copy() for _ in term_names]
    rechecked = _recheck_noise(ev, x, index, step, grads, term_names, stats, steps, f0,
                               tol_value, eps, noise_abs)
    if kinks != "ignore":
        rechecked |= _recheck_kinks(ev, x, index, step, grads, term_names, stats, steps, f0,
                                    tol_value, eps, noise_abs, kinks, args)

    # per segment, per term: the C accumulator again
    seg_ids = segs.segment_ids(index)
    coords: list[dict] = []
    by_term: dict[str | None, dict[str, SegmentReport]] = {}
    for m, t in enumerate(term_names):
        s = stats[m]
        agg = accumulate.segment_stats(seg_ids, s.rel_error, s.verdict, s.failed, s.kink,
                                       len(segs))
        by_term[t] = {
            seg.name: SegmentReport(
                name=seg.name, size=seg.size, checked=int(agg.checked[p]),
                failed=int(agg.failed[p]), kinks=int(agg.kinks[p]),
                max_rel_error=float(agg.max_rel[p]), passed=bool(agg.failed[p] == 0),
                worst=int(index[agg.argmax[p]]) if agg.argmax[p] >= 0 else None,
                histogram=tuple(int(v) for v in agg.hist[p]),
                rechecked=int(np.count_nonzero(rechecked[seg_ids == p])), term=t,
            )
            for p, seg in enumerate(segs)
        }
        # the records are made when report.coords is read (CoordRecords): cheaper than 2 evals
        coords.append({"term": t, "index": index, "analytic": grads[t][index],
                       "numeric": s.numeric, "rel_error": s.rel_error, "kink": s.kink,
                       "verdict": s.verdict, "step": steps[m], "failed": s.failed,
                       "noise": s.noise})
    if terms is None:
        segments_report = by_term[None]
        terms_report = {}
        loss_value: float | dict[str, float] = float(f0[0])
    else:
        terms_report = by_term
        segments_report = _merge_terms(by_term, segs)
        loss_value = {t: float(v) for t, v in zip(term_names, f0)}
    eligible = [s.max_rel_error for s in segments_report.values() if s.checked]
    return Report(
        passed=all(s.passed for s in segments_report.values()),
        max_rel_error=float(max(eligible)) if eligible else 0.0,
        segments=segments_report, coords=CoordRecords(segs, coords), evaluations=ev.evaluations,
        tol=tol_value, tol_reason=tol_reason, path=ev.path, path_reason=ev.path_reason,
        dtype=x.dtype.name, depth=int(depth), seed=int(seed), loss=loss_value,
        terms=terms_report, rechecked=int(np.count_nonzero(rechecked)),
        noise_sigma=(None if noise is UNMEASURED else noise.sigma[0] if terms is None
                     else dict(zip(term_names, noise.sigma))),
        noise_note=noise.note,
    )


def _merge_terms(by_term, segs) -> dict[str, SegmentReport]:
    """One row per segment over all loss terms: counts summed, worst error kept."""
    merged = {}
    for seg in segs:
        rows = [by_term[t][seg.name] for t in by_term]
        worst = max(rows, key=lambda r: r.max_rel_error)
        merged[seg.name] = SegmentReport(
            name=seg.name, size=seg.size, checked=rows[0].checked,
            failed=sum(r.failed for r in rows), kinks=max(r.kinks for r in rows),
            max_rel_error=worst.max_rel_error, passed=all(r.passed for r in rows),
            worst=worst.worst, histogram=tuple(np.sum([r.histogram for r in rows], axis=0)),
            rechecked=rows[0].rechecked,
        )
    return merged


def _signature_changes(kinks, x, index, step, args) -> np.ndarray:
    """With kinks=callable: does the active-set signature differ at x+h or x-h from x?"""
    base = kinks(x.copy(), *args)
    work = x.copy()
    changed = np.zeros(index.size, dtype=bool)
    for j, i in enumerate(index):
        xi = work[i]
        try:
            work[i] = xi + step[j]
            up = kinks(work, *args)
            work[i] = xi - step[j]
            down = kinks(work, *args)
        finally:
            work[i] = xi
        changed[j] = up != base or down != base
    return changed


def _recheck_noise(ev, x, index, step, grads, term_names, stats, steps, f0, tol,
                   eps, noise_abs) -> np.ndarray:
    """Re-check "noise" coordinates with a larger step, where the roundoff floor is smaller.

    Roundoff of the centered difference falls as 1/h and truncation grows as h^2, so a real error
    that hid inside the floor at the first step stands out at the larger one; a disagreement that
    is still inside the (smaller) floor stays "noise". A kink crossed by the larger step says
    nothing about roundoff: those keep the first verdict.
    """
    mask = np.zeros(index.size, dtype=bool)
    for s in stats:
        mask |= s.verdict == NOISE
    todo = np.flatnonzero(mask)
    if todo.size == 0:
        return mask
    large = _scaled(x[index[todo]], step[todo], noise_growth(x.dtype), x.dtype)
    fp, fm = ev.pairs(index[todo], large, label="noise re-check")
    for m, t in enumerate(term_names):
        rows = stats[m].verdict[todo] == NOISE
        if not rows.any():
            continue
        sub = accumulate.coordinate_stats(grads[t][index[todo[rows]]], fp[rows, m], fm[rows, m],
                                          f0[m], large[rows], tol, eps, noise_abs[m])
        take = ~sub.kink & (sub.verdict != NAN)
        where = todo[rows][take]
        _assign(stats[m], where, sub, take)
        steps[m][where] = large[rows][take]
    return mask


def _recheck_kinks(ev, x, index, step, grads, term_names, stats, steps, f0, tol, eps, noise_abs,
                   kinks, args) -> np.ndarray:
    """Re-check failing coordinates with smaller steps; excuse only the ones that stay on a kink.

    A kink at distance d from x_i is crossed only while the step exceeds d. Every failing
    coordinate is re-evaluated at h/10, h/100, h/1000 and decided at the first step that no longer
    crosses a kink: there it either agrees with the analytic value (resolved), or its numeric
    value is the same as at the previous step (a stable disagreement: a real error, no kink in
    between). The one-sided kink score alone cannot be trusted to find the crossings: two kinks on
    opposite sides shift both one-sided slopes the same way. With kinks=callable the exact signal
    decides instead: the active-set signature is the same at x+h, x and x-h. A coordinate still
    undecided at the smallest step sits on the kink: an analytic value between the two one-sided
    slopes (a valid one-sided derivative or subgradient) is excused as "kink", any other value
    fails. Returns the mask of re-checked coordinates; sets ``kink`` to the crossings found.
    """
    pending = {}
    for m, s in enumerate(stats):
        pending[m] = np.flatnonzero(s.failed & (s.verdict != NAN))
    if callable(kinks):
        # the exact signal: every sampled coordinate whose step changes the active set crossed a
        # kink; only the failing ones that crossed need a re-check
        crossed = _signature_changes(kinks, x, index, step, args)
        for m, s in enumerate(stats):
            s.kink[:] = crossed
            pending[m] = pending[m][crossed[pending[m]]]
    else:
        for s in stats:
            s.kink[:] = False
    candidate = np.zeros(index.size, dtype=bool)
    for rows in pending.values():
        candidate[rows] = True
    # the values of the previous (larger) step, per coordinate: a stable failure is shown there
    previous = {m: _copy_stats(stats[m]) for m in pending}
    previous_step = {m: step.copy() for m in pending}
    last: dict[int, tuple] = {}
    for level, factor in enumerate(KINK_SHRINK):
        todo = np.unique(np.concatenate(list(pending.values())))
        if todo.size == 0:
            break
        small = _scaled(x[index[todo]], step[todo], factor, x.dtype)
        fp, fm = ev.pairs(index[todo], small, label="kink re-check")
        clear = None
        if callable(kinks):
            clear = ~_signature_changes(kinks, x, index[todo], small, args)
        for m, t in enumerate(term_names):
            rows = np.isin(todo, pending[m])
            if not rows.any():
                continue
            where = todo[rows]
            sub = accumulate.coordinate_stats(grads[t][index[where]], fp[rows, m], fm[rows, m],
                                              f0[m], small[rows], tol, eps, noise_abs[m])
            prev = previous[m]
            if clear is not None:
                take = clear[rows]
                keep_prev = np.zeros(where.size, dtype=bool)
            else:
                take = ~sub.failed & (sub.verdict != NOISE)
                # the same numeric value at two steps: no kink in between, the failure is real
                change = np.abs(sub.numeric - prev.numeric[where])
                scale = np.maximum(np.abs(sub.numeric), np.abs(prev.numeric[where]))
                # unless the one-sided slopes still disagree enough to explain it: x_i sits on
                # the kink (max(t0, t1) at a tie gives the same centered value at every step)
                keep_prev = (~take & ~sub.kink & prev.failed[where]
                             & (prev.verdict[where] != NOISE)
                             & (change <= 0.5 * tol * scale + sub.noise + prev.noise[where]))
                s = stats[m]
                s.kink[where[take]] = True
                if level > 0:
                    s.kink[where[keep_prev]] = True
            _assign(stats[m], where[take], sub, take)
            steps[m][where[take]] = small[rows][take]
            _assign(stats[m], where[keep_prev], prev, where[keep_prev])
            steps[m][where[keep_prev]] = previous_step[m][where[keep_prev]]
            _assign(prev, where, sub, slice(None))
            previous_step[m][where] = small[rows]
            decided = take | keep_prev
            pending[m] = where[~decided]
            h = small[rows][~decided]
            last[m] = (sub, ~decided, h, fp[rows, m][~decided], fm[rows, m][~decided])
    # on the kink at the smallest step: excused only as a one-sided derivative / subgradient
    for m, t in enumerate(term_names):
        left = pending[m]
        if left.size == 0:
            continue
        sub, keep, h, fp, fm = last[m]
        s_plus = (fp - f0[m]) / h
        s_minus = (f0[m] - fm) / h
        lo, hi = np.minimum(s_plus, s_minus), np.maximum(s_plus, s_minus)
        one_sided_noise = 2.0 * sub.noise[keep]
        slack = tol * np.maximum(np.abs(lo), np.abs(hi)) + one_sided_noise
        a = grads[t][index[left]]
        # the kink must stand out of the roundoff, or the slopes say nothing about it
        visible = hi - lo > 4.0 * one_sided_noise
        subgradient = visible & (a >= lo - slack) & (a <= hi + slack)
        excused = left[subgradient]
        _assign(stats[m], excused, sub, np.flatnonzero(keep)[subgradient])
        stats[m].verdict[excused] = KINK
        stats[m].failed[excused] = False
        stats[m].kink[left] = True
        steps[m][excused] = h[subgradient]
        # not a subgradient: the first step's failure stands
    return candidate


def _scaled(x, step, factor, dtype):
    """step * factor, rounded so that x + step is exact in dtype (as coordinate_steps does)."""
    raw = step * factor
    exact = ((x + raw.astype(dtype)) - x).astype(np.float64)
    return np.where(exact > 0, exact, raw)


def _copy_stats(stats):
    return accumulate.CoordStats(*(getattr(stats, name).copy() for name in (
        "numeric", "rel_error", "noise", "kink_score", "verdict", "failed", "kink")))


def _assign(target, where, sub, rows):
    """Take the re-checked values; kink stays True as the record of the crossing."""
    for name in ("numeric", "rel_error", "noise", "kink_score", "verdict", "failed"):
        getattr(target, name)[where] = getattr(sub, name)[rows]


def assert_gradients(f: Callable, theta: np.ndarray, grad, **options) -> Report:
    """Like check(), but raise GradientCheckError (an AssertionError) when the check fails.

    >>> fg.assert_gradients(loss, theta, grad, segments=segs)   # silent when right
    """
    report = check(f, theta, grad, **options)
    if not report.passed:
        raise GradientCheckError(report)
    return report
