"""fast_mode at torch's cost: one random direction per input, one random contraction per output,
and fastgrad's audit to localize a direction that disagrees."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...checks.jacobian import SubcheckFailed, judge_jacobian
from ...checks.jacobian.layout import Layout
from ...steps import coordinate_steps, noise_eps, precision_of
from . import side_tests
from .analytic import batched_rows_agree, jvp_along, vjp_contracted, vjp_rows
from .flatten import Evaluator, TorchFunction, caller_tolerance

# fast mode: a direction whose first-step disagreement shrinks about 4x when the step halves is
# truncation: Richardson's extrapolation (4 n(h/2) - n(h)) / 3 is then the numeric value judged
FAST_SECOND_STEP = 0.5
# a direction that still disagrees after the second step, and whose plain disagreement moved
# with the step (changed by more than FAST_MOVED of itself: a jump or a kink crossed by the
# step, not a gradient error, which stays put), is measured again at these fractions of its
# first step, as check()'s kink re-checks do: a smaller step that no longer crosses agrees
FAST_SHRINK = (1e-1, 1e-2, 1e-3)
FAST_MOVED = 0.25
# ... and it is cleared there only where a real error of the first step's size would have
# shown: the smaller step's roundoff floor at most this fraction of the first disagreement
FAST_FLOOR_FRACTION = 0.25
# a question within the caller's rule along every direction (fastgrad's band, or the caller's
# atol slack, asked it: a contraction can hide one wrong element among many) is settled by that
# rule element by element before any audit: first on the Jacobian columns of this many random
# coordinates of the questioned inputs (over this many of their output elements when there are
# more than CALLER_RULE_ALL_ROWS: half the largest numeric entries, half at random) ...
SAMPLED_COLUMNS = 2
SAMPLED_ROWS = 4
# ... then on every column of those inputs when their evaluations and the backward passes of
# the judged rows, projected from the sample's measured cost, stay within what the audit costs
# at least: this many calls of the function (2 at x, 24 for the noise probe, 2 per segment's
# direction, a block's or a leaf's coordinates). The complete columns settle the question (the
# verdict and the warnings are full mode's); a sample that passes leaves it to the audit, and
# one that fails fails the check (HardNet: 2 of 2 coordinates wrong, found in 8 calls of 4 ms
# and 4 backward passes, where the audit took 54 calls)
SETTLE_BUDGET_CALLS = 48
# a failure the audit found where every direction was within the caller's rule is judged again
# by that rule, element by element, on the Jacobian columns of this many of the audit's wrong
# coordinates (the worst first, then the first and last each wrong block counts wrong) ...
CALLER_RULE_COLUMNS = 4
# ... over every output element when there are at most this many, else over this many: the
# largest numeric entries of the columns and as many random ones (HardNet's backward costs 4 ms
# per row, batched or not: its 256 rows would cost 1 s)
CALLER_RULE_ALL_ROWS = 64
CALLER_RULE_ROWS = 8


def judge_fast(fn: TorchFunction, leaves, outputs, *, h, notes, tolerated, dtype, f0, atol, rtol,
               nondet_tol, check_backward_ad, check_forward_ad, check_batched_grad,
               check_batched_forward_grad, check_undefined_grad, check_grad_dtypes, strict,
               seed) -> None:
    """fast_mode at torch's cost: for each checked input a random unit direction u (uniform
    entries, as torch draws them) and for each judged output a random contraction v; the
    numeric v.(J u) of two evaluations per input against the analytic (v^T J).u (one backward
    per output, twice: reentrancy) and, with check_forward_ad, v.(J u) from forward AD. A
    passing check costs 1 + 2 x inputs evaluations, one fewer than torch's (its undefined-
    gradient test calls func again): the nondeterminism check (one more call at x) runs only
    once a direction is in question at the first step, when vmap's probe at x has not made
    that call already. A direction beyond
    the caller's rule (or beyond fastgrad's band, with strict) is measured again at half the
    step (truncation), then, when its disagreement moved with the step, at smaller ones
    (``_past_crossings``: a jump or kink crossed). When every direction still in question is
    within the caller's rule (a backward one, not strict), that rule decides element by element
    on Jacobian columns of the questioned inputs (``_settle``: a sample, then every column when
    they cost less than the audit); otherwise, or after a sample that passed, fastgrad's audit
    of a random contraction of the outputs localizes it, names the wrong coordinates and gives
    the verdict. A failure raises ``SubcheckFailed``."""
    del check_batched_grad, check_batched_forward_grad  # full-Jacobian side tests
    x = fn.x
    index = np.flatnonzero(np.isfinite(x))
    if index.size == 0:
        return
    owner = fn.layout.tensor_of(index)
    tensors = sorted(set(owner.tolist()))
    rng = np.random.default_rng([seed, 0x6661_7374])
    directions = np.zeros((len(tensors), x.size))
    for r, t in enumerate(tensors):
        u = rng.uniform(size=int(np.count_nonzero(owner == t)))
        directions[r, index[owner == t]] = u / np.linalg.norm(u)
    if h == "auto":
        # fastgrad's per-coordinate steps along the direction: coordinate i moves by
        # eps^(1/3) max(1, |x_i|) u_i (one scale for a whole tensor let its large entries set
        # the step of its small ones: a 3e-3 step where a 1/500 scale lives)
        directions *= np.maximum(1.0, np.abs(np.where(np.isfinite(x), x, 0.0)))[None, :]
        step = np.full(len(tensors), precision_of(dtype).step_scale)
    else:  # the caller's eps on the unit direction, as torch's fast mode
        step = np.full(len(tensors), float(h))
    out_starts = fn.out_layout.starts
    contractions = np.zeros((len(fn.positions), fn.out_layout.size))
    for p in range(len(fn.positions)):
        v = rng.uniform(size=int(out_starts[p + 1] - out_starts[p]))
        contractions[p, out_starts[p]:out_starts[p + 1]] = v / max(np.linalg.norm(v), 1e-300)

    def measure(h_r: np.ndarray, which: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(f+, f-, effective directions) of the directions ``which``: outputs at x +- h u
        rounded to the inputs' dtypes, and the directions the rounded points really differ
        along, per unit of h."""
        plus = (x + h_r[:, None] * directions[which]).astype(dtype).astype(np.float64)
        minus = (x - h_r[:, None] * directions[which]).astype(dtype).astype(np.float64)
        values = fn.many(np.concatenate([plus, minus]))
        return values[:len(h_r)], values[len(h_r):], (plus - minus) / (2 * h_r[:, None])

    f_plus, f_minus, effective = measure(step, np.arange(len(tensors)))
    # analytic: (v_p^T J) per judged output p, then dotted with each direction
    pairs = fn.differentiable(outputs)
    if check_backward_ad:
        rows = np.zeros((len(fn.positions), x.size))
        for p, _ in pairs:
            rows[p] = vjp_contracted(fn, leaves, outputs, contractions[p])
            again = vjp_contracted(fn, leaves, outputs, contractions[p])
            side_tests.reentrant_contracted(fn, rows[p], again, nondet_tol,
                                            fn.out_layout.names[p])
        if check_grad_dtypes and pairs:
            side_tests.grad_dtypes(fn, leaves, outputs)
    analytic = []  # (label, (directions, outputs) analytic contractions)
    if check_backward_ad:
        analytic.append(("", effective @ rows.T))
    if check_forward_ad:
        analytic.append((" (forward AD)", jvp_along(fn, effective) @ contractions.T))
    tol, _ = caller_tolerance(dtype, rtol)
    # (where, analytic, numeric, rel. error, within the caller's atol slack, beyond the caller's
    # rule) of each direction that disagrees after the second step
    questioned: list[tuple[str, float, float, float, bool, bool]] = []
    asked: set[int] = set()  # the inputs (layout positions) of the questioned directions
    forward_asked = False  # a forward-AD direction is questioned: the backward's columns cannot
    # settle it (the audit and its warnings do, as before)
    ignored = set(fn.ignored_by_torch(strict))
    detached: set[str] = set()
    for label, values in analytic:
        numeric = _contracted_numeric(f_plus, f_minus, step, contractions)
        bad, band, slack = _fast_verdicts(values, numeric, f_plus, f_minus, step, contractions,
                                          effective, tol=tol, dtype=dtype, atol=atol, rtol=rtol)
        if (bad | band).any():
            # a function that changes between calls (dropout left on) explains the disagreement;
            # asked only now, so that a passing check makes torch's evaluations
            side_tests.nondeterministic(fn, f0, nondet_tol)
            # half the step for the directions in question: truncation shrinks about 4x
            again = np.flatnonzero((bad | band).any(axis=1))
            half_step = step[again] * FAST_SECOND_STEP
            fp2, fm2, _ = measure(half_step, again)
            half = _contracted_numeric(fp2, fm2, half_step, contractions)
            first = numeric[again].copy()
            numeric[again] = (4 * half - numeric[again]) / 3
            bad[:], band[:] = False, False
            bad[again], band[again], slack[again] = _fast_verdicts(
                values[again], numeric[again], fp2, fm2, half_step, contractions,
                effective[again], tol=tol, dtype=dtype, atol=atol, rtol=rtol)
            if (bad | band).any() and np.dtype(dtype) == np.float64:
                _past_crossings(measure, values, numeric, bad, band, slack, again, first, half,
                                step, contractions, tol=tol, dtype=dtype, atol=atol,
                                rtol=rtol)
        for r, p in zip(*np.nonzero(bad | band)):
            a_rp, n_rp = float(values[r, p]), float(numeric[r, p])
            if p in ignored:  # torch ignores it: a warning, not a question for the audit
                detached.add(fn.out_layout.names[p])
                continue
            questioned.append((f"{fn.layout.names[tensors[r]]} -> {fn.out_layout.names[p]}{label}",
                               a_rp, n_rp, abs(a_rp - n_rp) / max(abs(a_rp), abs(n_rp)),
                               bool(slack[r, p]), bool(bad[r, p])))
            asked.add(tensors[r])
            forward_asked |= bool(label)
    warned = []
    settled = None
    if questioned and not strict and not forward_asked and \
            not any(beyond for *_, beyond in questioned):
        # every direction within the caller's rule: that rule, element by element, decides
        settled = _settle(fn, leaves, outputs, index, sorted(asked), h=h, dtype=dtype, f0=f0,
                          atol=atol, rtol=rtol, seed=seed, ignored=ignored)
        if settled is not None and not settled.judged.passed and not settled.complete:
            _fail_sampled(fn, settled, questioned, notes)
    if settled is not None and settled.complete:
        if not settled.judged.passed:  # the audit names the wrong coordinates
            report = _localize(fn, leaves, outputs, index, dtype=dtype, tol=max(tol, rtol),
                               seed=seed, ignored=ignored)
            _fail_complete(fn, settled, report, questioned, notes)
        if settled.judged.tolerated_count:
            tolerated.append((settled.judged.tolerated, settled.judged.tolerated_count))
    elif questioned:
        # a contraction hides one wrong element among many: the audit looks at coordinates,
        # judged by the caller's relative tolerance (fastgrad's band with strict)
        report = _localize(fn, leaves, outputs, index, dtype=dtype,
                           tol=tol if strict else max(tol, rtol), seed=seed, ignored=ignored)
        if report is not None:
            _judge_audit_failure(fn, leaves, outputs, index, report, questioned, h=h,
                                 dtype=dtype, f0=f0, atol=atol, rtol=rtol, seed=seed,
                                 strict=strict, notes=notes, warned=warned, ignored=ignored)
        if not strict:  # no coordinate beyond the caller's tolerance
            warned += [f"{where} along a random direction (rel. error {rel:.1e})"
                       for where, _, _, rel, within_slack, _ in questioned if not within_slack]
    if check_backward_ad and check_undefined_grad and pairs:
        side_tests.undefined_grad(fn, leaves, outputs)
    if detached:
        warned.append(f"{', '.join(sorted(detached))}: does not require grad, but its numeric "
                      "derivative along a random direction is not zero (torch's gradcheck "
                      "ignores an output that does not require grad when another one does)")
    if warned:
        tolerated.append((tuple(warned), len(warned)))


