"""Audit every leaf of a JAX pytree: ``fastgrad.jax.audit``.

``fastgrad.audit`` over the floating leaves of ``params`` (segments named by their key paths,
``"layers/0/w"``), with the gradient from ``jax.grad``. The loss of the flat vector is
``flat_pytree.FlatPytree``, the same that ``check`` evaluates; its docstring says how it goes to
other processes (a Dask cluster).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import audit as core_audit
from ..checks.coordinates import Problem
from ..errors import InvalidType
from ..results.audit_report import AuditReport
from .flat_pytree import FlatPytree

__all__ = ["audit", "pytree_problem"]


def pytree_problem(f: Callable[..., Any], params: Any, *args: Any, dtype=np.float64,
                   **options: Any) -> Problem:
    """A JAX loss of a pytree as a ``fastgrad.Problem`` (the flat vector of the floating
    leaves, ``jax.grad``'s gradient, segments named by key paths), for ``fastgrad.audit``,
    ``fastgrad.check`` or ``fastgrad check MODULE:FACTORY``.

    Parameters
    ----------
    f : callable
        ``f(params, *args)`` returning a real scalar; traceable by ``jax.jit`` and ``jax.grad``.
    params : pytree
        Dicts, lists, tuples (or registered nodes) of arrays; integer and empty leaves are held
        constant.
    *args : any
        Passed to ``f`` unchanged and held constant.
    dtype : numpy dtype, default float64
        ``np.float32`` evaluates in single precision (float32 tolerance and noise floors).
    **options
        Stored in ``Problem.options``.

    Returns
    -------
    fastgrad.Problem
        ``f`` (picklable), ``theta``, ``grad`` (float64) and ``segments``.

    Raises
    ------
    TypeError
        When ``f`` is not callable, a leaf is complex or ``dtype`` is not float32/float64.
    ValueError
        When ``params`` has no floating leaf, two leaves get the same name, or ``f`` does not
        return a real scalar.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> p = fastgrad.jax.pytree_problem(lambda p: jnp.sum(jnp.tanh(p["w"])), {"w": jnp.ones(3)})
    >>> p.segments
    {'w': (3,)}
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidType(f"dtype: expected float64 or float32, got {dtype}")
    loss, theta = FlatPytree.build(f, params, args, dtype, "audit")
    return Problem(loss, theta, loss.gradient(theta), segments=loss.layout.segments,
                   options=dict(options))


def audit(f: Callable[..., Any], params: Any, *args: Any, budget: int | None = None,
          dtype=np.float64, **audit_options: Any) -> AuditReport:
    """Audit ``jax.grad`` of ``f(params, *args)`` over every floating leaf of ``params``.

    ``fastgrad.audit`` on the pytree: random-direction derivatives of every leaf (a segment
    named by its key path, ``"layers/0/w"``), then group-testing localization, so that a wrong
    ``custom_vjp`` is found coordinate by coordinate (or as a block) in a number of evaluations
    that grows with the logarithm of the leaf's size. The caller's ``params`` are not modified;
    64-bit mode is switched on only around fastgrad's own calls.

    Parameters
    ----------
    f : callable
        ``f(params, *args)`` returning a real scalar; traceable by ``jax.jit`` and ``jax.grad``.
    params : pytree
        The point at which the gradient is audited.
    *args : any
        Passed to ``f`` unchanged and held constant.
    budget : int, optional
        The most loss evaluations to spend.
    dtype : numpy dtype, default float64
        ``np.float32`` audits in single precision (float32 tolerance and noise floors; the
        report's header says so).
    **audit_options
        Options of ``fastgrad.audit`` (``seed``, ``depth``, ``tol``, ``workers``, ``executor``
        (a ``concurrent.futures`` executor or a Dask ``Client``), ``progress``, ...).

    Returns
    -------
    fastgrad.AuditReport
        The same report as ``fastgrad.audit``; suspects carry their leaf's name and index.

    Raises
    ------
    TypeError
        When ``f`` is not callable, a leaf is complex or ``dtype`` is not float32/float64.
    ValueError
        When ``params`` has no floating leaf, ``f`` does not return a real scalar, or an option
        is refused by ``fastgrad.audit``.
    fastgrad.LossError
        When the jitted loss raises at a perturbed point.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> params = {"layers": [{"w": jnp.ones((3, 2)) / 3, "b": jnp.zeros(2)}]}
    >>> loss = lambda p, x: jnp.sum(jnp.tanh(x @ p["layers"][0]["w"] + p["layers"][0]["b"]) ** 2)
    >>> fastgrad.jax.audit(loss, params, jnp.ones((4, 3))).passed
    True
    """
    problem = pytree_problem(f, params, *args, dtype=dtype)
    return core_audit(problem.f, problem.theta, problem.grad, segments=problem.segments,
                      budget=budget, **audit_options)
