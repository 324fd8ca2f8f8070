"""Tensors laid out in one flat real vector: how the Jacobian core names an input coordinate or
an output element (``input0.imag[1, 2]``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Layout"]


@dataclass(frozen=True)
class Layout:
    """Tensors laid out in one flat real vector: complex ones as all real parts, then all
    imaginary parts."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    complex: tuple[bool, ...]
    # per tensor, None (every element) or the dense flat positions of the elements laid out
    # (the specified elements of a sparse tensor)
    elements: tuple[np.ndarray | None, ...] = field(default=(), compare=False)
    # derived once (plain attributes: a check of a small function reads them often)
    sizes: list[int] = field(init=False, repr=False, compare=False)
    starts: np.ndarray = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # real sizes: twice the element count for complex tensors
        chosen = self.elements or (None,) * len(self.shapes)
        sizes = [(math.prod(s) if e is None else len(e)) * (2 if c else 1)
                 for s, c, e in zip(self.shapes, self.complex, chosen)]
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "starts", np.cumsum([0, *sizes], dtype=np.int64))
        object.__setattr__(self, "size", sum(sizes))

    def tensor_of(self, positions: np.ndarray) -> np.ndarray:
        """Which tensor each flat real position belongs to."""
        return np.searchsorted(self.starts, positions, side="right") - 1

    def local(self, position: int) -> tuple[int, ...]:
        """The element's multi-index inside its tensor."""
        t = int(self.tensor_of(np.array([position]))[0])
        offset = position - int(self.starts[t])
        count = self.sizes[t] // (2 if self.complex[t] else 1)
        offset %= max(count, 1)
        if self.elements and self.elements[t] is not None:
            offset = int(self.elements[t][offset])
        shape = self.shapes[t]
        return tuple(int(i) for i in np.unravel_index(offset, shape)) if shape else ()

    def where(self, position: int) -> str:
        """``input0[3]``, ``input0.imag[1, 2]``."""
        t = int(self.tensor_of(np.array([position]))[0])
        offset = position - int(self.starts[t])
        part = ""
        if self.complex[t]:
            count = self.sizes[t] // 2
            part = ".real" if offset < count else ".imag"
        inner = ", ".join(str(i) for i in self.local(position))
        return f"{self.names[t]}{part}[{inner}]"
