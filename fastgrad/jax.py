"""Check JAX losses of pytrees: analytic gradient from ``jax.grad``, both sides in float64.

>>> import jax.numpy as jnp, fastgrad.jax
>>> params, x = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, jnp.ones((4, 3))
>>> fastgrad.jax.check(lambda p, x: jnp.sum(jnp.tanh(x @ p["w"] + p["b"])), params, x)

64-bit mode is switched on only around fastgrad's own calls (``jax.enable_x64``, a thread-local
context), so the caller's JAX configuration is left as it was.
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
    """A pytree key path as a segment name: ``("layers", 0, "w")`` -> ``"layers/0/w"``."""
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

    >>> params = {"layers": [{"w": jnp.ones((3, 3)) / 3}], "scale": 2.0}
    >>> loss = lambda p, x: p["scale"] * jnp.sum(jax.nn.gelu(x @ p["layers"][0]["w"]) ** 2)
    >>> fastgrad.jax.check(loss, params, jnp.ones((5, 3))).segments["layers/0/w"].passed

    Segments are the floating-point leaves of ``params``, named by their key paths joined with
    "/" (``"layers/0/w"``; a bare array is ``"params"``); integer leaves are held constant. The
    loss and its gradient are jitted and evaluated in 64-bit mode on float64 leaves, whatever
    dtype the leaves had. ``args`` are passed through unchanged (as jit arguments when they are
    all arrays or numbers, otherwise closed over). ``check_options`` are those of
    ``fastgrad.check``.
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
