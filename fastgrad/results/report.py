"""Report, SegmentReport and CoordRecord: what a check found, as data, a table and a dict.

The numbers here are read from the accumulator's output; nothing is recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..judge.verdicts import HIST_EDGES, VERDICTS
from ..steps import band_name
from .common import RunInfo, columns, fmt_rel, fmt_value, json_ready


@dataclass(frozen=True)
class CoordRecord:
    """One checked coordinate."""

    index: int  # flat index into theta
    segment: str
    local: tuple[int, ...]  # multi-index inside the segment
    analytic: float
    numeric: float
    rel_error: float
    kink: bool  # a kink crossing was detected at this coordinate
    verdict: str  # excellent | ok | suspect | wrong | noise | nan | kink
    step: float  # the step of the numeric value shown (smaller than the first after a re-check)
    failed: bool
    noise: float  # absolute roundoff floor of the numeric value
    term: str | None = None  # the loss term, when f returns several

    @property
    def where(self) -> str:
        """``W1[12, 3]``: the segment and the multi-index, as a person writes it."""
        inner = ", ".join(str(i) for i in self.local)
        name = self.segment if self.term is None else f"{self.term}:{self.segment}"
        return f"{name}[{inner}]"


class CoordRecords(Sequence):
    """``report.coords``: a read-only list of CoordRecord, built on first access.

    A check keeps its per-coordinate results as arrays; making a Python record per coordinate
    costs more than evaluating a small loss twice, so the records are made only when read.
    """

    def __init__(self, segments, blocks: list[dict]):
        self._segments = segments
        self._blocks = blocks  # per loss term: {"term", "index", "analytic", "numeric", ...}
        self._size = sum(len(b["index"]) for b in blocks)
        self._records: list[CoordRecord] | None = None

    def _all(self) -> list[CoordRecord]:
        if self._records is None:
            records = []
            for block in self._blocks:
                index = np.asarray(block["index"])
                where = _locations(self._segments, index)
                columns = [np.asarray(block[name]).tolist() for name in _COLUMNS]
                term = block["term"]
                for i, (name, local), a, num, rel, kink, verdict, step, failed, noise in zip(
                        index.tolist(), where, *columns):
                    records.append(CoordRecord(
                        index=i, segment=name, local=local, analytic=a, numeric=num,
                        rel_error=rel, kink=kink, verdict=VERDICTS[verdict], step=step,
                        failed=failed, noise=noise, term=term))
            self._records = records
        return self._records

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, item):
        return self._all()[item]

    def __iter__(self):
        return iter(self._all())

    def __eq__(self, other) -> bool:
        if isinstance(other, (CoordRecords, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._all())


_COLUMNS = ("analytic", "numeric", "rel_error", "kink", "verdict", "step", "failed", "noise")


def _locations(segments, index: np.ndarray) -> list[tuple[str, tuple[int, ...]]]:
    """(segment name, multi-index) of every flat index, one vectorised unravel per segment."""
    out: list = [None] * index.size
    ids = segments.segment_ids(index)
    for p, seg in enumerate(segments):
        rows = np.flatnonzero(ids == p)
        if rows.size == 0:
            continue
        local = index[rows] - seg.start
        if seg.shape:
            parts = np.stack(np.unravel_index(local, seg.shape), axis=1).tolist()
        else:
            parts = [[] for _ in rows]
        for r, multi in zip(rows.tolist(), parts):
            out[r] = (seg.name, tuple(multi))
    return out


@dataclass(frozen=True)
class SegmentReport:
    name: str
    size: int
    checked: int
    failed: int
    kinks: int  # kink crossings detected (resolved or excused)
    max_rel_error: float  # over checked coordinates that are not kink, noise or nan
    passed: bool
    worst: int | None = None  # flat index of the coordinate with max_rel_error
    histogram: tuple[int, ...] = ()  # counts of log10(rel_error) bins, see verdicts.HIST_EDGES
    # coordinates re-checked with another step: smaller when the first failed (kink crossings),
    # larger when its disagreement sat inside the roundoff floor ("noise")
    rechecked: int = 0
    term: str | None = None

    @property
    def verdict(self) -> str:
        if self.failed:
            return "FAILED"
        return band_name(self.max_rel_error)


@dataclass(kw_only=True)
class Report(RunInfo):
    """The outcome of ``fastgrad.check``; ``str(report)`` is a table, ``to_dict()`` is JSON-ready."""

    passed: bool
    max_rel_error: float
    segments: dict[str, SegmentReport]
    coords: Sequence[CoordRecord]  # a list, or CoordRecords (built on first access)
    terms: dict[str, dict[str, SegmentReport]] = field(default_factory=dict)
    rechecked: int = 0
    # measured roundoff noise of f near theta; None when no coordinate needed it (the probe
    # runs only when a coordinate fails at the floor assumed from eps)
    noise_sigma: float | dict[str, float] | None = None
    noise_note: str = ""  # what the check did about a noisier f than assumed ("" when nothing)

    @property
    def failures(self) -> list[CoordRecord]:
        return [c for c in self.coords if c.failed]

    @property
    def kinks(self) -> int:
        return sum(1 for c in self.coords if c.kink)

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        failing = [name for name, s in self.segments.items() if not s.passed]
        status = "passed" if self.passed else f"FAILED in {failing}"
        return (f"<Report {status}: max_rel_error={self.max_rel_error:.1e}, "
                f"{len(self.coords)} coordinates, {self.evaluations} evaluations>")

    def to_dict(self) -> dict:
        return json_ready({
            "passed": self.passed,
            "max_rel_error": self.max_rel_error,
            "evaluations": self.evaluations,
            "tol": self.tol,
            "tol_reason": self.tol_reason,
            "path": self.path,
            "path_reason": self.path_reason,
            "dtype": self.dtype,
            "depth": self.depth,
            "seed": self.seed,
            "loss": self.loss,
            "rechecked": self.rechecked,
            "noise_sigma": self.noise_sigma,
            "noise_note": self.noise_note,
            "histogram_edges_log10": list(HIST_EDGES),
            "segments": {name: asdict(s) for name, s in self.segments.items()},
            "terms": {t: {n: asdict(s) for n, s in segs.items()} for t, segs in self.terms.items()},
            "coords": [asdict(c) for c in self.coords],
            "failures": [c.index for c in self.failures],
        })

    def table(self, worst: int = 8) -> str:
        status = "PASSED" if self.passed else "FAILED"
        checked = sum(s.checked for s in self.segments.values())
        lines = [
            f"fastgrad check {status}: max rel. error {fmt_rel(self.max_rel_error)} over "
            f"{checked} coordinates, {len(self.failures)} failed, {self.kinks} kink crossings",
            f"  tolerance {self.tol:.1e} ({self.tol_reason}); {self.evaluations} loss evaluations "
            f"({self.path}: {self.path_reason})",
        ]
        if self.noise_note:
            lines.append(f"  {self.noise_note}")
        groups = self.terms.items() if self.terms else [(None, self.segments)]
        for term, segments in groups:
            lines.append("")
            if term is not None:
                failed = sum(s.failed for s in segments.values())
                lines.append(f"loss term {term!r}: {'FAILED' if failed else 'passed'}")
            lines += _segment_table(segments.values())
        shown = sorted(
            (c for c in self.coords if c.verdict not in ("excellent",) or c.failed),
            key=lambda c: (not c.failed, -(c.rel_error if math.isfinite(c.rel_error) else 1e300)),
        )[:worst]
        if shown:
            lines += ["", "worst coordinates:"]
            rows = [("where", "analytic", "numeric", "rel.err", "verdict")]
            for c in shown:
                verdict = c.verdict.upper() if c.failed else c.verdict
                rows.append((c.where, fmt_value(c.analytic), fmt_value(c.numeric),
                             fmt_rel(c.rel_error), verdict + (" (kink)" if c.kink and
                                                               c.verdict != "kink" else "")))
            lines += columns(rows, indent="  ")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _segment_table(segments) -> list[str]:
    rows = [("segment", "size", "checked", "failed", "kinks", "max rel.err", "verdict")]
    for s in segments:
        rows.append((s.name, str(s.size), str(s.checked), str(s.failed), str(s.kinks),
                     fmt_rel(s.max_rel_error), s.verdict))
    return columns(rows, indent="  ")
