"""One flat parameter vector plus a map of named segments (API section 1)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import numpy as np


class Segment(NamedTuple):
    """A named, contiguous slice ``[start, stop)`` of the flat vector with its original shape."""

    name: str
    start: int
    stop: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return self.stop - self.start


def _as_shape(name: str, shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"segment {name!r}: shape must be a tuple of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"segment {name!r}: shape {shape} has a negative dimension")
    return shape


class SegmentMap:
    """Ordered, contiguous, non-overlapping segments that cover a flat vector.

    >>> segs = SegmentMap.from_shapes({"W1": (4, 3), "b1": (3,)})
    >>> segs.names, segs.size
    (('W1', 'b1'), 15)
    >>> segs.locate(13)
    ('b1', (1,))
    """

    def __init__(self, segments: Iterable[Segment]):
        segs = []
        for seg in segments:
            if not isinstance(seg, Segment):
                if isinstance(seg, tuple) and len(seg) == 4:
                    seg = Segment(*seg)
                else:
                    raise TypeError(
                        f"segments: expected Segment(name, start, stop, shape), got {seg!r}"
                    )
            name, start, stop = seg.name, seg.start, seg.stop
            if not isinstance(name, str) or not name:
                raise ValueError(f"segment {name!r}: name must be a non-empty string")
            shape = _as_shape(name, seg.shape)
            segs.append(Segment(name, int(start), int(stop), shape))
        if not segs:
            raise ValueError("segments: a segment map needs at least one segment")
        seen: set[str] = set()
        expected_start = 0
        for seg in segs:
            if seg.name in seen:
                raise ValueError(f"segment {seg.name!r}: duplicate name")
            seen.add(seg.name)
            if seg.stop - seg.start <= 0:
                raise ValueError(
                    f"segment {seg.name!r}: non-positive size ({seg.start}..{seg.stop})"
                )
            if seg.start < expected_start:
                raise ValueError(
                    f"segment {seg.name!r}: overlaps the previous segment "
                    f"(starts at {seg.start}, previous ends at {expected_start})"
                )
            if seg.start > expected_start:
                raise ValueError(
                    f"segment {seg.name!r}: gap before it "
                    f"(starts at {seg.start}, previous ends at {expected_start})"
                )
            if math.prod(seg.shape) != seg.size:
                raise ValueError(
                    f"segment {seg.name!r}: shape {seg.shape} holds {math.prod(seg.shape)} "
                    f"values but the segment spans {seg.size}"
                )
            expected_start = seg.stop
        self._segments = tuple(segs)
        self._by_name = {seg.name: seg for seg in segs}
        self._starts = np.array([seg.start for seg in segs], dtype=np.int64)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...] | int]) -> SegmentMap:
        """Build a map from ``{name: shape}`` in insertion order."""
        if not isinstance(shapes, Mapping):
            raise TypeError(f"shapes: expected a mapping name -> shape, got {type(shapes).__name__}")
        segs, start = [], 0
        for name, shape in shapes.items():
            shape = _as_shape(name, shape)
            size = math.prod(shape)
            segs.append(Segment(name, start, start + size, shape))
            start += size
        return cls(segs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(seg.name for seg in self._segments)

    @property
    def size(self) -> int:
        return self._segments[-1].stop

    def __getitem__(self, name: str) -> Segment:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no segment named {name!r}; segments are {list(self.names)}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Segment]:
        return iter(self._segments)

    def __len__(self) -> int:
        return len(self._segments)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SegmentMap) and self._segments == other._segments

    def __hash__(self) -> int:
        return hash(self._segments)

    def __repr__(self) -> str:
        inner = ", ".join(f"{s.name}{list(s.shape)}" for s in self._segments)
        return f"SegmentMap({inner}; size={self.size})"

    def segment_ids(self, flat_indices: np.ndarray) -> np.ndarray:
        """Position (0-based, in map order) of the segment holding each flat index."""
        return np.searchsorted(self._starts, flat_indices, side="right").astype(np.int64) - 1

    def locate(self, i: int) -> tuple[str, tuple[int, ...]]:
        """Flat index -> (segment name, multi-index inside that segment)."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"locate: index must be an int, got {i!r}")
        i = int(i)
        if not 0 <= i < self.size:
            raise IndexError(f"locate: index {i} is outside 0..{self.size - 1}")
        seg = self._segments[int(self.segment_ids(np.array([i]))[0])]
        local = np.unravel_index(i - seg.start, seg.shape) if seg.shape else ()
        return seg.name, tuple(int(j) for j in local)

    def check_size(self, n: int, argument: str = "theta") -> None:
        if n != self.size:
            raise ValueError(
                f"{argument}: has {n} values but the segment map covers {self.size} "
                f"(last segment {self._segments[-1].name!r} ends at {self.size})"
            )


def as_segment_map(segments, n: int) -> SegmentMap:
    """Accept None (one segment 'theta'), a SegmentMap or {name: shape}; check it covers n values."""
    if segments is None:
        return SegmentMap([Segment("theta", 0, n, (n,))])
    if isinstance(segments, SegmentMap):
        segs = segments
    elif isinstance(segments, Mapping):
        segs = SegmentMap.from_shapes(segments)
    else:
        raise TypeError(
            f"segments: expected a SegmentMap or a {{name: shape}} mapping, "
            f"got {type(segments).__name__}"
        )
    segs.check_size(n)
    return segs


def flatten(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, SegmentMap]:
    """Concatenate named arrays into one float64 vector (a copy) and the map to undo it.

    >>> theta, segs = flatten({"W": np.ones((2, 3)), "b": np.zeros(3)})
    >>> theta.shape, segs["b"]
    ((9,), Segment(name='b', start=6, stop=9, shape=(3,)))
    """
    if not isinstance(arrays, Mapping) or not arrays:
        raise TypeError("arrays: expected a non-empty mapping name -> array")
    shapes = {}
    parts = []
    for name, value in arrays.items():
        arr = np.asarray(value)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"arrays[{name!r}]: expected a numeric array, got dtype {arr.dtype}")
        if np.iscomplexobj(arr):
            raise TypeError(f"arrays[{name!r}]: complex parameters are not supported")
        shapes[name] = arr.shape
        parts.append(arr.astype(np.float64).ravel())
    segs = SegmentMap.from_shapes(shapes)
    return np.concatenate(parts), segs


def unflatten(theta: np.ndarray, segments: SegmentMap) -> dict[str, np.ndarray]:
    """Split a flat vector back into ``{name: array}`` with the original shapes (views of theta).

    >>> params = unflatten(theta, segs)
    >>> params["W"].shape
    (2, 3)
    """
    theta = np.asarray(theta)
    if theta.ndim != 1:
        raise ValueError(f"theta: expected a flat 1-D vector, got shape {theta.shape}")
    segments.check_size(theta.size)
    return {seg.name: theta[seg.start : seg.stop].reshape(seg.shape) for seg in segments}