def _past_crossings(measure, values, numeric, bad, band, slack, again, first, half, step,
                    contractions, *, tol, dtype, atol, rtol) -> None:
    """Directions that still disagree after the second step, measured again at smaller steps
    (``FAST_SHRINK``) when the disagreement moved with the step: a jump crossed by the step
    doubles the numeric value when the step halves, a kink changes it, a wrong gradient leaves
    it where it was. Each level is judged as the first step is; a direction is cleared at the
    first smaller step where every output agrees and its roundoff floor would have shown a real
    error of the first step's size, and the shrinking stops once the disagreement no longer
    moves (a stable disagreement: the failure stands). Updates ``numeric``, ``bad``, ``band``
    and ``slack`` in place. float64 only: in lower precision the rounded inputs of a small step
    move along another direction than the analytic value's."""
    # positions in ``again`` (the directions re-measured at the second step) still in question
    position = {int(r): j for j, r in enumerate(again)}
    todo = [int(r) for r in again if (bad[r] | band[r]).any()]
    e_first = values[again] - first
    e_half = values[again] - half
    moved = np.abs(e_half - e_first) > FAST_MOVED * np.maximum(np.abs(e_first), np.abs(e_half))
    todo = [r for r in todo if moved[position[r]].any()]
    previous = {r: e_half[position[r]] for r in todo}
    # the outputs in question per direction: the floor must be small beside their disagreement
    asked = {r: bad[r] | band[r] for r in todo}
    for factor in FAST_SHRINK:
        if not todo:
            return
        rows = np.array(todo)
        small = step[rows] * factor
        fp, fm, effective = measure(small, rows)
        n_small = _contracted_numeric(fp, fm, small, contractions)
        b, bd, sl = _fast_verdicts(values[rows], n_small, fp, fm, small, contractions,
                                   effective, tol=tol, dtype=dtype, atol=atol, rtol=rtol)
        scale = (np.abs(fp) + np.abs(fm)) @ np.abs(contractions).T
        floor = noise_eps(dtype) * scale / (2 * small[:, None])
        left = []
        for j, r in enumerate(todo):
            e_small = values[r] - n_small[j]
            sharp = np.all((floor[j] <= FAST_FLOOR_FRACTION * np.abs(e_first[position[r]]))
                           [asked[r]])
            if not (b[j] | bd[j]).any() and sharp:
                numeric[r], bad[r], band[r], slack[r] = n_small[j], False, False, sl[j]
                continue
            still = np.abs(e_small - previous[r]) > FAST_MOVED * np.maximum(
                np.abs(e_small), np.abs(previous[r])) + floor[j]
            if still.any():  # still moving with the step: the next smaller one decides
                previous[r] = e_small
                left.append(r)
        todo = left


