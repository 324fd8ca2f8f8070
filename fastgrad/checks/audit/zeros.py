"""The zeros of a wrong block: coordinates whose analytic gradient is exactly 0, judged apart.

A block is accepted on sampled coordinates whose analytic gradient is not 0: a row scaled by a
wrong factor keeps its exact zeros (taps over padding, inputs a ReLU zeroed), which are right.
The zeros of an accepted block are judged with directions supported on them alone: counted
wrong only where the loss is not flat along them.
"""

from __future__ import annotations

import math

import numpy as np

from ...engine import random_directions
from ...engine.evaluator import Evaluator
from ...results.audit_report import DirectionRecord
from ...segments import SegmentMap
from .budget import Budget, BudgetExhausted
from .confirm import Confirmer, ends_and_inner
from .directions import Measurer, Part, error, extrapolated
from .findings import Findings

__all__ = ["ZeroSettler"]


class ZeroSettler:
    """Judges the zeros of accepted blocks, with the measurer's directions (their keys, steps
    and floor) and the confirmer's coordinate verdicts."""

    def __init__(self, ev: Evaluator, segs: SegmentMap, seed: int, budget: Budget,
                 measurer: Measurer, confirmer: Confirmer, findings: Findings):
        self.ev, self.segs, self.seed = ev, segs, seed
        self.budget, self.measurer, self.confirmer = budget, measurer, confirmer
        self.findings = findings
        self.tuning = ev.tuning  # the check's numbers (fastgrad.Tuning)
        self.x, self.g = measurer.x, measurer.g

    def settle_zeros(self, block: Part) -> tuple[int, int]:
        """Judge the coordinates of an accepted block whose analytic gradient is exactly 0.

        The block's samples were all wrong, but its zeros were not sampled
        (Localizer.block_sample). They are tested together, with directions supported on them
        alone: the loss flat along every direction (within the noise floor) -> they are right
        and not counted wrong. A disagreement -> some are wrong: a set of at most
        ``tuning.leaf_size`` is
        confirmed coordinate by coordinate; a larger one has sampled coordinates confirmed (all
        wrong: the set stays wrong, as a block does) and is split in halves otherwise. Returns
        the counts of zeros found right and of zeros not judged (the budget ran out); both are
        left out of ``report.suspects`` (``findings.excluded``).
        """
        findings = self.findings
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
                sample = index if index.size <= self.tuning.leaf_size else ends_and_inner(
                    index, np.random.default_rng([self.seed, int(index[0]), int(index[-1]),
                                                  index.size]), self.tuning.block_samples)
                judged = len(findings.unresolved)
                wrong = self.confirmer.confirm(sample, phase="zeros")
                # a failing coordinate whose re-checks did not fit in the budget is unresolved
                undecided = {start for _, start, _ in findings.unresolved[judged:]}
                passed = sample[~wrong & ~np.isin(sample, list(undecided))]
                right.append(passed)
                if sample.size == index.size or wrong.all():
                    # every coordinate judged; or every sampled one wrong: the set stays wrong
                    findings.excluded.append(sample[np.isin(sample, list(undecided))])
                    continue
                rest = index[~np.isin(index, sample)]
                mid = rest.size // 2
                pending += [rest[mid:], rest[:mid]]
        except BudgetExhausted:
            findings.complete = False
            unsettled = np.concatenate([index] + pending)
            findings.excluded.append(unsettled)
            findings.unresolved.append((self.segs.names[block.segment], block.start,
                                        block.stop))
            findings.notes.append(
                f"segment {self.segs.names[block.segment]!r}: {unsettled.size} coordinates "
                f"with analytic gradient 0 inside a wrong block were not judged before the "
                f"budget ran out; they are not counted wrong")
        else:
            unsettled = np.zeros(0, dtype=np.int64)
        cleared = np.concatenate(right) if right else np.zeros(0, dtype=np.int64)
        findings.excluded.append(cleared)
        return int(cleared.size), int(unsettled.size)

    def flat_along(self, index: np.ndarray, segment: int) -> bool:
        """Is the loss flat (within the noise floor) along up to ``tuning.directions_per_test``
        random directions supported on ``index``, coordinates whose analytic gradient is 0?"""
        for _ in range(self.tuning.directions_per_test):
            self.budget.require(2)
            key = self.measurer.keys(1)[0]
            step = self.measurer.floor.step(self.x[index])
            record = self.sparse_direction(index, segment, key, step)
            if record.significant and math.isfinite(record.rel_error) and \
                    2 <= self.budget.remaining():
                # truncation or a real error: a real one does not change with the step
                wide = self.sparse_direction(index, segment, key,
                                             step * self.tuning.richardson_ratio)
                if math.isfinite(wide.rel_error) and \
                        abs(error(record) - error(wide)) > record.noise + wide.noise:
                    record = extrapolated(wide, record)
            self.findings.directions.append(record)
            if record.significant:
                return False
        return True

    def sparse_direction(self, index: np.ndarray, segment: int, key: np.uint64,
                         step: float) -> DirectionRecord:
        """f at theta +- step v, v a random direction supported on ``index`` only (two loss
        evaluations on one working copy, restored after), against its analytic derivative:
        0, the gradient being 0 on ``index``."""
        x, h = self.x, float(step)
        lo, hi = int(index[0]), int(index[-1]) + 1
        v = np.empty(hi - lo)
        random_directions.fill(key, lo, hi, v)
        v = v[index - lo]
        name = self.segs.names[segment]
        where = (f"theta +- {h:.3g} v, v on the {index.size} coordinates of {name} with "
                 f"analytic gradient 0 in flat [{lo}, {hi})")
        work = self.ev.work.borrow()
        before = self.budget.evaluations
        try:
            work[index] = x[index] + h * v
            fp = float(self.ev.at(work, where, in_place=True)[0])
            work[index] = x[index] - h * v
            fm = float(self.ev.at(work, where, in_place=True)[0])
        finally:
            work[index] = x[index]
            self.ev.work.give_back(work)
        self.budget.spend("zeros", before)
        numeric = (fp - fm) / (2.0 * h)
        noise = self.measurer.floor.of(fp, fm, h)
        if not (math.isfinite(fp) and math.isfinite(fm)):
            rel, significant = math.nan, True
        else:
            rel, significant = (1.0 if numeric != 0 else 0.0), abs(numeric) > noise
        return DirectionRecord(name, lo, hi, 0.0, numeric, rel, noise, h, bool(significant),
                               "zeros")
