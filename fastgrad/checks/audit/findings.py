"""What an audit has established so far: written by the parts that find it, read by the report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...results.audit_report import BlockRecord, DirectionRecord, SuspectRecord

__all__ = ["Findings"]


@dataclass
class Findings:
    """The audit's evidence, in the order it was found.

    ``directions``: every directional record measured; ``suspects``: confirmed wrong coordinates
    by flat index; ``blocks``: runs accepted as wrong on sampled coordinates; ``unresolved``:
    (segment, start, stop) ranges left undecided; ``excluded``: coordinates inside wrong blocks
    not counted wrong (analytic gradient 0 and found right, or not judged before the budget ran
    out); ``spread``: segments whose disagreement is spread out; ``complete``: False once any
    part of the audit stopped for the budget.
    """

    directions: list[DirectionRecord] = field(default_factory=list)
    suspects: dict[int, SuspectRecord] = field(default_factory=dict)
    blocks: list[BlockRecord] = field(default_factory=list)
    unresolved: list[tuple[str, int, int]] = field(default_factory=list)
    excluded: list[np.ndarray] = field(default_factory=list)
    spread: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    complete: bool = True
