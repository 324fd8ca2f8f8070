"""The full check: every input coordinate against every output element, the backward's rows and
the forward-mode columns each judged by the Jacobian core."""

from __future__ import annotations

import numpy as np

from ...checks.jacobian import Judged, SubcheckFailed, judge_jacobian, merged, screen_streamed
from ...steps import coordinate_steps, noise_eps
from . import analytic, side_tests
from .flatten import Evaluator, TorchFunction, caller_tolerance

# a numeric Jacobian (coordinates x outputs) of more values than this is screened chunk by chunk
# and not kept when the check passes (screen_streamed); smaller ones are kept for the judges
STREAM_MIN_VALUES = 1 << 20


# up to this many analytic rows are one backward pass each, twice (reentrancy): a batched pass
# and its probe cost about as much as 8 plain ones
UNBATCHED_ROWS = 4


class _Unbatched(Exception):
    """The analytic rows are computed one by one (too few to batch)."""


def _failing_outputs(report) -> set[str]:
    """The names of the outputs with a failing segment ("input0/output1" -> "output1")."""
    return {name.split("/", 1)[1].split(" ", 1)[0]
            for name, seg in getattr(report, "segments", {}).items()
            if not seg.passed and "/" in name}


def _no_grad_message(fn: TorchFunction, report) -> str:
    """The first line of a failure in outputs that do not require grad, when one failed."""
    failing = _failing_outputs(report)
    lost = [f"{fn.out_prefix}{j}" for j in fn.no_grad if f"{fn.out_prefix}{j}" in failing]
    if not lost:
        return ""
    return (f"{', '.join(lost)} does not require grad, but its numeric Jacobian is not zero: "
            "the function lost its gradient path (a .detach(), .item(), a numpy round trip or "
            "torch.no_grad() inside); torch's gradcheck fails it too\n")


def _only_ignored_outputs(fn: TorchFunction, report, strict: bool) -> list[str]:
    """The outputs that failed when every failing segment is an output torch ignores
    (``fn.ignored_by_torch``); else [] (the failure stands)."""
    ignored = {fn.out_layout.names[p] for p in fn.ignored_by_torch(strict)}
    failing = _failing_outputs(report)
    if not ignored or not failing or not failing <= ignored:
        return []
    return sorted(failing)


def judge_full(fn: TorchFunction, leaves, outputs, *, h, notes, tolerated, dtype, f0, atol, rtol,
               nondet_tol, check_backward_ad, check_forward_ad, check_batched_grad,
               check_batched_forward_grad, check_undefined_grad, check_grad_dtypes, strict,
               seed) -> None:
    """The full Jacobians judged element by element at first steps ``h``; a failure raises
    ``SubcheckFailed`` ("jacobian" with the report, or the side test's name)."""
    x = fn.x.astype(dtype)
    finite = np.isfinite(fn.x)
    index = np.flatnonzero(finite)
    skipped = tuple(fn.layout.where(int(i)) for i in np.flatnonzero(~finite))
    tol, tol_reason = caller_tolerance(dtype, rtol)
    step = coordinate_steps(x[index], h, dtype)
    ev = Evaluator(fn)
    # the numeric columns of a large Jacobian are screened as they come and never kept, once
    # the analytic Jacobians are known: evaluate them first then
    streamed = index.size > 1 and index.size * fn.out_layout.size > STREAM_MIN_VALUES
    if not streamed:
        ev.pairs(index, step)  # the numeric columns, kept for the judges; the vmap probe runs
    analytic = _analytic(fn, leaves, outputs, seed=seed, nondet_tol=nondet_tol,
                         check_backward_ad=check_backward_ad,
                         check_forward_ad=check_forward_ad,
                         check_batched_grad=check_batched_grad,
                         check_batched_forward_grad=check_batched_forward_grad,
                         check_grad_dtypes=check_grad_dtypes)
    if not analytic:
        return
    if fn.no_grad:
        notes += (f"{', '.join(f'{fn.out_prefix}{j}' for j in fn.no_grad)} does not require "
                  "grad: its analytic Jacobian is zero",)
    common = dict(tol=tol, tol_reason=tol_reason, noise_eps=noise_eps(dtype), atol=atol,
                  rtol=rtol, inputs=fn.layout, outputs=fn.out_layout, seed=seed,
                  skipped=skipped, strict=strict)

    def judged(jac, options, lazy=True):
        options = dict(options, notes=notes + tuple(options.get("notes", ())))
        # a failure ends at its worst coordinate's re-checks, as torch's ends at its first
        return judge_jacobian(ev, x, f0, jac, index, step, **common, **options, lazy=lazy,
                              fail_fast=True, before_rechecks=repeatable)

    def repeatable():
        # a function that changes between calls (dropout left on) explains what the first
        # step left in question; asked only then, so that a passing check makes torch's
        # evaluations
        side_tests.nondeterministic(fn, f0, nondet_tol)

    if streamed:
        quick = screen_streamed(ev, index, step, [jac for jac, _ in analytic], tol=tol,
                                noise_eps=noise_eps(dtype), atol=atol, rtol=rtol)
        # passed: the report (columns evaluated again) only if somebody reads it
        reports = [Judged(True, lambda a=a: judged(*a, lazy=False)) for a in analytic] \
            if quick else [judged(*a) for a in analytic]
    else:
        reports = [judged(*a) for a in analytic]

    def report():  # built only when a failure shows it
        return merged([r.report for r in reports])

    if not all(r.passed for r in reports):
        failed = report()
        ignored = _only_ignored_outputs(fn, failed, strict)
        if not ignored:
            raise SubcheckFailed("jacobian", _no_grad_message(fn, failed) + str(failed), failed)
        tolerated.append(((f"{', '.join(ignored)}: does not require grad, but its numeric "
                           "Jacobian is not zero (torch's gradcheck ignores an output that does "
                           "not require grad when another one does)",), len(ignored)))
    if check_backward_ad and check_undefined_grad and fn.differentiable(outputs):
        side_tests.undefined_grad(fn, leaves, outputs, report)
    tolerated += [(r.tolerated, r.tolerated_count) for r in reports if r.tolerated_count]


