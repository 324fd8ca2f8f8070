"""Judging a Jacobian: every input coordinate against every output element, and the report.

The caller supplies an evaluator whose ``pairs(index, step)`` returns the whole output (flat,
real) at ``x +- h e_i`` (``columns.CoordinateColumns``) and the analytic Jacobian (rows from
vector-Jacobian products or columns from Jacobian-vector products). Each output element is one
"term" of the Judge: the same verdicts, kink and noise re-checks as ``check``, with the perturbed
outputs evaluated once per coordinate for all outputs.

The element's verdict follows fastgrad's rule (relative error against ``tol``, roundoff floor,
kinks). For callers tuned to torch's ``|a - n| <= atol + rtol |n|``: an element also fails when
that rule fails (unless its disagreement is roundoff noise or an excused kink), and an element
never fails when ``|a - n| <= atol``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ...judge.rechecks import Judge
from ...judge.verdicts import KINK, NAN, NOISE, coordinate_stats, segment_stats
from ...results.jacobian_report import ChainedRecords, JacobianRecords, JacobianReport
from ...results.report import SegmentReport, max_all, overall_status
from .layout import Layout

__all__ = ["Judged", "judge_jacobian", "merged", "screen_streamed"]


def judge_jacobian(ev, x: np.ndarray, f0: np.ndarray, jacobian: np.ndarray, index: np.ndarray,
                   step: np.ndarray, *, tol: float, tol_reason: str, noise_eps: float,
                   atol: float, rtol: float | None, inputs: Layout, outputs: Layout, seed: int,
                   skipped: tuple[str, ...] = (), notes: tuple[str, ...] = (),
                   refine: Callable[[np.ndarray], np.ndarray] | None = None,
                   mode: str = "", lazy: bool = False, strict: bool = False,
                   fail_fast: bool = False,
                   before_rechecks: Callable[[], None] | None = None) -> JacobianReport | Judged:
    """Judge the analytic ``jacobian`` (outputs x inputs, flat real) against centered
    differences at the coordinates ``index`` (steps ``step``).

    ``refine(rows)``, when given, recomputes analytic rows one by one (the batched ones are
    suspected first when an element fails: a batching rule must never cause a false alarm).
    ``mode`` is appended to segment names (``" (forward AD)"``). ``rtol`` None: torch's rule
    is not applied (only fastgrad's verdict and the ``atol`` slack). ``lazy``: return a
    ``Judged`` whose report is built only when read (a passing check of a small function
    spends a good part of its time building a report nobody reads). ``strict``: elements
    beyond fastgrad's band but within the caller's ``atol``/``rtol`` fail instead of being
    listed in ``report.tolerated`` (see ``_final_failures``). ``fail_fast``: when the
    caller's rule fails at the first step and other coordinates would be re-checked too, the
    worst failing coordinate is re-checked first, and a failure there ends the judging
    (``_stopped_at_first_failure``; the report says so). ``before_rechecks()``, when given, is
    called once the first step leaves an element in question, before any re-check (the drop-in
    asks there whether the function repeats its values at x: random values would pass the kink
    re-checks); it may raise.
    """
    notes = tuple(notes)
    fp, fm = ev.pairs(index, step)
    n_out = jacobian.shape[0]
    evaluations, path, path_reason = ev.evaluations, ev.path, ev.path_reason

    def screened():
        # one C call over every element: numeric values, errors, floors and verdicts do not
        # depend on f0 (only the kink score does, and it matters only for re-checks)
        screen = coordinate_stats(jacobian[:, index].ravel(), fp.T.ravel(), fm.T.ravel(), 0.0,
                                  np.tile(step, n_out), tol, noise_eps)
        return _Table(*(getattr(screen, name).reshape(n_out, index.size) for name in _FIELDS))

    def build(table=None) -> JacobianReport:  # the report of a check without re-checks
        table = screened() if table is None else table
        table.kink[:] = False
        failed, tolerated = _final_failures(table, jacobian[:, index], atol, rtol, strict)
        return _report(evaluations, path, path_reason, x, f0, jacobian, index, table,
                       [step] * n_out, np.zeros(index.size, dtype=bool), failed, tolerated,
                       tol=tol, tol_reason=tol_reason, inputs=inputs, outputs=outputs,
                       seed=seed, skipped=skipped, notes=notes, mode=mode)

    if lazy and _within_atol(jacobian, index, fp, fm, step, tol, noise_eps, atol, rtol):
        return Judged(True, build)
    table = screened()
    if not (table.failed.any() or (table.verdict == NOISE).any()):
        table.kink[:] = False
        if not _final_failures(table, jacobian[:, index], atol, rtol, strict)[0].any():
            return Judged(True, lambda: build(table)) if lazy else build(table)
    if before_rechecks is not None:
        before_rechecks()

    def judged_at(pos: np.ndarray):
        """(table, steps, re-checked, failed, tolerated) of the coordinates ``index[pos]``, after
        their re-checks (and, when their batched analytic rows fail, on one-by-one rows)."""
        nonlocal jacobian, refine, notes
        where = index[pos]
        for _ in range(2):
            grads = {r: jacobian[r] for r in range(n_out)}
            judge = Judge(ev, x, f0, grads, tol, noise_eps, "detect")
            stats = judge.verdicts(where, step[pos], fp[pos].copy(), fm[pos].copy())
            steps, rechecked = judge.recheck(where, step[pos], stats)
            table = _Table(*(np.stack([getattr(st, name) for st in stats]).reshape(n_out, -1)
                             for name in _FIELDS))
            failed, tolerated = _final_failures(table, jacobian[:, where], atol, rtol, strict)
            if refine is None or not failed.any():
                break
            rows = np.flatnonzero(failed.any(axis=1))
            fresh = refine(rows)
            if np.array_equal(fresh, jacobian[rows], equal_nan=True):
                break
            jacobian = jacobian.copy()
            jacobian[rows] = fresh
            notes += (f"batched vector-Jacobian products differed from one-by-one ones on "
                      f"{rows.size} output element(s); the one-by-one values were judged",)
            refine = None
        return table, steps, rechecked, failed, tolerated

    stopped = None
    if fail_fast:
        stopped = (_stopped_at_first_failure(table, judged_at, jacobian, index, step, atol,
                                             rtol, strict, inputs)
                   or _warned_by_the_worst(table, judged_at, jacobian, index, step, atol, rtol,
                                           strict, inputs))
    if stopped is not None:
        table, steps, rechecked, note = stopped
        failed, tolerated = _final_failures(table, jacobian[:, index], atol, rtol, strict)
        notes += (note,)
    else:
        table, steps, rechecked, failed, tolerated = judged_at(np.arange(index.size))
    report = _report(ev.evaluations, ev.path, ev.path_reason, x, f0, jacobian, index, table,
                     steps, rechecked, failed, tolerated, tol=tol, tol_reason=tol_reason,
                     inputs=inputs, outputs=outputs, seed=seed, skipped=skipped, notes=notes,
                     mode=mode)
    if lazy:
        judged = Judged(report.passed, lambda: report)
        judged.tolerated, judged.tolerated_count = report.tolerated, report.tolerated_count
        return judged
    return report


def _stopped_at_first_failure(screen: _Table, judged_at, jacobian, index, step, atol, rtol,
                              strict, inputs: Layout):
    """fail_fast: when the caller's rule fails at the first step and other coordinates would
    be re-checked too (failing ones, or ones within the roundoff floor, whose re-check takes a
    larger step), the worst failing coordinate is re-checked alone; a failure that stands there
    is the check's, and the others are shown at their first step, not re-checked (torch's
    gradcheck stops at its first mismatch too). Returns (table, steps, re-checked, note), or
    None when the re-checks of every coordinate decide (nothing else to re-check, or the worst
    was excused: a kink)."""
    screen.kink[:] = False
    first, _ = _final_failures(screen, jacobian[:, index], atol, rtol, strict)
    failing = np.flatnonzero(first.any(axis=0))
    pending = np.flatnonzero((screen.failed | (screen.verdict == NOISE)).any(axis=0)
                             | first.any(axis=0))
    if failing.size == 0 or pending.size < 2:
        return None
    diff = np.abs(jacobian[:, index[failing]] - screen.numeric[:, failing])
    with np.errstate(invalid="ignore"):
        excess = np.where(first[:, failing], diff - atol - (rtol or 0.0)
                          * np.abs(screen.numeric[:, failing]), -np.inf).max(axis=0)
    worst = failing[int(np.argmax(np.where(np.isnan(excess), np.inf, excess)))]
    table, steps, rechecked, failed, _ = judged_at(np.array([worst]))
    if not failed.any():
        return None
    note = (f"stopped at the first failure: {inputs.where(int(index[worst]))}, the worst, fails "
            f"after its re-checks; {pending.size - 1} other coordinate(s) to re-check "
            f"({failing.size - 1} with elements beyond the caller's rule at the first step) were "
            "not, and are shown at that step (a kink there is not excused, roundoff not "
            "measured again; torch's gradcheck stops at its first mismatch too)")
    return (*_with_worst(screen, table, steps, rechecked, worst, step), note)


def _warned_by_the_worst(screen: _Table, judged_at, jacobian, index, step, atol, rtol, strict,
                         inputs: Layout):
    """fail_fast, when the check passes by the caller's rule at the first step and only a
    warning is in question (elements beyond fastgrad's band, within the caller's rule; not
    strict; no coordinate within the roundoff floor): the coordinate furthest beyond the band is
    re-checked alone; when it stays beyond the band and within the caller's rule, the check
    passes with the warning, and the other coordinates beyond the band are named at their
    first step, not re-checked (their verdict there is the caller's rule, as torch's gradcheck
    gives it). Returns (table, steps, re-checked, note), or None when every coordinate's
    re-checks decide (the worst failed after them, or came back within the band)."""
    if rtol is None or strict or (screen.verdict == NOISE).any():
        return None
    screen.kink[:] = False
    failed, tolerated = _final_failures(screen, jacobian[:, index], atol, rtol, strict)
    beyond = np.flatnonzero(tolerated.any(axis=0))
    if failed.any() or beyond.size < 2:
        return None
    worst = beyond[int(np.argmax(np.where(tolerated[:, beyond], screen.rel_error[:, beyond],
                                          -np.inf).max(axis=0)))]
    table, steps, rechecked, failed, tolerated = judged_at(np.array([worst]))
    if failed.any() or not tolerated.any():
        return None
    note = (f"the warning was settled by the worst: {inputs.where(int(index[worst]))}, the "
            f"furthest beyond fastgrad's band at the first step, stays beyond it after its "
            f"re-checks; {beyond.size - 1} other coordinate(s) beyond the band, within the "
            "caller's rule at the first step, were not re-checked and are shown at that step")
    return (*_with_worst(screen, table, steps, rechecked, worst, step), note)


def _with_worst(screen: _Table, table: _Table, steps, rechecked, worst: int, step: np.ndarray):
    """The first step's table, steps and re-checked flags, with the coordinate ``worst``
    replaced by its re-checked values (``table``, ``steps``, ``rechecked`` of judged_at of
    that coordinate alone)."""
    merged_table = _Table(*(getattr(screen, name).copy() for name in _FIELDS))
    for name in _FIELDS:
        getattr(merged_table, name)[:, worst] = getattr(table, name)[:, 0]
    merged_steps = [step.copy() for _ in steps]
    for row, s in zip(merged_steps, steps):
        row[worst] = s[0]
    merged_rechecked = np.zeros(step.size, dtype=bool)
    merged_rechecked[worst] = rechecked[0]
    return merged_table, merged_steps, merged_rechecked


class Judged:
    """The outcome of ``judge_jacobian(..., lazy=True)``: ``passed`` now, ``report`` built on
    first read (then kept); ``tolerated`` the elements the caller's tolerance accepted beyond
    fastgrad's band (the first few, named) and ``tolerated_count`` how many."""

    def __init__(self, passed: bool, build: Callable[[], JacobianReport]):
        self.passed = passed
        self._build = build
        self.tolerated: tuple[str, ...] = ()
        self.tolerated_count = 0

    @cached_property
    def report(self) -> JacobianReport:
        """The JacobianReport (built now if it was not yet)."""
        return self._build()