def _contracted_numeric(f_plus, f_minus, step, contractions) -> np.ndarray:
    """(directions, outputs): v_p . (f(x + h u) - f(x - h u)) / 2h."""
    return ((f_plus - f_minus) / (2 * step[:, None])) @ contractions.T


def _fast_verdicts(analytic, numeric, f_plus, f_minus, step, contractions, directions, *, tol,
                   dtype, atol, rtol) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(beyond the caller's rule, beyond fastgrad's band only, within the caller's atol slack),
    each (directions, outputs).

    The caller's rule is torch's for a contraction: |a - n| <= atol sum|u| sum(v) + rtol |n|
    (u the direction actually taken).
    A disagreement within the roundoff floor (eps x the contracted magnitude of the loss values
    over the step) is not evidence either way."""
    scale = (np.abs(f_plus) + np.abs(f_minus)) @ np.abs(contractions).T  # (directions, outputs)
    floor = noise_eps(dtype) * scale / (2 * step[:, None])
    diff = np.abs(analytic - numeric)
    with np.errstate(invalid="ignore", divide="ignore"):
        allowed = (atol * np.abs(directions).sum(axis=1)[:, None]
                   * contractions.sum(axis=1)[None, :])
        caller = ~(diff <= allowed + rtol * np.abs(numeric) + floor)
        rel = diff / np.maximum(np.abs(analytic), np.abs(numeric))
        band = ~(rel <= tol) & ~(diff <= floor) & ~caller
        # within the caller's atol slack: questioned (a contraction can hide one wrong element
        # among many), but not worth a warning when the audit clears it
        slack = diff <= floor + allowed
    return caller, band, slack


def _localize(fn: TorchFunction, leaves, outputs, index, *, dtype, tol, seed,
              ignored=frozenset()):
    """fastgrad's audit of a random contraction of the outputs, run after a fast-mode direction
    disagreed: its report when it failed (naming the wrong coordinates), else None. Non-finite
    (masked) input entries are held fixed."""
    from ... import audit  # the public audit, loaded only when a direction disagrees

    rng = np.random.default_rng([seed, 0x6c6f_6361])
    u = rng.standard_normal(fn.out_layout.size)
    starts = fn.out_layout.starts
    for p in ignored:  # outputs torch ignores are not part of the audited contraction
        u[starts[p]:starts[p + 1]] = 0.0
    grad = vjp_contracted(fn, leaves, outputs, u)[index]
    full = fn.x.copy()
    x = fn.x.astype(dtype)

    def loss(theta):
        full[index] = theta
        return float(fn.one(full) @ u)

    owner = fn.layout.tensor_of(index)
    segments = {n: (int(np.count_nonzero(owner == t)),) for t, n in enumerate(fn.layout.names)
                if np.any(owner == t)}
    report = audit(loss, x[index], grad, segments=segments, seed=seed, tol=tol, workers=1,
                   jit=False)
    return None if report.passed else report


def _shown(questioned) -> list[str]:
    return [f"{where}: analytic {a:.6g}, numeric {n:.6g} (rel. error {rel:.1e})"
            for where, a, n, rel, *_ in questioned]


def _head(fn: TorchFunction, questioned, notes, middle: str) -> str:
    """A fast-mode failure's first lines: the directions that disagreed, ``middle`` (what judged
    them), the outputs among them that do not require grad, and the check's notes."""
    shown = _shown(questioned)
    head = ("fast mode: a random direction disagreed (" + "; ".join(shown[:4])
            + (" ..." if len(shown) > 4 else "") + f"){middle}:\n")
    lost = [f"{fn.out_prefix}{j}" for j in fn.no_grad
            if any(where.split(" -> ")[1].split(" ")[0] == f"{fn.out_prefix}{j}"
                   for where, *_ in questioned)]
    if lost:
        head = f"{', '.join(lost)} does not require grad; " + head
    return head + "".join(f"{note}\n" for note in notes)


