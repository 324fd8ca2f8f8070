"""A JAX loss of a pytree as a function of one flat vector: ``FlatPytree``, what ``check`` and
``audit`` (``pytree_problem``) both evaluate.

The floating leaves of ``params`` are slices of the flat vector (``PytreeLayout.params``, views
inside the trace), and the loss of the flat vector is jitted once per process; every thread
calls the same compiled program (JAX's dispatch is thread-safe; 64-bit mode, thread-local, is
entered around each call). The further arguments are jit arguments when they are all arrays or
numbers (so a large batch is not folded into the program as a constant), otherwise closed over.

To another process (the process backend, a Dask cluster) the loss goes as the compiled program
itself, serialized by ``jax.export``: a worker needs neither the code that defines ``f`` nor its
``custom_vjp`` objects (which do not pickle). Without ``jax.export``'s serialization (the
``flatbuffers`` package, in the ``jax`` extra) ``f`` and the arguments are pickled instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ..errors import InvalidType
from .pytrees import PytreeLayout, flatten_leaves, scalar_value, x64

__all__ = ["FlatPytree"]


def _is_array_like(x: Any) -> bool:
    return isinstance(x, (np.ndarray, np.generic, jax.Array, int, float, bool, complex))


class FlatPytree:
    """``f(params, *args)`` as a function of the flat vector of ``params``' floating leaves.
    Built by ``FlatPytree.build``.

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
        # the arguments passed to the jitted loss (all of them, or none: then closed over)
        self.dynamic = args if all(_is_array_like(x) for x in jax.tree_util.tree_leaves(args)) \
            else ()
        self.size, self.dtype = int(size), np.dtype(dtype)
        self._jitted = None
        self._exported: bytes | None = None  # the serialized program, in another process

    @classmethod
    def build(cls, f: Callable, params: Any, args: tuple, dtype,
              purpose: str) -> tuple[FlatPytree, np.ndarray]:
        """The loss of the flat vector and that vector (the floating leaves in ``dtype``).

        Raises ``InvalidType`` when ``f`` is not callable or a leaf is complex,
        ``InvalidValue`` when there is no floating leaf to ``purpose`` ("check", "audit"), two
        leaves share a name, or ``f`` does not return a real scalar.
        """
        if not callable(f):
            raise InvalidType(f"f: expected a callable f(params, *args), got {f!r}")
        with x64():
            layout, theta = flatten_leaves(params, dtype, purpose)
            loss = cls(f, layout, tuple(args), theta.size, theta.dtype)
            scalar_value(loss.value(theta))
        return loss, theta

    def flat_loss(self, theta, *dynamic) -> Any:
        return self.f(self.layout.params(theta), *(dynamic if self.dynamic else self.args))

    def value(self, theta: np.ndarray) -> Any:
        """The loss at ``theta`` as JAX returns it (a 0-d array)."""
        with x64():
            if self._jitted is None:
                self._jitted = jax.jit(self.flat_loss) if self._exported is None else \
                    jax.jit(jax.export.deserialize(bytearray(self._exported)).call)
            return self._jitted(theta, *self.dynamic)

    def __call__(self, theta: np.ndarray) -> float:
        return float(self.value(theta))

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        """``jax.grad`` of the loss at ``theta``, flat float64."""
        with x64():
            return np.array(jax.jit(jax.grad(self.flat_loss))(theta, *self.dynamic),
                            dtype=np.float64)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_jitted"] = None  # a jitted function does not pickle; it is rebuilt on arrival
        if self._exported is None:
            exported = self._export()
            if exported is not None:  # the program instead of f's code and the arguments
                state.update(f=None, args=(), _exported=exported)
        return state

    def _export(self) -> bytes | None:
        """The jitted loss of a flat vector of this layout's size (and of the jit arguments'
        shapes), serialized by jax.export; None without its serialization (no
        ``flatbuffers``): f is pickled then."""
        with x64():
            shape = jax.ShapeDtypeStruct((self.size,), self.dtype)
            program = jax.export.export(jax.jit(self.flat_loss))(shape, *self.dynamic)
            try:
                return bytes(program.serialize())
            except ImportError:
                return None
