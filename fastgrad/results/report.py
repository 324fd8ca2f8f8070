"""Report, SegmentReport and CoordRecord: what a check found, as data, a table and a dict.

The numbers here are read from the accumulator's output; nothing is recomputed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..judge.verdicts import BANDS, HIST_EDGES, INCONCLUSIVE, KINK, NAN, NOISE, VERDICTS
from ..steps import KINK_FRACTION_NOTE, band_name
from .common import RunInfo, columns, fmt_rel, fmt_value, json_ready


@dataclass(frozen=True)
class CoordRecord:
    """One checked coordinate: ``report.coords[k]``.

    Attributes
    ----------
    index : int
        Flat index into theta.
    segment : str
        The segment holding it.
    local : tuple of int
        Its multi-index inside the segment.
    analytic : float
        The analytic gradient there.
    numeric : float
        The centered difference ``(f(x+h) - f(x-h)) / 2h`` at ``step``.
    rel_error : float
        ``|a - n| / max(|a|, |n|)`` (0 when both are 0; NaN when f was not finite).
    kink : bool
        A kink crossing was detected at this coordinate (a real change of slope).
    verdict : str
        excellent, ok, suspect, wrong, noise, nan, kink or inconclusive.
    step : float
        The step of the numeric value shown (smaller than the first after a kink re-check,
        larger after a noise re-check).
    failed : bool
        This coordinate fails the check.
    noise : float
        The absolute noise floor of the numeric value.
    term : str or None
        The loss term, when f returns several.

    Examples
    --------
    >>> record = report.coords[0]
    >>> record.where, record.rel_error, record.verdict        # ('W[0, 2]', 3.1e-10, 'excellent')
    """

    index: int  # flat index into theta
    segment: str
    local: tuple[int, ...]  # multi-index inside the segment
    analytic: float
    numeric: float
    rel_error: float
    kink: bool  # a kink crossing was detected at this coordinate
    verdict: str  # excellent | ok | suspect | wrong | noise | nan | kink | inconclusive
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
    """One segment's row of a check: ``report.segments[name]``.

    With loss terms, ``report.terms[term][name]`` holds each term's row and
    ``report.segments[name]`` their merge: its counts (failed, noise, nan, inconclusive,
    on_kink, judged) are summed over the terms.

    Attributes
    ----------
    name : str
        The segment.
    size : int
        Its number of parameters.
    checked : int
        Coordinates checked in it.
    failed : int
        Coordinates that fail (wrong beyond the tolerance, or nan).
    kinks : int
        Kink crossings detected (resolved or excused).
    max_rel_error : float
        The largest relative error over the judged coordinates: not kink, noise, nan or
        inconclusive.
    passed : bool
        No coordinate failed and none is inconclusive.
    worst : int or None
        Flat index of the coordinate with ``max_rel_error``.
    histogram : tuple of int
        Counts of log10(rel_error) bins (edges in ``to_dict()["histogram_edges_log10"]``).
    rechecked : int
        Coordinates re-checked with another step: smaller when the first failed (kink
        crossings), larger when its disagreement sat inside the noise floor.
    term : str or None
        The loss term, when f returns several.
    noise : int
        Coordinates excused as roundoff ("noise").
    nan : int
        Coordinates where f was not finite at a perturbed point (each one fails).
    inconclusive : int
        Coordinates the measured noise of f leaves unjudgeable.
    on_kink : int
        Coordinates excused as sitting on a kink (verdict "kink").
    judged : int
        Coordinates ``max_rel_error`` is taken over (a verdict band: excellent, ok, suspect or
        wrong).
    max_rel_error_all : float
        The largest relative error over every checked coordinate, excused or not (NaN when a
        coordinate is nan).

    Examples
    --------
    >>> row = report.segments["b"]
    >>> row.checked, row.failed, row.max_rel_error, row.passed      # (3, 3, 0.5, False)
    """

    name: str
    size: int
    checked: int
    failed: int
    kinks: int  # kink crossings detected (resolved or excused)
    max_rel_error: float  # over checked coordinates that are not kink, noise, nan, inconclusive
    passed: bool
    worst: int | None = None  # flat index of the coordinate with max_rel_error
    histogram: tuple[int, ...] = ()  # counts of log10(rel_error) bins, see verdicts.HIST_EDGES
    # coordinates re-checked with another step: smaller when the first failed (kink crossings),
    # larger when its disagreement sat inside the roundoff floor ("noise")
    rechecked: int = 0
    term: str | None = None
    noise: int = 0
    nan: int = 0
    inconclusive: int = 0
    on_kink: int = 0  # verdict "kink": excused as sitting on a kink
    judged: int = 0  # coordinates max_rel_error is taken over
    max_rel_error_all: float = 0.0  # over every checked coordinate (nan when one is nan)

    @property
    def verdict(self) -> str:
        """FAILED, INCONCLUSIVE, the band of max_rel_error (excellent, ok, suspect), or "not
        judged" when every coordinate was excused (noise, kink): 0.0 would read "excellent"."""
        if self.failed:
            return "FAILED"
        if self.inconclusive:
            return "INCONCLUSIVE"
        if self.checked and not self.judged and self.unjudged:
            return "not judged"
        return band_name(self.max_rel_error)

    @property
    def unjudged(self) -> str:
        """'2 noise, 1 nan': the coordinates max_rel_error leaves out ('' when none)."""
        return unjudged_counts(self.noise, self.nan, self.inconclusive, self.on_kink)