_RULE = "the caller's rule |a - n| <= atol + rtol |n| element by element"


def _fail_sampled(fn: TorchFunction, settled: _Settled, questioned, notes) -> None:
    """The failure of a sample of columns (``_settle``): the wrong elements found, and how many
    of the sampled coordinates have one. No audit runs: on a function this costly it would take
    at least SETTLE_BUDGET_CALLS calls to name every wrong coordinate."""
    report = settled.judged.report
    coords = report.coords
    wrong = np.unique(coords.column("index")[coords.column("failed").astype(bool)])
    inputs = sorted({fn.layout.names[t] for t in fn.layout.tensor_of(settled.cols).tolist()})
    spread = (": every one sampled is wrong, so the error is likely spread over the input, "
              "not in a few coordinates" if wrong.size == settled.cols.size > 1 else "")
    middle = (f", within the caller's rule along it; {_RULE} fails on the Jacobian columns of "
              f"{wrong.size} of {settled.cols.size} random coordinates of {', '.join(inputs)} "
              f"({settled.candidates} coordinates{settled.rows_note}){spread} "
              f"({settled.evaluations} evaluations; the count below is the whole check's). "
              "fastgrad's audit, which names every wrong coordinate, was not run (it costs at "
              f"least {SETTLE_BUDGET_CALLS} calls of the function); fast_mode=False judges every "
              "element")
    raise SubcheckFailed("fast mode", _head(fn, questioned, notes, middle) + str(report), report)


