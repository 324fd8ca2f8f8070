"""Group-testing localization: the parts of a disagreeing segment split in halves, level by
level, recursing into the halves whose directions disagree, down to single coordinates (confirmed
by check()'s verdicts) or to blocks whose sampled coordinates are all wrong.

A disagreeing segment is first tested as a block itself, ends first: a segment wrong all over (a
missing factor, a detached normalisation) is then found without halving, and one with a few
wrong coordinates costs the two ends' verdicts (2 evaluations each when they pass).
"""

from __future__ import annotations

import math

import numpy as np

from ...results.audit_report import BlockRecord
from ...segments import SegmentMap
from .budget import Budget, BudgetExhausted
from .confirm import Confirmer, ends_and_inner
from .directions import Measurer, Part
from .findings import Findings
from .zeros import ZeroSettler

__all__ = ["Localizer"]

# the progress bar's first estimate of localizing one disagreeing segment: evaluations per halving
# level (two halves, one or two directions each, sometimes a second step; measured 9-14 on
# ResNet-18 and GPT-2); later levels are estimated from the levels already done. Only the bar
# reads it (no value or choice depends on it), so it is not part of the Tuning
LOCALIZE_PER_LEVEL = 12


class Localizer:
    """Localizes the disagreements of whole segments: the measurer tests the halves, the
    confirmer judges leaves and block samples, the settler the zeros of accepted blocks."""

    def __init__(self, segs: SegmentMap, seed: int, budget: Budget, measurer: Measurer,
                 confirmer: Confirmer, settler: ZeroSettler, findings: Findings):
        self.segs, self.seed, self.budget = segs, seed, budget
        self.measurer, self.confirmer, self.settler = measurer, confirmer, settler
        self.findings = findings
        self.tuning = measurer.tuning  # the check's numbers (fastgrad.Tuning)
        self.g = measurer.g

    def localize(self, roots: list[Part]) -> None:
        """Split disagreeing parts in halves, level by level, over all failing segments at once."""
        findings = self.findings
        try:
            front = [r for r in roots if not self.whole_block(r)]
        except BudgetExhausted:
            self.give_up(roots)
            return
        start, part_levels = self.budget.evaluations, 0
        leaf_size = self.tuning.leaf_size
        self.budget.expect(sum(LOCALIZE_PER_LEVEL * _levels(p, leaf_size) for p in roots),
                           "localize")
        while front:
            if part_levels:  # the levels left, at the cost per part and level so far
                per = (self.budget.evaluations - start) / part_levels
                self.budget.expect(per * len(front) * max(_levels(p, leaf_size) for p in front),
                                   "localize")
            part_levels += len(front)
            leaves = [p for p in front if p.size <= leaf_size]
            splits = [p for p in front if p.size > leaf_size]
            if leaves:
                index = np.concatenate([np.arange(p.start, p.stop) for p in leaves])
                try:
                    self.confirmer.confirm(index)
                except BudgetExhausted:
                    self.give_up(front)
                    return
            children = []
            for p in splits:
                mid = (p.start + p.stop) // 2
                children += [Part(p.segment, p.start, mid, p), Part(p.segment, mid, p.stop, p)]
            if not children:
                return
            try:
                failing = self.measurer.test(children, "localize")
            except BudgetExhausted:
                self.give_up(splits)
                return
            next_front = [c for c, bad in zip(children, failing) if bad]
            next_front = self.find_blocks(children, failing, next_front)
            if next_front is None:
                return
            # a disagreement in too many places at once is spread out, not localized
            by_segment: dict[int, list[Part]] = {}
            for c in next_front:
                by_segment.setdefault(c.segment, []).append(c)
            kept = []
            for sid, parts in by_segment.items():
                if len(parts) > self.tuning.max_front:
                    findings.spread.add(sid)
                    seg = self.segs[self.segs.names[sid]]
                    findings.notes.append(
                        f"segment {seg.name!r}: the disagreement is spread over {len(parts)}+ "
                        f"parts; localization stopped (sampled coordinates pass the tolerance)")
                    findings.unresolved.append((seg.name, seg.start, seg.stop))
                else:
                    kept += parts
            # a part that disagreed while both of its halves agree: noise, a kink or truncation
            # on that direction, or errors too small for any smaller support
            front = kept

    def find_blocks(self, children: list[Part], failing: np.ndarray,
                    next_front: list[Part]) -> list[Part] | None:
        """Parts whose four grandchildren all disagree: sample coordinates; all wrong -> a block.

        Returns the front without the parts inside a block; None when the budget ran out."""
        failed_by_parent: dict[int, list[bool]] = {}
        parents: dict[int, Part] = {}
        for c, bad in zip(children, failing):
            failed_by_parent.setdefault(id(c.parent), []).append(bool(bad))
            parents[id(c.parent)] = c.parent
        grand: dict[int, list[bool]] = {}
        grand_parts: dict[int, Part] = {}
        for pid, flags in failed_by_parent.items():
            gp = parents[pid].parent
            if gp is None:
                continue
            grand.setdefault(id(gp), []).extend(flags)
            grand_parts[id(gp)] = gp
        blocked: list[Part] = []
        for gid, flags in grand.items():
            if len(flags) == 4 and all(flags):
                gp = grand_parts[gid]
                try:
                    wrong = self.confirmer.confirm(self.block_sample(gp), phase="blocks")
                except BudgetExhausted:
                    # the sample, or the serial confirmation of its failures on threads, did
                    # not fit: the parts outside the blocks accepted so far stay unresolved
                    self.give_up(_outside(next_front, blocked))
                    return None
                if wrong.all():
                    self.accept_block(gp, int(wrong.size))
                    blocked.append(gp)
        return _outside(next_front, blocked)

    def whole_block(self, root: Part) -> bool:
        """Is the disagreeing segment ``root`` a wrong block as a whole? The sample
        block_sample() would take of it after two levels of halving, judged before any: its two
        ends first, the rest only when both ends are wrong. All wrong -> the block is accepted
        (its zeros settled). Otherwise the wrong ones stay suspects and the halving starts.
        Segments of at most 4 leaves are halved at once (two levels cost less than a sample).
        """
        if root.size <= 4 * self.tuning.leaf_size:
            return False
        sample = self.block_sample(root)
        ends = np.array([sample.min(), sample.max()])
        if not self.confirmer.confirm(ends, phase="blocks").all():
            return False
        inner = sample[~np.isin(sample, ends)]
        if inner.size and not self.confirmer.confirm(inner, phase="blocks").all():
            return False
        self.accept_block(root, int(sample.size))
        return True

    def accept_block(self, part: Part, sampled: int) -> None:
        """Record ``part`` as a wrong block (every one of its ``sampled`` coordinates wrong):
        its zeros are judged apart, and its suspects give way to the block record."""
        findings = self.findings
        cleared, unsettled = self.settler.settle_zeros(part)
        for i in [i for i in findings.suspects if part.start <= i < part.stop]:
            del findings.suspects[i]  # the block record stands for them
        findings.blocks.append(BlockRecord(
            self.segs.names[part.segment], part.start, part.stop,
            self.segs.locate(part.start)[1], self.segs.locate(part.stop - 1)[1],
            sampled, sampled, cleared, unsettled))

    def block_sample(self, part: Part) -> np.ndarray:
        """The coordinates that decide whether ``part`` is a wrong block: both ends and random
        interior points, among the coordinates whose analytic gradient is not exactly 0.

        The ends catch a block reaching past a wrong row (or other contiguous run): it fails
        at an end and is split further instead. A coordinate whose analytic gradient is 0 says
        nothing about the block: a wrong row scaled by a factor keeps its zeros (an input
        channel that is all zero after a ReLU, a tap over padding), so they are judged apart,
        once the block is accepted (ZeroSettler). A part whose gradient is 0 everywhere is
        sampled among all its coordinates: a gradient returned as zeros is caught there.
        """
        pool = part.start + np.flatnonzero(self.g[part.start:part.stop])
        if pool.size == 0:
            pool = np.arange(part.start, part.stop)
        return ends_and_inner(pool, np.random.default_rng([self.seed, part.start, part.stop]),
                              self.tuning.block_samples)

    def give_up(self, parts: list[Part]) -> None:
        """The budget ran out: ``parts`` stay unresolved and the audit incomplete."""
        self.findings.complete = False
        for p in parts:
            self.findings.unresolved.append((self.segs.names[p.segment], p.start, p.stop))


def _levels(part: Part, leaf_size: int) -> float:
    """Halving levels from ``part`` down to leaves of ``leaf_size``, the leaves' level
    included."""
    return max(math.log2(part.size / leaf_size), 0.0) + 1.0


def _outside(parts: list[Part], blocks: list[Part]) -> list[Part]:
    """The parts that are not inside any of ``blocks``."""
    return [p for p in parts
            if not any(b.start <= p.start and p.stop <= b.stop for b in blocks)]
