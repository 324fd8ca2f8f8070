"""One-pass summaries of activations and gradients: statistics plus a fixed-bin histogram.

The kernels run in a single pass over the caller's array (never copied, never written), so that
logging a layer costs about as much as reading it once.  A layer's histogram range is fixed per
epoch (chosen from the previous epoch's extremes, or from the first batch), so the histograms of
all batches of an epoch can simply be added up.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

#: |v| at or above this counts as saturated (tanh outputs at +-1, sigmoid outputs at 1).
SATURATION_LEVEL = 0.99
#: Number of histogram bins per layer and epoch.
DEFAULT_BINS = 40


@njit(cache=True)
def _absmax(values2d):  # pragma: no cover - compiled
    """Largest finite |v| and whether any finite value is negative."""
    top = 0.0
    negative = False
    rows, cols = values2d.shape
    for i in range(rows):
        for j in range(cols):
            v = values2d[i, j]
            if math.isfinite(v):
                a = abs(v)
                if a > top:
                    top = a
                if v < 0.0:
                    negative = True
    return top, negative


@njit(cache=True)
def _summarize(values2d, lo, hi, counts, unit_nonzero, unit_saturated, saturation):  # pragma: no cover
    """One pass over ``values2d`` (rows = samples, columns = units).

    Adds into ``counts`` (the histogram on [lo, hi], hi inclusive), ``unit_nonzero`` and
    ``unit_saturated`` (per-column counts); returns the scalar statistics of the finite values:
    (finite, shift, sum(v - shift), sum((v - shift)**2), minimum, maximum, zeros, saturated,
    nonfinite, below, above).  Sums are shifted by the first finite value for accuracy.
    """
    rows, cols = values2d.shape
    nbins = counts.shape[0]
    width = (hi - lo) / nbins
    finite = 0
    shift = 0.0
    s1 = 0.0
    s2 = 0.0
    minimum = np.inf
    maximum = -np.inf
    zeros = 0
    saturated = 0
    nonfinite = 0
    below = 0
    above = 0
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
            if abs(v) >= saturation:
                saturated += 1
                unit_saturated[j] += 1
            if v < lo:
                below += 1
            elif v > hi:
                above += 1
            else:
                k = int((v - lo) / width)
                if k >= nbins:
                    k = nbins - 1
                counts[k] += 1
    return finite, shift, s1, s2, minimum, maximum, zeros, saturated, nonfinite, below, above


def as_rows(values: np.ndarray, name: str) -> np.ndarray:
    """View ``values`` as (samples, units): the last axis indexes units; no copy when contiguous."""
    if isinstance(values, (list, tuple)):
        values = np.asarray(values)
    if not isinstance(values, np.ndarray):
        values = np.asarray(values)
    if values.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a numeric array, got dtype {values.dtype}")
    if values.dtype.kind != "f":
        values = values.astype(np.float64)
    if values.size == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {values.shape}")
    if values.ndim == 0:
        return values.reshape(1, 1)
    if values.ndim == 1:
        return values.reshape(1, values.shape[0])
    return values.reshape(-1, values.shape[-1])


def histogram_range(absmax: float, negative: bool) -> tuple[float, float]:
    """A round range that covers +-absmax: a power of two (1.0 for tanh/sigmoid-like outputs)."""
    if not math.isfinite(absmax) or absmax <= 0.0:
        top = 1.0
    else:
        top = 2.0 ** math.ceil(math.log2(absmax))
    return (-top if negative else 0.0), top


class HistogramAccumulator:
    """Sums statistics and histograms of one layer over the batches of one epoch.

    >>> acc = HistogramAccumulator.for_values(np.tanh(np.random.randn(32, 16)))
    >>> acc.add(np.tanh(np.random.randn(32, 16)))
    >>> acc.summary()["count"]
    512
    """

    def __init__(self, lo: float, hi: float, units: int, bins: int = DEFAULT_BINS) -> None:
        if not hi > lo:
            raise ValueError(f"hi: must exceed lo={lo}, got {hi}")
        self.lo = float(lo)
        self.hi = float(hi)
        self.units = int(units)
        self.counts = np.zeros(int(bins), dtype=np.int64)
        self.unit_nonzero = np.zeros(self.units, dtype=np.int64)
        self.unit_saturated = np.zeros(self.units, dtype=np.int64)
        self.rows = 0
        self.finite = 0
        self.nonfinite = 0
        self.zeros = 0
        self.saturated = 0
        self.below = 0
        self.above = 0
        self.minimum = math.inf
        self.maximum = -math.inf
        self._shift = 0.0
        self._s1 = 0.0
        self._s2 = 0.0

    @classmethod
    def for_values(cls, values: np.ndarray, bins: int = DEFAULT_BINS,
                   previous: dict | None = None) -> HistogramAccumulator:
        """An accumulator whose range fits ``previous`` (last epoch's summary) or ``values``."""
        rows = as_rows(values, "values")
        if previous is not None and previous.get("finite", 0) > 0:
            absmax = max(abs(previous["min"]), abs(previous["max"]))
            negative = previous["min"] < 0.0
        else:
            absmax, negative = _absmax(rows)
        lo, hi = histogram_range(absmax, negative)
        acc = cls(lo, hi, rows.shape[1], bins)
        acc.add(rows)
        return acc

    def add(self, values: np.ndarray, name: str = "values") -> None:
        """Add one batch (read once, never modified)."""
        rows = as_rows(values, name)
        if rows.shape[1] != self.units:
            raise ValueError(
                f"{name}: expected {self.units} units on the last axis (as logged before in this "
                f"epoch), got shape {np.shape(values)}"
            )
        (finite, shift, s1, s2, minimum, maximum, zeros, saturated, nonfinite, below,
         above) = _summarize(rows, self.lo, self.hi, self.counts, self.unit_nonzero,
                             self.unit_saturated, SATURATION_LEVEL)
        self.rows += rows.shape[0]
        self.nonfinite += nonfinite
        self.zeros += zeros
        self.saturated += saturated
        self.below += below
        self.above += above
        if finite:
            self.minimum = min(self.minimum, minimum)
            self.maximum = max(self.maximum, maximum)
            if self.finite == 0:
                self._shift = shift
            # re-center this batch's shifted sums on the accumulator's shift
            delta = shift - self._shift
            self._s1 += s1 + finite * delta
            self._s2 += s2 + 2.0 * delta * s1 + finite * delta * delta
            self.finite += finite

    def summary(self) -> dict:
        """JSON-ready statistics, histogram and per-unit shares of this epoch so far."""
        n = self.finite
        if n:
            mean = self._shift + self._s1 / n
            var = max(self._s2 / n - (self._s1 / n) ** 2, 0.0)
        else:
            mean = var = math.nan
        rows = max(self.rows, 1)
        dead = int(np.count_nonzero(self.unit_nonzero == 0)) if self.rows else 0
        mostly_saturated = int(np.count_nonzero(self.unit_saturated >= 0.9 * rows)) if self.rows else 0
        total = n + self.nonfinite
        return {
            "count": int(total),
            "finite": int(n),
            "rows": int(self.rows),
            "units": self.units,
            "min": _json_float(self.minimum),
            "max": _json_float(self.maximum),
            "mean": _json_float(mean),
            "std": _json_float(math.sqrt(var)),
            "rms": _json_float(math.sqrt(var + mean * mean)),
            "zero_fraction": self.zeros / n if n else None,
            "saturated_fraction": self.saturated / n if n else None,
            "nonfinite_fraction": self.nonfinite / total if total else None,
            "dead_unit_fraction": dead / self.units,
            "saturated_unit_fraction": mostly_saturated / self.units,
            "range": [self.lo, self.hi],
            "counts": self.counts.tolist(),
            "below": int(self.below),
            "above": int(self.above),
        }


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
