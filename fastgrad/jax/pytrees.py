"""What the JAX adapters share: 64-bit mode around fastgrad's own calls, key-path names, and
the floating leaves of a pytree as one flat vector (``fastgrad.jax.check``, ``audit`` and
``pytree_problem``; ``check_grads`` names its arguments' leaves the same way).
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import numpy as np

from ..errors import InvalidType, InvalidValue


def x64() -> contextlib.AbstractContextManager:
    """A context with 64-bit JAX types; thread-local, so every evaluating thread enters it."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # pragma: no cover - jax < 0.6

    return enable_x64(True)


def key_name(entry: Any) -> str:
    """One entry of a key path as text: a dict key, a sequence index or an attribute name."""
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
    return "/".join(key_name(entry) for entry in path) or "params"


class PytreeLayout:
    """Where each floating leaf of a pytree sits in the flat vector.

    Parameters
    ----------
    treedef : jax.tree_util.PyTreeDef
        The structure of the pytree.
    fixed : list
        Every leaf as given (the non-floating ones are held constant).
    slots : list of (int, int, int, tuple)
        For each floating leaf: its position among the leaves, its flat range and its shape.
    segments : dict
        Segment name (the leaf's key path) -> shape, in flat order.
    """

    def __init__(self, treedef, fixed: list, slots: list, segments: dict):
        self.treedef, self.fixed, self.slots, self.segments = treedef, fixed, slots, segments

    def params(self, theta) -> Any:
        """The pytree with the floating leaves taken from ``theta`` (views, no copy)."""
        values = list(self.fixed)
        for position, a, b, shape in self.slots:
            values[position] = theta[a:b].reshape(shape)
        return jax.tree_util.tree_unflatten(self.treedef, values)


def flatten_leaves(params: Any, dtype, purpose: str) -> tuple[PytreeLayout, np.ndarray]:
    """The floating leaves of ``params`` as one flat vector of ``dtype``, and their layout.

    Integer and empty leaves are held constant. ``purpose`` ("check", "audit") completes the
    error raised when there is nothing to differentiate. Call it inside ``x64()``.
    """
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    if not leaves:
        raise InvalidValue(f"params: the pytree has no leaves ({params!r})")
    fixed: list[Any] = []
    segments: dict[str, tuple[int, ...]] = {}
    slots: list[tuple[int, int, int, tuple[int, ...]]] = []
    parts: list[np.ndarray] = []
    start = 0
    for position, (path, leaf) in enumerate(leaves):
        name = path_name(path)
        value = np.asarray(leaf)
        fixed.append(leaf)
        if np.iscomplexobj(value):
            raise InvalidType(f"params: leaf {name!r} is complex ({value.dtype}); not supported")
        if not np.issubdtype(value.dtype, np.floating) or value.size == 0:
            continue  # integer leaves, empty arrays: held constant
        if name in segments:
            raise InvalidValue(f"params: two leaves are both named {name!r}")
        segments[name] = value.shape
        slots.append((position, start, start + value.size, value.shape))
        parts.append(value.astype(dtype).ravel())
        start += value.size
    if not segments:
        raise InvalidValue(f"params: no floating-point leaf to {purpose}")
    return PytreeLayout(treedef, fixed, slots, segments), np.concatenate(parts)


def scalar_value(value: Any) -> None:
    """Raise unless ``value`` (what ``f`` returned) is a real scalar."""
    if getattr(value, "shape", ()) != () or np.iscomplexobj(value):
        raise InvalidValue(f"f: must return a real scalar, got shape "
                           f"{tuple(getattr(value, 'shape', ()))} and dtype {value.dtype}")
