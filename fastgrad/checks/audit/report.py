"""The audit's report: the findings merged into blocks and suspects, a status per segment."""

from __future__ import annotations

import numpy as np

from ...engine.evaluator import Evaluator
from ...judge.noise import NoiseLevel, inconclusive_note
from ...judge.rechecks import Judge
from ...results.audit_report import (
    AuditReport,
    BlockRecord,
    DirectionRecord,
    SegmentAudit,
    audit_status,
)
from ...sampling import unique_indices
from ...segments import SegmentMap
from ..prepare import Prepared
from .budget import Budget
from .findings import Findings

__all__ = ["absorb_suspects", "audit_report", "merge_adjacent"]


def merge_adjacent(blocks: list[BlockRecord], segs: SegmentMap) -> list[BlockRecord]:
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


def absorb_suspects(findings: Findings, segs: SegmentMap) -> list[BlockRecord]:
    """Blocks grown by the confirmed suspects that touch them in their segment (a wrong row
    that does not start on a halving boundary is found partly as a block, partly as leaves):
    one record per contiguous run of wrong coordinates. The absorbed suspects leave
    ``findings.suspects``."""
    grown = []
    for b in findings.blocks:
        seg = segs[b.segment]
        start, stop = b.start, b.stop
        while start > seg.start and start - 1 in findings.suspects:
            start -= 1
            del findings.suspects[start]
        while stop < seg.stop and stop in findings.suspects:
            del findings.suspects[stop]
            stop += 1
        extra = (b.start - start) + (stop - b.stop)
        grown.append(BlockRecord(b.segment, start, stop, segs.locate(start)[1],
                                 segs.locate(stop - 1)[1], b.sampled + extra, b.wrong + extra,
                                 b.cleared, b.unsettled))
    return grown


def audit_report(findings: Findings, seg_records: dict[int, list[DirectionRecord]],
                 significant: np.ndarray, *, problem: Prepared, ev: Evaluator, judge: Judge,
                 budget: Budget, level: NoiseLevel) -> AuditReport:
    """The AuditReport of ``findings``: ``seg_records`` are each segment's own directions
    (index of the segment in ``problem.segments``), ``significant`` which segments disagreed,
    ``level`` the measured noise of f."""
    segs = problem.segments
    findings.blocks = merge_adjacent(absorb_suspects(findings, segs), segs)
    block_index = [np.arange(b.start, b.stop) for b in findings.blocks]
    suspects = unique_indices(np.concatenate(
        [np.fromiter(findings.suspects, dtype=np.int64, count=len(findings.suspects))]
        + block_index)) if (findings.suspects or block_index) else np.zeros(0, dtype=np.int64)
    if findings.excluded:  # zeros inside blocks found right or not judged: no evidence of error
        suspects = suspects[~np.isin(suspects, np.concatenate(findings.excluded))]
    unresolved_by = {name for name, _, _ in findings.unresolved}
    segments = {}
    for p, seg in enumerate(segs):
        recs = seg_records[p]
        n_sus = sum(1 for r in findings.suspects.values() if r.segment == seg.name)
        blocks = [b for b in findings.blocks if b.segment == seg.name]
        if not recs:
            status = "incomplete"
        elif p in findings.spread:
            status = "spread"
        elif seg.name in unresolved_by:
            status = "incomplete"
        elif n_sus or blocks:
            status = "localized"
        elif significant[p]:
            status = "not localized"  # disagreed, but no coordinate fails the tolerance
        elif all(judge.direction_unjudgeable(r.analytic, r.numeric, r.step) for r in recs):
            status = "inconclusive"  # the measured noise of f hides any error beyond tol
        else:
            status = "clean"
        worst_rel = max((r.rel_error for r in recs), default=0.0)
        passed = (not n_sus and not blocks and status not in ("incomplete", "inconclusive")
                  and not (status == "spread" and worst_rel > problem.tol))
        segments[seg.name] = SegmentAudit(
            name=seg.name, size=seg.size, rel_errors=tuple(r.rel_error for r in recs),
            disagreements=tuple(r.disagreement for r in recs),
            noise=tuple(r.noise for r in recs), significant=bool(significant[p]),
            suspects=n_sus, blocks=len(blocks), wrong_in_blocks=sum(b.counted for b in blocks),
            status=status, passed=passed)
    for s in segments.values():
        if s.status == "not localized":
            findings.notes.append(
                f"segment {s.name!r}: its directions disagreed beyond the noise floor, but no "
                f"coordinate it was narrowed to fails the tolerance (errors below tol, a kink or "
                f"truncation on that direction)")
    unsure = sum(s.status == "inconclusive" for s in segments.values())
    if unsure:
        findings.notes.append(inconclusive_note(level, unsure, "segment"))
    records = sorted(findings.suspects.values(), key=lambda r: r.index)
    phases = {k: v for k, v in budget.phases.items() if v}
    return AuditReport(
        status=audit_status(segments.values(), findings.complete),
        segments=segments, suspects=suspects, suspect_records=records,
        blocks=list(findings.blocks), unresolved=list(findings.unresolved),
        evaluations=ev.evaluations, budget=budget.limit, complete=findings.complete,
        phases=phases, directions=list(findings.directions), tol=problem.tol,
        tol_reason=problem.tol_reason, path=ev.path, path_reason=ev.path_reason,
        dtype=judge.x.dtype.name, depth=int(problem.depth), seed=int(problem.seed),
        loss=float(judge.f0[0]), notes=list(findings.notes),
    )
