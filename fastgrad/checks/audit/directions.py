"""audit(): random-direction checks of every segment, then group-testing localization.

A directional derivative ``(f(x+hv) - f(x-hv)) / 2h`` tests a whole segment with two evaluations,
but it sums the gradient errors over its support: one coordinate off by 1% of the gradient's scale
among 10^6 changes ``grad . v`` (of size ~ sqrt(n) * scale) by a relative 1e-5, far below any
tolerance on a relative error. So a direction is not judged by its relative error but by its
absolute disagreement against the floating-point noise floor of the two loss values (the floor
``check`` uses, plus the roundoff of ``grad . v``): any disagreement above it is real and is
localized by splitting the support in halves, recursing into the halves that disagree. Only
single coordinates (or whole blocks, by sampled coordinates) are ever judged "wrong", by exactly
the coordinate check of ``check`` with its tolerance: a disagreement too small for that is not
reported as a suspect, so there are no false suspects by construction.

A block is accepted on sampled coordinates whose analytic gradient is not 0: a row scaled by a
wrong factor keeps its exact zeros (taps over padding, inputs a ReLU zeroed), which are right.
The zeros of an accepted block are judged apart, with directions supported on them alone
(``settle_zeros``): counted wrong only where the loss is not flat along them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from ..arguments import optional_positive_int
from ..engine.evaluator import Evaluator
from ..judge.noise import UNMEASURED, inconclusive_note, measure_noise
from ..judge.rechecks import Judge, scaled
from ..judge.verdicts import NAN, NOISE, VERDICTS
from ..progress import Progress
from ..results.audit_report import (
    AuditReport,
    BlockRecord,
    DirectionRecord,
    SegmentAudit,
    SuspectRecord,
    audit_status,
)
from ..sampling import direction_key
from ..segments import SegmentMap
from ..steps import (
    BLOCK_SAMPLES,
    DIRECTION_MISS_PROBABILITY,
    DIRECTION_SHRINK,
    DIRECTIONS_PER_TEST,
    KINK_SHRINK,
    LEAF_SIZE,
    MAX_FRONT,
    NOISE_PROBE_EVALUATIONS,
    RICHARDSON_RATIO,
    RICHARDSON_TRUST,
    STEP_DEPENDENCE,
    STEP_DEPENDENCE_MARGIN,
    coordinate_steps,
    direction_miss_bound,
    precision_of,
    richardson,
    rms,
)
from .prepare import prepare

__all__ = ["audit"]

# the progress bar's first estimate of localizing one disagreeing segment: evaluations per halving
# level (two halves, one or two directions each, sometimes a second step; measured 9-14 on
# ResNet-18 and GPT-2); later levels are estimated from the levels already done
LOCALIZE_PER_LEVEL = 12


class _BudgetExhausted(Exception):
    """The evaluation budget ran out: the audit stops and reports what it has localized."""


class _ThreadsRefused(Exception):
    """Threads changed f's values (a disagreeing direction evaluated again serially differed):
    the audit starts again with the plan that replaced them."""


@dataclass
class _Part:
    """A contiguous range under localization, in the tree of halves of one segment."""

    segment: int
    start: int
    stop: int
    parent: _Part | None = None
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


class _Auditor:
    def __init__(self, ev: Evaluator, judge: Judge, segs: SegmentMap, seed: int,
                 budget: int | None, bar: Progress):
        self.ev, self.judge, self.segs = ev, judge, segs
        self.x, self.g, self.f0 = judge.x, judge.grads[None], float(judge.f0[0])
        self.seed, self.tol, self.budget = seed, judge.tol, budget
        self.bar = bar
        self.eps = judge.eps
        self.step_scale = precision_of(self.x.dtype).step_scale
        self.next_direction = 0
        self.phases: dict[str, int] = {}
        self.directions: list[DirectionRecord] = []
        self.suspects: dict[int, SuspectRecord] = {}
        self.blocks: list[BlockRecord] = []
        self.unresolved: list[tuple[str, int, int]] = []
        # coordinates inside wrong blocks that are not counted wrong: analytic gradient 0 and
        # found right, or not judged before the budget ran out (settle_zeros)
        self.excluded: list[np.ndarray] = []
        self.complete = True
        self.notes: list[str] = []
        self.spread: set[int] = set()  # segments whose disagreement is spread out
        self.gain = 1.0  # steps grow by this when f is noisier than check() assumes
        self.noise_abs = 0.0  # absolute noise of f(x+h) - f(x-h) that every floor adds
        self.level = UNMEASURED  # the measured noise of f
        # the batches of directions measured for the parts of one evaluate() call
        self.measured: list[tuple] = []

    def measure_noise(self) -> None:
        """The noise of f itself, measured as check() does (check.measure_noise): a loop summing
        10^6 terms in sequence has far more roundoff than the default floor assumes."""
        if NOISE_PROBE_EVALUATIONS > self.remaining():
            raise _BudgetExhausted
        self.phase("noise", NOISE_PROBE_EVALUATIONS)
        before = self.ev.evaluations
        level = measure_noise(self.ev, self.x, np.array([self.f0]), self.seed)
        self.spend("noise", before)
        self.gain = level.step_gain
        self.noise_abs = level.noise_abs[0]
        self.judge.noise_abs = level.noise_abs
        self.level = level
        if level.note:
            self.notes.append(level.note)

    # -- bookkeeping -----------------------------------------------------------------------------
    def remaining(self) -> float:
        return math.inf if self.budget is None else self.budget - self.ev.evaluations

    def spend(self, phase: str, before: int) -> None:
        spent = self.ev.evaluations - before
        self.phases[phase] = self.phases.get(phase, 0) + spent
        # the backends move the bar evaluation by evaluation; this sets it to the true count
        # (re-checks and zero-gradient directions run outside them); the total is an estimate
        self.bar.total = max(self.bar.total, self.ev.evaluations)
        self.bar.count_to(self.ev.evaluations)

    def expect(self, evaluations: float, phase: str) -> None:
        """Re-estimate the evaluations left (at most the budget's) and show the phase."""
        self.bar.expect(int(min(evaluations, self.remaining())), label=f"audit {phase}")

    def phase(self, phase: str, evaluations: int) -> None:
        """Show ``phase`` on the progress bar, expecting ``evaluations`` more in it at least."""
        self.bar.label = f"audit {phase}"
        self.bar.total = max(self.bar.total, self.ev.evaluations + evaluations)

    # -- directional tests -------------------------------------------------------------------------
    def test(self, parts: list[_Part], phase: str, thorough: bool = False) -> np.ndarray:
        """Which parts disagree beyond the noise floor, with up to DIRECTIONS_PER_TEST directions.

        A part that agrees is tried with another direction until the chance that an error of
        tol on a coordinate of typical gradient (the part's RMS gradient) hid in every direction
        so far is below DIRECTION_MISS_PROBABILITY (steps.direction_miss_bound): one direction
        when the noise floor is far below that error, as on a correct model in float64.
        ``thorough``: every agreeing part gets all DIRECTIONS_PER_TEST directions.

        Raises _BudgetExhausted (after recording what was evaluated) when not even the first
        direction of every part fits in the budget.
        """
        significant = np.zeros(len(parts), dtype=bool)
        typical = np.array([rms(self.g[p.start:p.stop]) for p in parts])
        miss = np.ones(len(parts))
        todo = np.arange(len(parts))
        for _ in range(DIRECTIONS_PER_TEST):
            if todo.size == 0:
                break
            if 2 * todo.size > self.remaining():
                raise _BudgetExhausted
            records = self.evaluate([parts[j] for j in todo], phase)
            hit = np.array([r.significant for r in records], dtype=bool)
            significant[todo[hit]] = True
            miss[todo] *= [direction_miss_bound(r.noise, self.tol, typical[j])
                           for j, r in zip(todo, records)]
            todo = todo[~hit & (thorough | (miss[todo] > DIRECTION_MISS_PROBABILITY))]
        return significant

    def evaluate(self, parts: list[_Part], phase: str) -> list[DirectionRecord]:
        """One fresh random direction per part; a disagreement is extrapolated to step 0.

        A real gradient error does not depend on the step; truncation (h^2 times the third
        derivative along v, which grows with the support's size) and kinks crossed by the step
        do. So a disagreement at step h is re-measured at RICHARDSON_RATIO * h; when the two
        differ by more than their noise floors, they are extrapolated to h = 0
        (steps.richardson) and what remains beyond the extrapolation's floor is a gradient
        error. Where the step-dependent part dominates (a kink close to the step), the step
        shrinks (DIRECTION_SHRINK) while the disagreement keeps changing with it.
        """
        x = self.x
        keys = np.array([direction_key(self.seed, self.next_direction + j)
                         for j in range(len(parts))], dtype=np.uint64)
        self.next_direction += len(parts)
        # |v_i| <= 1, so h is the largest displacement of any coordinate: the coordinate step of
        # check() for the support's typical magnitude
        step = np.array([self.step_scale * self.gain * max(1.0, rms(x[p.start:p.stop]))
                         for p in parts])
        self.measured = []
        records = self.measure(parts, keys, step, phase)
        records = self.extrapolate(parts, keys, step, records, phase)
        self.confirm_disagreements(parts, records, phase)
        self.directions += records
        return records

    def confirm_disagreements(self, parts: list[_Part], records: list[DirectionRecord],
                              phase: str) -> None:
        """Every measurement behind a disagreement that stands (after the second step and the
        smaller ones), evaluated again serially when threads measured it for a Python loss: the
        guard's first batch can miss a loss that is not thread-safe, and such a loss must not
        make a correct gradient disagree. A difference refuses threads (_ThreadsRefused: the
        audit starts again on the new plan). A disagreement at step h that the second step
        shows to be truncation is not re-run: it reports nothing (GPT-2's first 382 evaluations
        on 2 threads had 114 such serial re-runs, the workers idle: 71 s, 50 s without)."""
        standing = {id(parts[j]) for j, r in enumerate(records) if r.significant}
        suspects = [np.array([id(p) in standing for p in batch]) for batch, *_ in self.measured]
        cost = sum(self.ev.confirmation_cost(suspect, m[-1])
                   for suspect, m in zip(suspects, self.measured))
        if cost > self.remaining():
            raise _BudgetExhausted  # an unconfirmed disagreement on threads is not reported
        before = self.ev.evaluations
        for (_, keys, lo, hi, step, f_plus, f_minus, threaded), suspect in zip(
                self.measured, suspects):
            if self.ev.confirm_directions_serially(keys, lo, hi, step, f_plus, f_minus, suspect,
                                                   threaded):
                raise _ThreadsRefused
        self.spend(phase, before)
        self.measured = []

    def extrapolate(self, parts, keys, step, records, phase) -> list[DirectionRecord]:
        """The significant records of step h, re-measured at RICHARDSON_RATIO * h (a larger
        step: a lower noise floor, four times the truncation); where the two differ by more
        than their floors, replaced by their extrapolation to step 0. A record stays as
        measured when the budget has no room for the second step."""
        # a disagreement far beyond the step dependence measured on a part containing this
        # one cannot be truncation: localizing a wrong row needs no second step at every level
        again = [j for j, r in enumerate(records) if r.significant and math.isfinite(r.rel_error)
                 and not abs(_error(r)) > STEP_DEPENDENCE_MARGIN * (
                     parts[j].known_step_dependence() + r.noise)]
        if not again or 2 * len(again) > self.remaining():
            return records
        wide = self.measure([parts[j] for j in again], keys[again],
                            step[again] * RICHARDSON_RATIO, phase)
        doubtful = []
        for j, w in zip(again, wide):
            base = records[j]
            step_dependent = abs(_error(base) - _error(w))
            if math.isfinite(w.rel_error):
                parts[j].step_dependence = step_dependent
            # no visible dependence on the step: truncation is below half the floor at h, and
            # the measurement at h (whose floor is lower than the extrapolation's) stands
            if not math.isfinite(w.rel_error) or step_dependent <= base.noise + w.noise:
                continue
            records[j] = _extrapolated(w, base)
            if records[j].significant and \
                    step_dependent > RICHARDSON_TRUST * records[j].disagreement:
                doubtful.append((j, base))
        # the extrapolation is only as good as its h^2 model: a kink crossed close to its
        # corner gives an error ~h (a few ReLU units near zero in a 10^6-weight direction).
        # Smaller steps decide, as in check()'s kink re-checks: the step shrinks while the
        # disagreement keeps changing with it; a real error stays, a kink is no longer crossed.
        current = {j: base for j, base in doubtful}
        for shrink in DIRECTION_SHRINK:
            index = [j for j in current if records[j].significant]
            if not index or 2 * len(index) > self.remaining():
                break
            smaller = self.measure([parts[j] for j in index], keys[index], step[index] * shrink,
                                   phase)
            for j, m in zip(index, smaller):
                e1, e2 = _error(records[j]), _error(m)
                if math.isfinite(m.rel_error) and \
                        abs(e2 - e1) > STEP_DEPENDENCE * abs(e1) + records[j].noise + m.noise:
                    records[j] = m  # still moving with the step: the smaller step decides
                else:
                    del current[j]  # stable: a step-independent disagreement (or agreement)
        return records

    def measure(self, parts, keys, step, phase) -> list[DirectionRecord]:
        lo = np.array([p.start for p in parts], dtype=np.int64)
        hi = np.array([p.stop for p in parts], dtype=np.int64)
        before = self.ev.evaluations
        self.phase(phase, 2 * len(parts))
        f_plus, f_minus = self.ev.directions(keys, lo, hi, step, bar=self.bar)
        self.spend(phase, before)
        # kept until the direction's last step is judged (confirm_disagreements)
        self.measured.append((parts, keys, lo, hi, step, f_plus, f_minus,
                              self.ev.last_directions_threaded))
        return self.records(parts, keys, lo, hi, step, f_plus, f_minus, phase)

    def records(self, parts, keys, lo, hi, step, f_plus, f_minus, phase) -> list[DirectionRecord]:
        """The directional records of the losses f_plus, f_minus at theta +- step v."""
        from ..engine.kernels import direction_dot  # numba loads on first use, not at import

        x, g = self.x, self.g
        records = []
        for j, p in enumerate(parts):
            analytic, abs_gd = direction_dot(g, x, keys[j], int(lo[j]), int(hi[j]),
                                              float(step[j]))
            fp, fm, h = float(f_plus[j, 0]), float(f_minus[j, 0]), float(step[j])
            numeric = (fp - fm) / (2.0 * h)
            # the floor of check() for the two loss values (with the measured noise of f), plus
            # the roundoff of grad . v
            noise = ((self.eps * (abs(fp) + abs(fm)) + self.noise_abs) / (2.0 * h)
                     + self.eps * abs_gd)
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

    # -- coordinate checks -------------------------------------------------------------------------
    def confirm(self, index: np.ndarray, phase: str = "confirm") -> np.ndarray:
        """check()'s coordinate verdicts for ``index``; returns the failed mask.

        Failed coordinates become suspects. A "noise" coordinate is re-checked with a larger
        step and a kink crossing with smaller steps, as check() does, before anything is
        reported; a coordinate sitting on a kink with a valid one-sided derivative is excused.
        """
        index = np.asarray(index, dtype=np.int64)
        if 2 * index.size > self.remaining():
            raise _BudgetExhausted
        x, g = self.x, self.g
        step = coordinate_steps(x[index], "auto", x.dtype)
        if self.gain > 1.0:
            step = scaled(x[index], step, self.gain, x.dtype)
        before = self.ev.evaluations
        self.phase(phase, 2 * index.size)
        fp, fm = self.ev.pairs(index, step, bar=self.bar)
        stats = self.judge.verdicts(index, step, fp, fm)
        if self.ev.confirmation_cost(stats[0].failed, rerun=index.size) > self.remaining():
            self.spend(phase, before)
            raise _BudgetExhausted  # threads' failures must be confirmed, and cannot be
        if self.ev.confirm_serially(index, step, fp, fm, stats[0].failed):
            raise _ThreadsRefused  # threads changed f's values: as in measure()
        s = stats[0]
        steps = step
        noisy = s.verdict == NOISE
        failing = s.failed & (s.verdict != NAN)
        # check()'s re-checks cost at most 2 evaluations per noise coordinate and 2 per failing
        # coordinate and kink step; without that budget they are neither suspects nor cleared
        if 2 * (np.count_nonzero(noisy) + len(KINK_SHRINK) * np.count_nonzero(failing)) \
                > self.remaining():
            self.complete = False
            s.failed[failing] = False
            for j in np.flatnonzero(failing):
                i = int(index[j])
                self.unresolved.append((self.segs.locate(i)[0], i, i + 1))
        else:
            steps = self.judge.recheck(index, step, stats)[0][0]
        self.spend(phase, before)
        for j in np.flatnonzero(s.failed):
            i = int(index[j])
            name, local = self.segs.locate(i)
            self.suspects[i] = SuspectRecord(i, name, local, float(g[i]), float(s.numeric[j]),
                                             float(s.rel_error[j]), VERDICTS[s.verdict[j]],
                                             float(steps[j]))
        return s.failed.copy()

    # -- localization ------------------------------------------------------------------------------
    def localize(self, roots: list[_Part]) -> None:
        """Split disagreeing parts in halves, level by level, over all failing segments at once."""
        front = list(roots)
        start, part_levels = self.ev.evaluations, 0
        self.expect(sum(LOCALIZE_PER_LEVEL * _levels(p) for p in roots), "localize")
        while front:
            if part_levels:  # the levels left, at the cost per part and level so far
                per = (self.ev.evaluations - start) / part_levels
                self.expect(per * len(front) * max(_levels(p) for p in front), "localize")
            part_levels += len(front)
            leaves = [p for p in front if p.size <= LEAF_SIZE]
            splits = [p for p in front if p.size > LEAF_SIZE]
            if leaves:
                index = np.concatenate([np.arange(p.start, p.stop) for p in leaves])
                try:
                    self.confirm(index)
                except _BudgetExhausted:
                    self.give_up(front)
                    return
            children = []
            for p in splits:
                mid = (p.start + p.stop) // 2
                children += [_Part(p.segment, p.start, mid, p), _Part(p.segment, mid, p.stop, p)]
            if not children:
                return
            try:
                failing = self.test(children, "localize")
            except _BudgetExhausted:
                self.give_up(splits)
                return
            next_front = [c for c, bad in zip(children, failing) if bad]
            next_front = self.find_blocks(children, failing, next_front)
            if next_front is None:
                return
            # a disagreement in too many places at once is spread out, not localized
            by_segment: dict[int, list[_Part]] = {}
            for c in next_front:
                by_segment.setdefault(c.segment, []).append(c)
            kept = []
            for sid, parts in by_segment.items():
                if len(parts) > MAX_FRONT:
                    self.spread.add(sid)
                    seg = self.segs[self.segs.names[sid]]
                    self.notes.append(
                        f"segment {seg.name!r}: the disagreement is spread over {len(parts)}+ "
                        f"parts; localization stopped (sampled coordinates pass the tolerance)")
                    self.unresolved.append((seg.name, seg.start, seg.stop))
                else:
                    kept += parts
            # a part that disagreed while both of its halves agree: noise, a kink or truncation
            # on that direction, or errors too small for any smaller support
            front = kept

    def find_blocks(self, children, failing, next_front):
        """Parts whose four grandchildren all disagree: sample coordinates; all wrong -> a block."""
        failed_by_parent: dict[int, list[bool]] = {}
        parents: dict[int, _Part] = {}
        for c, bad in zip(children, failing):
            failed_by_parent.setdefault(id(c.parent), []).append(bool(bad))
            parents[id(c.parent)] = c.parent
        grand: dict[int, list[bool]] = {}
        grand_parts: dict[int, _Part] = {}
        for pid, flags in failed_by_parent.items():
            gp = parents[pid].parent
            if gp is None:
                continue
            grand.setdefault(id(gp), []).extend(flags)
            grand_parts[id(gp)] = gp
        blocked: list[_Part] = []
        for gid, flags in grand.items():
            if len(flags) == 4 and all(flags):
                gp = grand_parts[gid]
                sample = self.block_sample(gp)
                if 2 * sample.size > self.remaining():
                    self.give_up(next_front)
                    return None
                wrong = self.confirm(sample, phase="blocks")
                if wrong.all():
                    cleared, unsettled = self.settle_zeros(gp)
                    for i in [i for i in self.suspects if gp.start <= i < gp.stop]:
                        del self.suspects[i]  # the block record stands for them
                    self.blocks.append(BlockRecord(
                        self.segs.names[gp.segment], gp.start, gp.stop,
                        self.segs.locate(gp.start)[1], self.segs.locate(gp.stop - 1)[1],
                        int(sample.size), int(wrong.sum()), cleared, unsettled))
                    blocked.append(gp)
        if not blocked:
            return next_front
        return [c for c in next_front if not any(_inside(c, b) for b in blocked)]

    def block_sample(self, part: _Part) -> np.ndarray:
        """The coordinates that decide whether ``part`` is a wrong block: both ends and random
        interior points, among the coordinates whose analytic gradient is not exactly 0.

        The ends catch a block reaching past a wrong row (or other contiguous run): it fails
        at an end and is split further instead. A coordinate whose analytic gradient is 0 says
        nothing about the block: a wrong row scaled by a factor keeps its zeros (an input
        channel that is all zero after a ReLU, a tap over padding), so they are judged apart,
        once the block is accepted (settle_zeros). A part whose gradient is 0 everywhere is
        sampled among all its coordinates: a gradient returned as zeros is caught there.
        """
        pool = part.start + np.flatnonzero(self.g[part.start:part.stop])
        if pool.size == 0:
            pool = np.arange(part.start, part.stop)
        return _ends_and_inner(pool, np.random.default_rng([self.seed, part.start, part.stop]))

    def settle_zeros(self, block: _Part) -> tuple[int, int]:
        """Judge the coordinates of an accepted block whose analytic gradient is exactly 0.

        The block's samples were all wrong, but its zeros were not sampled (block_sample). They
        are tested together, with directions supported on them alone: the loss flat along
        every direction (within the noise floor) -> they are right and not counted wrong. A
        disagreement -> some are wrong: a set of at most LEAF_SIZE is confirmed coordinate by
        coordinate; a larger one has sampled coordinates confirmed (all wrong: the set stays
        wrong, as a block does) and is split in halves otherwise. Returns the counts of zeros
        found right and of zeros not judged (the budget ran out); both are left out of
        ``report.suspects`` (``self.excluded``).
        """
        zeros = block.start + np.flatnonzero(self.g[block.start:block.stop] == 0)
        if zeros.size == 0 or zeros.size == block.size:
            # no zeros; or zeros only, and the samples that found the block were zeros, wrong
            return 0, 0
        right: list[np.ndarray] = []
        pending = [zeros]
        index = zeros
        try:
            while pending:
                index = pending.pop()
                if self.flat_along(index, block.segment):
                    right.append(index)
                    continue
                sample = index if index.size <= LEAF_SIZE else _ends_and_inner(
                    index, np.random.default_rng([self.seed, int(index[0]), int(index[-1]),
                                                  index.size]))
                judged = len(self.unresolved)
                wrong = self.confirm(sample, phase="zeros")
                # a failing coordinate whose re-checks did not fit in the budget is unresolved
                undecided = {start for _, start, _ in self.unresolved[judged:]}
                passed = sample[~wrong & ~np.isin(sample, list(undecided))]
                right.append(passed)
                if sample.size == index.size or wrong.all():
                    # every coordinate judged; or every sampled one wrong: the set stays wrong
                    self.excluded.append(sample[np.isin(sample, list(undecided))])
                    continue
                rest = index[~np.isin(index, sample)]
                mid = rest.size // 2
                pending += [rest[mid:], rest[:mid]]
        except _BudgetExhausted:
            self.complete = False
            unsettled = np.concatenate([index] + pending)
            self.excluded.append(unsettled)
            self.unresolved.append((self.segs.names[block.segment], block.start, block.stop))
            self.notes.append(
                f"segment {self.segs.names[block.segment]!r}: {unsettled.size} coordinates "
                f"with analytic gradient 0 inside a wrong block were not judged before the "
                f"budget ran out; they are not counted wrong")
        else:
            unsettled = np.zeros(0, dtype=np.int64)
        cleared = np.concatenate(right) if right else np.zeros(0, dtype=np.int64)
        self.excluded.append(cleared)
        return int(cleared.size), int(unsettled.size)

    def flat_along(self, index: np.ndarray, segment: int) -> bool:
        """Is the loss flat (within the noise floor) along up to DIRECTIONS_PER_TEST random
        directions supported on ``index``, coordinates whose analytic gradient is 0?"""
        for _ in range(DIRECTIONS_PER_TEST):
            if 2 > self.remaining():
                raise _BudgetExhausted
            key = np.uint64(direction_key(self.seed, self.next_direction))
            self.next_direction += 1
            step = self.step_scale * self.gain * max(1.0, rms(self.x[index]))
            record = self.sparse_direction(index, segment, key, step)
            if record.significant and math.isfinite(record.rel_error) and \
                    2 <= self.remaining():
                # truncation or a real error: a real one does not change with the step
                wide = self.sparse_direction(index, segment, key, step * RICHARDSON_RATIO)
                if math.isfinite(wide.rel_error) and \
                        abs(_error(record) - _error(wide)) > record.noise + wide.noise:
                    record = _extrapolated(wide, record)
            self.directions.append(record)
            if record.significant:
                return False
        return True

    def sparse_direction(self, index: np.ndarray, segment: int, key, step: float):
        """f at theta +- step v, v a random direction supported on ``index`` only (two loss
        evaluations on one working copy, restored after), against its analytic derivative:
        0, the gradient being 0 on ``index``."""
        from ..engine.kernels import direction_fill  # numba loads on first use, not at import

        x, h = self.x, float(step)
        lo, hi = int(index[0]), int(index[-1]) + 1
        v = np.empty(hi - lo)
        direction_fill(key, lo, hi, v)
        v = v[index - lo]
        name = self.segs.names[segment]
        where = (f"theta +- {h:.3g} v, v on the {index.size} coordinates of {name} with "
                 f"analytic gradient 0 in flat [{lo}, {hi})")
        work = self.ev.work.borrow()
        before = self.ev.evaluations
        try:
            work[index] = x[index] + h * v
            fp = float(self.ev.at(work, where, in_place=True)[0])
            work[index] = x[index] - h * v
            fm = float(self.ev.at(work, where, in_place=True)[0])
        finally:
            work[index] = x[index]
            self.ev.work.give_back(work)
        self.spend("zeros", before)
        numeric = (fp - fm) / (2.0 * h)
        noise = (self.eps * (abs(fp) + abs(fm)) + self.noise_abs) / (2.0 * h)
        if not (math.isfinite(fp) and math.isfinite(fm)):
            rel, significant = math.nan, True
        else:
            rel, significant = (1.0 if numeric != 0 else 0.0), abs(numeric) > noise
        return DirectionRecord(name, lo, hi, 0.0, numeric, rel, noise, h, bool(significant),
                               "zeros")

    def give_up(self, parts: list[_Part]) -> None:
        self.complete = False
        for p in parts:
            self.unresolved.append((self.segs.names[p.segment], p.start, p.stop))


def _ends_and_inner(pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The first and last entries of ``pool`` (sorted) and BLOCK_SAMPLES - 2 random others."""
    if pool.size <= BLOCK_SAMPLES:
        return pool
    inner = rng.choice(pool[1:-1], size=BLOCK_SAMPLES - 2, replace=False)
    return np.unique(np.concatenate([[pool[0], pool[-1]], inner]))


def _levels(part: _Part) -> float:
    """Halving levels from ``part`` down to leaves of LEAF_SIZE, the leaves' level included."""
    return max(math.log2(part.size / LEAF_SIZE), 0.0) + 1.0


def _inside(part: _Part, block: _Part) -> bool:
    return block.start <= part.start and part.stop <= block.stop


def _error(record: DirectionRecord) -> float:
    return record.analytic - record.numeric


def _extrapolated(large: DirectionRecord, small: DirectionRecord) -> DirectionRecord:
    """The disagreement of one direction at steps h and r h, extrapolated to step 0."""
    error, noise = richardson(_error(large), _error(small), large.noise, small.noise,
                              small.step / large.step)
    analytic = small.analytic
    numeric = analytic - error
    scale = max(abs(analytic), abs(numeric))
    rel = abs(error) / scale if scale > 0 else 0.0
    return DirectionRecord(small.segment, small.start, small.stop, analytic, numeric, rel, noise,
                           small.step, bool(abs(error) > noise), small.phase)


def audit(
    f: Callable,
    theta: np.ndarray,
    grad: np.ndarray | Callable,
    *,
    args: tuple = (),
    segments: SegmentMap | Mapping | None = None,
    budget: int | None = None,
    seed: int = 0,
    depth: int = 1,
    tol: float | None = None,
    workers: int | None = None,
    executor: Executor | None = None,
    progress: bool | None = None,
    nondet_tol: float = 0.0,
    jit: bool | str = "auto",
    backend: str | None = None,
    timeout: float | None = None,
) -> AuditReport:
    """Audit every segment with random directions, then localize the wrong coordinates.

    Each segment is tested with ``(f(x+hv) - f(x-hv)) / 2h`` against ``grad . v`` for random
    directions v, judged against the noise floor; a disagreeing segment is split in halves
    (group testing) until the wrong coordinates or blocks are found and confirmed by check()'s
    own verdicts. A segment whose directions the measured noise of f leaves uncertain by more
    than ``tol`` is "inconclusive" and the audit does not pass.

    Parameters
    ----------
    f : callable
        The loss, ``f(theta, *args) -> float``: a value with exactly one element, as in
        ``fastgrad.check``.
    theta : numpy.ndarray or list
        The flat parameter vector (1-D, or a list of numbers), as in ``fastgrad.check``.
    grad : numpy.ndarray or callable
        The analytic gradient at theta, or ``grad(theta, *args)``, of theta's shape ``(n,)``.
    args : tuple
        Extra arguments of f.
    segments : SegmentMap, mapping or None
        The segment map or ``{name: shape}``; None: one segment "theta".
    budget : int or None
        The most loss evaluations to spend (at least 4): every call of f counts, the
        thread-safety guard's serial re-runs included; None: as many as localization needs.
    seed : int
        The seed of the random directions.
    depth : int
        Network depth: the tolerance grows with it.
    tol : float or None
        A coordinate's failure threshold on the relative error; None: from dtype and depth.
    workers : int or None
        Parallel workers; None: all cores.
    backend : {None, "serial", "threads", "kernel", "processes"}
        Who evaluates the perturbed losses. None: chosen per loss by measuring (a Python loss
        runs on threads only after a bitwise comparison with serial evaluations shows threads
        do not change its values) and said in ``report.path``; a name forces that backend
        ("kernel": the Numba prange kernel, reported as path "jit").
    executor : concurrent.futures.Executor or None
        Shard the evaluations over this executor.
    progress : bool or None
        A progress bar; None: only on long audits in a terminal.
    nondet_tol : float
        The relative difference between two evaluations at theta that is accepted.
    jit : bool or str
        "auto": compile a plain numpy loss with Numba when that gives the same values.
    timeout : float or None
        Seconds one evaluation of f may take, as for check(): one past it raises
        ``LossTimeout`` naming the direction or coordinate. None: no limit.

    Returns
    -------
    AuditReport
        ``report.status``, ``report.suspects`` (flat indices), ``report.blocks``, per-segment
        rows; ``print(report)``.

    Raises
    ------
    ValueError
        Bad input, naming the argument (``fastgrad.errors.InvalidValue``).
    TypeError
        An argument of the wrong type (``fastgrad.errors.InvalidType``).
    NondeterminismError
        f gave two different values at theta.
    LossError
        f raised at a perturbed point, or took longer than ``timeout`` there
        (``fastgrad.LossTimeout``).

    Examples
    --------
    >>> theta, segs = fg.flatten({"W1": W1, "b1": b1, "W2": W2, "b2": b2})
    >>> report = fg.audit(loss, theta, grad, segments=segs, budget=2000)
    >>> print(report); report.suspects          # flat indices localized as wrong
    """
    budget = optional_positive_int(
        "budget", budget, minimum=4,
        meaning=" loss evaluations (2 at theta, 2 per direction)")
    # one bar for the whole audit (the engine's per-batch bars stay off)
    problem, ev = prepare(f, theta, grad, args=args, segments=segments, seed=seed, depth=depth,
                          tol=tol, workers=workers, executor=executor, progress=False, jit=jit,
                          nondet_tol=nondet_tol, terms_allowed=False, backend=backend,
                          timeout=timeout)
    ev.budget = budget  # the engine keeps the guard's duplicates inside it too
    try:
        return _audit(problem, ev, budget, progress)
    finally:
        ev.close()  # the worker processes' shared block goes now, also on error


def _audit(problem, ev: Evaluator, budget: int | None, progress) -> AuditReport:
    """audit() after the preparation."""
    segs = problem.segments
    judge = Judge(ev, problem.x, problem.f0, problem.grads, problem.tol, problem.eps)
    # the noise probe, the whole vector's direction and one per segment; re-estimated by phase
    expected = ev.evaluations + NOISE_PROBE_EVALUATIONS + 2 + 2 * len(segs)
    if budget is not None:
        expected = min(expected, budget)
    with Progress(total=expected, label="audit", enabled=progress) as bar:
        auditor = _Auditor(ev, judge, segs, problem.seed, budget, bar)
        auditor.phases["theta"] = at_theta = ev.evaluations
        bar.update(ev.evaluations)
        try:
            return _run(auditor, segs, problem.tol, problem.tol_reason, problem.depth,
                        problem.seed)
        except _ThreadsRefused:
            # threads changed f's values: every direction again with the plan that replaced
            # them (the same directions, so the verdicts are those of a serial audit)
            auditor = _Auditor(ev, judge, segs, problem.seed, budget, bar)
            auditor.phases.update({"theta": at_theta,
                                   "before threads were refused": ev.evaluations - at_theta})
            return _run(auditor, segs, problem.tol, problem.tol_reason, problem.depth,
                        problem.seed)


def _run(auditor: _Auditor, segs: SegmentMap, tol_value, tol_reason, depth, seed) -> AuditReport:
    n = auditor.x.size

    seg_records: dict[int, list[DirectionRecord]] = {p: [] for p in range(len(segs))}
    significant = np.zeros(len(segs), dtype=bool)
    roots: list[_Part] = []
    try:
        auditor.measure_noise()
        # one direction over the whole vector: the cheap global test
        whole = auditor.test([_Part(-1 if len(segs) > 1 else 0, 0, n)], "global")[0]
        # every segment on its own
        seg_parts = [_Part(p, seg.start, seg.stop) for p, seg in enumerate(segs)]
        start = len(auditor.directions)
        significant = auditor.test(seg_parts, "segments")
        if whole and not significant.any():
            # the whole vector disagreed and no segment did: an error that hid in the
            # segments' directions (a near cancellation) gets every direction there is
            significant = auditor.test(seg_parts, "segments", thorough=True)
            if not significant.any():
                auditor.notes.append(
                    "the direction over the whole vector disagreed beyond its noise floor, but "
                    f"no segment's {DIRECTIONS_PER_TEST} directions did (truncation or a kink "
                    "along the whole vector, or an error below every segment's floor)")
        for rec in auditor.directions[start:]:
            seg_records[segs.names.index(rec.segment)].append(rec)
        roots = [p for p, bad in zip(seg_parts, significant) if bad]
    except _BudgetExhausted:
        auditor.complete = False
        auditor.notes.append("the budget ran out before every segment had a directional test")
        for p, seg in enumerate(segs):
            if not seg_records[p]:
                auditor.unresolved.append((seg.name, seg.start, seg.stop))
    if roots:
        auditor.localize(roots)
    auditor.bar.expect(0, label="audit done")  # the bar ends full
    return _report(auditor, segs, seg_records, significant, tol_value, tol_reason, depth, seed)


def _merge_adjacent(blocks: list[BlockRecord], segs: SegmentMap) -> list[BlockRecord]:
    """Touching blocks of one segment (found at different depths) as one record."""
    merged: list[BlockRecord] = []
    for b in sorted(blocks, key=lambda b: b.start):
        if merged and merged[-1].segment == b.segment and merged[-1].stop == b.start:
            m = merged[-1]
            merged[-1] = BlockRecord(m.segment, m.start, b.stop, m.first,
                                     segs.locate(b.stop - 1)[1], m.sampled + b.sampled,
                                     m.wrong + b.wrong, m.cleared + b.cleared,
                                     m.unsettled + b.unsettled)
        else:
            merged.append(b)
    return merged


def _absorb_suspects(auditor: _Auditor, segs: SegmentMap) -> list[BlockRecord]:
    """Blocks grown by the confirmed suspects that touch them in their segment (a wrong row
    that does not start on a halving boundary is found partly as a block, partly as leaves):
    one record per contiguous run of wrong coordinates."""
    grown = []
    for b in auditor.blocks:
        seg = segs[b.segment]
        start, stop = b.start, b.stop
        while start > seg.start and start - 1 in auditor.suspects:
            start -= 1
            del auditor.suspects[start]
        while stop < seg.stop and stop in auditor.suspects:
            del auditor.suspects[stop]
            stop += 1
        extra = (b.start - start) + (stop - b.stop)
        grown.append(BlockRecord(b.segment, start, stop, segs.locate(start)[1],
                                 segs.locate(stop - 1)[1], b.sampled + extra, b.wrong + extra,
                                 b.cleared, b.unsettled))
    return grown


def _report(auditor: _Auditor, segs, seg_records, significant, tol, tol_reason, depth,
            seed) -> AuditReport:
    ev = auditor.ev
    auditor.blocks = _merge_adjacent(_absorb_suspects(auditor, segs), segs)
    block_index = [np.arange(b.start, b.stop) for b in auditor.blocks]
    suspects = np.unique(np.concatenate(
        [np.fromiter(auditor.suspects, dtype=np.int64, count=len(auditor.suspects))]
        + block_index)) if (auditor.suspects or block_index) else np.zeros(0, dtype=np.int64)
    if auditor.excluded:  # zeros inside blocks found right or not judged: no evidence of error
        suspects = np.setdiff1d(suspects, np.concatenate(auditor.excluded), assume_unique=True)
    unresolved_by = {name for name, _, _ in auditor.unresolved}
    segments = {}
    for p, seg in enumerate(segs):
        recs = seg_records[p]
        n_sus = sum(1 for r in auditor.suspects.values() if r.segment == seg.name)
        blocks = [b for b in auditor.blocks if b.segment == seg.name]
        if not recs:
            status = "incomplete"
        elif p in auditor.spread:
            status = "spread"
        elif seg.name in unresolved_by:
            status = "incomplete"
        elif n_sus or blocks:
            status = "localized"
        elif significant[p]:
            status = "not localized"  # disagreed, but no coordinate fails the tolerance
        elif all(auditor.judge.direction_unjudgeable(r.analytic, r.numeric, r.step)
                 for r in recs):
            status = "inconclusive"  # the measured noise of f hides any error beyond tol
        else:
            status = "clean"
        worst_rel = max((r.rel_error for r in recs), default=0.0)
        passed = (not n_sus and not blocks and status not in ("incomplete", "inconclusive")
                  and not (status == "spread" and worst_rel > tol))
        segments[seg.name] = SegmentAudit(
            name=seg.name, size=seg.size, rel_errors=tuple(r.rel_error for r in recs),
            disagreements=tuple(r.disagreement for r in recs),
            noise=tuple(r.noise for r in recs), significant=bool(significant[p]),
            suspects=n_sus, blocks=len(blocks), wrong_in_blocks=sum(b.counted for b in blocks),
            status=status, passed=passed)
    for s in segments.values():
        if s.status == "not localized":
            auditor.notes.append(
                f"segment {s.name!r}: its directions disagreed beyond the noise floor, but no "
                f"coordinate it was narrowed to fails the tolerance (errors below tol, a kink or "
                f"truncation on that direction)")
    unsure = sum(s.status == "inconclusive" for s in segments.values())
    if unsure:
        auditor.notes.append(inconclusive_note(auditor.level, unsure, "segment"))
    records = sorted(auditor.suspects.values(), key=lambda r: r.index)
    phases = {k: v for k, v in auditor.phases.items() if v}
    return AuditReport(
        status=audit_status(segments.values(), auditor.complete),
        segments=segments, suspects=suspects, suspect_records=records,
        blocks=list(auditor.blocks), unresolved=list(auditor.unresolved),
        evaluations=ev.evaluations, budget=auditor.budget, complete=auditor.complete,
        phases=phases, directions=list(auditor.directions), tol=tol, tol_reason=tol_reason,
        path=ev.path, path_reason=ev.path_reason, dtype=auditor.x.dtype.name, depth=int(depth),
        seed=int(seed), loss=auditor.f0, notes=list(auditor.notes),
    )
