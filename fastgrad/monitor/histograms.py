"""One-pass summaries of activations and gradients: statistics plus a fixed-bin histogram.

The kernels run in a single pass over the caller's array (never copied, never written), so that
logging a layer costs about as much as reading it once.  The bins are fixed-width over a range
[0, R) or [-R, R) with R a power of two, set by the first non-zero value; a value outside it
doubles the range by merging neighbouring bins, which is exact because the edges stay aligned.
So the histograms of all batches of an epoch add up without a second pass or stored values.
"""

from __future__ import annotations

import math

import numpy as np

from .._numba_cache import cached_per_user
from ..errors import InvalidType, InvalidValue

#: |v| at or above this counts as saturated (tanh outputs at +-1, sigmoid outputs at 1).
SATURATION_LEVEL = 0.99
_LARGEST_POWER = 2.0**1023
#: Number of histogram bins per layer and epoch.
DEFAULT_BINS = 48
#: Fixed bins of log10|v| (gradients are heavy-tailed: their magnitudes are read on a log scale).
LOG_RANGE = (-12.0, 4.0)
LOG_BINS = 64


@cached_per_user
def _power_of_two_above(a):  # pragma: no cover - compiled
    """The smallest power of two > a > 0 (exact for subnormals too), capped at 2**1023."""
    exponent = math.frexp(a)[1]  # a = m * 2**exponent with 0.5 <= m < 1
    return math.ldexp(1.0, min(exponent, 1023))


@cached_per_user
def _grow(counts, bounds, v):  # pragma: no cover - compiled
    """Double the bin width until the range covers v; exact, since the edges stay aligned.

    [0, R) grows to [0, 2R) (v >= R) or [-R, R) (v < 0); [-R, R) grows to [-2R, 2R).  Values
    never sit on the upper edge, so every old bin falls inside one new bin.  The number of bins
    must be a multiple of 4.
    """
    nbins = counts.shape[0]
    half = nbins // 2
    merged = np.zeros(half, dtype=np.int64)
    for _ in range(2200):  # a power of two doubles from 2**-1074 to 2**1023 in < 2200 steps
        if bounds[0] <= v < bounds[1]:
            return
        widen = bounds[0] == 0.0 and v < 0.0  # [0, R] -> [-R, R]
        if not widen and bounds[1] >= _LARGEST_POWER:
            return  # cannot double without overflow: the end bins take the rest
        for k in range(half):
            merged[k] = counts[2 * k] + counts[2 * k + 1]
        counts[:] = 0
        if widen:
            offset = half
            bounds[0] = -bounds[1]
        elif bounds[0] == 0.0:
            offset = 0
            bounds[1] *= 2.0
        else:
            offset = nbins // 4
            bounds[0] *= 2.0
            bounds[1] *= 2.0
        counts[offset:offset + half] = merged


@cached_per_user
def _bin(v, bounds, nbins):  # pragma: no cover - compiled
    """Index of v's bin: bins are [a, b), sign-exact around 0 (v < hi always, but at the cap)."""
    lo, hi = bounds[0], bounds[1]
    if lo == 0.0:
        k = int(v / hi * nbins)
    elif v >= 0.0:
        k = nbins // 2 + int(v / hi * (nbins // 2))
    else:
        k = nbins // 2 - int(math.ceil(-v / hi * (nbins // 2)))
    return min(max(k, 0), nbins - 1)


