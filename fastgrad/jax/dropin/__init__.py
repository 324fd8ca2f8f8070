"""Drop-in ``jax.test_util.check_grads``: jax's random directions, fastgrad's judgement.

``check_grads(f, args, order)`` checks what jax's checker checks, at no more cost: per
derivative one random tangent ``t`` (forward: ``jvp(f, x, t)`` against the centered difference
of ``f`` along ``t``; reverse: ``<vjp(c), t>`` against ``<c, numeric jvp(t)>``; "lin": the
JVP from ``jax.linearize``), the numeric values shared by the modes. A direction is judged like
a coordinate of ``fastgrad.check`` (a disagreement at the first step is re-checked at other
steps: truncation, kinks and roundoff noise are excused); the caller's tolerance is the
contract (jax's ``|a - n| <= atol + rtol |n|``, tolerances by dtype merged as jax merges
them). Only a direction that disagrees is localized: the full Jacobian of that sub-check is
judged element by element and the error names input coordinates and output elements.
Order >= 2 checks the derivative maps recursively, as jax does.

The function is called with arguments of the caller's dtypes (no 64-bit mode is switched on);
fastgrad perturbs a float64 copy on the numpy side and casts each perturbed leaf back to its
dtype; outputs are read as float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...arguments import positive_int, strict_option
from ...checks.jacobian import SubcheckFailed, warn_tolerated
from ...errors import DropinCheckError, InvalidType, InvalidValue
from .flatten import top_level
from .pipeline import check_level
from .tolerances import JAX_GRADIENT_TOL, Options, merge_tolerance, non_negative, tolerance_arg

__all__ = ["CheckGradsError", "check_grads"]


class CheckGradsError(DropinCheckError):
    """Raised by ``fastgrad.jax.check_grads`` when a derivative does not match.

    An ``AssertionError`` (as jax's ``check_grads`` raises) whose message names the sub-check
    (jax's "JVP of VJP", the order and the mode), the disagreeing direction and the failing
    elements; ``.report`` holds the localizing report (None for a primal mismatch). Its
    ``__init__`` is ``fastgrad.errors.DropinCheckError``'s, the base of both drop-ins' errors.

    Parameters
    ----------
    message : str
        Which sub-check failed, then the table.
    report : fastgrad.Report
        The failing sub-check's report.

    Examples
    --------
    >>> import fastgrad.jax
    >>> issubclass(fastgrad.jax.CheckGradsError, AssertionError)
    True
    """


MODES = ("fwd", "rev", "lin")


def check_grads(
    f: Callable[..., Any],
    args: Sequence[Any],
    order: int,
    modes: Sequence[str] = ("fwd", "rev"),
    atol: float | dict | None = None,
    rtol: float | dict | None = None,
    eps: float | None = None,
    *,
    strict: bool | None = None,
    full: bool = False,
) -> None:
    """Check ``f``'s derivatives up to ``order``, like ``jax.test_util.check_grads``.

    As jax's checker: per derivative one random tangent ``t``; "fwd" compares ``jvp(f, x, t)``
    with the centered difference of ``f`` along ``t``, "rev" ``<vjp(c), t>`` with
    ``<c, numeric jvp(t)>``, "lin" the JVP of ``jax.linearize``; order >= 2 checks
    ``partial(jvp, f)`` on ``(args, args)`` and ``x -> vjp(f, x)(f(x))`` recursively. A direction
    is judged with fastgrad's method (a disagreement at the first step is re-checked at other
    steps, so truncation, kinks and roundoff do not fail it); one that disagrees is localized:
    the full Jacobian of that sub-check is judged element by element and the error names the
    input coordinates and output elements. ``f`` is called with arguments of the caller's
    dtypes (Python scalars stay Python scalars).

    Parameters
    ----------
    f : callable
        ``f(*args)`` returning an array or a pytree of arrays; traceable by jax.
    args : tuple
        The point; each argument an array, a number or a pytree of them. Floating and complex
        leaves are checked (as real and imaginary parts); other leaves are held constant.
    order : int
        The highest derivative order checked (1, 2, ...).
    modes : sequence of str
        "fwd", "rev" and/or "lin".
    atol, rtol : float or dict, optional
        jax's tolerances: a number, or a dict keyed by dtype merged into jax's
        ``default_gradient_tolerance``; an output is judged by the value of its dtype, by jax's
        rule ``|a - n| <= atol + rtol |n|`` (a whole tangent scaled by its size, as jax's
        ``check_close``; an element of a full Jacobian alone). An element beyond fastgrad's own
        band but within this rule passes with a ``GradcheckWarning``.
    eps : float, optional
        The first finite-difference step; None: fastgrad's automatic step (eps^(1/3) of the
        working precision, times max(1, |x|)).
    strict : bool, optional
        Fail elements beyond fastgrad's band that the caller's tolerance accepts; None: the
        environment's default (``FASTGRAD_STRICT``, ``pytest --fastgrad-strict``).
    full : bool
        Check every Jacobian element from the start (the default checks directions, and does so
        anyway when the full check costs no more evaluations than jax's).

    Returns
    -------
    None
        When every derivative matches.

    Raises
    ------
    fastgrad.jax.CheckGradsError
        An ``AssertionError`` naming the sub-check ("JVP of VJP", order, mode) and the
        failing elements, with ``.report``.
    ValueError
        When ``order`` is not a positive int, ``modes`` holds something else than "fwd",
        "rev" and "lin", a tolerance is negative, or no argument has a floating leaf.
    TypeError
        When ``f`` is not callable, ``args`` is not a tuple or list, or a tolerance is not a
        number or a dict keyed by dtype.

    Examples
    --------
    >>> import jax.numpy as jnp, fastgrad.jax
    >>> fastgrad.jax.check_grads(lambda x, y: jnp.sin(x) * y, (jnp.ones(3), 2.0), order=2)
    """
    if not callable(f):
        raise InvalidType(f"f: expected a callable, got {f!r}")
    if not isinstance(args, (tuple, list)):
        raise InvalidType(f"args: expected a tuple of arguments, got {type(args).__name__}")
    order = positive_int("order", order)
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    for mode in modes:
        if mode not in MODES:
            raise InvalidValue(f"modes: expected 'fwd', 'rev' and/or 'lin', got {mode!r}")
    atol = merge_tolerance(tolerance_arg("atol", atol), JAX_GRADIENT_TOL)
    rtol = merge_tolerance(tolerance_arg("rtol", rtol), JAX_GRADIENT_TOL)
    if eps is not None and not non_negative("eps", eps) > 0:
        raise InvalidValue(f"eps: expected a positive step, got {eps!r}")
    opts = Options(atol, rtol, None if eps is None else float(eps), strict_option(strict),
                    bool(full), 0, [])
    try:
        check_level(top_level(f, tuple(args)), order, modes, opts)
    except SubcheckFailed as failure:
        raise CheckGradsError(failure.message, failure.report) from None
    if opts.tolerated:
        names = tuple(f"{sub}: {e}" for sub, elements in opts.tolerated for e in elements)
        warn_tolerated("check_grads", "", names, len(names), shown=names[:10], sep="; ")