def _fail_complete(fn: TorchFunction, settled: _Settled, audit_report, questioned,
                   notes) -> None:
    """The failure of every column of the questioned inputs (``_settle``), with the audit's
    localization when it found the wrong coordinates (its report is then the failure's)."""
    inputs = sorted({fn.layout.names[t] for t in fn.layout.tensor_of(settled.cols).tolist()})
    middle = (f", within the caller's rule along it; {_RULE} fails on the Jacobian columns of "
              f"every coordinate of {', '.join(inputs)}")
    if audit_report is None:
        raise SubcheckFailed("fast mode", _head(fn, questioned, notes, middle)
                             + str(settled.judged.report), settled.judged.report)
    text = (_head(fn, questioned, notes, middle + "; fastgrad's audit localized it")
            + str(audit_report) + f"\n{_RULE} on those columns ({settled.evaluations} "
            "evaluations; the count below is the whole check's):\n" + str(settled.judged.report))
    raise SubcheckFailed("fast mode", text, audit_report)


def _judge_audit_failure(fn: TorchFunction, leaves, outputs, index, report, questioned, *,
                         h, dtype, f0, atol, rtol, seed, strict, notes, warned,
                         ignored) -> None:
    """The verdict on a failed audit: ``SubcheckFailed`` "fast mode" naming its coordinates,
    unless every direction was within the caller's rule (only fastgrad's band questioned it)
    and the caller's rule, element by element on the audit's wrong coordinates' Jacobian
    columns (``_caller_rule_columns``), accepts every element: then the coordinates go into
    ``warned`` (a GradcheckWarning; strict fails them)."""
    columns, before = None, fn.evaluations
    if not strict and not any(beyond for *_, beyond in questioned):
        columns = _caller_rule_columns(fn, leaves, outputs, index, report, h=h, dtype=dtype,
                                       f0=f0, atol=atol, rtol=rtol, seed=seed, ignored=ignored)
        if columns is not None and columns.passed:
            names = [f"{fn.layout.where(int(index[r.index]))} (rel. error {r.rel_error:.1e} "
                     f"along the audit's contraction)" for r in report.suspect_records[:3]]
            names += [f"{fn.layout.where(int(index[b.start]))} .. "
                      f"{fn.layout.where(int(index[b.stop - 1]))} (a block)"
                      for b in report.blocks[:2]]
            warned.append("fastgrad's audit found " + "; ".join(names) + " beyond its relative "
                          "band, and every element of their Jacobian columns is within the "
                          "caller's tolerance")
            return
    head = _head(fn, questioned, notes, "; fastgrad's audit localized it")
    tail = ""
    if columns is not None:
        # the Jacobian report counts every evaluation of the check (fast mode's directions and
        # the audit's too): say which part the columns cost
        tail = (f"\n{_RULE} on these coordinates' Jacobian columns ({fn.evaluations - before} "
                "more evaluations; the count below is the whole check's):\n" + str(columns))
    elif not strict and not any(beyond for *_, beyond in questioned):
        tail = ("\n(the caller's rule was not applied element by element: that would judge "
                "part of a complex output)")
    raise SubcheckFailed("fast mode", head + str(report) + tail, report)


