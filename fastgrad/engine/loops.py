"""Serial loops over coordinates and directions on one working copy of theta: what the thread
pool, an executor's workers and the kernels' error re-runs evaluate. Every perturbation is undone
before the next; a failure is returned as (position, exception), never raised midway."""

from __future__ import annotations

import numpy as np

from .values import as_loss, plain_loss


def fill_pairs(f, work, index, step, args, terms, f_plus, f_minus):
    """f(work +- step[j] e_index[j]) into f_plus[j], f_minus[j]; returns (index, exc) or None."""
    loss = plain_loss if terms is None else as_loss
    for j in range(index.size):
        i = int(index[j])
        x = work[i]
        try:
            work[i] = x + step[j]
            f_plus[j] = loss(f(work, *args), terms, "a perturbed point")
            work[i] = x - step[j]
            f_minus[j] = loss(f(work, *args), terms, "a perturbed point")
        except Exception as exc:
            return i, exc
        finally:
            work[i] = x
    return None


def direction_where(lo, hi) -> str:
    return f"a random direction on theta[{int(lo)}:{int(hi)}]"


def fill_directions(f, work, theta, key, lo, hi, step, args, terms, f_plus, f_minus):
    """f(theta +- step[j] v_j) for the directions key[j] on [lo[j], hi[j]); returns
    (position, exc) or None."""
    from .kernels import direction_fill

    for j in range(key.size):
        a, b = int(lo[j]), int(hi[j])
        hv = np.empty(b - a)  # h v: the only array besides the working copy
        direction_fill(key[j], a, b, hv)
        np.multiply(hv, step[j], out=hv)
        base = theta[a:b]
        try:
            np.add(base, hv, out=work[a:b], casting="same_kind")
            f_plus[j] = as_loss(f(work, *args), terms, "a perturbed point")
            np.subtract(base, hv, out=work[a:b], casting="same_kind")
            f_minus[j] = as_loss(f(work, *args), terms, "a perturbed point")
        except Exception as exc:
            return j, exc
        finally:
            work[a:b] = base
    return None
