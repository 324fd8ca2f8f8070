"""Check JAX losses of pytrees: analytic gradient from ``jax.grad``, both sides in float64.

>>> import jax.numpy as jnp, fastgrad.jax
>>> params, x = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, jnp.ones((4, 3))
>>> fastgrad.jax.check(lambda p, x: jnp.sum(jnp.tanh(x @ p["w"] + p["b"])), params, x).passed
True

``check`` returns a ``fastgrad.Report`` whose segments are the pytree's leaves, and takes the
options of ``fastgrad.check``; ``check_grads`` is a drop-in for ``jax.test_util.check_grads``
(full Jacobians, forward and reverse mode, any order). 64-bit mode is switched on only around
fastgrad's own calls
(``jax.enable_x64``, a thread-local context), so the caller's JAX configuration is left as it
was. Importing this module without JAX installed raises an ``ImportError`` that says how to
install it (``pip install fastgrad[jax]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastgrad.jax needs JAX, which is not installed: pip install fastgrad[jax]"
    ) from exc

from ._adapt import core_check
from .results.report import Report

__all__ = ["check"]


def _x64():
    """A context with 64-bit JAX types; thread-local, so every evaluating thread enters it."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # jax < 0.6

    return enable_x64(True)


def _key_name(entry: Any) -> str:
    for attr in ("key", "idx", "name"):  # DictKey, SequenceKey, GetAttrKey / FlattenedIndexKey
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_name(path: tuple) -> str:
    """A pytree key path as a segment name: ``("layers", 0, "w")`` -> ``"layers/0/w"``.

    Parameters
    ----------
    path : tuple
        A key path from ``jax.tree_util.tree_flatten_with_path`` (dict keys, sequence indices,
        attribute names).

    Returns
    -------
    str
        The keys joined with "/"; ``"params"`` for the empty path (a bare array).
    """
    return "/".join(_key_name(entry) for entry in path) or "params"


def _is_array_like(x: Any) -> bool:
    return isinstance(x, (np.ndarray, np.generic, jax.Array, int, float, bool, complex))


class _JaxLoss:
    """The float64 loss of the flat vector, jitted; callable from any thread."""

    def __init__(self, jitted, dynamic_args: tuple):
        self.jitted = jitted
        self.dynamic_args = dynamic_args

    def __call__(self, theta: np.ndarray) -> float:
        with _x64():
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
        raise TypeError(f"f: expected a callable f(params, *args), got {f!r}")
    with _x64():
        leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
        if not leaves:
            raise ValueError(f"params: the pytree has no leaves ({params!r})")
        fixed: list[Any] = []
        segments: dict[str, tuple[int, ...]] = {}
        slots: list[tuple[int, int, int, tuple[int, ...]]] = []  # leaf, start, stop, shape
        parts: list[np.ndarray] = []
        start = 0
        for position, (path, leaf) in enumerate(leaves):
            name = path_name(path)
            value = np.asarray(leaf)
            fixed.append(leaf)
            if np.iscomplexobj(value):
                raise TypeError(f"params: leaf {name!r} is complex ({value.dtype}); not supported")
            if not np.issubdtype(value.dtype, np.floating) or value.size == 0:
                continue  # integer leaves, empty arrays: held constant
            if name in segments:
                raise ValueError(f"params: two leaves are both named {name!r}")
            segments[name] = value.shape
            slots.append((position, start, start + value.size, value.shape))
            parts.append(value.astype(np.float64).ravel())
            start += value.size
        if not segments:
            raise ValueError("params: no floating-point leaf to check")
        theta = np.concatenate(parts)

        def flat_loss(theta, *dynamic):
            values = list(fixed)
            for position, a, b, shape in slots:
                values[position] = theta[a:b].reshape(shape)
            call_args = dynamic if dynamic_args else args
            return f(jax.tree_util.tree_unflatten(treedef, values), *call_args)

        leaves_of_args = jax.tree_util.tree_leaves(args)
        dynamic_args = args if all(_is_array_like(x) for x in leaves_of_args) else ()
        value_jit = jax.jit(flat_loss)
        grad_jit = jax.jit(jax.grad(flat_loss))

        value = value_jit(theta, *dynamic_args)
        if getattr(value, "shape", ()) != ():
            raise ValueError(
                f"f: must return a scalar, got an array of shape {tuple(value.shape)}"
            )
        if jnp.iscomplexobj(value):
            raise ValueError(f"f: must return a real scalar, got dtype {value.dtype}")
        grad = np.array(grad_jit(theta, *dynamic_args), dtype=np.float64)
    loss = _JaxLoss(value_jit, dynamic_args)
    return core_check(loss, theta, grad, segments=segments, **check_options)


# ---------------------------------------------------------------- audits of whole pytrees
from .jax_audit import audit, pytree_problem  # noqa: E402

__all__ += ["audit", "pytree_problem"]

# the drop-in for jax.test_util.check_grads (fastgrad/jax_gradcheck.py)
from .jax_gradcheck import CheckGradsError, check_grads  # noqa: E402

__all__ += ["CheckGradsError", "check_grads"]
