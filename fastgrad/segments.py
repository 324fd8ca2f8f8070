"""One flat parameter vector plus a map of named segments (docs/getting-started.md).

>>> theta, segs = fastgrad.flatten({"W": np.ones((2, 3)), "b": np.zeros(3)})
>>> segs.locate(7)
('b', (1,))

``Segment`` is one named slice, ``SegmentMap`` the validated, ordered map of them, and
``flatten``/``unflatten`` go from named arrays to one float64 vector and back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import numpy as np

from .errors import InvalidType, InvalidValue


class Segment(NamedTuple):
    """A named, contiguous slice ``[start, stop)`` of the flat vector with its original shape.

    A plain named tuple: it is validated when a ``SegmentMap`` is built from it.

    Parameters
    ----------
    name : str
        The segment's name, as the report shows it (``"W1"``, ``"0.weight"``).
    start : int
        Flat index of its first value.
    stop : int
        Flat index one past its last value.
    shape : tuple of int
        The original shape; its product equals ``stop - start``.

    Examples
    --------
    >>> seg = Segment("b1", 2048, 2080, (32,))
    >>> seg.size
    32
    """

    name: str
    start: int
    stop: int
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of values in the segment, ``stop - start``."""
        return self.stop - self.start


def _as_shape(name: str, shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise InvalidType(f"segment {name!r}: shape must be a tuple of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise InvalidValue(f"segment {name!r}: shape {shape} has a negative dimension")
    return shape


class SegmentMap:
    """Ordered, contiguous, non-overlapping segments that cover a flat vector.

    ``segs[name]`` is the ``Segment`` of that name (a ``KeyError`` lists the names when there is
    none), ``name in segs`` tests for one, iterating yields the segments in order and ``len`` is
    their number. Maps are immutable, hashable and equal when their segments are.

    Parameters
    ----------
    segments : iterable of Segment
        The segments in flat order, starting at 0 with no gap or overlap; plain 4-tuples
        ``(name, start, stop, shape)`` are accepted. Whether the map covers a given vector is
        checked where the vector is known (``check_size``, ``fastgrad.check``).

    Raises
    ------
    TypeError
        When an entry is not a ``Segment`` (or 4-tuple), or a shape is not a tuple of ints.
    ValueError
        Naming the segment, when there is none, a name is empty or repeated, a size is not
        positive, a segment overlaps the previous one or leaves a gap before it, or its shape does
        not hold ``stop - start`` values.

    Examples
    --------
    >>> segs = SegmentMap([Segment("W1", 0, 12, (4, 3)), Segment("b1", 12, 15, (3,))])
    >>> segs.names, segs.size, segs.locate(13)
    (('W1', 'b1'), 15, ('b1', (1,)))
    """

    def __init__(self, segments: Iterable[Segment]):
        segs = []
        for seg in segments:
            if not isinstance(seg, Segment):
                if isinstance(seg, tuple) and len(seg) == 4:
                    seg = Segment(*seg)
                else:
                    raise InvalidType(
                        f"segments: expected Segment(name, start, stop, shape), got {seg!r}"
                    )
            name, start, stop = seg.name, seg.start, seg.stop
            if not isinstance(name, str) or not name:
                raise InvalidValue(f"segment {name!r}: name must be a non-empty string")
            shape = _as_shape(name, seg.shape)
            segs.append(Segment(name, int(start), int(stop), shape))
        if not segs:
            raise InvalidValue("segments: a segment map needs at least one segment")
        seen: set[str] = set()
        expected_start = 0
        for seg in segs:
            if seg.name in seen:
                raise InvalidValue(f"segment {seg.name!r}: duplicate name")
            seen.add(seg.name)
            if seg.stop - seg.start <= 0:
                raise InvalidValue(
                    f"segment {seg.name!r}: non-positive size ({seg.start}..{seg.stop})"
                )
            if seg.start < expected_start:
                raise InvalidValue(
                    f"segment {seg.name!r}: overlaps the previous segment "
                    f"(starts at {seg.start}, previous ends at {expected_start})"
                )
            if seg.start > expected_start:
                raise InvalidValue(
                    f"segment {seg.name!r}: gap before it "
                    f"(starts at {seg.start}, previous ends at {expected_start})"
                )
            if math.prod(seg.shape) != seg.size:
                raise InvalidValue(
                    f"segment {seg.name!r}: shape {seg.shape} holds {math.prod(seg.shape)} "
                    f"values but the segment spans {seg.size}"
                )
            expected_start = seg.stop
        self._segments = tuple(segs)
        self._by_name = {seg.name: seg for seg in segs}
        self._starts = np.array([seg.start for seg in segs], dtype=np.int64)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...] | int]) -> SegmentMap:
        """Build a map from ``{name: shape}``, the segments laid out in insertion order.

        Parameters
        ----------
        shapes : mapping of str to tuple of int or int
            Segment name -> shape; an int ``n`` means the shape ``(n,)``.

        Returns
        -------
        SegmentMap
            Segments starting at 0, each right after the previous one.

        Raises
        ------
        TypeError
            When ``shapes`` is not a mapping or a shape is not a tuple of ints.
        ValueError
            When a shape has a negative dimension or holds no values, or a name is empty.
        """
        if not isinstance(shapes, Mapping):
            raise InvalidType(f"shapes: expected a mapping name -> shape, got {type(shapes).__name__}")
        segs, start = [], 0
        for name, shape in shapes.items():
            shape = _as_shape(name, shape)
            size = math.prod(shape)
            segs.append(Segment(name, start, start + size, shape))
            start += size
        return cls(segs)

    def slices(self) -> dict[str, tuple[int, int, tuple[int, ...]]]:
        """Every segment as ``name -> (start, stop, shape)``, in flat order.

        Returns
        -------
        dict of str to (int, int, tuple of int)
            The flat range and the shape of each segment.

        Examples
        --------
        >>> fg.SegmentMap.from_shapes({"W": (2, 3), "b": (3,)}).slices()
        {'W': (0, 6, (2, 3)), 'b': (6, 9, (3,))}
        """
        return {seg.name: (seg.start, seg.stop, seg.shape) for seg in self._segments}

    @property
    def names(self) -> tuple[str, ...]:
        """The segment names, in flat order."""
        return tuple(seg.name for seg in self._segments)

    @property
    def size(self) -> int:
        """Total number of values the map covers (the length of the flat vector)."""
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
        """The position (0-based, in map order) of the segment holding each flat index.

        Parameters
        ----------
        flat_indices : numpy.ndarray of int
            Flat indices, assumed to lie in ``0 .. size - 1`` (not checked: this is the
            vectorized path of ``locate``).

        Returns
        -------
        numpy.ndarray of int64
            One segment position per index, same shape as ``flat_indices``.
        """
        return np.searchsorted(self._starts, flat_indices, side="right").astype(np.int64) - 1

    def locate(self, i: int) -> tuple[str, tuple[int, ...]]:
        """Where a flat index lies: the segment's name and the multi-index inside it.

        Parameters
        ----------
        i : int
            A flat index, ``0 <= i < size``.

        Returns
        -------
        tuple of (str, tuple of int)
            ``(name, index)``, e.g. ``("W1", (4, 0))``; ``index`` is ``()`` for a 0-d segment.

        Raises
        ------
        TypeError
            When ``i`` is not an int.
        IndexError
            When ``i`` is outside ``0 .. size - 1``.
        """
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise InvalidType(f"locate: index must be an int, got {i!r}")
        i = int(i)
        if not 0 <= i < self.size:
            raise IndexError(f"locate: index {i} is outside 0..{self.size - 1}")
        seg = self._segments[int(self.segment_ids(np.array([i]))[0])]
        local = np.unravel_index(i - seg.start, seg.shape) if seg.shape else ()
        return seg.name, tuple(int(j) for j in local)

    def check_size(self, n: int, argument: str = "theta") -> None:
        """Refuse a vector of ``n`` values that the map does not cover exactly.

        Parameters
        ----------
        n : int
            The vector's number of values.
        argument : str, default "theta"
            The argument's name, for the message.

        Raises
        ------
        ValueError
            When ``n != size``, naming ``argument`` and both sizes.
        """
        if n != self.size:
            raise InvalidValue(
                f"{argument}: has {n} values but the segment map covers {self.size} "
                f"(last segment {self._segments[-1].name!r} ends at {self.size})"
            )


