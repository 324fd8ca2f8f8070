"""``check``: sampled coordinates of a JAX loss of a pytree, analytic gradient from ``jax.grad``,
both sides in float64 (64-bit mode switched on only around fastgrad's own calls)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .._adapt import core_check
from ..errors import InvalidType
from ..results.report import Report
from .pytrees import flatten_leaves, scalar_value, x64

__all__ = ["check"]


def _is_array_like(x: Any) -> bool:
    return isinstance(x, (np.ndarray, np.generic, jax.Array, int, float, bool, complex))


class _JaxLoss:
    """The float64 loss of the flat vector, jitted; callable from any thread."""

    def __init__(self, jitted, dynamic_args: tuple):
        self.jitted = jitted
        self.dynamic_args = dynamic_args

    def __call__(self, theta: np.ndarray) -> float:
        with x64():
            return float(self.jitted(theta, *self.dynamic_args))


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
    if not callable(f):
        raise InvalidType(f"f: expected a callable f(params, *args), got {f!r}")
    with x64():
        layout, theta = flatten_leaves(params, np.float64, "check")

        def flat_loss(theta, *dynamic):
            return f(layout.params(theta), *(dynamic if dynamic_args else args))

        leaves_of_args = jax.tree_util.tree_leaves(args)
        dynamic_args = args if all(_is_array_like(x) for x in leaves_of_args) else ()
        value_jit = jax.jit(flat_loss)
        grad_jit = jax.jit(jax.grad(flat_loss))

        scalar_value(value_jit(theta, *dynamic_args))
        grad = np.array(grad_jit(theta, *dynamic_args), dtype=np.float64)
    loss = _JaxLoss(value_jit, dynamic_args)
    return core_check(loss, theta, grad, segments=layout.segments, **check_options)
