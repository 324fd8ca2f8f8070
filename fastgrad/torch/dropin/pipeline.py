"""One gradcheck from prepared inputs: fastgrad's automatic steps first, the caller's eps when
func raises there, the full or the fast judge."""

from __future__ import annotations

import numpy as np

from ...arguments import non_negative_float
from ...checks.jacobian import first_words
from ...errors import InvalidValue
from .fast import judge_fast
from .flatten import Raised, TorchFunction, precision_dtype
from .full import judge_full

TORCH_EPS = 1e-6  # torch.autograd.gradcheck's default step: "auto" steps replace it


def parse_options(eps, atol, rtol, nondet_tol):
    eps = non_negative_float("eps", eps)
    if eps == 0.0:
        raise InvalidValue("eps: expected a positive step, got 0")
    return eps, non_negative_float("atol", atol), non_negative_float("rtol", rtol), \
        non_negative_float("nondet_tol", nondet_tol)


def run_check(fn: TorchFunction, *, eps, atol, rtol, nondet_tol, check_backward_ad,
              check_forward_ad, check_batched_grad, check_batched_forward_grad, check_undefined_grad,
              check_grad_dtypes, fast_mode, strict, tolerated: list,
              seed=0) -> None:
    """The check, at fastgrad's automatic steps and, when func raises at a perturbed input
    there, again at the caller's ``eps`` (torch's default 1e-6 when not given): a solver that
    rejects one step but not another is checked where torch checks it. A raise at the caller's
    step too is re-raised (its own exception) with a note naming the coordinate and step.
    ``tolerated`` receives (elements, count) of a passing check's tolerated elements. A failing
    check raises the Jacobian core's ``SubcheckFailed``."""
    leaves, outputs, positions = fn.reference()
    fn.set_outputs(outputs, positions)
    if not positions or fn.out_layout.size == 0:
        return  # no floating-point output: nothing to judge (torch's gradcheck passes)
    dtype = precision_dtype([fn.inputs[k].dtype for k in fn.checked] + fn.out_dtypes)
    # the recorded evaluation is f0; the second evaluation at x that shows random ops is the
    # vmap probe of the first batch (``fn.probed``) or, without one, a plain call
    if fn.sparse:  # the perturbed inputs may be fully specified where the recorded one is not
        f0 = fn.one(fn.x)
    else:
        f0 = fn.flat_outputs(outputs, None)
        fn.evaluations += 1
    fn.at_x = f0
    options = dict(dtype=dtype, f0=f0, atol=atol, rtol=rtol, nondet_tol=nondet_tol,
                   check_backward_ad=check_backward_ad, check_forward_ad=check_forward_ad,
                   check_batched_grad=check_batched_grad,
                   check_batched_forward_grad=check_batched_forward_grad,
                   check_undefined_grad=check_undefined_grad,
                   check_grad_dtypes=check_grad_dtypes, strict=strict, seed=seed)
    steps = ["auto", eps] if eps == TORCH_EPS else [eps]
    notes: tuple[str, ...] = ()
    for attempt, h in enumerate(steps):
        try:
            judge = judge_fast if fast_mode else judge_full
            judge(fn, leaves, outputs, h=h, notes=notes, tolerated=tolerated, **options)
        except Raised as raised:
            where = _where_raised(fn, raised.row)
            error = raised.error
            if where and attempt + 1 < len(steps):
                notes = (f"func raised at fastgrad's automatic step ({where}: "
                         f"{type(error).__name__}: {first_words(str(error))}); checked at "
                         f"the caller's eps={eps:g}",)
                fn.retry_batching()  # vmap may batch this step
                continue
            _add_note(error, f"fastgrad gradcheck: func raised while evaluating "
                             f"{where or 'the unperturbed inputs'}"
                      + (" (also at fastgrad's automatic step before)" if attempt else ""))
            raise error from None
        return
    raise AssertionError("unreachable")  # pragma: no cover


def _where_raised(fn: TorchFunction, row: np.ndarray) -> str:
    """The perturbation of ``row`` from x in words ('' at x itself)."""
    with np.errstate(invalid="ignore"):
        moved = np.flatnonzero(~((row == fn.x) | (np.isnan(row) & np.isnan(fn.x))))
    if moved.size == 0:
        return ""
    if moved.size == 1:
        i = int(moved[0])
        delta = float(row[i] - fn.x[i])
        return f"{fn.layout.where(i)} {'+' if delta > 0 else '-'} {abs(delta):.3g}"
    owners = sorted({fn.layout.names[t] for t in fn.layout.tensor_of(moved)})
    norm = float(np.linalg.norm(row[moved] - fn.x[moved]))
    return f"a step of length {norm:.3g} along a random direction of {', '.join(owners)}"


def _add_note(error: BaseException, note: str) -> None:
    """Add a line to an exception's message (PEP 678 notes; Python 3.10: its args)."""
    if hasattr(error, "add_note"):
        error.add_note(note)
    elif error.args and isinstance(error.args[0], str):  # pragma: no cover - Python 3.10
        error.args = (f"{error.args[0]}\n{note}", *error.args[1:])

