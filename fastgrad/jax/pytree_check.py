"""``check``: sampled coordinates of a JAX loss of a pytree, analytic gradient from ``jax.grad``,
both sides in float64 (64-bit mode switched on only around fastgrad's own calls)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .._adapt import core_check
from ..results.report import Report
from .flat_pytree import FlatPytree

__all__ = ["check"]


def check(f: Callable[..., Any], params: Any, *args: Any, **check_options: Any) -> Report:
    """Check ``jax.grad`` of ``f(params, *args)`` with respect to the pytree ``params``.

    Segments are the floating-point leaves of ``params``, named by their key paths joined with
    "/" (``"layers/0/w"``; a bare array is ``"params"``); integer and empty leaves are held
    constant. The loss and its gradient are jitted and evaluated in 64-bit mode on float64
    leaves, whatever dtype the leaves had; the caller's ``params`` are not modified.

    Parameters
    ----------
    f : callable
        ``f(params, *args)`` returning a real scalar; traceable by ``jax.jit`` and ``jax.grad``.
    params : pytree
        Dicts, lists, tuples (or registered pytree nodes) of arrays and numbers: the point at
        which the gradient is checked.
    *args : any
        Passed to ``f`` unchanged: as jit arguments when they are all arrays or numbers,
        otherwise closed over (held constant, not checked).
    **check_options
        Every option of ``fastgrad.check`` is forwarded to it (``samples``, ``seed``,
        ``depth``, ``tol``, ``workers``, ...: see ``help(fastgrad.check)``).

    Returns
    -------
    fastgrad.Report
        The check's report, one segment per floating leaf.

    Raises
    ------
    TypeError
        When ``f`` is not callable or a leaf is complex.
    ValueError
        When ``params`` has no leaves or no floating-point leaf, two leaves get the same name,
        ``f`` returns a non-scalar or complex value, or an option is refused by
        ``fastgrad.check``.
    fastgrad.LossError
        When the jitted loss raises during the check's evaluations. Errors while tracing ``f``
        (shape mismatches, untraceable Python) propagate as JAX raises them.

    Examples
    --------
    >>> params = {"layers": [{"w": jnp.ones((3, 3)) / 3}], "scale": 2.0}
    >>> loss = lambda p, x: p["scale"] * jnp.sum(jax.nn.gelu(x @ p["layers"][0]["w"]) ** 2)
    >>> fastgrad.jax.check(loss, params, jnp.ones((5, 3))).segments["layers/0/w"].passed
    True
    """
    loss, theta = FlatPytree.build(f, params, args, np.float64, "check")
    grad = loss.gradient(theta)
    return core_check(loss, theta, grad, segments=loss.layout.segments, **check_options)