def as_segment_map(segments, n: int) -> SegmentMap:
    """Accept None (one segment 'theta'), a SegmentMap or {name: shape}; check it covers n values.

    Raises ``TypeError`` for anything else and ``ValueError`` when the map does not cover ``n``.
    """
    if segments is None:
        return SegmentMap([Segment("theta", 0, n, (n,))])
    if isinstance(segments, SegmentMap):
        segs = segments
    elif isinstance(segments, Mapping):
        segs = SegmentMap.from_shapes(segments)
    else:
        raise InvalidType(
            f"segments: expected a SegmentMap or a {{name: shape}} mapping, "
            f"got {type(segments).__name__}"
        )
    segs.check_size(n)
    return segs


def flatten(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, SegmentMap]:
    """Concatenate named arrays into one float64 vector (a copy) and the map to undo it.

    Parameters
    ----------
    arrays : mapping of str to array_like
        Name -> real numeric (or bool) array, in the order the vector should hold them.
        Scalars become 0-d segments of one value.

    Returns
    -------
    theta : numpy.ndarray of float64
        A new 1-D vector; changing it never changes ``arrays``.
    segments : SegmentMap
        One segment per name, with the array's shape.

    Raises
    ------
    TypeError
        When ``arrays`` is not a non-empty mapping, or an array is complex or not numeric.
    ValueError
        When an array is empty (a segment needs at least one value).

    Examples
    --------
    >>> theta, segs = flatten({"W": np.ones((2, 3)), "b": np.zeros(3)})
    >>> theta.shape, segs["b"]
    ((9,), Segment(name='b', start=6, stop=9, shape=(3,)))
    """
    if not isinstance(arrays, Mapping) or not arrays:
        raise InvalidType("arrays: expected a non-empty mapping name -> array")
    shapes = {}
    parts = []
    for name, value in arrays.items():
        arr = np.asarray(value)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise InvalidType(f"arrays[{name!r}]: expected a numeric array, got dtype {arr.dtype}")
        if np.iscomplexobj(arr):
            raise InvalidType(f"arrays[{name!r}]: complex parameters are not supported")
        shapes[name] = arr.shape
        parts.append(arr.astype(np.float64).ravel())
    segs = SegmentMap.from_shapes(shapes)
    return np.concatenate(parts), segs


