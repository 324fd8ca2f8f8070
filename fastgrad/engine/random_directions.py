"""Random directions in numpy: the entries the kernels' ``direction_value`` gives, bit for bit,
without loading Numba.

v_i = sign * magnitude from a splitmix64 hash of (direction key, i): the sign is Rademacher, the
magnitude uniform in [DIRECTION_MIN_MAGNITUDE, 1] (steps.py). The Numba kernels hash one entry at
a time inside their ``prange`` loops; the serial loops and the audit's bookkeeping take the
entries from here. A small audit (a drop-in's fast mode localizing one disagreeing direction)
then never imports Numba: loading it and its cached kernels costs 0.7-0.9 s in a fresh process,
more than the whole audit of a 2,048-element input. Supports past ``NUMPY_MAX_SUPPORT`` entries
use the kernels: one fused pass, 2 ms per 10^6 entries against numpy's 20 ms (ten passes over
uint64 temporaries); the entries are the same, and ``dot`` sums in another order (a few ulps).
"""

from __future__ import annotations

import numpy as np

from ..steps import DIRECTION_MIN_MAGNITUDE

# a support up to this many entries is hashed by numpy (at most ~3 ms, temporaries of 1 MB)
NUMPY_MAX_SUPPORT = 1 << 17

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_INV_2_53 = 1.0 / 9007199254740992.0


def _entries(key, lo: int, hi: int) -> np.ndarray:
    """v_lo .. v_{hi-1} of the direction ``key`` (numpy arrays wrap uint64 products silently,
    as the kernels' arithmetic does)."""
    z = np.arange(lo, hi, dtype=np.uint64)
    z *= _GOLDEN
    z += np.uint64(key)
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    magnitude = (z >> np.uint64(11)).astype(np.float64)
    magnitude *= _INV_2_53
    magnitude *= 1.0 - DIRECTION_MIN_MAGNITUDE
    magnitude += DIRECTION_MIN_MAGNITUDE
    return np.where((z & np.uint64(1)).astype(bool), -magnitude, magnitude)


def fill(key, lo: int, hi: int, out: np.ndarray) -> None:
    """out[j] = v_{lo + j} for j < hi - lo: one support range of one direction."""
    if hi - lo > NUMPY_MAX_SUPPORT:
        from .kernels import direction_fill

        direction_fill(key, lo, hi, out)
        return
    out[:hi - lo] = _entries(key, lo, hi)


def dot(grad: np.ndarray, theta: np.ndarray, key, lo: int, hi: int,
        step: float) -> tuple[float, float]:
    """grad . d over [lo, hi), where d_i = (fl(x_i + h v_i) - fl(x_i - h v_i)) / 2h is the
    displacement the loss really sees (rounded to theta's dtype), and sum |grad_i d_i|."""
    if hi - lo > NUMPY_MAX_SUPPORT:
        from .kernels import direction_dot

        return direction_dot(grad, theta, key, lo, hi, step)
    hv = step * _entries(key, lo, hi)
    x = theta[lo:hi].astype(np.float64)
    plus = (x + hv).astype(theta.dtype).astype(np.float64)
    minus = (x - hv).astype(theta.dtype).astype(np.float64)
    gd = grad[lo:hi] * ((plus - minus) / (2.0 * step))
    return float(np.sum(gd)), float(np.sum(np.abs(gd)))
