"""Drop-in ``torch.autograd.gradcheck`` and ``gradgradcheck``: full Jacobians judged by fastgrad.

``from fastgrad.torch import gradcheck`` in a test suite: the same signature and calling
conventions as torch's, the same exception class (a subclass), and a verdict per Jacobian element
with fastgrad's relative errors, kink and noise re-checks. The perturbed inputs are evaluated in
one ``torch.func.vmap`` call when the function allows it (one call per perturbation otherwise,
said in the report's path line); the analytic rows are batched vector-Jacobian products.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.gradcheck import GradcheckError as TorchGradcheckError

from ...arguments import strict_option
from ...checks.jacobian import SubcheckFailed, warn_tolerated
from ...errors import DropinCheckError, InvalidValue
from .flatten import TorchFunction, as_tuple, differentiable_outputs
from .pipeline import parse_options, run_check

__all__ = ["GradcheckError", "gradcheck", "gradgradcheck"]


class GradcheckError(DropinCheckError, TorchGradcheckError):
    """Raised by ``fastgrad.torch.gradcheck``/``gradgradcheck`` when a check fails.

    A subclass of ``torch.autograd.gradcheck.GradcheckError`` (existing ``pytest.raises`` keep
    working) and of ``fastgrad.GradientCheckError``; the message is the report's table naming
    input, output and coordinate, and ``.report`` holds the report (None for failures found
    before any Jacobian was judged, e.g. a backward that is not reentrant). Its ``__init__`` is
    ``fastgrad.errors.DropinCheckError``'s, the base of both drop-ins' errors.

    Parameters
    ----------
    message : str
        What failed.
    report : fastgrad.Report or fastgrad.AuditReport, optional
        The report of the failing check.

    Examples
    --------
    >>> import torch, fastgrad.torch
    >>> issubclass(fastgrad.torch.GradcheckError, torch.autograd.gradcheck.GradcheckError)
    True
    """


def gradcheck(
    func: Callable[..., Any],
    inputs: Any,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    raise_exception: bool = True,
    nondet_tol: float = 0.0,
    check_undefined_grad: bool = True,
    check_grad_dtypes: bool = False,
    check_batched_grad: bool = False,
    check_batched_forward_grad: bool = False,
    check_forward_ad: bool = False,
    check_backward_ad: bool = True,
    fast_mode: bool = False,
    masked: bool | None = None,
    strict: bool | None = None,
) -> bool:
    """Check ``func``'s full Jacobian against centered differences: torch's ``gradcheck``.

    A drop-in for ``torch.autograd.gradcheck`` (same signature, same conventions): every input
    coordinate of every input that requires grad against every element of every floating-point
    output. ``func`` is called as torch calls it: with the caller's own input objects (a
    Parameter stays that Parameter, requires grad, grad mode on), perturbed in place and
    restored bitwise after every call, as torch does; perturbed inputs are batched in
    ``torch.func.vmap`` calls only where the batched value at x equals a plain call's bit for
    bit. Analytic rows are vector-Jacobian products (batched); each element is judged as
    ``fastgrad.check`` judges a coordinate: relative error, roundoff floor, kink re-checks at
    smaller steps.

    The caller's tolerance is the contract: an element fails where torch's rule
    ``|a - n| <= atol + rtol |n|`` fails at fastgrad's numeric value (after its re-checks) and
    the disagreement is not roundoff noise or an excused kink. Elements within that rule but
    beyond fastgrad's own band (relative error 1e-4 in float64, 3e-3 in float32) pass with a
    ``fastgrad.GradcheckWarning`` naming them, and fail with ``strict=True``. An output that
    does not require grad (``.detach()``, a numpy round trip) must have a zero numeric
    Jacobian, as in torch. The first step of each coordinate is fastgrad's automatic one
    (``eps^(1/3) max(1, |x|)``) when ``eps`` is torch's default 1e-6, else ``eps``; when
    ``func`` raises at the automatic step, the check runs again at ``eps``.

    Parameters
    ----------
    func : callable
        ``func(*inputs)`` returning a tensor or a tuple of tensors. Integer outputs are not
        judged; floating outputs that do not require grad must have a zero numeric Jacobian.
    inputs : tensor or tuple
        The arguments; floating or complex tensors with ``requires_grad=True`` are checked,
        everything else (integer tensors, numbers, other objects) is passed through. Entries
        that are not finite (masked ``-inf``) are not perturbed; they are listed as skipped.
    eps : float
        Torch's finite-difference step; the default means "automatic steps".
    atol : float
        Absolute tolerance: an element within it never fails.
    rtol : float
        Relative tolerance of torch's rule; also caps fastgrad's relative band.
    raise_exception : bool
        Raise ``GradcheckError`` on failure (default) or return False.
    nondet_tol : float
        Allowed difference between two evaluations (forward and backward) at the same inputs.
    check_undefined_grad : bool
        Also run backward with an undefined gradient for each output (must not raise).
    check_grad_dtypes : bool
        Also require the gradients' dtype and device to be the inputs'.
    check_batched_grad : bool
        Also compare vmap'd vector-Jacobian products with one-by-one ones.
    check_batched_forward_grad : bool
        Also compare vmap'd Jacobian-vector products with one-by-one ones.
    check_forward_ad : bool
        Also judge forward-mode AD (JVP columns) against the numeric Jacobian.
    check_backward_ad : bool
        Judge backward-mode AD (default True).
    fast_mode : bool
        Torch's fast mode at torch's cost: one random direction per input and one random
        contraction per output (1 + 2 x inputs evaluations when it passes, +1 when they run one
        by one: vmap cannot batch them, or plain calls cost less than a vmap call); a direction
        that disagrees is re-measured at half the step (and, when its disagreement moved
        with the step, a jump or kink crossed, at 1/10 to 1/1000 of it) and then localized by
        fastgrad's audit, which names the wrong coordinates (``.report.suspects``).
    masked : bool or None
        Sparse (COO, CSR, CSC) inputs, torch's semantics: True perturbs and judges only the
        specified elements (the gradient at unspecified ones is ignored); False or None (as in
        torch) passes each perturbed input with every element specified and requires the
        backward of the caller's tensor to give the dense gradient. Sparse inputs are evaluated
        one call per perturbation (vmap does not batch them); forward AD of sparse inputs is
        not supported.
    strict : bool or None
        Fail elements within the caller's tolerance but beyond fastgrad's band instead of
        warning; None reads ``$FASTGRAD_STRICT`` ("1": strict; ``pytest --fastgrad-strict``).

    Returns
    -------
    bool
        True when the check passes; False when it fails and ``raise_exception`` is False.

    Raises
    ------
    fastgrad.torch.GradcheckError
        When the check fails (and ``raise_exception``): the message is the report's table,
        ``.report`` the report.
    Exception
        What ``func`` raised at a perturbed input at both steps, with a note naming the
        coordinate and the step.
    ValueError
        When no input requires grad, a tolerance is negative, an output is sparse, or
        ``check_forward_ad`` is asked of sparse inputs.
    TypeError
        When a checked input is not a float32/float64/complex tensor, or has a layout other
        than strided, sparse COO, CSR or CSC.

    Examples
    --------
    >>> import torch, fastgrad.torch
    >>> x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    >>> fastgrad.torch.gradcheck(lambda x: (x.sin(), x.exp().sum(1)), (x,))
    True
    """
    eps, atol, rtol, nondet_tol = parse_options(eps, atol, rtol, nondet_tol)
    strict = strict_option(strict)
    inputs = as_tuple(inputs)
    names = [f"input{k}" for k in range(len(inputs))]
    fn = TorchFunction(func, inputs, names, needs_grad=False, masked=bool(masked))
    if check_forward_ad and fn.sparse:
        raise InvalidValue("check_forward_ad: forward-mode AD of sparse inputs is not supported "
                           "(check the backward, or pass the inputs dense)")
    return _outcome("gradcheck", fn, raise_exception, eps=eps, atol=atol, rtol=rtol,
                    nondet_tol=nondet_tol, check_backward_ad=check_backward_ad,
                    check_forward_ad=check_forward_ad, check_batched_grad=check_batched_grad,
                    check_batched_forward_grad=check_batched_forward_grad,
                    check_undefined_grad=check_undefined_grad,
                    check_grad_dtypes=check_grad_dtypes, fast_mode=fast_mode, strict=strict)


def gradgradcheck(
    func: Callable[..., Any],
    inputs: Any,
    grad_outputs: Any = None,
    *,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    gen_non_contig_grad_outputs: bool = False,
    raise_exception: bool = True,
    nondet_tol: float = 0.0,
    check_undefined_grad: bool = True,
    check_grad_dtypes: bool = False,
    check_batched_grad: bool = False,
    check_fwd_over_rev: bool = False,
    check_rev_over_rev: bool = True,
    fast_mode: bool = False,
    masked: bool | None = None,
    strict: bool | None = None,
) -> bool:
    """Check second derivatives: the Jacobian of ``func``'s backward, torch's ``gradgradcheck``.

    The function checked is ``(inputs, grad_outputs) -> autograd.grad(func(*inputs), inputs,
    grad_outputs, create_graph=True)``: its numeric Jacobian (centered differences of the
    backward) against its double-backward, with ``gradcheck``'s rules and report (inputs
    named ``input0``, ..., ``grad_output0``, ...; outputs ``grad_input0``, ...).

    Parameters
    ----------
    func : callable
        ``func(*inputs)`` returning a tensor or a tuple of tensors.
    inputs : tensor or tuple
        As for ``gradcheck``.
    grad_outputs : tensor or tuple, optional
        The cotangents of the differentiable outputs; default: random normal ones (seeded),
        which require grad (the second derivative in them is checked too).
    eps : float
        As for ``gradcheck``.
    atol : float
        As for ``gradcheck``.
    rtol : float
        As for ``gradcheck``.
    gen_non_contig_grad_outputs : bool
        Accepted for torch compatibility (the generated cotangents are contiguous).
    raise_exception : bool
        As for ``gradcheck``.
    nondet_tol : float
        As for ``gradcheck``.
    check_undefined_grad : bool
        As for ``gradcheck``.
    check_grad_dtypes : bool
        As for ``gradcheck``.
    check_batched_grad : bool
        As for ``gradcheck``.
    check_fwd_over_rev : bool
        Also check forward-mode AD of the backward (``check_forward_ad`` of the second-order
        function).
    check_rev_over_rev : bool
        Check the double backward (default True).
    fast_mode : bool
        As for ``gradcheck``.
    masked : bool or None
        As for ``gradcheck``.
    strict : bool or None
        As for ``gradcheck``.

    Returns
    -------
    bool
        True when the check passes; False when it fails and ``raise_exception`` is False.

    Raises
    ------
    fastgrad.torch.GradcheckError
        When the check fails (and ``raise_exception``).
    ValueError
        When no input requires grad, or a tolerance is negative.
    TypeError
        When a checked input is not a dense float32/float64/complex tensor.

    Examples
    --------
    >>> import torch, fastgrad.torch
    >>> x = torch.randn(5, dtype=torch.float64, requires_grad=True)
    >>> fastgrad.torch.gradgradcheck(torch.tanh, (x,))
    True
    """
    eps, atol, rtol, nondet_tol = parse_options(eps, atol, rtol, nondet_tol)
    strict = strict_option(strict)
    del gen_non_contig_grad_outputs
    inputs = as_tuple(inputs)
    checked = [k for k, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not checked:
        raise InvalidValue("inputs: gradgradcheck expects at least one input tensor to require "
                           "gradient (none of the inputs has requires_grad=True)")
    with torch.enable_grad():  # the caller's own inputs, as torch's gradgradcheck passes them
        outputs = as_tuple(func(*inputs))
        diff = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
        # which inputs the backward reaches (torch's gradgradcheck drops the others' None)
        reached = [g is not None for g in torch.autograd.grad(
            diff, [inputs[k] for k in checked], [torch.ones_like(o) for o in diff],
            allow_unused=True)] if diff else [False] * len(checked)
    if grad_outputs is None:
        gen = torch.Generator().manual_seed(0)
        grad_outputs = tuple(
            torch.randn(o.shape, dtype=o.dtype, generator=gen).requires_grad_(True) for o in diff)
    grad_outputs = as_tuple(grad_outputs)
    n = len(inputs)

    def backward(*args):
        xs, gos = args[:n], args[n:]
        outs = as_tuple(func(*xs))
        outs = [o for o in outs if isinstance(o, torch.Tensor) and o.requires_grad]
        wrt = [xs[k] for k in checked]
        grads = torch.autograd.grad(outs, wrt, gos, create_graph=True, allow_unused=True)
        return tuple(g for g in grads if g is not None)

    def functional_backward(*args):
        # the same backward as torch.func.vjp: vmap batches it (it cannot batch
        # torch.autograd.grad); the outputs the reference marked differentiable are the ones kept
        xs, gos = args[:n], args[n:]

        def of_checked(*values):
            full = list(xs)
            for k, value in zip(checked, values):
                full[k] = value
            result = as_tuple(func(*full))
            return tuple(result[j] for j in differentiable)

        _, pull = torch.func.vjp(of_checked, *[xs[k] for k in checked])
        grads = pull(tuple(gos))
        return tuple(g for g, r in zip(grads, reached) if r)

    differentiable = differentiable_outputs(outputs)
    names = [f"input{k}" for k in range(n)] + [f"grad_output{j}" for j in range(len(grad_outputs))]
    fn = TorchFunction(backward, (*inputs, *grad_outputs), names, needs_grad=True,
                   out_prefix="grad_input", masked=bool(masked))
    fn.batched_func = functional_backward
    return _outcome("gradgradcheck", fn, raise_exception, eps=eps, atol=atol, rtol=rtol,
                    nondet_tol=nondet_tol, check_backward_ad=check_rev_over_rev,
                    check_forward_ad=check_fwd_over_rev, check_batched_grad=check_batched_grad,
                    check_batched_forward_grad=False, check_undefined_grad=False,
                    check_grad_dtypes=check_grad_dtypes, fast_mode=fast_mode, strict=strict)


def _outcome(what: str, fn: TorchFunction, raise_exception: bool, *, atol: float, rtol: float,
             **options: Any) -> bool:
    """The check's one outcome: True; or, when a sub-check failed, ``GradcheckError`` (or False
    with ``raise_exception=False``). A check passed by the caller's tolerance only warns."""
    tolerated: list = []
    try:
        with _no_side_effects():
            run_check(fn, atol=atol, rtol=rtol, tolerated=tolerated, **options)
    except SubcheckFailed as failure:
        if raise_exception:
            raise GradcheckError(failure.message, failure.report) from None
        return False
    if tolerated:  # gradcheck's caller is the one warned (stacklevel: the call of gradcheck)
        warn_tolerated(what, f" (atol={atol:g}, rtol={rtol:g})",
                       tuple(e for shown, _ in tolerated for e in shown),
                       sum(n for _, n in tolerated), stacklevel=4)
    return True


@contextlib.contextmanager
def _no_side_effects():
    """torch's RNG as the caller left it (a function may draw random numbers)."""
    with torch.random.fork_rng(devices=[]):
        yield