class _Rows:
    """An evaluator whose outputs are restricted to some of their elements (``rows``)."""

    def __init__(self, ev: Evaluator, rows: np.ndarray):
        self.ev, self.rows = ev, rows

    def __getattr__(self, name):
        return getattr(self.ev, name)

    def pairs(self, index, step, label=None):
        fp, fm = self.ev.pairs(index, step)
        return fp[:, self.rows], fm[:, self.rows]


def _caller_rule_columns(fn: TorchFunction, leaves, outputs, index, report, *, h, dtype, f0,
                         atol, rtol, seed, ignored):
    """The caller's rule (``_judge_columns``) on the Jacobian columns of up to
    ``CALLER_RULE_COLUMNS`` of the audit's wrong coordinates, the worst suspects first, then
    the first and last coordinate each wrong block counts wrong (its zeros found right are not:
    a block of 400 whose one nonzero gradient is wrong is judged at that one). None when
    complex outputs would have to be split."""
    picked = [r.index for r in sorted(report.suspect_records, key=lambda r: -r.rel_error)]
    suspects = np.asarray(report.suspects)
    for b in report.blocks:
        counted = suspects[(suspects >= b.start) & (suspects < b.stop)]
        picked += [int(counted[0]), int(counted[-1])] if counted.size else [b.start,
                                                                            b.stop - 1]
    cols = np.array(list(dict.fromkeys(int(index[i]) for i in picked))[:CALLER_RULE_COLUMNS],
                    dtype=np.int64)
    judged = _judge_columns(fn, leaves, outputs, cols, Evaluator(fn), h=h, dtype=dtype, f0=f0,
                            atol=atol, rtol=rtol, seed=seed, ignored=ignored)
    return None if judged is None else judged[0]