# _within_atol's block of the numeric Jacobian (values)
ATOL_BLOCK_VALUES = 1 << 18

_FIELDS = ("numeric", "rel_error", "noise", "verdict", "failed", "kink")


class _FarElements:
    """The elements of one analytic Jacobian farther than ``atol`` from their numeric value,
    collected block by block of coordinates (the others never fail; a large sparse Jacobian is
    mostly such elements), with their two loss values: what _within_atol judges in C.

    ``add`` returns False as soon as more than half of all the elements are far: judging them
    saves nothing, and the caller judges the whole Jacobian instead."""

    def __init__(self, jacobian: np.ndarray, index: np.ndarray, atol: float):
        self.jacobian, self.index, self.atol = jacobian, index, atol
        full = index.size == jacobian.shape[1] and np.array_equal(index, np.arange(index.size))
        # (k, n_out), a view when full
        self.analytic_t = (jacobian if full else jacobian[:, index]).T
        self.coord, self.row, self.fp, self.fm = [], [], [], []
        self.count = 0

    def add(self, a: int, fp: np.ndarray, fm: np.ndarray, step: np.ndarray) -> bool:
        """Coordinates a:a+len(fp) (their loss values fp, fm: (coordinates, outputs))."""
        b = a + fp.shape[0]
        block = max(1, ATOL_BLOCK_VALUES // max(1, self.jacobian.shape[0]))
        with np.errstate(invalid="ignore", divide="ignore"):
            for c in range(a, b, block):
                d = min(b, c + block)
                # one temporary of a block, in place: reused memory (a Jacobian-sized one is
                # fresh pages, whose first touch cost up to 1 s per 268 MB on the 2-core VM)
                gap = np.subtract(fp[c - a:d - a], fm[c - a:d - a])
                gap /= (2.0 * step[c - a:d - a])[:, None]  # the numeric values
                gap -= self.analytic_t[c:d]
                np.abs(gap, out=gap)
                coord, row = np.nonzero(~(gap <= self.atol))
                self.coord.append(coord + c)
                self.row.append(row)
                self.fp.append(fp[coord + c - a, row])
                self.fm.append(fm[coord + c - a, row])
                self.count += coord.size
                if self.count * 2 > self.analytic_t.size:
                    return False
        return True

    def passed(self, step: np.ndarray, tol: float, noise_eps: float, rtol) -> bool:
        """True when the check passes without re-checks (every far element judged in C; the
        numeric values are the C judge's, bit for bit)."""
        if self.count == 0:
            return True
        coord, row = np.concatenate(self.coord), np.concatenate(self.row)
        analytic = self.jacobian[row, self.index[coord]]
        screen = coordinate_stats(analytic, np.concatenate(self.fp), np.concatenate(self.fm),
                                  0.0, step[coord], tol, noise_eps)
        table = _Table(*(getattr(screen, name) for name in _FIELDS))
        if table.failed.any() or (table.verdict == NOISE).any():
            return False
        return not _final_failures(table, analytic, self.atol, rtol)[0].any()


def _within_atol(jacobian, index, fp, fm, step, tol, noise_eps, atol, rtol) -> bool:
    """True when the check passes without re-checks, judging in C only the elements farther
    than ``atol`` from their numeric value; the arrays are (coordinates, outputs) as the pairs
    come."""
    far = _FarElements(jacobian, index, atol)
    return far.add(0, fp, fm, step) and far.passed(step, tol, noise_eps, rtol)


def screen_streamed(ev, index: np.ndarray, step: np.ndarray, jacobians: list[np.ndarray], *,
                    tol: float, noise_eps: float, atol: float, rtol) -> bool:
    """judge_jacobian(lazy=True)'s quick pass for each of ``jacobians`` (the analytic Jacobians
    of one function), with the numeric columns evaluated and screened chunk by chunk
    (``ev.chunks``) and never kept: True when every one passes without re-checks. A large
    Jacobian's two loss arrays are each the Jacobian's size; torch's gradcheck keeps one.

    False says nothing yet: the caller judges with judge_jacobian, which evaluates the columns
    again and keeps them (a failing check, or one whose elements are mostly far from atol,
    pays for the columns twice). Stops evaluating as soon as one Jacobian is beyond saving."""
    far = [_FarElements(j, index, atol) for j in jacobians]
    for a, fp, fm in ev.chunks(index, step):
        for f in far:
            if not f.add(a, fp, fm, step[a:a + fp.shape[0]]):
                return False
    return all(f.passed(step, tol, noise_eps, rtol) for f in far)


@dataclass
class _Table:
    """The judge's per-element results as (outputs, coordinates) arrays."""

    numeric: np.ndarray
    rel_error: np.ndarray
    noise: np.ndarray
    verdict: np.ndarray
    failed: np.ndarray
    kink: np.ndarray


def _final_failures(table: _Table, analytic: np.ndarray, atol: float, rtol,
                    strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(failed, tolerated), each (outputs, coordinates).

    The caller's rule is the contract: with ``rtol`` given (torch's and jax's drop-ins), an
    element fails where ``|a - n| <= atol + rtol |n|`` fails at fastgrad's numeric value (after
    its re-checks) and the disagreement is not roundoff noise or an excused kink. Elements that
    rule accepts but fastgrad's own band fails are ``tolerated`` (a warning), or failed with
    ``strict``. ``rtol`` None: fastgrad's band is the rule, beyond the ``atol`` slack."""
    numeric, verdict = table.numeric, table.verdict
    diff = np.abs(analytic - numeric)
    excused = (verdict == NOISE) | (verdict == KINK)
    with np.errstate(invalid="ignore"):
        beyond = ~(diff <= atol)
        band = table.failed & beyond
        nan = verdict == NAN
        if rtol is None:
            return nan | band, np.zeros(diff.shape, dtype=bool)
        caller = ~(diff <= atol + rtol * np.abs(numeric)) & ~excused
    failed = nan | caller
    tolerated = band & ~failed
    if strict:
        return failed | tolerated, np.zeros(diff.shape, dtype=bool)
    return failed, tolerated


# a warning names at most this many tolerated elements (and counts the rest)
TOLERATED_SHOWN = 10


def _tolerated_names(tolerated: np.ndarray, table: _Table, index: np.ndarray, inputs: Layout,
                     outputs: Layout) -> tuple[tuple[str, ...], int]:
    """The first TOLERATED_SHOWN tolerated elements, worst first, and how many there are."""
    rows, cols = np.nonzero(tolerated)
    rel = table.rel_error[rows, cols]
    order = np.argsort(-np.where(np.isfinite(rel), rel, np.inf), kind="stable")[:TOLERATED_SHOWN]
    names = tuple(f"{inputs.where(int(index[cols[m]]))} -> {outputs.where(int(rows[m]))} "
                  f"(rel. error {rel[m]:.1e})" for m in order)
    return names, int(rows.size)


def _report(evaluations, path, path_reason, x, f0, jacobian, index, table: _Table, steps,
            rechecked, failed, tolerated, *, tol, tol_reason, inputs: Layout, outputs: Layout, seed,
            skipped, notes, mode) -> JacobianReport:
    n_out, k = jacobian.shape[0], index.size
    in_tensor = inputs.tensor_of(index)  # (k,)
    out_tensor = outputs.tensor_of(np.arange(n_out))  # (n_out,)
    n_in_t, n_out_t = len(inputs.names), len(outputs.names)
    seg = (in_tensor[None, :] * n_out_t + out_tensor[:, None]).astype(np.int64)
    rel, verdict, kink = table.rel_error, table.verdict, table.kink
    agg = segment_stats(seg.ravel(), rel.ravel(), verdict.ravel(), failed.ravel(), kink.ravel(),
                        n_in_t * n_out_t)
    names = [f"{i}/{o}{mode}" for i in inputs.names for o in outputs.names]
    rows = np.repeat(np.arange(n_out), k)
    positions = np.tile(np.arange(k), n_out)
    segments = {}
    for p, name in enumerate(names):
        i_t, o_t = divmod(p, n_out_t)
        worst = int(agg.argmax[p])
        segments[name] = SegmentReport(
            name=name, size=inputs.sizes[i_t] * outputs.sizes[o_t], checked=int(agg.checked[p]),
            failed=int(agg.failed[p]), kinks=int(agg.kinks[p]),
            max_rel_error=float(agg.max_rel[p]), passed=bool(agg.failed[p] == 0),
            worst=int(index[positions[worst]]) if worst >= 0 else None,
            histogram=tuple(int(v) for v in agg.hist[p]),
            rechecked=int(np.count_nonzero(rechecked[in_tensor == i_t])))
    columns = {
        "row": rows, "position": positions, "index": index[positions], "segment": seg.ravel(),
        "analytic": jacobian[:, index].ravel(),
        "numeric": table.numeric.ravel(), "rel_error": rel.ravel(), "kink": kink.ravel(),
        "verdict": verdict.ravel(), "step": np.stack(steps).ravel() if n_out else np.zeros(0),
        "failed": failed.ravel(), "noise": table.noise.ravel(),
    }
    records = JacobianRecords(columns, inputs, outputs, names)
    shown, count = _tolerated_names(tolerated, table, index, inputs, outputs)
    eligible = [s.max_rel_error for s in segments.values() if s.checked]
    return JacobianReport(
        status=overall_status(segments.values()),
        max_rel_error=float(max(eligible)) if eligible else 0.0,
        max_rel_error_all=(math.nan if np.isnan(rel).any()
                           else float(rel.max()) if rel.size else 0.0),
        segments=segments, coords=records, evaluations=evaluations, tol=tol,
        tol_reason=tol_reason, path=path, path_reason=path_reason,
        dtype=str(x.dtype), depth=1, seed=seed,
        loss=float(np.max(np.abs(f0))) if f0.size else 0.0,
        rechecked=int(np.count_nonzero(rechecked)), skipped=tuple(skipped), notes=notes,
        tolerated=shown, tolerated_count=count)


def merged(reports: list[JacobianReport]) -> JacobianReport:
    """Reports of one function in one (backward and forward AD): segments side by side, their
    names say which."""
    if len(reports) == 1:
        return reports[0]
    first = reports[0]
    segments = {}
    for r in reports:
        segments.update(r.segments)
    coords = ChainedRecords([r.coords for r in reports])
    return JacobianReport(
        status=overall_status(segments.values()),
        max_rel_error=max(r.max_rel_error for r in reports),
        max_rel_error_all=max_all(r.max_rel_error_all for r in reports),
        segments=segments, coords=coords,
        evaluations=reports[-1].evaluations, tol=first.tol, tol_reason=first.tol_reason,
        path=first.path, path_reason=first.path_reason, dtype=first.dtype, depth=1,
        seed=first.seed, loss=first.loss, rechecked=sum(r.rechecked for r in reports),
        skipped=first.skipped, notes=tuple(n for r in reports for n in r.notes),
        tolerated=tuple(t for r in reports for t in r.tolerated),
        tolerated_count=sum(r.tolerated_count for r in reports))
