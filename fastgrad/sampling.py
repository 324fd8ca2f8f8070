"""Which coordinates to check: stratified per segment, reproducible from the seed."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .errors import InvalidType, InvalidValue
from .segments import SegmentMap


def _count(name: str, size: int, samples) -> int:
    if isinstance(samples, str):
        if samples != "all":
            raise InvalidValue(f"samples: expected an int, a mapping or 'all', got {samples!r}")
        return size
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)):
        raise InvalidType(
            f"samples[{name!r}]: expected a positive int or 'all', got {samples!r}"
        )
    if samples < 1:
        raise InvalidValue(f"samples[{name!r}]: must be at least 1, got {samples}")
    return min(size, int(samples))


def counts_per_segment(segments: SegmentMap, samples) -> dict[str, int]:
    """How many coordinates each segment gets: min(size, samples), never zero."""
    if isinstance(samples, Mapping):
        unknown = set(samples) - set(segments.names)
        if unknown:
            raise InvalidValue(
                f"samples: names {sorted(unknown)} are not segments; segments are "
                f"{list(segments.names)}"
            )
        # segments the mapping leaves out still get the default, so none goes unchecked
        return {
            seg.name: _count(seg.name, seg.size, samples.get(seg.name, 16)) for seg in segments
        }
    return {seg.name: _count(seg.name, seg.size, samples) for seg in segments}


def sample_coordinates(segments: SegmentMap, samples=16, seed: int = 0) -> np.ndarray:
    """Flat indices to check, segment by segment, each segment's indices sorted and distinct.

    >>> segs = SegmentMap.from_shapes({"W": (1000, 1000), "b": (10,)})
    >>> idx = sample_coordinates(segs, samples=16, seed=0)
    >>> len(idx)   # 16 from W and 10 from b: the bias is never missed
    26
    """
    counts = counts_per_segment(segments, samples)
    parts = []
    for position, seg in enumerate(segments):
        k = counts[seg.name]
        if k == seg.size:
            local = np.arange(seg.size, dtype=np.int64)
        else:
            # one independent stream per segment: adding a segment does not reshuffle the others
            rng = np.random.default_rng([int(seed), position])
            local = np.sort(rng.choice(seg.size, size=k, replace=False)).astype(np.int64)
        parts.append(seg.start + local)
    return np.concatenate(parts)


_MASK64 = (1 << 64) - 1


def direction_key(seed: int, direction: int) -> np.uint64:
    """The uint64 key of random direction number ``direction`` for ``seed`` (splitmix64 of both).

    The kernels expand a key into a Rademacher direction where it is used, so a direction is
    never stored; the same (seed, direction) always gives the same vector.

    >>> direction_key(0, 1) == direction_key(0, 1), direction_key(0, 1) == direction_key(1, 1)
    (True, False)
    """
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(direction) * 0xD1B54A32D192ED03
         + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return np.uint64(z ^ (z >> 31))


def unique_indices(index: np.ndarray) -> np.ndarray:
    """The sorted distinct entries of an index array: ``np.unique`` without its first call's
    import of ``numpy.ma`` (17 ms in numpy 2.4, a sixth of a small check).

    >>> unique_indices(np.array([5, 1, 5, 3]))
    array([1, 3, 5])
    """
    ordered = np.sort(np.asarray(index).ravel())
    if ordered.size == 0:
        return ordered
    keep = np.empty(ordered.size, dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]
