"""Fork-join: a batch shared between this process and forked copies of it, for short checks of
GIL-bound Python losses.

A numpy loss of 20-200 us holds the GIL most of its run: threads cannot speed it up, and a pool
of worker processes costs more to feed (the problem pickled and shared, every chunk sent and
answered) than a check of a tenth of a second has to spend. Here each batch forks ``workers - 1``
children of this process, which already hold f, its args and theta: nothing is pickled, a child
starts in 2-3 ms (the fork copies page tables, not memory), and this process evaluates too.

- The results go to one anonymous shared mapping (the children's values are bitwise those of a
  serial run: the same loop, loops.fill_pairs / fill_directions, BLAS on one thread). Chunks are
  claimed from a pipe filled before the fork (_Shared): each chunk goes to exactly one process,
  whichever is free, and a process slowed by the machine's other work holds nothing back.
- Nothing a child leaves undone is lost: when no chunk is left to claim, this process looks at
  every chunk's done flag and evaluates the missing ones itself. A child that raised (its chunk not
  done: the error comes back with its traceback, from this process), died (the OOM killer), or
  stalled (no chunk finished for ``STALL_FACTOR`` times the slowest chunk this process ran, and
  at least ``STALL_SECONDS``: a lock a thread of this program held when it forked) is finished
  here, and the path line says so.
- Every call of f is counted (a counter per child in the shared mapping). Ctrl-C, or any error
  here, kills the children before it propagates; children ignore SIGINT (a terminal's Ctrl-C goes
  to the whole process group) and leave with ``os._exit``, running no atexit handler of the
  program's and flushing only what they printed.
- Used only where forking is safe (``fork_join_possible``): Linux, no torch, jax or tensorflow
  loaded (their thread pools can hang a forked child), no other Python thread running (a lock it
  holds would be copied held; idle pool machinery aside), no ``timeout=``; and for a batch long
  enough to pay for its forks (``ForkBackend.processes_for``).
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import signal
import sys
import threading
import time
import warnings

import numpy as np

from ..errors import LossError
from .backends import Backend, Workload
from .blas import blas_limited
from .loops import direction_where, fill_directions, fill_pairs
from .pool import POOL_THREAD_PREFIX
from .processes import forks

# chunks shrink as the batch goes (guided): each is this fraction of what is left per process,
# so that the last ones are short and the processes finish together, and no smaller than
# SMALLEST_CHUNK_SECONDS of work (a claim is one read of a pipe: a microsecond)
GUIDED_FRACTION = 0.5
SMALLEST_CHUNK_SECONDS = 2e-4
MAX_CHUNKS = 4096  # their claims (4 bytes each) fit in a pipe's buffer before anyone reads
# a child that finishes no chunk for this many times the slowest chunk this process ran (and at
# least STALL_SECONDS) is taken as stalled: killed, its chunk evaluated here
STALL_FACTOR = 20.0
STALL_SECONDS = 1.0
# seconds between looks at the children while this process waits for their last chunks
POLL_SECONDS = 0.0002
# a batch is forked only when the time the children save is this many times what forking them
# costs (ForkBackend.processes_for)
FORK_PAYBACK = 3.0

_FORK_SECONDS = [0.003]  # this process's latest fork-join start-up (os.fork, as the parent sees it)
_EXITING: list[int] = []  # children whose work is done, not yet reaped


def _reap_exited() -> None:
    """Reap the children of earlier batches that have exited (zombies until then)."""
    for pid in list(_EXITING):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _EXITING.remove(pid)


def fork_seconds() -> float:
    """What forking one child costs this process, as last measured (3 ms before the first)."""
    return _FORK_SECONDS[0]


def fork_join_possible() -> bool:
    """Whether this process may fork-join a batch now (module docstring): the calling thread is
    the only one running, besides idle machinery a child never touches: fastgrad's pool threads
    (a check in another thread would be using them, and that thread counts) and the manager
    and feeder threads of a process pool (concurrent.futures', loky's)."""
    if not (hasattr(os, "fork") and forks()):
        return False
    me = threading.current_thread()
    return all(t is me or _machinery(t) for t in threading.enumerate())


def _machinery(thread: threading.Thread) -> bool:
    return (thread.name.startswith(POOL_THREAD_PREFIX)
            or type(thread).__name__ == "_ExecutorManagerThread"
            or thread.name == "QueueFeederThread")


class _Shared:
    """The batch's shared mapping: values (plus, minus), a done flag per chunk, a failed flag,
    and one call counter per process (slot 0: this one); and the chunks to claim, one 4-byte
    record each in a pipe written before the fork and closed for writing: a read of one record
    is atomic (the kernel hands each to one reader), so no chunk is claimed twice or lost, and
    a child killed mid-claim holds no lock."""

    def __init__(self, k: int, width: int, n_chunks: int, processes: int):
        sizes = [2 * k * width * 8, n_chunks * 8, 8, processes * 8]
        self.map = mmap.mmap(-1, max(1, sum(sizes)))
        offsets = np.cumsum([0] + sizes)

        def view(i, count):
            return np.frombuffer(self.map, dtype=np.float64 if i == 0 else np.int64,
                                 count=count, offset=int(offsets[i]))

        values = view(0, 2 * k * width).reshape(2, k, width)
        self.plus, self.minus = values[0], values[1]
        self.done = view(1, n_chunks)
        self.failed = view(2, 1)
        self.calls = view(3, processes)
        self.claims, write = os.pipe()
        try:
            os.write(write, np.arange(n_chunks, dtype="<i4").tobytes())
        finally:
            os.close(write)

    def claim(self) -> int | None:
        """The next chunk nobody has claimed, or None."""
        if self.failed[0]:
            return None
        record = os.read(self.claims, 4)
        return int.from_bytes(record, "little") if len(record) == 4 else None

    def close(self) -> None:
        os.close(self.claims)


class ForkBackend(Backend):
    """Each batch on this process and ``workers - 1`` forked children (module docstring)."""

    name = "forked"

    def __init__(self, work: Workload, workers: int, blas_threads: int | None = 1):
        super().__init__(work, workers, 1 if blas_threads is None else blas_threads)
        self.t_eval: float | None = None  # seconds of one evaluation (the evaluator's timing)

    def processes_for(self, k: int) -> int:
        """How many processes share a batch of k pairs or directions (1: this one alone).
        Forks are made one after another, so on many cores a short batch takes fewer than
        ``workers``: the count that minimises serial / p + (p - 1) x fork_seconds(), kept only
        when the time it saves is FORK_PAYBACK times the forks' cost (unknown t_eval: all)."""
        most = min(self.workers, k)
        if most < 2 or self.t_eval is None:
            return most
        serial, fork = 2 * k * self.t_eval, fork_seconds()
        best = min(range(1, most + 1), key=lambda p: serial / p + (p - 1) * fork)
        saved = serial - serial / best - (best - 1) * fork
        return best if best > 1 and saved >= FORK_PAYBACK * (best - 1) * fork else 1

    def pairs(self, index, step, f_plus, f_minus, bar) -> None:
        w = self.work

        def fill(f, work, a, b, plus, minus):
            return fill_pairs(f, work, index[a:b], step[a:b], w.args, w.terms, plus[a:b],
                              minus[a:b])

        def error(a, failure):  # fill_pairs names the coordinate itself
            return w.coordinate_error(*failure)

        self._run(index.size, fill, f_plus, f_minus, bar, error)

    def directions(self, key, lo, hi, step, f_plus, f_minus, bar) -> None:
        w = self.work

        def fill(f, work, a, b, plus, minus):
            return fill_directions(f, work, w.theta, key[a:b], lo[a:b], hi[a:b], step[a:b],
                                   w.args, w.terms, plus[a:b], minus[a:b])

        def error(a, failure):  # fill_directions gives the position in the chunk
            j, exc = failure
            return LossError(f"f raised while evaluating {direction_where(lo[a + j], hi[a + j])}"
                             f": {type(exc).__name__}: {exc}")

        self._run(key.size, fill, f_plus, f_minus, bar, error)

    # -- one batch ---------------------------------------------------------------------------------
    def _run(self, k, fill, f_plus, f_minus, bar, error) -> None:
        w = self.work
        processes = self.processes_for(k)
        if processes < 2:
            self._serially(k, fill, f_plus, f_minus, bar, error)
            return
        if not fork_join_possible():
            self._note("not forked: another thread of this program is running (a lock it "
                       "holds would be copied held)" if forks() else
                       "not forked: torch, jax or tensorflow is loaded (their thread pools can "
                       "hang a forked child)")
            self._serially(k, fill, f_plus, f_minus, bar, error)
            return
        children = processes - 1
        chunks = guided_chunks(k, processes, self.t_eval)
        shared = _Shared(k, w.width, len(chunks), children + 1)
        pids: list[int] = []
        slowest = 0.0
        bar_done = 0  # evaluations of this process's chunks shown on the bar
        with blas_limited(self.blas_threads):
            try:
                self._fork(k, children, shared, chunks, fill, pids)
                work = w.borrow()
                try:
                    f = self._counted(shared, 0)
                    while (c := shared.claim()) is not None:
                        a, b = chunks[c]
                        start = time.perf_counter()
                        if fill(f, work, a, b, shared.plus, shared.minus) is not None:
                            shared.failed[0] = 1  # evaluated again below, raising here
                            break
                        slowest = max(slowest, time.perf_counter() - start)
                        shared.done[c] = 1
                        bar.update(2 * (b - a))
                        bar_done += 2 * (b - a)
                finally:
                    w.give_back(work)
                self._wait(pids, shared, chunks, slowest)
                pids.clear()
            finally:
                for pid in pids:  # an error or Ctrl-C here: no child outlives it
                    _kill(pid)
                shared.close()
                w.count(int(shared.calls.sum()))
        f_plus[:], f_minus[:] = shared.plus, shared.minus
        finished = sum(b - a for c, (a, b) in enumerate(chunks) if shared.done[c])
        bar.update(2 * finished - bar_done)  # the children's chunks
        self._finish(chunks, shared, fill, f_plus, f_minus, bar, error)

    def _counted(self, shared: _Shared, slot: int):
        return self._counted_into(shared.calls, slot)

    def _counted_into(self, calls: np.ndarray, slot: int = 0):
        """f, counting its calls into ``calls[slot]``."""
        f = self.work.f

        def counted(*args):
            calls[slot] += 1
            return f(*args)
        return counted

    def _fork(self, k: int, children: int, shared: _Shared, chunks, fill,
              pids: list[int]) -> None:
        """Start the children, their pids appended to ``pids`` as they start (Ctrl-C between
        two forks kills those already started); fewer when forking turns out dearer than
        assumed, and a fork that fails leaves the work to the others."""
        _reap_exited()
        for stream in (sys.stdout, sys.stderr):  # what is buffered is printed once, here
            with contextlib.suppress(Exception):
                stream.flush()
        start = time.perf_counter()
        for slot in range(1, children + 1):
            if pids and len(pids) >= self.processes_for(k) - 1:
                break  # forks cost more here than assumed (a large process): fewer children
            try:
                with warnings.catch_warnings():
                    # Python 3.12+ warns of fork in a process with threads: BLAS's idle workers
                    # count, and OpenBLAS makes its own pool safe across fork
                    warnings.simplefilter("ignore", DeprecationWarning)
                    pid = os.fork()
            except OSError:
                break
            if pid == 0:
                self._child(slot, shared, chunks, fill)  # never returns
            pids.append(pid)
            _FORK_SECONDS[0] = (time.perf_counter() - start) / len(pids)

    def _child(self, slot: int, shared: _Shared, chunks, fill) -> None:
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            work = self.work.theta.copy()
            f = self._counted(shared, slot)
            while (c := shared.claim()) is not None:
                a, b = chunks[c]
                if fill(f, work, a, b, shared.plus, shared.minus) is not None:
                    shared.failed[0] = 1  # the parent evaluates the chunk again and raises
                    break
                shared.done[c] = 1
            code = 0
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(BaseException):
                    stream.flush()
            os._exit(code)

    def _wait(self, pids: list[int], shared: _Shared, chunks, slowest: float) -> None:
        """Until every chunk is done or every child has exited; one that finishes nothing for
        the stall time is killed (its chunk is evaluated in _finish). A child whose chunks are
        all done is left to exit on its own (reaped at the next batch: it writes nothing more),
        not waited for: its exit unmaps a copy of this process."""
        limit = max(STALL_SECONDS, STALL_FACTOR * slowest)
        finished = int(shared.done.sum())
        last = time.perf_counter()
        alive = list(pids)
        while alive and finished < len(chunks):
            for pid in list(alive):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:  # reaped already (SIGCHLD ignored by the program)
                    done, status = pid, 0
                if done:
                    alive.remove(pid)
                    if os.WIFSIGNALED(status):
                        self._note(f"a forked worker died (signal {os.WTERMSIG(status)})")
            now_finished = int(shared.done.sum())
            now = time.perf_counter()
            if now_finished != finished:
                finished, last = now_finished, now
            elif now - last > limit:
                for pid in alive:
                    _kill(pid)
                self._note(f"a forked worker finished nothing for {now - last:.2g} s and was "
                           f"stopped")
                return
            elif alive:
                time.sleep(POLL_SECONDS)
        _EXITING.extend(alive)

    def _finish(self, chunks, shared: _Shared, fill, f_plus, f_minus, bar, error) -> None:
        """The chunks no process finished, evaluated here in order: a loss that raises does so
        here, with its own traceback, naming the coordinate."""
        missing = [c for c in range(len(chunks)) if not shared.done[c]]
        if not missing:
            return
        raised = bool(shared.failed[0])
        redone = self._serially(k=None, fill=fill, f_plus=f_plus, f_minus=f_minus, bar=bar,
                                error=error, chunks=[chunks[c] for c in missing])
        if raised:
            self._note(f"f raised in a forked worker but not when evaluated again in this "
                       f"process: {redone} evaluations run here")
        else:
            self._note(f"{redone} evaluations a forked worker left were run in this process")

    def _serially(self, k, fill, f_plus, f_minus, bar, error, chunks=None) -> int:
        """``chunks`` (all of a batch of k: one chunk) in this process, in order; returns the
        evaluations. A loss that raises does so here, naming the coordinate."""
        w = self.work
        calls = np.zeros(1, dtype=np.int64)
        f = self._counted_into(calls)
        work = w.borrow()
        try:
            with blas_limited(self.blas_threads):
                for a, b in chunks if chunks is not None else [(0, k)]:
                    failure = fill(f, work, a, b, f_plus, f_minus)
                    if failure is not None:
                        raise error(a, failure) from failure[1]
                    bar.update(2 * (b - a))
        finally:
            w.give_back(work)
            w.count(int(calls[0]))
        return int(calls[0])

    def _note(self, text: str) -> None:
        if text not in self.work.notes:
            self.work.notes.append(text)


def guided_chunks(k: int, processes: int, t_eval: float | None) -> list[tuple[int, int]]:
    """Bounds of the chunks of a batch of k pairs or directions, largest first (the constants
    above): GUIDED_FRACTION of what is left per process each, down to the smallest chunk."""
    pair = 2 * (t_eval or 0.0)
    smallest = max(1, math.ceil(SMALLEST_CHUNK_SECONDS / pair) if pair > 0 else 1,
                   math.ceil(k / MAX_CHUNKS))
    bounds, a = [], 0
    while a < k:
        size = max(smallest, int(GUIDED_FRACTION * (k - a) / processes))
        bounds.append((a, min(k, a + size)))
        a += size
    return bounds


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0)
