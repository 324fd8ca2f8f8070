"""Directional measurement: ``(f(x+hv) - f(x-hv)) / 2h`` against ``grad . v`` for random
directions v over parts of the vector, judged against the noise floor.

A directional derivative tests a whole segment with two evaluations, but it sums the gradient
errors over its support: one coordinate off by 1% of the gradient's scale among 10^6 changes
``grad . v`` (of size ~ sqrt(n) * scale) by a relative 1e-5, far below any tolerance on a
relative error. So a direction is not judged by its relative error but by its absolute
disagreement against the floating-point noise floor of the two loss values (the floor ``check``
uses, plus the roundoff of ``grad . v``): any disagreement above it is real, and the localizer
(localize.py) narrows it down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...engine import random_directions
from ...engine.evaluator import Evaluator
from ...judge.noise import UNMEASURED, NoiseLevel, measure_noise
from ...judge.rechecks import Judge
from ...results.audit_report import DirectionRecord
from ...sampling import direction_key
from ...segments import SegmentMap
from ...steps import direction_miss_bound, precision_of, richardson, rms
from .budget import Budget
from .findings import Findings

__all__ = ["Floor", "Measurer", "Part", "ThreadsRefused", "error", "extrapolated"]


class ThreadsRefused(Exception):
    """Threads changed f's values (a disagreeing direction evaluated again serially differed):
    the audit starts again with the plan that replaced them."""


@dataclass
class Part:
    """A contiguous range under localization, in the tree of halves of one segment."""

    segment: int
    start: int
    stop: int
    parent: Part | None = None
    # |e(h) - e(2h)| of this part's direction when it was re-measured at 2h (extrapolate)
    step_dependence: float = math.nan

    @property
    def size(self) -> int:
        return self.stop - self.start

    def known_step_dependence(self) -> float:
        """The largest step dependence measured on a part that contains this one (inf: none
        was): the truncation and kinks along a direction over a smaller support are of that
        size or smaller."""
        known, part = -math.inf, self.parent
        while part is not None:
            if not math.isnan(part.step_dependence):
                known = max(known, part.step_dependence)
            part = part.parent
        return known if known > -math.inf else math.inf


class Floor:
    """The noise floor of two loss values and the step of a direction: check()'s floor
    (``eps`` times the loss values), raised by the measured noise of f once it is measured
    (``noise_abs``, and steps grown by ``gain`` when f is noisier than check() assumes)."""

    def __init__(self, eps: float, step_scale: float):
        self.eps, self.step_scale = eps, step_scale
        self.gain = 1.0
        self.noise_abs = 0.0  # absolute noise of f(x+h) - f(x-h) that every floor adds
        self.level: NoiseLevel = UNMEASURED  # the measured noise of f

    def step(self, values: np.ndarray) -> float:
        """The step of a direction over ``values``: |v_i| <= 1, so h is the largest
        displacement of any coordinate, the coordinate step of check() for their typical
        magnitude."""
        return self.step_scale * self.gain * max(1.0, rms(values))

    def of(self, f_plus: float, f_minus: float, step: float) -> float:
        """The floor of (f_plus - f_minus) / 2 step."""
        return (self.eps * (abs(f_plus) + abs(f_minus)) + self.noise_abs) / (2.0 * step)


class Measurer:
    """Measures and judges random directions over parts of one problem's vector.

    Every direction measured is added to ``findings.directions``; the directions are numbered
    from the seed in the order they are drawn (``keys``), so a second audit with the same seed
    measures the same directions.
    """

    def __init__(self, ev: Evaluator, judge: Judge, segs: SegmentMap, seed: int, budget: Budget,
                 findings: Findings):
        self.ev, self.judge, self.segs, self.seed = ev, judge, segs, seed
        self.budget, self.findings = budget, findings
        self.tuning = ev.tuning  # the check's numbers (fastgrad.Tuning)
        self.x, self.g, self.f0 = judge.x, judge.grads[None], float(judge.f0[0])
        self.tol = judge.tol
        self.floor = Floor(judge.eps, precision_of(self.x.dtype).step_scale)
        self.next_direction = 0
        # the batches of directions measured for the parts of one evaluate() call
        self.measured: list[tuple] = []

    def measure_noise(self) -> None:
        """The noise of f itself, measured as check() does (check.measure_noise): a loop summing
        10^6 terms in sequence has far more roundoff than the default floor assumes."""
        self.budget.require(self.tuning.noise_probe_evaluations)
        self.budget.phase("noise", self.tuning.noise_probe_evaluations)
        before = self.budget.evaluations
        level = measure_noise(self.ev, self.x, np.array([self.f0]), self.seed)
        self.budget.spend("noise", before)
        self.floor.gain = level.step_gain
        self.floor.noise_abs = level.noise_abs[0]
        self.judge.noise_abs = level.noise_abs
        self.floor.level = level
        if level.note:
            self.findings.notes.append(level.note)

    def keys(self, count: int) -> np.ndarray:
        """The keys of the next ``count`` random directions."""
        keys = np.array([direction_key(self.seed, self.next_direction + j)
                         for j in range(count)], dtype=np.uint64)
        self.next_direction += count
        return keys

    def test(self, parts: list[Part], phase: str, thorough: bool = False) -> np.ndarray:
        """Which parts disagree beyond the noise floor, with up to
        ``tuning.directions_per_test`` directions.

        A part that agrees is tried with another direction until the chance that an error of
        tol on a coordinate of typical gradient (the part's RMS gradient) hid in every direction
        so far is below ``tuning.direction_miss_probability`` (steps.direction_miss_bound): one
        direction when the noise floor is far below that error, as on a correct model in
        float64. ``thorough``: every agreeing part gets all ``tuning.directions_per_test``
        directions.

        Raises BudgetExhausted (after recording what was evaluated) when not even the first
        direction of every part fits in the budget.
        """
        significant = np.zeros(len(parts), dtype=bool)
        typical = np.array([rms(self.g[p.start:p.stop]) for p in parts])
        miss = np.ones(len(parts))
        todo = np.arange(len(parts))
        for _ in range(self.tuning.directions_per_test):
            if todo.size == 0:
                break
            self.budget.require(2 * todo.size)
            records = self.evaluate([parts[j] for j in todo], phase)
            hit = np.array([r.significant for r in records], dtype=bool)
            significant[todo[hit]] = True
            miss[todo] *= [direction_miss_bound(r.noise, self.tol, typical[j])
                           for j, r in zip(todo, records)]
            todo = todo[~hit & (thorough
                                | (miss[todo] > self.tuning.direction_miss_probability))]
        return significant

    def evaluate(self, parts: list[Part], phase: str) -> list[DirectionRecord]:
        """One fresh random direction per part; a disagreement is extrapolated to step 0.

        A real gradient error does not depend on the step; truncation (h^2 times the third
        derivative along v, which grows with the support's size) and kinks crossed by the step
        do. So a disagreement at step h is re-measured at ``tuning.richardson_ratio`` * h; when
        the two differ by more than their noise floors, they are extrapolated to h = 0
        (steps.richardson) and what remains beyond the extrapolation's floor is a gradient
        error. Where the step-dependent part dominates (a kink close to the step), the step
        shrinks (``tuning.direction_shrink``) while the disagreement keeps changing with it.
        """
        x = self.x
        keys = self.keys(len(parts))
        step = np.array([self.floor.step(x[p.start:p.stop]) for p in parts])
        self.measured = []
        records = self.measure(parts, keys, step, phase)
        records = self.extrapolate(parts, keys, step, records, phase)
        self.confirm_disagreements(parts, records, phase)
        self.findings.directions += records
        return records

    def confirm_disagreements(self, parts: list[Part], records: list[DirectionRecord],
                              phase: str) -> None:
        """Every measurement behind a disagreement that stands (after the second step and the
        smaller ones), evaluated again serially when threads measured it for a Python loss: the
        guard's first batch can miss a loss that is not thread-safe, and such a loss must not
        make a correct gradient disagree. A difference refuses threads (ThreadsRefused: the
        audit starts again on the new plan). A disagreement at step h that the second step
        shows to be truncation is not re-run: it reports nothing (GPT-2's first 382 evaluations
        on 2 threads had 114 such serial re-runs, the workers idle: 71 s, 50 s without)."""
        standing = {id(parts[j]) for j, r in enumerate(records) if r.significant}
        suspects = [np.array([id(p) in standing for p in batch]) for batch, *_ in self.measured]
        cost = sum(self.ev.confirmation_cost(suspect, m[-1])
                   for suspect, m in zip(suspects, self.measured))
        # an unconfirmed disagreement on threads is not reported
        self.budget.require(cost)
        before = self.budget.evaluations
        for (_, keys, lo, hi, step, f_plus, f_minus, threaded), suspect in zip(
                self.measured, suspects):
            if self.ev.confirm_directions_serially(keys, lo, hi, step, f_plus, f_minus, suspect,
                                                   threaded):
                raise ThreadsRefused
        self.budget.spend(phase, before)
        self.measured = []

    def extrapolate(self, parts, keys, step, records, phase) -> list[DirectionRecord]:
        """The significant records of step h, re-measured at tuning.richardson_ratio * h (a larger
        step: a lower noise floor, four times the truncation); where the two differ by more
        than their floors, replaced by their extrapolation to step 0. A record stays as
        measured when the budget has no room for the second step."""
        # a disagreement far beyond the step dependence measured on a part containing this
        # one cannot be truncation: localizing a wrong row needs no second step at every level
        tuning = self.tuning
        again = [j for j, r in enumerate(records) if r.significant and math.isfinite(r.rel_error)
                 and not abs(error(r)) > tuning.step_dependence_margin * (
                     parts[j].known_step_dependence() + r.noise)]
        if not again or 2 * len(again) > self.budget.remaining():
            return records
        wide = self.measure([parts[j] for j in again], keys[again],
                            step[again] * tuning.richardson_ratio, phase)
        doubtful = []
        for j, w in zip(again, wide):
            base = records[j]
            step_dependent = abs(error(base) - error(w))
            if math.isfinite(w.rel_error):
                parts[j].step_dependence = step_dependent
            # no visible dependence on the step: truncation is below half the floor at h, and
            # the measurement at h (whose floor is lower than the extrapolation's) stands
            if not math.isfinite(w.rel_error) or step_dependent <= base.noise + w.noise:
                continue
            records[j] = extrapolated(w, base)
            if records[j].significant and \
                    step_dependent > tuning.richardson_trust * records[j].disagreement:
                doubtful.append((j, base))
        # the extrapolation is only as good as its h^2 model: a kink crossed close to its
        # corner gives an error ~h (a few ReLU units near zero in a 10^6-weight direction).
        # Smaller steps decide, as in check()'s kink re-checks: the step shrinks while the
        # disagreement keeps changing with it; a real error stays, a kink is no longer crossed.
        current = {j: base for j, base in doubtful}
        for shrink in tuning.direction_shrink:
            index = [j for j in current if records[j].significant]
            if not index or 2 * len(index) > self.budget.remaining():
                break
            smaller = self.measure([parts[j] for j in index], keys[index], step[index] * shrink,
                                   phase)
            for j, m in zip(index, smaller):
                e1, e2 = error(records[j]), error(m)
                if math.isfinite(m.rel_error) and \
                        abs(e2 - e1) > tuning.step_dependence * abs(e1) + records[j].noise \
                        + m.noise:
                    records[j] = m  # still moving with the step: the smaller step decides
                else:
                    del current[j]  # stable: a step-independent disagreement (or agreement)
        return records

    def measure(self, parts, keys, step, phase) -> list[DirectionRecord]:
        lo = np.array([p.start for p in parts], dtype=np.int64)
        hi = np.array([p.stop for p in parts], dtype=np.int64)
        before = self.budget.evaluations
        self.budget.phase(phase, 2 * len(parts))
        f_plus, f_minus = self.ev.directions(keys, lo, hi, step, bar=self.budget.bar)
        self.budget.spend(phase, before)
        # kept until the direction's last step is judged (confirm_disagreements)
        self.measured.append((parts, keys, lo, hi, step, f_plus, f_minus,
                              self.ev.last_directions_threaded))
        return self.records(parts, keys, lo, hi, step, f_plus, f_minus, phase)

    def records(self, parts, keys, lo, hi, step, f_plus, f_minus, phase) -> list[DirectionRecord]:
        """The directional records of the losses f_plus, f_minus at theta +- step v."""
        x, g = self.x, self.g
        records = []
        for j, p in enumerate(parts):
            analytic, abs_gd = random_directions.dot(g, x, keys[j], int(lo[j]), int(hi[j]),
                                                      float(step[j]))
            fp, fm, h = float(f_plus[j, 0]), float(f_minus[j, 0]), float(step[j])
            numeric = (fp - fm) / (2.0 * h)
            # the floor of check() for the two loss values (with the measured noise of f), plus
            # the roundoff of grad . v
            noise = self.floor.of(fp, fm, h) + self.floor.eps * abs_gd
            diff = abs(analytic - numeric)
            scale = max(abs(analytic), abs(numeric))
            if not (math.isfinite(fp) and math.isfinite(fm)):
                rel, significant = math.nan, True
            else:
                rel = diff / scale if scale > 0 else 0.0
                significant = diff > noise
            name = "*" if phase == "global" else self.segs.names[p.segment]
            records.append(DirectionRecord(name, p.start, p.stop, float(analytic), numeric, rel,
                                           noise, h, bool(significant), phase))
        return records


def error(record: DirectionRecord) -> float:
    """The disagreement of a directional record, analytic minus numeric."""
    return record.analytic - record.numeric


def extrapolated(large: DirectionRecord, small: DirectionRecord) -> DirectionRecord:
    """The disagreement of one direction at steps h and r h, extrapolated to step 0."""
    err, noise = richardson(error(large), error(small), large.noise, small.noise,
                            small.step / large.step)
    analytic = small.analytic
    numeric = analytic - err
    scale = max(abs(analytic), abs(numeric))
    rel = abs(err) / scale if scale > 0 else 0.0
    return DirectionRecord(small.segment, small.start, small.stop, analytic, numeric, rel, noise,
                           small.step, bool(abs(err) > noise), small.phase)