@dataclass(frozen=True)
class _Settled:
    """What ``_settle`` judged: the verdict on ``cols`` (a ``Judged``: ``.passed``,
    ``.report``, ``.tolerated``), and whether those are every column of the questioned inputs
    over every output element torch judges."""

    judged: object
    complete: bool
    cols: np.ndarray
    candidates: int  # coordinates of the questioned inputs
    evaluations: int  # calls of the function the settling made
    rows_note: str  # ", over 8 of 256 output elements" when the rows were sampled


def _settle(fn: TorchFunction, leaves, outputs, index, asked, *, h, dtype, f0, atol, rtol,
            seed, ignored) -> _Settled | None:
    """The caller's rule element by element on the Jacobian columns of the questioned inputs
    ``asked``. ``SAMPLED_COLUMNS`` random coordinates are judged first: a failure there is
    the check's. When they pass and at most ``CALLER_RULE_ALL_ROWS`` output elements are
    judged, the other columns are evaluated in chunks, each as large as the rest of
    ``SETTLE_BUDGET_CALLS`` calls of the function buys at the rate measured so far (a batched
    call's own cost makes the first rate the slowest), and judged all together when every one
    fits: the question is settled completely. Else the sample's verdict is returned
    (incomplete: the audit decides). None when complex outputs would have to be split."""
    candidates = index[np.isin(fn.layout.tensor_of(index), asked)]
    order = np.random.default_rng([seed, 0x7365_7474]).permutation(candidates)
    x = fn.x.astype(dtype)
    ev = Evaluator(fn)
    before = fn.evaluations
    rows = _judged_rows(fn, ignored).size
    sample = np.sort(order[:SAMPLED_COLUMNS])
    started = time.perf_counter()
    plus, minus = map(list, zip(ev.pairs(sample, coordinate_steps(x[sample], h, dtype))))
    spent = time.perf_counter() - started
    judged = _judge_columns(fn, leaves, outputs, sample, ev, h=h, dtype=dtype, f0=f0, atol=atol,
                            rtol=rtol, seed=seed, ignored=ignored, lazy=True,
                            sampled_rows=SAMPLED_ROWS)
    if judged is None:
        return None
    report, judged_rows = judged
    note = "" if judged_rows == rows else f", over {judged_rows} of {rows} output elements"
    if sample.size == candidates.size or not report.passed or rows > CALLER_RULE_ALL_ROWS:
        return _Settled(report, sample.size == candidates.size and judged_rows == rows, sample,
                        int(candidates.size), fn.evaluations - before, note)
    # the rest of the columns within the budget; a backward pass per row costs about a call
    call = fn.call_seconds or spent / (2 * sample.size)
    budget = (SETTLE_BUDGET_CALLS - rows) * call
    done = sample.size
    while done < order.size:
        size = int((budget - spent) / (spent / done))
        if size < 1:
            return _Settled(report, False, sample, int(candidates.size),
                            fn.evaluations - before, note)
        part = order[done:done + size]
        started = time.perf_counter()
        fp, fm = ev.pairs(part, coordinate_steps(x[part], h, dtype))
        spent += time.perf_counter() - started
        plus.append(fp)
        minus.append(fm)
        done += part.size
    # every column, in the inputs' order, judged from the values just evaluated
    evaluated = np.concatenate([sample, order[sample.size:]])
    arranged = np.argsort(evaluated, kind="stable")
    cols = evaluated[arranged]
    ev.keep(cols, coordinate_steps(x[cols], h, dtype), np.concatenate(plus)[arranged],
            np.concatenate(minus)[arranged])
    judged = _judge_columns(fn, leaves, outputs, cols, ev, h=h, dtype=dtype, f0=f0, atol=atol,
                            rtol=rtol, seed=seed, ignored=ignored, lazy=True)
    return _Settled(judged[0], True, cols, int(candidates.size), fn.evaluations - before, "")
