"""The judge: verdicts for sampled coordinates, with the noise and kink re-checks.

Used by check() for its sampled coordinates and by audit() to confirm the coordinates it has
localized: one set of rules for both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..sampling import unique_indices
from ..steps import assumed_noise, noise_growth
from ..tuning import Tuning
from .verdicts import INCONCLUSIVE, KINK, NAN, NOISE, CoordStats, coordinate_stats


def scaled(x, step, factor, dtype):
    """step * factor, rounded so that x + step is exact in dtype (as coordinate_steps does)."""
    raw = step * factor
    exact = ((x + raw.astype(dtype)) - x).astype(np.float64)
    return np.where(exact > 0, exact, raw)


def slopes_differ(f_plus, f_minus, f0, step, noise, tuning: Tuning) -> np.ndarray:
    """Do the one-sided slopes (f+ - f0)/h and (f0 - f-)/h differ beyond their noise (each
    carries ``tuning.one_sided_noise`` times the centered floor ``noise``)? A kink is a real
    change of slope; noise makes the slopes differ too, by about the floor."""
    gap = np.abs((f_plus - f0) / step - (f0 - f_minus) / step)
    return gap > tuning.kink_visible * tuning.one_sided_noise * noise


class Judge:
    """Judges coordinates of one problem: f0 and the analytic gradient(s) per loss term.

    ``grads`` maps each loss term (None for a plain loss) to its flat gradient; ``f0`` holds f at
    theta per term, in the same order. ``noise_abs`` (per term) is the measured noise the floors
    add (zeros until measured). ``kinks`` is "detect", "ignore" or a signature callable. The
    numbers of the re-checks are the check's ``Tuning``, carried by its evaluator ``ev``.
    """

    def __init__(self, ev, x: np.ndarray, f0: np.ndarray, grads: dict, tol: float, eps: float,
                 kinks: str | Callable = "detect", args: tuple = ()):
        self.ev, self.x, self.f0, self.grads = ev, x, f0, grads
        self.tuning: Tuning = ev.tuning
        self.terms = list(grads)
        self.tol, self.eps = tol, eps
        self.kinks, self.args = kinks, args
        self.noise_abs = (0.0,) * len(self.terms)

    def verdicts(self, index, step, f_plus, f_minus) -> list[CoordStats]:
        """The C accumulator's verdicts, per term."""
        return [coordinate_stats(self.grads[t][index], f_plus[:, m], f_minus[:, m], self.f0[m],
                                 step, self.tol, self.eps, self.noise_abs[m],
                                 self.tuning.kink_explains)
                for m, t in enumerate(self.terms)]

    def _one(self, m, where, f_plus, f_minus, step) -> CoordStats:
        return coordinate_stats(self.grads[self.terms[m]][where], f_plus, f_minus, self.f0[m],
                                step, self.tol, self.eps, self.noise_abs[m],
                                self.tuning.kink_explains)

    def recheck(self, index, step, stats) -> tuple[list[np.ndarray], np.ndarray]:
        """The noise re-check, then (unless kinks="ignore") the kink re-check; returns the step of
        each term's shown value and the mask of re-checked coordinates."""
        steps = [step.copy() for _ in self.terms]
        rechecked = self.recheck_noise(index, step, stats, steps)
        if self.kinks != "ignore":
            rechecked |= self.recheck_kinks(index, step, stats, steps)
        return steps, rechecked

    def recheck_noise(self, index, step, stats, steps) -> np.ndarray:
        """Re-check "noise" coordinates with a larger step, where the roundoff floor is smaller.

        Roundoff of the centered difference falls as 1/h and truncation grows as h^2, so a real
        error that hid inside the floor at the first step stands out at the larger one; a
        disagreement that is still inside the (smaller) floor stays "noise". A kink crossed by
        the larger step says nothing about roundoff: those keep the first verdict.
        """
        x = self.x
        mask = np.zeros(index.size, dtype=bool)
        for s in stats:
            mask |= s.verdict == NOISE
        todo = np.flatnonzero(mask)
        if todo.size == 0:
            return mask
        large = scaled(x[index[todo]], step[todo], noise_growth(x.dtype), x.dtype)
        fp, fm = self.ev.pairs(index[todo], large, label="noise re-check")
        for m in range(len(self.terms)):
            rows = stats[m].verdict[todo] == NOISE
            if not rows.any():
                continue
            sub = self._one(m, index[todo[rows]], fp[rows, m], fm[rows, m], large[rows])
            take = ~sub.kink & (sub.verdict != NAN)
            where = todo[rows][take]
            stats[m].take(where, sub, take)
            steps[m][where] = large[rows][take]
        return mask

    def mark_inconclusive(self, index, stats, steps, groups) -> np.ndarray:
        """Turn "noise" into "inconclusive" where the excuse is not plausible; returns the mask.

        A measured noise floor excuses a disagreement only when it is small beside the
        gradient. Where the measured part of the floor alone, noise_abs / 2h, exceeds tol times
        the gradient (the larger of |a| and |n|, or the RMS of the analytic values of the
        coordinate's ``groups`` entry, its segment, where the gradient itself is about zero),
        the numeric derivative is uncertain by more than the tolerance: neither a pass nor
        evidence of a bug. ``steps`` are the steps of the values shown: the largest tried (a
        "noise" coordinate is re-checked at a larger step, never a smaller one), so the floor
        was at least as large at every other step tried. The floor assumed from eps is
        roundoff, not measured: its "noise" stays noise.
        """
        marked = np.zeros(index.size, dtype=bool)
        counts = np.bincount(groups)
        for m, t in enumerate(self.terms):
            s, measured = stats[m], float(self.noise_abs[m])
            rows = np.flatnonzero(s.verdict == NOISE)
            if measured <= assumed_noise(self.f0[m], self.x.dtype) or rows.size == 0:
                continue  # not noisier than roundoff: "noise" is the roundoff floor's verdict
            a = self.grads[t][index]
            rms = np.sqrt(np.bincount(groups, a * a, minlength=counts.size)
                          / np.maximum(counts, 1))[groups]
            scale = np.maximum(np.maximum(np.abs(a), np.abs(s.numeric)), rms)[rows]
            uncertain = measured / (2.0 * steps[m][rows]) > self.tol * scale
            s.verdict[rows[uncertain]] = INCONCLUSIVE
            marked[rows[uncertain]] = True
        return marked

    def direction_unjudgeable(self, analytic: float, numeric: float, step: float) -> bool:
        """Audit's rule of mark_inconclusive for one directional derivative: the measured noise
        alone, noise_abs / 2h, exceeds tol times the derivative (the larger of |a| and |n|)."""
        measured = float(self.noise_abs[0]) if self.noise_abs else 0.0
        if measured <= assumed_noise(self.f0[0], self.x.dtype):
            return False  # plain roundoff: a derivative of ~0 is judged against it, not tol
        return measured / (2.0 * step) > self.tol * max(abs(analytic), abs(numeric))

    def signature_changes(self, index, step) -> np.ndarray:
        """With kinks=callable: does the active-set signature differ at x+h or x-h from x?"""
        kinks, x, args = self.kinks, self.x, self.args
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

    def recheck_kinks(self, index, step, stats, steps) -> np.ndarray:
        """Re-check failing coordinates with smaller steps; excuse only the ones that stay on a
        kink.

        A kink at distance d from x_i is crossed only while the step exceeds d. Every failing
        coordinate is re-evaluated at h/10, h/100, h/1000 and decided at the first step that no
        longer crosses a kink: there it either agrees with the analytic value (resolved), or its
        numeric value is the same as at the previous step (a stable disagreement: a real error,
        no kink in between). The one-sided kink score alone cannot be trusted to find the
        crossings: two kinks on opposite sides shift both one-sided slopes the same way. With
        kinks=callable the exact signal decides instead: the active-set signature is the same at
        x+h, x and x-h. A coordinate still undecided at the smallest step sits on the kink: an
        analytic value between the two one-sided slopes (a valid one-sided derivative or
        subgradient) is excused as "kink", any other value fails. Returns the mask of re-checked
        coordinates; sets ``kink`` to the crossings found.
        """
        x, tol, f0 = self.x, self.tol, self.f0
        exact = callable(self.kinks)
        pending = {m: np.flatnonzero(s.failed & (s.verdict != NAN)) for m, s in enumerate(stats)}
        if exact:
            # the exact signal: every sampled coordinate whose step changes the active set
            # crossed a kink; only the failing ones that crossed need a re-check
            crossed = self.signature_changes(index, step)
            for m, s in enumerate(stats):
                s.kink[:] = crossed
                pending[m] = pending[m][crossed[pending[m]]]
        else:
            for s in stats:
                s.kink[:] = False
        candidate = np.zeros(index.size, dtype=bool)
        for rows in pending.values():
            candidate[rows] = True
        # the values of the previous (larger) step, per coordinate: a stable failure shows there
        previous = {m: stats[m].copy() for m in pending}
        previous_step = {m: step.copy() for m in pending}
        last: dict[int, tuple] = {}
        for level, factor in enumerate(self.tuning.kink_shrink):
            todo = unique_indices(np.concatenate(list(pending.values())))
            if todo.size == 0:
                break
            small = scaled(x[index[todo]], step[todo], factor, x.dtype)
            fp, fm = self.ev.pairs(index[todo], small, label="kink re-check")
            clear = ~self.signature_changes(index[todo], small) if exact else None
            for m in range(len(self.terms)):
                rows = np.isin(todo, pending[m])
                if not rows.any():
                    continue
                where = todo[rows]
                sub = self._one(m, index[where], fp[rows, m], fm[rows, m], small[rows])
                # a kink candidate only where the one-sided slopes differ beyond their noise
                sub.kink &= slopes_differ(fp[rows, m], fm[rows, m], f0[m], small[rows],
                                          sub.noise, self.tuning)
                prev = previous[m]
                if clear is not None:
                    take = clear[rows]
                    keep_prev = np.zeros(where.size, dtype=bool)
                else:
                    take = ~sub.failed & (sub.verdict != NOISE)
                    # the same numeric value at two steps: no kink in between, the failure is
                    # real
                    change = np.abs(sub.numeric - prev.numeric[where])
                    scale = np.maximum(np.abs(sub.numeric), np.abs(prev.numeric[where]))
                    # unless the one-sided slopes still disagree enough to explain it: x_i sits
                    # on the kink (max(t0, t1) at a tie gives the same centered value at every
                    # step)
                    keep_prev = (~take & ~sub.kink & prev.failed[where]
                                 & (prev.verdict[where] != NOISE)
                                 & (change <= self.tuning.kink_stable_change * tol * scale + sub.noise
                                    + prev.noise[where]))
                    s = stats[m]
                    # a crossing only where the slope changed beyond the noise of both values
                    moved = change > sub.noise + prev.noise[where]
                    s.kink[where[take & moved]] = True
                    if level > 0:
                        s.kink[where[keep_prev]] = True
                stats[m].take(where[take], sub, take)
                steps[m][where[take]] = small[rows][take]
                stats[m].take(where[keep_prev], prev, where[keep_prev])
                steps[m][where[keep_prev]] = previous_step[m][where[keep_prev]]
                prev.take(where, sub, slice(None))
                previous_step[m][where] = small[rows]
                decided = take | keep_prev
                pending[m] = where[~decided]
                h = small[rows][~decided]
                last[m] = (sub, ~decided, h, fp[rows, m][~decided], fm[rows, m][~decided])
        # on the kink at the smallest step: excused only as a one-sided derivative / subgradient
        for m, t in enumerate(self.terms):
            left = pending[m]
            if left.size == 0:
                continue
            sub, keep, h, fp, fm = last[m]
            s_plus = (fp - f0[m]) / h
            s_minus = (f0[m] - fm) / h
            lo, hi = np.minimum(s_plus, s_minus), np.maximum(s_plus, s_minus)
            one_sided_noise = self.tuning.one_sided_noise * sub.noise[keep]
            slack = tol * np.maximum(np.abs(lo), np.abs(hi)) + one_sided_noise
            a = self.grads[t][index[left]]
            # the kink must stand out of the roundoff, or the slopes say nothing about it
            visible = slopes_differ(fp, fm, f0[m], h, sub.noise[keep], self.tuning)
            subgradient = visible & (a >= lo - slack) & (a <= hi + slack)
            excused = left[subgradient]
            stats[m].take(excused, sub, np.flatnonzero(keep)[subgradient])
            stats[m].verdict[excused] = KINK
            stats[m].failed[excused] = False
            # a crossing only where the slopes differ beyond their noise, not noise itself
            stats[m].kink[left[visible]] = True
            steps[m][excused] = h[subgradient]
            # not a subgradient: the first step's failure stands
        return candidate
