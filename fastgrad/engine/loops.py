"""Serial loops over coordinates and directions on one working copy of theta: what the thread
pool, an executor's workers and the kernels' error re-runs evaluate. Every perturbation is undone
before the next; a failure is returned as (position, exception), never raised midway."""

from __future__ import annotations

import numpy as np

from . import random_directions
from .values import as_loss, plain_loss


def fill_pairs(f, work, index, step, args, terms, f_plus, f_minus, lap=None):
    """f(work +- step[j] e_index[j]) into f_plus[j], f_minus[j]; returns (index, exc) or None.
    ``lap``: a faults.Lap told of every call (timeout, calls made)."""
    loss = plain_loss if terms is None else as_loss
    g = f if lap is None else lap.wrap(f)
    for j in range(index.size):
        i = int(index[j])
        x = work[i]
        if lap is not None:
            lap.position = j
        try:
            work[i] = x + step[j]
            f_plus[j] = loss(g(work, *args), terms, "a perturbed point")
            work[i] = x - step[j]
            f_minus[j] = loss(g(work, *args), terms, "a perturbed point")
        except Exception as exc:
            return i, exc
        finally:
            work[i] = x
    return None


def direction_where(lo, hi) -> str:
    return f"a random direction on theta[{int(lo)}:{int(hi)}]"


# a direction's displacement h v is generated in chunks of this many entries: the only memory
# besides the working copy, whatever the size of the support (no per-direction copy of theta)
DIRECTION_CHUNK = 1 << 18


def _displace(work, theta, key, a, b, step, sign, buffer) -> None:
    """work[a:b] = theta[a:b] + sign * step * v[a:b] (sign +1 or -1), chunk by chunk."""
    combine = np.add if sign > 0 else np.subtract
    for c in range(a, b, DIRECTION_CHUNK):
        e = min(c + DIRECTION_CHUNK, b)
        hv = buffer[:e - c]
        random_directions.fill(key, c, e, hv)
        np.multiply(hv, step, out=hv)
        combine(theta[c:e], hv, out=work[c:e], casting="same_kind")


def fill_directions(f, work, theta, key, lo, hi, step, args, terms, f_plus, f_minus, lap=None):
    """f(theta +- step[j] v_j) for the directions key[j] on [lo[j], hi[j]); returns
    (position, exc) or None. ``lap``: as in fill_pairs."""
    widest = int(np.max(np.asarray(hi) - np.asarray(lo))) if key.size else 0
    buffer = np.empty(min(widest, DIRECTION_CHUNK))
    g = f if lap is None else lap.wrap(f)
    for j in range(key.size):
        a, b = int(lo[j]), int(hi[j])
        if lap is not None:
            lap.position = j
        try:
            _displace(work, theta, key[j], a, b, step[j], 1, buffer)
            f_plus[j] = as_loss(g(work, *args), terms, "a perturbed point")
            _displace(work, theta, key[j], a, b, step[j], -1, buffer)
            f_minus[j] = as_loss(g(work, *args), terms, "a perturbed point")
        except Exception as exc:
            return j, exc
        finally:
            work[a:b] = theta[a:b]
    return None
