"""Audit every leaf of a JAX pytree: ``fastgrad.jax.audit``.

``fastgrad.audit`` over the floating leaves of ``params`` (segments named by their key paths,
``"layers/0/w"``), with the gradient from ``jax.grad``. The loss of the flat vector is jitted
once per process. It goes to other processes (a Dask cluster) as the compiled program itself,
serialized by ``jax.export``: a worker needs neither the code that defines ``f`` nor its
``custom_vjp`` objects (which do not pickle). Without ``jax.export``'s serialization (the
``flatbuffers`` package, in the ``jax`` extra) ``f`` and the arguments are pickled instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from .. import audit as core_audit
from ..checks.coordinates import Problem
from ..errors import InvalidType
from ..results.audit_report import AuditReport
from .pytrees import PytreeLayout, flatten_leaves, scalar_value, x64

__all__ = ["audit", "pytree_problem"]


class PytreeLoss:
    """``f(params, *args)`` as a function of the flat vector of ``params``' floating leaves.

    Parameters
    ----------
    f : callable
        ``f(params, *args) -> scalar``, traceable by ``jax.jit``.
    layout : PytreeLayout
        Where each floating leaf of ``params`` sits in the flat vector (the others are held
        constant).
    args : tuple
        The further arguments of ``f``, held constant.
    size, dtype : int, numpy dtype
        The flat vector's length and dtype.
    """

    def __init__(self, f: Callable, layout: PytreeLayout, args: tuple, size: int, dtype):
        self.f, self.layout, self.args = f, layout, args
        self.size, self.dtype = int(size), np.dtype(dtype)
        self._jitted = None
        self._exported: bytes | None = None  # the serialized program, in another process

    def flat_loss(self, theta) -> Any:
        return self.f(self.layout.params(theta), *self.args)

    def __call__(self, theta: np.ndarray) -> float:
        with x64():
            if self._jitted is None:
                self._jitted = jax.jit(self.flat_loss) if self._exported is None else \
                    jax.jit(jax.export.deserialize(bytearray(self._exported)).call)
            return float(self._jitted(theta))

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        """``jax.grad`` of the loss at ``theta``, flat float64."""
        with x64():
            return np.array(jax.jit(jax.grad(self.flat_loss))(theta), dtype=np.float64)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_jitted"] = None  # a jitted function does not pickle; it is rebuilt on arrival
        if self._exported is None:
            exported = self._export()
            if exported is not None:  # the program instead of f's code and the arguments
                state.update(f=None, args=(), _exported=exported)
        return state

    def _export(self) -> bytes | None:
        """The jitted loss of a flat vector of this layout's size, serialized by jax.export;
        None without its serialization (no ``flatbuffers``): f is pickled then."""
        with x64():
            shape = jax.ShapeDtypeStruct((self.size,), self.dtype)
            program = jax.export.export(jax.jit(self.flat_loss))(shape)
            try:
                return bytes(program.serialize())
            except ImportError:
                return None


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
    if not callable(f):
        raise InvalidType(f"f: expected a callable f(params, *args), got {f!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise InvalidType(f"dtype: expected float64 or float32, got {dtype}")
    with x64():
        layout, theta = flatten_leaves(params, dtype, "audit")
        loss = PytreeLoss(f, layout, tuple(args), theta.size, theta.dtype)
        scalar_value(jax.jit(loss.flat_loss)(theta))
        grad = loss.gradient(theta)
    return Problem(loss, theta, grad, segments=layout.segments, options=dict(options))


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
