"""BLAS threads limited while fastgrad runs its own threads, shared by concurrent checks.

Threads inside threads oversubscribe the cores, so inside a check BLAS runs on one thread. The
limit is process-wide (it is the BLAS library's setting), so concurrent checks share one: the
first to enter sets it, the last to leave restores what was there before the first. Entering
and leaving in any interleaving leaves BLAS as the program had it.
"""

from __future__ import annotations

import contextlib
import sys
import threading

_LOCK = threading.Lock()
_CONTROLLER = None
_CONTROLLER_MODULES = -1  # len(sys.modules) when the controller was built
_ACTIVE = 0  # limits entered and not yet left
_ORIGINAL = None  # threadpoolctl's limiter of the first entrant: it restores the originals
_CURRENT: int | None = None  # the limit in force while _ACTIVE > 0


def _controller():
    """A threadpoolctl controller (building one scans the loaded libraries: ~3 ms), rebuilt when
    modules were imported since: Numba's np.dot loads scipy's own BLAS on first compile, and a
    controller built before that would leave it on all threads. None without threadpoolctl."""
    global _CONTROLLER, _CONTROLLER_MODULES
    if _CONTROLLER is None or (_CONTROLLER and _CONTROLLER_MODULES != len(sys.modules)):
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a runtime dependency
            _CONTROLLER = False
        else:
            _CONTROLLER_MODULES = len(sys.modules)
            _CONTROLLER = ThreadpoolController()
    return _CONTROLLER or None


@contextlib.contextmanager
def blas_limited(threads: int | None):
    """Context: BLAS (numpy's and scipy's, which Numba's np.dot calls) on ``threads`` threads;
    ``None`` leaves BLAS alone. Reference-counted across threads (see the module docstring)."""
    global _ACTIVE, _ORIGINAL, _CURRENT
    if threads is None:
        yield
        return
    with _LOCK:
        controller = _controller()
        if controller is not None:
            if _ACTIVE == 0:
                _ORIGINAL = controller.limit(limits=threads, user_api="blas")
                _CURRENT = threads
            elif threads != _CURRENT:
                controller.limit(limits=threads, user_api="blas")  # restored by _ORIGINAL
                _CURRENT = threads
        _ACTIVE += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE -= 1
            if _ACTIVE == 0:
                if _ORIGINAL is not None:
                    _ORIGINAL.restore_original_limits()
                _ORIGINAL, _CURRENT = None, None