@dataclass
class Unjudged:
    """Per segment: the coordinates max_rel_error leaves out, and the max over all of them."""

    noise: np.ndarray
    nan: np.ndarray
    inconclusive: np.ndarray
    on_kink: np.ndarray
    judged: np.ndarray
    max_all: np.ndarray

    @classmethod
    def count(cls, segment, rel_error, verdict, n_segments: int) -> Unjudged:
        """Counts per segment id of "noise", "nan" and "inconclusive" verdicts and of the judged
        coordinates (the ones with a verdict band), and the largest relative error over every
        coordinate (NaN where one is NaN)."""
        segment, verdict = np.asarray(segment), np.asarray(verdict)

        def per_segment(code):
            return np.bincount(segment[verdict == code], minlength=n_segments)

        largest = np.zeros(n_segments)
        rel = np.asarray(rel_error, dtype=np.float64)
        finite = ~np.isnan(rel)
        np.maximum.at(largest, segment[finite], rel[finite])
        nan = per_segment(NAN)
        largest[nan > 0] = np.nan
        banded = np.isin(verdict, BANDS)
        judged = np.bincount(segment[banded], minlength=n_segments)
        return cls(per_segment(NOISE), nan, per_segment(INCONCLUSIVE), per_segment(KINK), judged,
                   largest)

    def row(self, p: int) -> dict:
        """The SegmentReport fields of segment id ``p``."""
        return {"noise": int(self.noise[p]), "nan": int(self.nan[p]),
                "inconclusive": int(self.inconclusive[p]), "on_kink": int(self.on_kink[p]),
                "judged": int(self.judged[p]),
                "max_rel_error_all": float(self.max_all[p])}


def unjudged_counts(noise: int, nan: int, inconclusive: int, on_kink: int) -> str:
    """'2 noise, 1 nan': the coordinates a max relative error leaves out ('' when none)."""
    return ", ".join(f"{n} {what}" for n, what in (
        (noise, "noise"), (nan, "nan"), (inconclusive, "inconclusive"), (on_kink, "kink")) if n)


def max_all(values) -> float:
    """The largest of ``values``, NaN if one is NaN, 0.0 when there are none."""
    values = list(values)
    if any(math.isnan(v) for v in values):
        return math.nan
    return float(max(values, default=0.0))


def overall_status(segments) -> str:
    """'failed' when a segment failed, else 'inconclusive' when one has inconclusive
    coordinates, else 'passed'."""
    segments = list(segments)
    if any(s.failed for s in segments):
        return "failed"
    if any(s.inconclusive for s in segments):
        return "inconclusive"
    return "passed"


