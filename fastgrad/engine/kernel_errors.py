"""Exceptions raised by a loss inside a running Numba kernel, collected per kernel call.

An exception inside a first-class function call does not propagate: numba hands it to
``sys.unraisablehook`` (object ``"<numba.core.cpu.CPUContext>"``), from whichever thread ran it.
While any fastgrad kernel runs, one hook is in place that gives such reports to the kernel calls
running at that moment (each call keeps its own list, dropped when the call ends; the caller
then re-runs its batch serially to name the coordinate, so a report that was another call's
costs a re-run, never a wrong verdict) and passes every other report to the hook that was there
before. When the last kernel call ends the previous hook is put back, unless someone replaced
ours in the meantime: theirs stays (ours then only forwards, with no call to route to).
"""

from __future__ import annotations

import contextlib
import sys
import threading

_LOCK = threading.Lock()
_CALLS: dict[int, list[BaseException]] = {}  # id of a running call's list -> that list
_PREVIOUS = None  # the hook in place when ours was installed
_INSIDE = threading.local()  # a hook that forwards back to ours must not loop


def _is_numba_report(unraisable) -> bool:
    return isinstance(unraisable.object, str) and unraisable.object.startswith("<numba.")


def _route(unraisable):
    if getattr(_INSIDE, "active", False):
        sys.__unraisablehook__(unraisable)
        return
    with _LOCK:
        targets = list(_CALLS.values()) if _is_numba_report(unraisable) else []
        previous = _PREVIOUS
    if targets:
        for errors in targets:
            errors.append(unraisable.exc_value)
        return
    _INSIDE.active = True
    try:
        (previous or sys.__unraisablehook__)(unraisable)
    finally:
        _INSIDE.active = False


@contextlib.contextmanager
def collecting_kernel_errors():
    """Context for one kernel call: yields the list that receives the exceptions f raised."""
    global _PREVIOUS
    errors: list[BaseException] = []
    with _LOCK:
        if not _CALLS and sys.unraisablehook is not _route:
            _PREVIOUS = sys.unraisablehook
            sys.unraisablehook = _route
        _CALLS[id(errors)] = errors
    try:
        yield errors
    finally:
        with _LOCK:
            del _CALLS[id(errors)]
            if not _CALLS and sys.unraisablehook is _route:
                sys.unraisablehook = _PREVIOUS
                _PREVIOUS = None