def _analytic(fn: TorchFunction, leaves, outputs, *, seed, nondet_tol, check_backward_ad,
              check_forward_ad, check_batched_grad, check_batched_forward_grad,
              check_grad_dtypes) -> list[tuple[np.ndarray, dict]]:
    """The analytic Jacobians to judge, each with judge_jacobian's options: the backward's
    rows (vector-Jacobian products, batched and probed against the real backward) and the
    forward-mode columns. The side tests on the way raise ``SubcheckFailed`` (the batched
    rows differ from one-by-one ones when check_batched_grad asks, dtypes, reentrancy)."""
    out: list[tuple[np.ndarray, dict]] = []
    if check_backward_ad and not fn.differentiable(outputs):
        # no output requires grad: the analytic Jacobian is zero (no backward to test)
        out.append((np.zeros((fn.out_layout.size, fn.layout.size)), dict()))
    elif check_backward_ad:
        notes: list[str] = []
        rows = np.arange(fn.out_layout.size)
        try:
            if rows.size <= UNBATCHED_ROWS and not check_batched_grad:
                # a few backward passes cost less than one batched pass and its probe
                raise _Unbatched
            jac = analytic.vjp_rows(fn, leaves, outputs, rows, batched=True)
            batched = True
            # the backward users run is the unbatched one: a batching rule that differs from
            # it on any row (a decomposition that is right where the real backward is not, or
            # the reverse) is not trusted
            if not analytic.batched_rows_agree(fn, leaves, outputs, jac, seed):
                jac = analytic.vjp_rows(fn, leaves, outputs, rows, batched=False)
                batched = False
                notes.append("batched vector-Jacobian products differ from the backward "
                             "itself: every row computed one by one")
        except _Unbatched:
            jac = analytic.vjp_rows(fn, leaves, outputs, rows, batched=False)
            batched = False
        except Exception as exc:
            if check_batched_grad:
                raise SubcheckFailed("check_batched_grad", (
                    f"check_batched_grad: vmap over the backward failed: "
                    f"{type(exc).__name__}: {exc}")) from None
            jac = analytic.vjp_rows(fn, leaves, outputs, rows, batched=False)
            batched = False
        if check_grad_dtypes:
            side_tests.grad_dtypes(fn, leaves, outputs)
        if check_batched_grad:
            single = analytic.vjp_rows(fn, leaves, outputs, rows, batched=False)
            side_tests.batched_rows(fn, jac, single)
            side_tests.reentrant(fn, leaves, outputs, single, nondet_tol)
        elif nondet_tol > 0 or not batched:
            side_tests.reentrant(fn, leaves, outputs, jac, nondet_tol, batched)

        def refine(r):
            return analytic.vjp_rows(fn, leaves, outputs, r, batched=False)

        out.append((jac, dict(notes=tuple(notes), refine=refine if batched else None)))
    if check_forward_ad:
        cols = np.arange(fn.layout.size)
        try:
            jac_fwd = analytic.jvp_columns(fn, cols, batched=True)
            fwd_note = "forward AD: batched torch.func.jvp"
        except Exception as exc:
            if check_batched_forward_grad:
                raise SubcheckFailed("check_batched_forward_grad", (
                    f"check_batched_forward_grad: vmap over forward AD failed: "
                    f"{type(exc).__name__}: {exc}")) from None
            jac_fwd = analytic.jvp_columns(fn, cols, batched=False)
            fwd_note = "forward AD: one dual-number pass per input coordinate"
        if check_batched_forward_grad:
            side_tests.batched_columns(jac_fwd, analytic.jvp_columns(fn, cols, batched=False))
        out.append((jac_fwd, dict(notes=(fwd_note,), mode=" (forward AD)")))
    return out
