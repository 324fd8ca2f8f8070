"""Numba kernels: perturbed losses of many coordinates, in parallel, on per-thread copies.

Three levels, as in stumpy: ``_centered_pair`` (one coordinate, one working copy, no races),
``_centered_losses`` (the ``prange`` driver: one chunk and one copy of theta per thread) and the
public dispatcher in ``evaluate.py``. Nothing here allocates per coordinate.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, nogil=True)
def _centered_pair(f, work, i, step, args):
    """f at work +- step e_i; work[i] is restored before returning."""
    x = work[i]
    work[i] = x + step
    f_plus = f(work, *args)
    work[i] = x - step
    f_minus = f(work, *args)
    work[i] = x
    return f_plus, f_minus


@njit(parallel=True, cache=True)
def _centered_losses(f, theta, index, step, args, f_plus, f_minus, current):
    """Fill f_plus[j], f_minus[j] = f(theta +- step[j] e_index[j]) for all j.

    ``current`` has one slot per chunk: the position j being evaluated (or -1 when done), so a
    loss that raises can be reported with the coordinate it was evaluating.
    """
    n_chunks = current.shape[0]
    k = index.shape[0]
    for c in prange(n_chunks):
        work = theta.copy()
        lo = c * k // n_chunks
        hi = (c + 1) * k // n_chunks
        for j in range(lo, hi):
            current[c] = j
            fp, fm = _centered_pair(f, work, index[j], step[j], args)
            f_plus[j] = fp
            f_minus[j] = fm
        current[c] = -1
