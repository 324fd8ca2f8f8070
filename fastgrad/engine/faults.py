"""What the engine does when an evaluation takes too long or a worker process dies.

- ``timeout=`` (seconds per evaluation): every evaluation notes its start in a *lap* slot
  (a row of a small float64 table: start time, position in its chunk, calls made). The thread
  that waits for the results polls the table; an evaluation running past the timeout ends the
  batch with LossTimeout naming its coordinate. The table lives in this process for threads and
  serial evaluations and in a shared-memory block for worker processes, so a hung worker (even
  one stuck in C code) is seen from outside and its pool stopped. An evaluation that returns
  after its deadline but before the waiting thread looked is caught when it returns.
- Counting: the ``calls`` column counts the loss calls a chunk made, even in a worker that was
  killed before it could report them: the evaluations of a check are the calls it made.
- A slot's clock is ``time.monotonic()``: system-wide on Linux, the same in every process.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import InvalidType, InvalidValue, LossTimeout

# how often the waiting thread looks at the lap table (seconds)
POLL_SECONDS = 0.02
START, POSITION, CALLS = 0, 1, 2  # the columns of a lap table


def check_timeout(timeout) -> float | None:
    """``timeout`` as a positive finite float (seconds), or None; InvalidType/InvalidValue."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer,
                                                             np.floating)):
        raise InvalidType(f"timeout: expected seconds per evaluation (a positive float) or "
                          f"None, got {type(timeout).__name__} {timeout!r}")
    value = float(timeout)
    if not (math.isfinite(value) and value > 0):
        raise InvalidValue(f"timeout: expected seconds per evaluation (a positive float) or "
                           f"None, got {timeout!r}")
    return value


def timeout_error(timeout: float, where: str, index: int | None) -> LossTimeout:
    return LossTimeout(f"f took more than {timeout:g} s at {where}: the loss hangs or is slower "
                       f"than timeout={timeout:g}", index)


class EvaluationOverdue(Exception):
    """Raised inside a chunk's loop when an evaluation returned after its deadline: the chunk
    stops there; the waiting thread reads the slot and raises LossTimeout."""


class Abandoned(Exception):
    """Raised inside a chunk's loop once the check gave up on it (a timeout elsewhere, Ctrl-C):
    a thread that cannot be stopped stops at its next evaluation; its results are discarded."""


class Lap:
    """One chunk's slot of a lap table, told of every loss call: ``wrap(f)`` is f with the
    slot's start time, position (``lap.position``, set by the loop) and call count kept around
    each call (loops.fill_pairs, loops.fill_directions)."""

    __slots__ = ("row", "timeout", "stopped", "position")

    def __init__(self, table: np.ndarray, slot: int, timeout: float | None, stopped=None):
        self.row = memoryview(table[slot])  # item writes through a memoryview: ~50 ns each
        self.timeout = timeout
        self.stopped = stopped  # a threading.Event set when the check gave up (threads)
        self.position = 0

    def wrap(self, f):
        row, timeout, stopped, clock = self.row, self.timeout, self.stopped, time.monotonic

        def call(work, *args):
            if stopped is not None and stopped.is_set():
                raise Abandoned("the check stopped waiting for this evaluation")
            row[POSITION] = self.position
            row[CALLS] += 1
            row[START] = start = clock()
            try:
                value = f(work, *args)
            except BaseException:
                row[START] = 0.0  # f raised: that is reported, not a late evaluation
                raise
            if timeout is not None and clock() - start > timeout:
                raise EvaluationOverdue  # the slot keeps its start: the waiting thread sees it
            row[START] = 0.0
            return value
        return call


def overdue(table: np.ndarray, slots: int, timeout: float | None) -> tuple[int, int] | None:
    """(slot, position) of an evaluation running (or ended) past the timeout, or None."""
    if timeout is None:
        return None
    start = table[:slots, START]
    late = np.flatnonzero((start > 0) & (time.monotonic() - start > timeout))
    if late.size == 0:
        return None
    slot = int(late[np.argmin(start[late])])  # the one that started first
    return slot, int(table[slot, POSITION])


def exit_signals(pool, error: BaseException, processes: list) -> str:
    """How the pool's workers died, for the path line: ``signal 9`` (SIGKILL, the OOM killer's),
    or ``exit code 3``; the pool's own account when nothing else is known."""
    import re

    # loky: "... The exit codes of the workers are {SIGKILL(-9)}"
    codes = [int(c) for c in re.findall(r"\((-?\d+)\)", str(error))]
    if not codes:
        # a worker killed a moment ago may not be reaped yet: wait for it a little
        deadline = time.monotonic() + 0.5
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
        codes = [p.exitcode for p in processes if p.exitcode]
    # the standard library's pool terminates the survivors (SIGTERM) after one died
    own = [c for c in codes if c != -15] or codes
    if not own:
        return "cause unknown"
    code = min(own)
    return f"signal {-code}" if code < 0 else f"exit code {code}"
