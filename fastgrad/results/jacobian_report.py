"""JacobianReport: a Report whose coordinates are Jacobian elements (input coordinate, output).

Used by the drop-in checkers (``fastgrad.torch.gradcheck``, ``fastgrad.jax.check_grads``): one
segment per (input, output) pair, named ``"input0/output1"``, and one record per checked element,
named ``"input0[3] -> output1[2]"`` (``input0.real[3]`` for complex tensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..judge.verdicts import VERDICTS
from .report import CoordRecord, Report


@dataclass(frozen=True)
class JacobianRecord(CoordRecord):
    """One checked Jacobian element: d output / d input coordinate."""

    input_where: str = ""  # "input0[3]", "input0.imag[3]"
    output_where: str = ""  # "output1[2]"

    @property
    def where(self) -> str:
        """``input0[3] -> output1[2]``: the input coordinate and the output element."""
        return f"{self.input_where} -> {self.output_where}"


class JacobianRecords(Sequence):
    """``report.coords`` of a Jacobian check: records made on first access (from arrays)."""

    def __init__(self, columns: dict, inputs, outputs, segment_names: list[str]):
        self._columns = columns  # arrays over elements: row, position, index, segment, ...
        self._inputs, self._outputs = inputs, outputs  # layouts: where(position), local(...)
        self._segment_names = segment_names
        self._records: list[JacobianRecord] | None = None

    def _all(self) -> list[JacobianRecord]:
        if self._records is None:
            self._records = self.pick(np.arange(len(self)))
        return self._records

    def column(self, name: str) -> np.ndarray:
        """One field over every element, as an array (``"failed"``, ``"rel_error"``,
        ``"verdict"`` codes...): a large Jacobian's failures are found without making a record
        per element."""
        return np.asarray(self._columns[name])

    def pick(self, positions: np.ndarray) -> list[JacobianRecord]:
        """The records at ``positions`` (made now, only these)."""
        if self._records is not None:
            return [self._records[int(p)] for p in positions]
        c = {name: np.asarray(self._columns[name])[positions] for name in (
            "row", "index", "segment", "analytic", "numeric", "rel_error", "kink", "verdict",
            "step", "failed", "noise")}
        where_in = {i: self._inputs.where(i) for i in set(c["index"].tolist())}
        local = {i: self._inputs.local(i) for i in where_in}
        where_out = {r: self._outputs.where(r) for r in set(c["row"].tolist())}
        cols = [c[name].tolist() for name in (
            "row", "index", "segment", "analytic", "numeric", "rel_error", "kink", "verdict",
            "step", "failed", "noise")]
        return [
            JacobianRecord(
                index=index, segment=self._segment_names[seg], local=local[index],
                analytic=a, numeric=n, rel_error=rel, kink=kink, verdict=VERDICTS[verdict],
                step=step, failed=failed, noise=noise,
                input_where=where_in[index], output_where=where_out[row])
            for row, index, seg, a, n, rel, kink, verdict, step, failed, noise in zip(*cols)
        ]

    def __len__(self) -> int:
        return len(self._columns["row"])

    def __getitem__(self, item):
        return self._all()[item]

    def __iter__(self):
        return iter(self._all())

    def __repr__(self) -> str:
        return repr(self._all())


class ChainedRecords(Sequence):
    """Several reports' records as one sequence, without making them until read."""

    def __init__(self, parts: list[Sequence]):
        self._parts = parts

    def _all(self) -> list:
        return [c for part in self._parts for c in part]

    def column(self, name: str) -> np.ndarray:
        """JacobianRecords.column over the parts, in order."""
        return np.concatenate([part.column(name) for part in self._parts])

    def pick(self, positions: np.ndarray) -> list:
        """JacobianRecords.pick over the parts (``positions`` into the chained sequence)."""
        ends = np.cumsum([len(part) for part in self._parts])
        owner = np.searchsorted(ends, positions, side="right")
        starts = ends - np.array([len(part) for part in self._parts])
        out: list = [None] * len(positions)
        for k, part in enumerate(self._parts):
            mine = np.flatnonzero(owner == k)
            for slot, record in zip(mine, part.pick(np.asarray(positions)[mine] - starts[k])):
                out[slot] = record
        return out

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def __getitem__(self, item):
        return self._all()[item]

    def __iter__(self):
        for part in self._parts:
            yield from part

    def __repr__(self) -> str:
        return repr(self._all())


@dataclass(kw_only=True)
class JacobianReport(Report):
    """The report of a full-Jacobian check; ``skipped`` names the input coordinates that were
    not perturbed (non-finite values, e.g. masked entries), ``notes`` the sub-checks run."""

    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)
    # elements the caller's tolerance accepts beyond fastgrad's band: the first few, and a count
    tolerated: tuple[str, ...] = ()
    tolerated_count: int = 0

    @property
    def failures(self) -> list:
        """The records that make the check fail (made only for those)."""
        return self.coords.pick(np.flatnonzero(self.coords.column("failed")))

    @property
    def suspects(self) -> np.ndarray:
        """The flat input coordinates with a failing element in their Jacobian column, sorted
        (an audit report's ``suspects`` are the same kind of index)."""
        failed = self.coords.column("failed").astype(bool)
        return np.unique(self.coords.column("index")[failed]).astype(np.int64)

    def _worst_records(self, worst: int) -> tuple[list, int, int]:
        """Report._worst_records from the records' columns: a record is made only for the
        elements shown (a large Jacobian has a million)."""
        coords = self.coords
        failed = coords.column("failed").astype(bool)
        rel = coords.column("rel_error").astype(float)
        excellent = VERDICTS.index("excellent")
        candidates = np.flatnonzero((coords.column("verdict") != excellent) | failed)
        key = np.where(np.isfinite(rel[candidates]), rel[candidates], 1e300)
        # failed first, then by decreasing relative error (a stable sort, as sorted() is)
        order = candidates[np.lexsort((-key, ~failed[candidates]))]
        rest = order[worst:]
        return coords.pick(order[:worst]), rest.size, int(np.count_nonzero(failed[rest]))

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["skipped"] = list(self.skipped)
        out["notes"] = list(self.notes)
        out["tolerated"] = list(self.tolerated)
        out["tolerated_count"] = self.tolerated_count
        return out

    def table(self, worst: int = 8) -> str:
        lines = [super().table(worst).replace("fastgrad check", "fastgrad Jacobian check", 1)]
        if self.skipped:
            shown = ", ".join(self.skipped[:8]) + (" ..." if len(self.skipped) > 8 else "")
            lines.append(f"\nskipped (non-finite input values, not perturbed): "
                         f"{len(self.skipped)}: {shown}")
        if self.tolerated_count:
            more = self.tolerated_count - len(self.tolerated)
            lines.append(f"\nwithin the caller's tolerance, beyond fastgrad's band "
                         f"({self.tolerated_count}): " + ", ".join(self.tolerated)
                         + (f" and {more} more" if more > 0 else ""))
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)