@cached_per_user
def _summarize(values2d, bounds, counts, unit_nonzero, unit_saturated, saturation,
               log_counts, log_lo, log_hi):  # pragma: no cover
    """One pass over ``values2d`` (rows = samples, columns = units).

    Adds into ``counts`` (the histogram on ``bounds`` = [lo, hi), bins closed on the left, grown
    by powers of two when a value falls outside; [0, 0] means not set yet), ``unit_nonzero`` and
    ``unit_saturated`` (per-column counts); returns the scalar statistics of the finite values:
    (finite, shift, scale, sum(d), sum(d**2), minimum, maximum, zeros, saturated, nonfinite,
    unbinned zeros) with d = (v - shift) / scale.  Sums are shifted by the first finite value
    and counted in units of ``scale``, a power of two at or above every |v - shift| (the sums so
    far are rescaled, exactly, when a larger deviation comes): squares of deviations near 1e-161
    would otherwise fall among the subnormals and lose their digits (a std 1.3% off), and
    squares of deviations above 1e154 would overflow. Zeros met before any range is set are left
    for the caller to bin.  When ``log_counts`` is not
    empty, non-zero values are also binned by log10|v| on [log_lo, log_hi] (ends clamped).
    """
    rows, cols = values2d.shape
    nbins = counts.shape[0]
    nlog = log_counts.shape[0]
    finite = 0
    shift = 0.0
    scale = 0.0  # 0 until a deviation from shift is not zero
    s1 = 0.0
    s2 = 0.0
    minimum = np.inf
    maximum = -np.inf
    zeros = 0
    saturated = 0
    nonfinite = 0
    unbinned = 0
    for i in range(rows):
        for j in range(cols):
            v = values2d[i, j]
            if not math.isfinite(v):
                nonfinite += 1
                continue
            if finite == 0:
                shift = v
            finite += 1
            d = v - shift
            a = abs(d)
            if a > scale and a < np.inf:  # a larger deviation: the sums in a larger unit
                unit = _power_of_two_above(a)
                r = scale / unit
                s1 *= r
                s2 *= r * r
                scale = unit
            if scale > 0.0:
                d /= scale
                s1 += d
                s2 += d * d
            if v < minimum:
                minimum = v
            if v > maximum:
                maximum = v
            if v == 0.0:
                zeros += 1
            else:
                unit_nonzero[j] += 1
                if nlog > 0:
                    q = int((math.log10(abs(v)) - log_lo) / (log_hi - log_lo) * nlog)
                    log_counts[min(max(q, 0), nlog - 1)] += 1
            if abs(v) >= saturation:
                saturated += 1
                unit_saturated[j] += 1
            if bounds[1] == 0.0:
                if v == 0.0:
                    unbinned += 1
                    continue
                bounds[1] = _power_of_two_above(abs(v))
                bounds[0] = -bounds[1] if v < 0.0 else 0.0
            if v >= bounds[1] or v < bounds[0]:
                _grow(counts, bounds, v)
            counts[_bin(v, bounds, nbins)] += 1
    return finite, shift, scale, s1, s2, minimum, maximum, zeros, saturated, nonfinite, unbinned


def as_rows(values: np.ndarray, name: str) -> np.ndarray:
    """View ``values`` as (samples, units): the last axis indexes units; no copy when contiguous."""
    if isinstance(values, (list, tuple)):
        values = np.asarray(values)
    if not isinstance(values, np.ndarray):
        values = np.asarray(values)
    if values.dtype.kind not in "fiub":
        raise InvalidType(f"{name}: expected a numeric array, got dtype {values.dtype}")
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    if values.size == 0:
        raise InvalidValue(f"{name}: expected a non-empty array, got shape {values.shape}")
    if values.ndim == 0:
        return values.reshape(1, 1)
    if values.ndim == 1:
        return values.reshape(1, values.shape[0])
    return values.reshape(-1, values.shape[-1])


