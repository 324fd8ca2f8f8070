"""Numba kernels: perturbed losses of many coordinates, in parallel, on per-thread copies.

Three levels, as in stumpy: ``_centered_pair`` (one coordinate, one working copy, no races),
``centered_losses`` (the ``prange`` driver: one chunk and one copy of theta per thread) and the
backend in ``backends.py``. Nothing here allocates per coordinate.
"""

from __future__ import annotations

import numpy as np
from numba import prange, typeof, types

from .._numba_cache import cached_per_user
from ..errors import InvalidType
from ..steps import DIRECTION_MIN_MAGNITUDE  # frozen into the cached kernels when compiled


# The kernels that call the loss take it as a first-class function value (FirstClassLoss below),
# never as a Numba dispatcher: their signature then names only types, so they are cached on disk
# (cached_per_user) and a later process loads them in milliseconds instead of compiling for seconds.
# A kernel specialized on a dispatcher would put the loss's module in numba's cache index, and a
# process that cannot import that module (another script, a test file) could not load it at all.
@cached_per_user(nogil=True)
def _centered_pair(f, work, i, step, args):
    """f at work +- step e_i; work[i] is restored before returning."""
    x = work[i]
    work[i] = x + step
    f_plus = f(work, *args)
    work[i] = x - step
    f_minus = f(work, *args)
    work[i] = x
    return f_plus, f_minus


@cached_per_user(parallel=True, nogil=True)
def centered_losses(f, theta, index, step, args, f_plus, f_minus, n_chunks):
    """Fill f_plus[j], f_minus[j] = f(theta +- step[j] e_index[j]) for all j, in n_chunks
    chunks (one per thread, each with its own working copy); f is a FirstClassLoss.

    An exception inside f does not propagate through a first-class call: numba reports it to
    sys.unraisablehook, where kernel_errors.py collects it and re-runs the batch to find the coordinate.
    """
    k = index.shape[0]
    for c in prange(n_chunks):
        work = theta.copy()
        for j in range(c * k // n_chunks, (c + 1) * k // n_chunks):
            f_plus[j], f_minus[j] = _centered_pair(f, work, index[j], step[j], args)


class FirstClassLoss(types.WrapperAddressProtocol):
    """A compiled Numba loss as a first-class function value: the kernels see its signature
    (a FunctionType) and call its compiled code through a pointer, so nothing about the loss's
    module enters their on-disk cache."""

    def __init__(self, f, argtypes: tuple):
        self._result = _overload_for(f, argtypes)  # keeps the compiled code alive
        self._signature = self._result.signature
        self._address = self._result.library.get_pointer_to_function(
            self._result.fndesc.llvm_cfunc_wrapper_name)

    def __wrapper_address__(self) -> int:
        return self._address

    def signature(self):
        return self._signature


def _overload_for(f, argtypes: tuple):
    """f's compiled version for these argument types: compiled now if f may compile (a no-op
    when f already ran on them), else the declared signature they convert to (an eagerly
    compiled f, e.g. @njit("float64(float64[:])"), whose arrays are of any layout)."""
    if argtypes in f.overloads:
        return f.overloads[argtypes]
    if getattr(f, "_can_compile", True):
        f.compile(argtypes)
        return f.overloads[argtypes]
    for declared, result in f.overloads.items():
        if len(declared) == len(argtypes) and all(
                f.typingctx.can_convert(ours, theirs) is not None
                for ours, theirs in zip(argtypes, declared)):
            return result
    raise InvalidType(f"no compiled version of {f} accepts {argtypes}")


def first_class_loss(f, theta: np.ndarray, args: tuple) -> FirstClassLoss | None:
    """f as the coordinate kernels call it, or None when it cannot be one (then the thread pool
    evaluates it): f must return a real scalar for a working copy of theta and these args."""
    try:
        argtypes = (typeof(np.empty(0, dtype=theta.dtype)),) + tuple(typeof(a) for a in args)
        loss = FirstClassLoss(f, argtypes)
    except Exception:
        return None
    if not isinstance(loss.signature().return_type, (types.Float, types.Integer, types.Boolean)):
        return None
    return loss


# -- random directions, generated where they are used (never an n x k matrix) -----------------
# v_i = sign * magnitude from a splitmix64 hash of (direction key, i): signs are Rademacher, the
# magnitude is uniform in [1/4, 1] so one wrong coordinate always shows (|v_i| >= 1/4) and two
# wrong coordinates of equal error cannot cancel exactly, as they would with +-1 entries.



@cached_per_user(nogil=True)
def direction_value(key, i):
    """The entry i of the direction whose key is ``key`` (a uint64)."""
    z = key + np.uint64(i) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    u = np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    magnitude = DIRECTION_MIN_MAGNITUDE + (1.0 - DIRECTION_MIN_MAGNITUDE) * u
    if z & np.uint64(1):
        return -magnitude
    return magnitude


@cached_per_user(nogil=True)
def direction_fill(key, lo, hi, out):
    """out[j] = v_{lo + j} for j < hi - lo (one support range of one direction)."""
    for i in range(lo, hi):
        out[i - lo] = direction_value(key, i)


@cached_per_user(nogil=True)
def direction_dot(grad, theta, key, lo, hi, step):
    """grad . d over [lo, hi), where d_i = (fl(x_i + h v_i) - fl(x_i - h v_i)) / 2h is the
    displacement the loss really sees (rounded to theta's dtype), and sum |grad_i d_i|."""
    point = np.empty(2, dtype=theta.dtype)
    dot = 0.0
    abs_gd = 0.0
    for i in range(lo, hi):
        v = direction_value(key, i)
        point[0] = theta[i] + step * v
        point[1] = theta[i] - step * v
        gd = grad[i] * ((np.float64(point[0]) - np.float64(point[1])) / (2.0 * step))
        dot += gd
        abs_gd += abs(gd)
    return dot, abs_gd


@cached_per_user(nogil=True)
def _directional_pair(f, work, theta, key, lo, hi, step, args):
    """f at theta +- step v on [lo, hi) of the working copy; work is restored before returning."""
    for i in range(lo, hi):
        work[i] = theta[i] + step * direction_value(key, i)
    f_plus = f(work, *args)
    for i in range(lo, hi):
        work[i] = theta[i] - step * direction_value(key, i)
    f_minus = f(work, *args)
    for i in range(lo, hi):
        work[i] = theta[i]
    return f_plus, f_minus


@cached_per_user(parallel=True, nogil=True)
def directional_losses(f, theta, key, lo, hi, step, args, f_plus, f_minus, n_chunks):
    """Fill f_plus[j], f_minus[j] = f(theta +- step[j] v_j), v_j supported on [lo[j], hi[j]).

    As ``centered_losses``: f is a FirstClassLoss, n_chunks chunks, one working copy each.
    """
    k = key.shape[0]
    for c in prange(n_chunks):
        work = theta.copy()
        for j in range(c * k // n_chunks, (c + 1) * k // n_chunks):
            f_plus[j], f_minus[j] = _directional_pair(f, work, theta, key[j], lo[j], hi[j],
                                                      step[j], args)