def unflatten(theta: np.ndarray, segments: SegmentMap) -> dict[str, np.ndarray]:
    """Split a flat vector back into ``{name: array}`` with the original shapes.

    Parameters
    ----------
    theta : array_like
        A 1-D vector of ``segments.size`` values. When it is a numpy array the results are views
        of it (writing into them writes into ``theta``); otherwise of a new array.
    segments : SegmentMap or mapping of str to tuple of int
        The map (``flatten``'s second result), or ``{name: shape}`` as for
        ``SegmentMap.from_shapes``.

    Returns
    -------
    dict of str to numpy.ndarray
        Name -> array of the segment's shape, in map order.

    Raises
    ------
    TypeError
        When ``segments`` is neither a ``SegmentMap`` nor a mapping.
    ValueError
        When ``theta`` is not 1-D or its size differs from the map's.

    Examples
    --------
    >>> theta, segs = flatten({"W": np.ones((2, 3)), "b": np.zeros(3)})
    >>> unflatten(theta, segs)["W"].shape
    (2, 3)
    """
    if not isinstance(segments, (SegmentMap, Mapping)):
        raise InvalidType(
            f"segments: expected a SegmentMap or a {{name: shape}} mapping, "
            f"got {type(segments).__name__}"
        )
    theta = np.asarray(theta)
    if theta.ndim != 1:
        raise InvalidValue(f"theta: expected a flat 1-D vector, got shape {theta.shape}")
    segments = as_segment_map(segments, theta.size)
    return {seg.name: theta[seg.start : seg.stop].reshape(seg.shape) for seg in segments}
