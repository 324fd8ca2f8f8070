"""What every result shares: how the run went (RunInfo), JSON spelling, table columns."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(kw_only=True)
class RunInfo:
    """How a check or an audit ran: its cost, its tolerance, who evaluated and on what."""

    evaluations: int  # loss evaluations spent
    tol: float  # failure threshold on the relative error
    tol_reason: str  # where tol came from (dtype and depth, or the caller)
    path: str  # who evaluated the losses: jit | threads | serial | executor
    path_reason: str
    dtype: str
    depth: int
    seed: int
    loss: float | dict[str, float]  # f at theta (per term when f returns several)


def json_ready(x):
    """x as JSON can hold it, recursively: numpy scalars and arrays as Python numbers and lists,
    non-finite floats spelled out (NaN -> None, inf -> "inf", -inf -> "-inf")."""
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, np.floating):
        x = float(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, np.ndarray):
        return json_ready(x.tolist())
    if isinstance(x, dict):
        return {str(k) if k is not None else None: json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    return x


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return cell.strip() in ("nan", "inf", "-inf")
    return True


def columns(rows, indent="") -> list[str]:
    """Rows of cells (the first row: the header) as aligned text columns; a column whose cells
    are all numbers is right-aligned, header included, so that signs and exponents line up."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = [all(_is_number(r[i]) for r in rows[1:]) and len(rows) > 1
             for i in range(len(widths))]
    return [indent + "  ".join(cell.rjust(w) if r_ else cell.ljust(w)
                               for cell, w, r_ in zip(r, widths, right)).rstrip() for r in rows]


def fmt_rel(x: float) -> str:
    """A relative error for a table: 1.0e-04, nan."""
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{x:.1e}"


def fmt_value(x: float) -> str:
    """A gradient value for a table, sign column always present, -0 shown as 0."""
    if x == 0.0:
        x = 0.0  # -0.0 reads like a sign error
    return f"{x: .6e}"


def counted(n: int, noun: str) -> str:
    """'1 wrong block', '2 wrong blocks'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