@dataclass(kw_only=True)
class Report(RunInfo):
    """The outcome of ``fastgrad.check``; ``str(report)`` is a table, ``to_dict()`` is JSON-ready.

    Attributes
    ----------
    evaluations : int
        Loss evaluations spent.
    tol : float
        The failure threshold on the relative error.
    tol_reason : str
        Where ``tol`` came from (dtype and depth, or the caller).
    path : str
        Who evaluated the losses (jit, threads, serial, executor).
    path_reason : str
        Why that path.
    dtype : str
        The dtype of theta.
    depth : int
        The network depth the tolerance assumes.
    seed : int
        The seed of the coordinate sampling.
    loss : float or dict
        f at theta (per term when f returns several).
    status : str
        "passed", "failed" (a coordinate failed), or "inconclusive" (none failed, but the
        measured noise of f left some coordinates unjudgeable).
    max_rel_error : float
        The largest relative error over the judged coordinates: not kink, noise, nan or
        inconclusive.
    max_rel_error_all : float
        The largest relative error over every checked coordinate (NaN when one is nan).
    segments : dict of str to SegmentReport
        One row per segment, in order.
    coords : sequence of CoordRecord
        Every checked coordinate, in check order.
    terms : dict
        Per loss term, its segment rows (when f returns several terms).
    rechecked : int
        Coordinates re-checked with another step.
    noise_sigma : float, dict or None
        The measured noise of f near theta; None when no coordinate needed it.
    noise_note : str
        What the measured noise changed ("" when it changed no verdict).
    inconclusive_note : str
        Why coordinates are inconclusive: the measured sigma, its ratio to eps*|f|, the likely
        causes ("" when none is).

    Examples
    --------
    >>> report = fg.check(loss, theta, grad, segments=segs)
    >>> report.status, report.passed, report.segments["b"].failed      # ('failed', False, 3)
    >>> json.dumps(report.to_dict())
    """

    status: str
    max_rel_error: float
    segments: dict[str, SegmentReport]
    coords: Sequence[CoordRecord]  # a list, or CoordRecords (built on first access)
    max_rel_error_all: float = 0.0
    terms: dict[str, dict[str, SegmentReport]] = field(default_factory=dict)
    rechecked: int = 0
    # measured roundoff noise of f near theta; None when no coordinate needed it (the probe
    # runs only when a coordinate fails at the floor assumed from eps)
    noise_sigma: float | dict[str, float] | None = None
    noise_note: str = ""  # what the measured noise changed ("" when no verdict)
    inconclusive_note: str = ""  # why coordinates are inconclusive ("" when none is)

    @property
    def passed(self) -> bool:
        """True only when status is "passed"."""
        return self.status == "passed"

    @property
    def failures(self) -> list[CoordRecord]:
        """The records that make the check fail."""
        return [c for c in self.coords if c.failed]

    @property
    def kinks(self) -> int:
        """Kink crossings detected over all checked coordinates."""
        return sum(s.kinks for s in self._rows())

    @property
    def checked(self) -> int:
        """Coordinates checked."""
        return sum(s.checked for s in self.segments.values())

    @property
    def kink_fraction(self) -> float:
        """The fraction of checked coordinates whose step crossed a kink."""
        checked = self.checked
        return self.kinks / checked if checked else 0.0

    @property
    def noise(self) -> int:
        """Coordinates excused as roundoff ("noise")."""
        return sum(s.noise for s in self._rows())

    @property
    def nan(self) -> int:
        """Coordinates where f was not finite at a perturbed point."""
        return sum(s.nan for s in self._rows())

    @property
    def inconclusive(self) -> int:
        """Coordinates the measured noise of f leaves unjudgeable."""
        return sum(s.inconclusive for s in self._rows())

    @property
    def judged(self) -> int:
        """Coordinates max_rel_error is taken over (once per loss term, with terms)."""
        return sum(s.judged for s in self._rows())

    def _rows(self) -> list[SegmentReport]:
        """The per-term rows when f returns several terms (a term's own counts), else the
        segment rows."""
        if self.terms:
            return [s for rows in self.terms.values() for s in rows.values()]
        return list(self.segments.values())

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        failing = [name for name, s in self.segments.items() if not s.passed]
        status = "passed" if self.passed else f"{self.status.upper()} in {failing}"
        return (f"<Report {status}: max_rel_error={self.max_rel_error:.1e}, "
                f"{len(self.coords)} coordinates, {self.evaluations} evaluations>")

    def to_dict(self) -> dict:
        """The report as plain JSON types (NaN as None, infinities as "inf"/"-inf").

        Returns
        -------
        dict
            Every field, the segment rows and the coordinate records; ``json.dumps`` takes it.
        """
        return json_ready({
            "status": self.status,
            "passed": self.passed,
            "max_rel_error": self.max_rel_error,
            "max_rel_error_all": self.max_rel_error_all,
            "checked": self.checked,
            "judged": self.judged,
            "noise": self.noise,
            "nan": self.nan,
            "inconclusive": self.inconclusive,
            "kinks": self.kinks,
            "kink_fraction": self.kink_fraction,
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
            "inconclusive_note": self.inconclusive_note,
            "histogram_edges_log10": list(HIST_EDGES),
            "segments": {name: asdict(s) for name, s in self.segments.items()},
            "terms": {t: {n: asdict(s) for n, s in segs.items()} for t, segs in self.terms.items()},
            "coords": [asdict(c) for c in self.coords],
            "failures": [c.index for c in self.failures],
        })

    def summary(self) -> str:
        """The first line of the table: status, max relative error, counts.

        Returns
        -------
        str
            e.g. ``fastgrad check FAILED: max rel. error 8.2e-11 over 57 judged of 58
            coordinates (nan over all: 1 nan), 1 failed, 0 kink crossings``.
        """
        rows = self._rows()
        unjudged = unjudged_counts(*(sum(getattr(s, name) for s in rows)
                                     for name in ("noise", "nan", "inconclusive", "on_kink")))
        judged = self.judged
        # with loss terms every coordinate is judged once per term
        total = sum(s.checked for s in rows)
        terms = f" x {len(self.terms)} loss terms" if self.terms else ""
        if not unjudged:
            error = f"max rel. error {fmt_rel(self.max_rel_error)} over {self.checked} coordinates"
        elif judged > 0:
            error = (f"max rel. error {fmt_rel(self.max_rel_error)} over {judged} judged of "
                     f"{total} coordinates{terms} ({fmt_rel(self.max_rel_error_all)} over all: "
                     f"{unjudged})")
        else:
            error = (f"no coordinate judged of {total}{terms} (max rel. error "
                     f"{fmt_rel(self.max_rel_error_all)} over all: {unjudged})")
        return (f"fastgrad check {self.status.upper()}: {error}, {len(self.failures)} failed, "
                f"{self.kinks} kink crossings")

    def table(self, worst: int = 8) -> str:
        """The report as text: a header, one row per segment, then the worst coordinates.

        Parameters
        ----------
        worst : int
            How many of the worst coordinates to list (the rest are counted).

        Returns
        -------
        str
            The table ``str(report)`` prints.
        """
        lines = [
            self.summary(),
            f"  tolerance {self.tol:.1e} ({self.tol_reason}); {self.evaluations} loss evaluations "
            f"({self.path}: {self.path_reason})",
        ]
        if self.noise_note:
            lines.append(f"  {self.noise_note}")
        if self.inconclusive_note:
            lines.append(f"  {self.inconclusive_note}")
        if self.kink_fraction > KINK_FRACTION_NOTE:
            lines.append(
                f"  {self.kink_fraction:.0%} of the checked coordinates cross kinks: check on "
                f"fewer data points (fewer data points, fewer kinks) or pass kinks= an "
                f"active-set signature (e.g. a hash of the ReLU mask)")
        groups = self.terms.items() if self.terms else [(None, self.segments)]
        for term, segments in groups:
            lines.append("")
            if term is not None:
                status = overall_status(segments.values())
                lines.append(f"loss term {term!r}: "
                             f"{status if status == 'passed' else status.upper()}")
            lines += _segment_table(segments.values())
        shown, rest, rest_failed = self._worst_records(worst)
        if shown:
            lines += ["", "worst coordinates:"]
            rows = [("where", "analytic", "numeric", "rel.err", "verdict")]
            for c in shown:
                verdict = c.verdict.upper() if c.failed else c.verdict
                rows.append((c.where, fmt_value(c.analytic), fmt_value(c.numeric),
                             fmt_rel(c.rel_error), verdict + (" (kink)" if c.kink and
                                                               c.verdict != "kink" else "")))
            lines += columns(rows, indent="  ")
            if rest:
                lines.append(f"  ... and {rest} more ({rest_failed} failed)" if rest_failed
                             else f"  ... and {rest} more")
        return "\n".join(lines)

    def _worst_records(self, worst: int) -> tuple[list, int, int]:
        """The records the table shows (failed first, then by decreasing relative error, every
        one that is not excellent), how many more there are, and how many of those failed."""
        candidates = sorted(
            (c for c in self.coords if c.verdict not in ("excellent",) or c.failed),
            key=lambda c: (not c.failed, -(c.rel_error if math.isfinite(c.rel_error) else 1e300)),
        )
        rest = candidates[worst:]
        return candidates[:worst], len(rest), sum(1 for c in rest if c.failed)

    def __str__(self) -> str:
        return self.table()


def _segment_table(segments) -> list[str]:
    """One row per segment; two more columns when a coordinate was left out of max rel.err."""
    segments = list(segments)
    extra = any(s.unjudged for s in segments)
    head = ("segment", "size", "checked", "failed", "kinks", "max rel.err")
    rows = [head + (("not judged", "max all") if extra else ()) + ("verdict",)]
    for s in segments:
        row = (s.name, str(s.size), str(s.checked), str(s.failed), str(s.kinks),
               fmt_rel(s.max_rel_error))
        if extra:
            row += (s.unjudged or "-", fmt_rel(s.max_rel_error_all))
        rows.append(row + (s.verdict,))
    return columns(rows, indent="  ")