def _judged_rows(fn: TorchFunction, ignored) -> np.ndarray:
    """The flat output elements torch judges (the outputs not ``ignored``)."""
    starts = fn.out_layout.starts
    parts = [np.arange(starts[p], starts[p + 1]) for p in range(len(fn.out_layout.names))
             if p not in ignored]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _judge_columns(fn: TorchFunction, leaves, outputs, cols, ev, *, h, dtype, f0, atol, rtol,
                   seed, ignored, lazy=False, sampled_rows=CALLER_RULE_ROWS):
    """(report, output elements judged): the caller's rule (full mode's judge: fastgrad's steps
    and re-checks) on the Jacobian columns ``cols`` over the outputs torch judges (not
    ``ignored``). The analytic values are the backward's: every output row when there are at
    most ``CALLER_RULE_ALL_ROWS`` (batched and checked against one plain backward, as full
    mode's), else ``sampled_rows`` rows, one backward pass each: half where the numeric
    columns are largest, half at random. ``lazy``: a ``Judged`` (full mode's quick pass, the
    report built when read) instead of the report. None when complex outputs would have to be
    split."""
    x = fn.x.astype(dtype)
    step = coordinate_steps(x[cols], h, dtype)
    layout = fn.out_layout
    rows = _judged_rows(fn, ignored)
    if rows.size > CALLER_RULE_ALL_ROWS:
        fp, fm = ev.pairs(cols, step)  # kept by the evaluator for the judge's same call
        largest = rows[np.argsort(-np.abs(fp - fm)[:, rows].max(axis=0), kind="stable")]
        half = sampled_rows // 2
        rest = largest[half:]
        rows = np.sort(np.concatenate([largest[:half], np.random.default_rng(
            [seed, 0x726f_7773]).choice(rest, size=sampled_rows - half, replace=False)]))
    if rows.size < layout.size:
        if any(layout.complex):
            return None
        ev = _Rows(ev, rows)
        owner = layout.tensor_of(rows)
        kept = sorted(set(owner.tolist()))
        layout = Layout(tuple(layout.names[t] for t in kept),
                        tuple(layout.shapes[t] for t in kept), (False,) * len(kept),
                        tuple(rows[owner == t] - layout.starts[t] for t in kept))
    jacobian = None
    if CALLER_RULE_ROWS < rows.size == fn.out_layout.size:
        try:
            jacobian = vjp_rows(fn, leaves, outputs, rows, batched=True)
        except Exception:  # no batching rule for this backward: one pass per row
            jacobian = None
        if jacobian is not None and not batched_rows_agree(fn, leaves, outputs, jacobian, seed):
            jacobian = None  # the batching rule differs from the backward users run
    if jacobian is None:
        jacobian = vjp_rows(fn, leaves, outputs, rows, batched=False)
    tol, tol_reason = caller_tolerance(dtype, rtol)
    report = judge_jacobian(ev, x, f0[rows], jacobian, cols, step, tol=tol,
                            tol_reason=tol_reason, noise_eps=noise_eps(dtype), atol=atol,
                            rtol=rtol, inputs=fn.layout, outputs=layout, seed=seed, lazy=lazy)
    return report, int(rows.size)
