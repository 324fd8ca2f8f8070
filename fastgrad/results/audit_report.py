"""AuditReport and its records: what an audit found, as data, a table and a dict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .common import RunInfo, columns, counted, fmt_rel, fmt_value, json_ready


@dataclass(frozen=True)
class DirectionRecord:
    """One random-direction test on the flat range [start, stop)."""

    segment: str  # the segment holding the range ("*" for the whole vector)
    start: int
    stop: int
    analytic: float  # grad . v (over the displacement the loss really saw)
    numeric: float  # (f(x+hv) - f(x-hv)) / 2h
    rel_error: float  # |a - n| / max(|a|, |n|)
    noise: float  # absolute noise floor of |a - n|
    step: float
    significant: bool  # |a - n| > noise: the gradient disagrees with the loss on this range
    phase: str  # global | segments | localize | zeros
    # (zeros: the direction is supported only on the coordinates of [start, stop) whose analytic
    # gradient is exactly 0, inside a wrong block)

    @property
    def disagreement(self) -> float:
        return abs(self.analytic - self.numeric)


@dataclass(frozen=True)
class SuspectRecord:
    """A coordinate confirmed wrong by a coordinate check (check's verdict bands)."""

    index: int
    segment: str
    local: tuple[int, ...]
    analytic: float
    numeric: float
    rel_error: float
    verdict: str
    step: float

    @property
    def where(self) -> str:
        return f"{self.segment}[{', '.join(map(str, self.local))}]"


@dataclass(frozen=True)
class BlockRecord:
    """A contiguous block [start, stop) reported wrong as a whole (sampled coordinates all wrong).

    Coordinates of the block whose analytic gradient is exactly 0 are judged apart (a wrong row
    scaled by a factor keeps its zeros): ``cleared`` of them were found right (the loss is flat
    along them), ``unsettled`` could not be judged before the budget ran out. Neither kind is in
    ``report.suspects``; ``counted`` coordinates of the block are.
    """

    segment: str
    start: int
    stop: int
    first: tuple[int, ...]  # multi-index of the first coordinate of the block
    last: tuple[int, ...]  # multi-index of the last one
    sampled: int
    wrong: int
    cleared: int = 0  # analytic gradient 0 and the loss flat along them: right, not suspects
    unsettled: int = 0  # analytic gradient 0, not judged (budget): not suspects either

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def counted(self) -> int:
        """Coordinates of the block counted wrong (in ``report.suspects``)."""
        return self.size - self.cleared - self.unsettled


@dataclass(frozen=True)
class SegmentAudit:
    name: str
    size: int
    rel_errors: tuple[float, ...]  # of the segment's own random directions
    disagreements: tuple[float, ...]  # |a - n| of each
    noise: tuple[float, ...]  # the floor each was compared with
    significant: bool  # some direction disagreed beyond the noise floor
    suspects: int  # individually confirmed wrong coordinates
    blocks: int  # wrong blocks
    wrong_in_blocks: int  # coordinates of the wrong blocks counted wrong (BlockRecord.counted)
    status: str  # clean | localized | not localized | spread | incomplete | inconclusive
    passed: bool

    @property
    def max_rel_error(self) -> float:
        if any(math.isnan(r) for r in self.rel_errors):
            return math.nan  # f was not finite along a direction
        return max(self.rel_errors) if self.rel_errors else 0.0


def audit_status(segments, complete: bool) -> str:
    """'failed' when a segment failed on its own evidence (wrong coordinates or blocks, a spread
    disagreement), else 'inconclusive' when one could not be judged (the measured noise of f,
    or the budget ran out), else 'passed'."""
    segments = list(segments)
    if any(s.suspects or s.blocks or (not s.passed and s.status == "spread")
           for s in segments):
        return "failed"
    if not complete or any(not s.passed for s in segments):
        return "inconclusive"
    return "passed"


@dataclass(kw_only=True)
class AuditReport(RunInfo):
    """The outcome of ``fastgrad.audit``; ``str(report)`` is a table, ``to_dict()`` JSON-ready.

    Attributes
    ----------
    evaluations : int
        Loss evaluations spent (never more than ``budget``, when given).
    tol : float
        The failure threshold on a coordinate's relative error (check()'s).
    tol_reason : str
        Where ``tol`` came from.
    path : str
        Who evaluated the losses.
    path_reason : str
        Why that path.
    dtype : str
        The dtype of theta.
    depth : int
        The network depth the tolerance assumes.
    seed : int
        The seed of the random directions.
    loss : float
        f at theta.
    status : str
        "passed"; "failed" (wrong coordinates, wrong blocks or a spread disagreement); or
        "inconclusive" (nothing found wrong, but a segment could not be judged: the measured
        noise of f hides any error beyond the tolerance, or the budget ran out).
    segments : dict of str to SegmentAudit
        Per segment: its directional errors, status and verdict.
    suspects : numpy.ndarray
        Flat indices localized as wrong (individual ones and whole blocks).
    suspect_records : list of SuspectRecord
        The individually confirmed wrong coordinates.
    blocks : list of BlockRecord
        Contiguous blocks reported wrong as a whole.
    unresolved : list of tuple
        (segment, start, stop) ranges still disagreeing when localization stopped.
    budget : int or None
        The evaluation budget.
    complete : bool
        False when the budget ran out before localization finished.
    phases : dict of str to int
        Loss evaluations per phase.
    directions : list of DirectionRecord
        Every directional test.
    notes : list of str
        Sentences for the reader (inconclusive segments, narrowed disagreements).

    Examples
    --------
    >>> report = fg.audit(loss, theta, grad, segments={"W": (400, 400), "b": (400,)})
    >>> report.status, report.suspects                    # ('failed', array([12345]))
    >>> json.dumps(report.to_dict())
    """

    status: str
    segments: dict[str, SegmentAudit]
    suspects: np.ndarray  # flat indices localized as wrong (individual ones and whole blocks)
    suspect_records: list[SuspectRecord]
    blocks: list[BlockRecord]
    unresolved: list[tuple[str, int, int]]  # (segment, start, stop) still disagreeing, unsplit
    evaluations: int
    budget: int | None
    complete: bool  # False: the budget ran out before localization finished
    phases: dict[str, int]  # loss evaluations per phase
    directions: list[DirectionRecord]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True only when status is "passed"."""
        return self.status == "passed"

    @property
    def incomplete(self) -> bool:
        """The budget ran out before localization finished."""
        return not self.complete

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        """The report as plain JSON types (NaN as None, infinities as "inf"/"-inf").

        Returns
        -------
        dict
            Every field, the segment rows and the records; ``json.dumps`` takes it.
        """
        return json_ready({
            "status": self.status,
            "passed": self.passed,
            "complete": self.complete,
            "evaluations": self.evaluations,
            "budget": self.budget,
            "phases": dict(self.phases),
            "tol": self.tol,
            "tol_reason": self.tol_reason,
            "path": self.path,
            "path_reason": self.path_reason,
            "dtype": self.dtype,
            "depth": self.depth,
            "seed": self.seed,
            "loss": self.loss,
            "segments": {n: asdict(s) for n, s in self.segments.items()},
            "suspect_count": int(self.suspects.size),
            "suspects": [asdict(r) for r in self.suspect_records],
            "blocks": [{**asdict(b), "counted": b.counted} for b in self.blocks],
            "unresolved": [list(u) for u in self.unresolved],
            "directions": [asdict(d) for d in self.directions],
            "notes": list(self.notes),
        })

    def table(self, worst: int = 12) -> str:
        """The audit as text: a header, one row per segment, then what was localized.

        Parameters
        ----------
        worst : int
            How many wrong coordinates and unresolved ranges to list (the rest are counted).

        Returns
        -------
        str
            The table ``str(report)`` prints.
        """
        status = self.status.upper()
        budget = f" of budget {self.budget}" if self.budget is not None else ""
        lines = [
            f"fastgrad audit {status}{'' if self.complete else ' (INCOMPLETE: budget exhausted)'}"
            f": {counted(len(self.suspect_records), 'wrong coordinate')}, "
            f"{counted(len(self.blocks), 'wrong block')}, "
            f"{counted(len(self.unresolved), 'unresolved range')}",
            f"  {self.evaluations} loss evaluations{budget} ("
            + ", ".join(f"{k} {v}" for k, v in self.phases.items())
            + f"); tolerance {self.tol:.1e} ({self.tol_reason}); {self.path}: {self.path_reason}",
            "",
        ]
        rows = [("segment", "size", "dir.rel.err", "|a-n| / noise", "suspects", "blocks",
                 "status", "verdict")]
        for s in self.segments.values():
            ratio = max(((d / n if n > 0 else math.inf) for d, n in zip(s.disagreements, s.noise)),
                        default=0.0)
            rows.append((s.name, str(s.size), fmt_rel(s.max_rel_error), f"{ratio:.1f}",
                         str(s.suspects), str(s.blocks), s.status,
                         "passed" if s.passed else s.status.upper()
                         if s.status in ("inconclusive", "incomplete") else "FAILED"))
        lines += columns(rows, "  ")
        if self.suspect_records:
            lines += ["", "wrong coordinates:"]
            rows = [("where", "flat", "analytic", "numeric", "rel.err", "verdict")]
            for r in sorted(self.suspect_records, key=lambda r: -r.rel_error)[:worst]:
                rows.append((r.where, str(r.index), fmt_value(r.analytic), fmt_value(r.numeric),
                             fmt_rel(r.rel_error), r.verdict))
            lines += columns(rows, "  ")
            if len(self.suspect_records) > worst:
                lines.append(f"  ... and {len(self.suspect_records) - worst} more")
        if self.blocks:
            lines += ["", "wrong blocks:"]
            for b in self.blocks:
                zeros = ""
                if b.cleared or b.unsettled:
                    zeros = (f"; {b.counted} counted wrong, {b.cleared} with gradient 0 found "
                             f"right (the loss is flat along them)")
                    if b.unsettled:
                        zeros += f", {b.unsettled} with gradient 0 not judged (budget)"
                lines.append(f"  {b.segment}[{', '.join(map(str, b.first))}] .. "
                             f"{b.segment}[{', '.join(map(str, b.last))}] ({b.size} values"
                             f"{zeros}; {b.wrong}/{b.sampled} sampled coordinates wrong)")
        if self.unresolved:
            lines += ["", "still disagreeing, not localized:"]
            for name, start, stop in self.unresolved[:worst]:
                lines.append(f"  {name}: flat [{start}, {stop})")
            if len(self.unresolved) > worst:
                lines.append(f"  ... and {len(self.unresolved) - worst} more")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
