"""Coordinates confirmed by check()'s own verdicts: the only way the audit counts one wrong.

Only single coordinates (or whole blocks, by sampled coordinates) are ever judged "wrong", by
exactly the coordinate check of ``check`` with its tolerance: a disagreement of a direction
too small for that is not reported as a suspect, so there are no false suspects by construction.
"""

from __future__ import annotations

import numpy as np

from ...engine.evaluator import Evaluator
from ...judge.rechecks import Judge, scaled
from ...judge.verdicts import NAN, NOISE, VERDICTS
from ...results.audit_report import SuspectRecord
from ...sampling import unique_indices
from ...segments import SegmentMap
from ...steps import coordinate_steps
from .budget import Budget, BudgetExhausted
from .directions import Floor, ThreadsRefused
from .findings import Findings

__all__ = ["Confirmer", "ends_and_inner"]


class Confirmer:
    """check()'s coordinate verdicts inside an audit; failed coordinates become suspects
    (``findings.suspects``)."""

    def __init__(self, ev: Evaluator, judge: Judge, segs: SegmentMap, budget: Budget,
                 floor: Floor, findings: Findings):
        self.ev, self.judge, self.segs = ev, judge, segs
        self.budget, self.floor, self.findings = budget, floor, findings
        self.x, self.g = judge.x, judge.grads[None]

    def confirm(self, index: np.ndarray, phase: str = "confirm") -> np.ndarray:
        """check()'s coordinate verdicts for ``index``; returns the failed mask.

        Failed coordinates become suspects. A "noise" coordinate is re-checked with a larger
        step and a kink crossing with smaller steps, as check() does, before anything is
        reported; a coordinate sitting on a kink with a valid one-sided derivative is excused.
        """
        index = np.asarray(index, dtype=np.int64)
        budget, findings = self.budget, self.findings
        budget.require(2 * index.size)
        x, g = self.x, self.g
        step = coordinate_steps(x[index], "auto", x.dtype)
        if self.floor.gain > 1.0:
            step = scaled(x[index], step, self.floor.gain, x.dtype)
        before = budget.evaluations
        budget.phase(phase, 2 * index.size)
        fp, fm = self.ev.pairs(index, step, bar=budget.bar)
        stats = self.judge.verdicts(index, step, fp, fm)
        if self.ev.confirmation_cost(stats[0].failed, rerun=index.size) > budget.remaining():
            budget.spend(phase, before)
            raise BudgetExhausted  # threads' failures must be confirmed, and cannot be
        if self.ev.confirm_serially(index, step, fp, fm, stats[0].failed):
            raise ThreadsRefused  # threads changed f's values: as in Measurer.measure
        s = stats[0]
        steps = step
        noisy = s.verdict == NOISE
        failing = s.failed & (s.verdict != NAN)
        # check()'s re-checks cost at most 2 evaluations per noise coordinate and 2 per failing
        # coordinate and kink step; without that budget they are neither suspects nor cleared
        kink_steps = len(self.ev.tuning.kink_shrink)
        if 2 * (np.count_nonzero(noisy) + kink_steps * np.count_nonzero(failing)) \
                > budget.remaining():
            findings.complete = False
            s.failed[failing] = False
            for j in np.flatnonzero(failing):
                i = int(index[j])
                findings.unresolved.append((self.segs.locate(i)[0], i, i + 1))
        else:
            steps = self.judge.recheck(index, step, stats)[0][0]
        budget.spend(phase, before)
        for j in np.flatnonzero(s.failed):
            i = int(index[j])
            name, local = self.segs.locate(i)
            findings.suspects[i] = SuspectRecord(i, name, local, float(g[i]),
                                                 float(s.numeric[j]), float(s.rel_error[j]),
                                                 VERDICTS[s.verdict[j]], float(steps[j]))
        return s.failed.copy()


def ends_and_inner(pool: np.ndarray, rng: np.random.Generator, samples: int) -> np.ndarray:
    """The first and last entries of ``pool`` (sorted) and ``samples`` - 2 random others
    (``tuning.block_samples``; the ends always): the whole pool when it is no larger."""
    if pool.size <= max(samples, 2):
        return pool
    inner = rng.choice(pool[1:-1], size=max(samples - 2, 0), replace=False)
    return unique_indices(np.concatenate([[pool[0], pool[-1]], inner]))