class HistogramAccumulator:
    """Sums statistics and a histogram of one layer over the batches of one epoch.

    >>> acc = HistogramAccumulator(units=16)
    >>> acc.add(np.tanh(np.random.randn(32, 16))); acc.add(np.tanh(np.random.randn(32, 16)))
    >>> acc.summary()["count"]
    1024
    """

    def __init__(self, units: int, bins: int = DEFAULT_BINS, log_magnitudes: bool = False) -> None:
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 4 or bins % 4:
            raise InvalidValue(f"bins: expected a positive multiple of 4, got {bins!r}")
        self.units = int(units)
        self.counts = np.zeros(int(bins), dtype=np.int64)
        self.bounds = np.zeros(2)  # [lo, hi]; [0, 0] until a non-zero value is seen
        self.log_counts = np.zeros(LOG_BINS if log_magnitudes else 0, dtype=np.int64)
        self.unit_nonzero = np.zeros(self.units, dtype=np.int64)
        self.unit_saturated = np.zeros(self.units, dtype=np.int64)
        self.rows = 0
        self.finite = 0
        self.nonfinite = 0
        self.zeros = 0
        self.saturated = 0
        self.minimum = math.inf
        self.maximum = -math.inf
        self._unbinned_zeros = 0
        self._shift = 0.0
        self._scale = 0.0  # the unit of _s1 and _s2 (a power of two; 0 while they are 0)
        self._s1 = 0.0
        self._s2 = 0.0

    def add(self, values: np.ndarray, name: str = "values") -> None:
        """Add one batch: a single pass over it, never copied (when contiguous) nor modified."""
        rows = as_rows(values, name)
        if rows.shape[1] != self.units:
            raise InvalidValue(
                f"{name}: expected {self.units} units on the last axis (as logged before in this "
                f"epoch), got shape {np.shape(values)}"
            )
        (finite, shift, scale, s1, s2, minimum, maximum, zeros, saturated, nonfinite,
         unbinned) = _summarize(rows, self.bounds, self.counts, self.unit_nonzero,
                                self.unit_saturated, SATURATION_LEVEL, self.log_counts,
                                LOG_RANGE[0], LOG_RANGE[1])
        self.rows += rows.shape[0]
        self.nonfinite += nonfinite
        self.zeros += zeros
        self.saturated += saturated
        self._unbinned_zeros += unbinned
        if self._unbinned_zeros and self.bounds[1] > 0.0:
            self.counts[self._zero_bin()] += self._unbinned_zeros
            self._unbinned_zeros = 0
        if finite:
            self.minimum = min(self.minimum, minimum)
            self.maximum = max(self.maximum, maximum)
            if self.finite == 0:
                self._shift = shift
            self._add_sums(finite, shift - self._shift, scale, s1, s2)
            self.finite += finite

    def _add_sums(self, finite: int, delta: float, scale: float, s1: float, s2: float) -> None:
        """Add a batch's sums (``finite`` values, deviations from a shift ``delta`` above the
        accumulator's, in units of ``scale``): both re-centered on the accumulator's shift and
        counted in one unit, a power of two at or above the scales and |delta| (so every
        rescaling is exact, but for what falls below the smallest double next to the rest)."""
        unit = max(self._scale, scale, _power_of_two_above(abs(delta)) if delta else 0.0)
        if unit == 0.0:  # every value so far equals the shift
            return
        r_acc, r, q = self._scale / unit, scale / unit, delta / unit
        self._s1 = self._s1 * r_acc + s1 * r + finite * q
        self._s2 = self._s2 * r_acc * r_acc + s2 * r * r + 2.0 * q * s1 * r + finite * q * q
        self._scale = unit

    def _zero_bin(self) -> int:
        return 0 if self.bounds[0] == 0.0 else self.counts.size // 2  # ranges: [0, R) or [-R, R)

    def summary(self) -> dict:
        """JSON-ready statistics, histogram and per-unit shares of this epoch so far."""
        n = self.finite
        if n:
            mean = self._shift + self._scale * (self._s1 / n)
            std = self._scale * math.sqrt(max(self._s2 / n - (self._s1 / n) ** 2, 0.0))
        else:
            mean = std = math.nan
        counts = self.counts.copy()
        lo, hi = float(self.bounds[0]), float(self.bounds[1])
        if hi == 0.0:  # only zeros so far
            lo, hi = 0.0, 1.0
            counts[0] += self._unbinned_zeros
        rows = max(self.rows, 1)
        dead = int(np.count_nonzero(self.unit_nonzero == 0)) if self.rows else 0
        mostly_saturated = int(np.count_nonzero(self.unit_saturated >= 0.9 * rows)) if self.rows else 0
        total = n + self.nonfinite
        extra = {}
        if self.log_counts.size:
            extra = {"log10_range": list(LOG_RANGE), "log10_counts": self.log_counts.tolist()}
        return {
            "count": int(total),
            "finite": int(n),
            "rows": int(self.rows),
            "units": self.units,
            "min": _json_float(self.minimum),
            "max": _json_float(self.maximum),
            "mean": _json_float(mean),
            "std": _json_float(std),
            "rms": _json_float(math.hypot(std, mean)),
            "zero_fraction": self.zeros / n if n else None,
            "saturated_fraction": self.saturated / n if n else None,
            "nonfinite_fraction": self.nonfinite / total if total else None,
            "dead_unit_fraction": dead / self.units,
            "saturated_unit_fraction": mostly_saturated / self.units,
            "range": [lo, hi],
            "counts": counts.tolist(),
            **extra,
        }


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
