"""The process backend: persistent worker processes for GIL-bound and thread-unsafe Python losses.

- One pool of worker processes per process, kept across checks (its start-up is paid once, by the
  first check that uses it) and rebuilt after a fork or when a check asks for more workers. On
  Linux the workers are forked (the standard library's ProcessPoolExecutor, "fork" context): they
  start in milliseconds with numpy and fastgrad already imported; a forked child of a process with
  a pool builds its own. Elsewhere, or once torch, jax or tensorflow is imported (their thread
  pools can make a forked child hang), loky's executor starts them (fork+exec, a few tenths of
  a second), and idle ones exit after ``IDLE_SECONDS``.
- Per check, one shared-memory block holds theta and the problem (f, args, terms) pickled with
  cloudpickle (closures, lambdas, bound methods): a worker reads it once, caches it under the
  check's token, and every task then carries only its chunk of coordinates. The block is unlinked
  when the check's engine goes away, on error and on Ctrl-C.
- Each worker evaluates on its own working copy with the same serial loop as the other backends
  (loops.py), BLAS on one thread: the values are bitwise those of a serial evaluation.
- Ctrl-C (or any exception) while the results are awaited kills the workers: none outlives it;
  at exit the pool is stopped before multiprocessing joins its children.
- A worker that dies (the OOM killer's SIGKILL) breaks the pool: it is discarded, never used
  again, and the chunks without a result run on a fresh pool (in this process when that breaks
  too); the path line says so. A pool found broken while idle is replaced before use.
- Every loss call is noted in a lap table in shared memory (faults.py): the count survives a
  worker's death, and ``timeout=`` is watched from here, the pool stopped when one is past it.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
import pickle
import sys
import threading
import uuid
import weakref
from collections import OrderedDict
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory
from multiprocessing.util import Finalize

import numpy as np

from ..errors import InvalidType
from .backends import ChunkedBackend, Workload, batch_chunks
from .blas import blas_limited
from .faults import CALLS, POLL_SECONDS, Lap, exit_signals, overdue, timeout_error
from .loops import fill_directions, fill_pairs

# idle worker processes started by loky exit after this many seconds (the next check restarts them)
IDLE_SECONDS = 300
# forked workers where fork is the platform's default, unless a library whose own threads make a
# forked child hang (OpenMP, XLA thread pools) is loaded: then loky's fork+exec
FORK = sys.platform.startswith("linux")
FORK_UNSAFE_MODULES = ("jax", "torch", "tensorflow")

_POOL_LOCK = threading.Lock()
_POOL = None
_POOL_SIZE = 0
_POOL_PID = os.getpid()
_FORKED: list = []  # the forked pool's worker processes (multiprocessing.Process)


def _after_fork_in_child() -> None:
    """A forked child (one of our workers, or the user's) starts without a pool and with a
    fresh lock: the parent may have held it while forking."""
    global _POOL_LOCK, _POOL, _POOL_SIZE, _POOL_PID
    _POOL_LOCK, _POOL, _POOL_SIZE, _POOL_PID = threading.Lock(), None, 0, os.getpid()
    _FORKED.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def forks() -> bool:
    """True when the next pool's workers are forked (fast start), False for loky's."""
    return FORK and not any(name in sys.modules for name in FORK_UNSAFE_MODULES)


def start_up_seconds() -> float:
    """What starting a pool of workers costs, roughly (the planner's threshold)."""
    return 0.1 if forks() else 0.5


def _new_pool(workers: int):
    """A pool of ``workers`` processes, started now."""
    if forks():
        before = set(multiprocessing.active_children())
        pool = ProcessPoolExecutor(max_workers=workers,
                                   mp_context=multiprocessing.get_context("fork"))
        pool.submit(int).result()  # with fork, the first task starts every worker
        _FORKED[:] = [p for p in multiprocessing.active_children() if p not in before]
        return pool
    from loky import ProcessPoolExecutor as LokyExecutor

    return LokyExecutor(max_workers=workers, timeout=IDLE_SECONDS)


def process_pool(workers: int):
    """The process-wide pool, with at least ``workers`` worker processes."""
    global _POOL, _POOL_SIZE, _POOL_PID
    with _POOL_LOCK:
        if _POOL_PID != os.getpid():  # a forked child: the parent's pool is not ours to use
            _POOL, _POOL_SIZE, _POOL_PID = None, 0, os.getpid()
            _FORKED.clear()
        if _POOL is not None and _broken(_POOL):  # a worker died while the pool was idle
            old, old_workers = _POOL, list(_FORKED)
            _POOL, _POOL_SIZE = None, 0
            _FORKED.clear()
            with contextlib.suppress(Exception):
                _stop(old, old_workers, wait=False)
        if _POOL is None or _POOL_SIZE < workers:
            old, old_workers = _POOL, list(_FORKED)
            _POOL = _new_pool(workers)
            _POOL_SIZE = workers
            if old is not None:
                _stop(old, old_workers, wait=False)
            # multiprocessing joins its children at exit (a forked child of the user's running
            # a check does it before os._exit): the idle workers are stopped first, not awaited
            Finalize(None, stop_pool, exitpriority=10)
        return _POOL


def _broken(pool) -> bool:
    """True when the pool can take no more work (a worker died): the standard library's
    ``_broken``, loky's ``_flags.broken``."""
    flags = getattr(pool, "_flags", None)
    return bool(getattr(pool, "_broken", False) or getattr(flags, "broken", None))


def pool_alive(workers: int) -> bool:
    """True when a pool of at least ``workers`` processes already runs in this process."""
    return _POOL is not None and _POOL_PID == os.getpid() and _POOL_SIZE >= workers


def _stop(pool, forked: list, wait: bool) -> None:
    if forked:
        for p in forked:
            p.kill()
        pool.shutdown(wait=wait, cancel_futures=True)
    else:
        pool.shutdown(wait=wait, kill_workers=True)


def discard_pool(pool) -> None:
    """A broken pool is never used again: its workers are stopped and the next check (or the
    re-run of this one) starts a fresh pool. Another check may have replaced it already."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is not pool:
            return
        _POOL, _POOL_SIZE = None, 0
        forked = list(_FORKED)
        _FORKED.clear()
    with contextlib.suppress(Exception):
        _stop(pool, forked, wait=False)


def stop_pool() -> None:
    """Kill the worker processes now (Ctrl-C during a check; exit; tests)."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        pool, _POOL, _POOL_SIZE = _POOL, None, 0
        forked = list(_FORKED)
        _FORKED.clear()
        mine = _POOL_PID == os.getpid()
    if pool is not None and mine:
        _stop(pool, forked, wait=True)


def start_workers(workers: int, ref) -> list:
    """Start the pool's processes (if they are not running) and have each read the check's
    problem ``ref`` (SharedProblem.ref): futures, so that the reading overlaps whatever the
    caller does meanwhile."""
    pool = process_pool(workers)
    empty = (np.empty(0, np.int64), np.empty(0))
    return [pool.submit(run_chunk, ref, "pairs", empty, 1) for _ in range(workers)]


# -- what cannot be shipped ------------------------------------------------------------------------
def _pickle_failure(obj) -> str | None:
    import cloudpickle

    try:
        cloudpickle.dumps(obj)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def unpicklable_part(f, args: tuple) -> str:
    """Name the part of (f, args) that cloudpickle refuses: an argument, a closure variable, an
    attribute of a bound method's object, a global f refers to."""
    for p, a in enumerate(args):
        why = _pickle_failure(a)
        if why is not None:
            return f"args[{p}] ({type(a).__name__}: {why})"
    inner = getattr(f, "f", None)  # the loss part of a grad=True f (values.LossPart)
    if inner is not None and callable(inner):
        f = inner
    owner = getattr(f, "__self__", None)
    if owner is not None and not isinstance(owner, type(os)):
        for name, value in vars(owner).items() if hasattr(owner, "__dict__") else ():
            why = _pickle_failure(value)
            if why is not None:
                return (f"attribute {name!r} of the {type(owner).__name__} object f is bound to "
                        f"({type(value).__name__}: {why})")
    func = getattr(f, "__func__", f)
    code = getattr(func, "__code__", None)
    if code is not None:
        for name, cell in zip(code.co_freevars, getattr(func, "__closure__", None) or ()):
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            why = _pickle_failure(value)
            if why is not None:
                return f"closure variable {name!r} of f ({type(value).__name__}: {why})"
        for name in code.co_names:
            if name in getattr(func, "__globals__", {}):
                value = func.__globals__[name]
                why = _pickle_failure(value)
                if why is not None:
                    return f"global {name!r} used by f ({type(value).__name__}: {why})"
    return f"f itself ({type(f).__name__}: {_pickle_failure(f)})"


def ship(f, args: tuple, terms) -> bytes:
    """(f, args, terms) as cloudpickle bytes; InvalidType naming what cannot be pickled."""
    import cloudpickle

    try:
        return cloudpickle.dumps((f, args, terms), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        what = unpicklable_part(f, args)
    raise InvalidType(
        f"f: cannot be sent to worker processes (backend='processes'): cloudpickle cannot pickle "
        f"{what}. Fixes: backend='threads' if f is thread-safe, or workers=1 (serial, in this "
        f"process); or make that object picklable (e.g. create the lock or file inside f).")


def not_loadable(exc: NotLoadable) -> InvalidType:
    """The error for a problem the worker processes could not unpickle, with the fixes."""
    return InvalidType(
        f"f: cannot be loaded in the worker processes (backend='processes'): {exc}. cloudpickle "
        f"sends a function or class by reference to its module when that module is imported "
        f"here, and the workers could not import it. Fixes: backend='threads' if f is "
        f"thread-safe, or workers=1 (serial, in this process); or define f in a module the "
        f"workers can import, or in the script you run (__main__: sent by value).")


# -- the shared block --------------------------------------------------------------------------------
class SharedProblem:
    """theta and the pickled problem in one shared-memory block, unlinked with this object."""

    def __init__(self, theta: np.ndarray, blob: bytes):
        theta = np.ascontiguousarray(theta)
        self.token = uuid.uuid4().hex
        size = theta.nbytes + len(blob)
        self.block = shared_memory.SharedMemory(create=True, size=max(1, size))
        buf = self.block.buf
        buf[:theta.nbytes] = theta.view(np.uint8).reshape(-1)
        buf[theta.nbytes:size] = blob
        del buf
        # what a task carries instead of the problem
        self.ref = (self.token, self.block.name, theta.dtype.str, theta.size, len(blob))
        self._finalizer = weakref.finalize(self, _unlink, self.block)

    def close(self) -> None:
        self._finalizer()


def _unlink(block) -> None:
    try:
        block.close()
    finally:
        with contextlib.suppress(FileNotFoundError):  # already unlinked by another path
            block.unlink()


# -- the worker side ----------------------------------------------------------------------------------
class NotLoadable(Exception):
    """A worker could not unpickle the check's problem (its text says why): f or an argument
    was pickled by reference to a module the worker cannot import, e.g. one that exists only in
    the parent (a script run with runpy, a module created at run time)."""


class _Attached:
    """A worker's view of one check: the problem, theta (shared, read-only), its working copy."""

    def __init__(self, ref):
        token, name, dtype, n, blob_size = ref
        buffer, self._close = _map_block(name)
        dtype = np.dtype(dtype)
        shared = np.frombuffer(buffer, dtype=np.uint8)
        nbytes = n * dtype.itemsize
        self.theta = shared[:nbytes].view(dtype)
        self.theta.flags.writeable = False
        try:
            self.f, self.args, self.terms = pickle.loads(
                shared[nbytes:nbytes + blob_size].tobytes())
        except Exception as exc:
            self.theta = shared = None  # the views of the block go before the block
            self._close()
            raise NotLoadable(f"{type(exc).__name__}: {exc}") from None
        self.work = self.theta.copy()

    def close(self) -> None:
        self.theta = None  # the last view of the buffer: it may be closed now
        # a view still alive (held by a traceback of f, say): the mapping goes with it
        with contextlib.suppress(BufferError):
            self._close()


def _map_block(name: str, writable: bool = False):
    """The block as (buffer, close), mapped read-only (or writable: a lap table) without
    registering it with a resource tracker (the parent owns it and unlinks it)."""
    path = os.path.join("/dev/shm", name.lstrip("/"))
    if os.path.exists(path):
        with open(path, "r+b" if writable else "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0,
                               access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)
        return mapped, mapped.close
    try:  # Python >= 3.13
        block = shared_memory.SharedMemory(name=name, track=False)
    except TypeError:
        from multiprocessing import resource_tracker

        block = shared_memory.SharedMemory(name=name)
        resource_tracker.unregister("/" + block.name.lstrip("/"), "shared_memory")
    return block.buf, block.close


_ATTACHED: OrderedDict[str, _Attached] = OrderedDict()
_KEEP = 2  # checks a worker keeps attached (concurrent checks share the pool)


def _attached(ref) -> _Attached:
    problem = _ATTACHED.get(ref[0])
    if problem is None:
        problem = _ATTACHED[ref[0]] = _Attached(ref)
        while len(_ATTACHED) > _KEEP:
            _ATTACHED.popitem(last=False)[1].close()
    return problem


_BLAS_THREADS: list = []  # the limit this worker process set, once


def _limit_blas(threads) -> None:
    """BLAS threads inside a worker process, set once for its life (the process is ours)."""
    if threads is None or _BLAS_THREADS == [threads]:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return
    threadpool_limits(threads)
    _BLAS_THREADS[:] = [threads]


_LAP_TABLES: OrderedDict[str, tuple] = OrderedDict()  # name -> (table, close), the last few


def _lap_table(name: str) -> np.ndarray:
    """The check's lap table (faults.py), mapped writable once per worker."""
    entry = _LAP_TABLES.get(name)
    if entry is None:
        buffer, close = _map_block(name, writable=True)
        table = np.frombuffer(buffer, dtype=np.float64).reshape(-1, 3)
        entry = _LAP_TABLES[name] = (table, close)
        while len(_LAP_TABLES) > 2 * _KEEP:
            old_table, old_close = _LAP_TABLES.popitem(last=False)[1]
            del old_table
            with contextlib.suppress(BufferError):  # a view still alive: closed with the process
                old_close()
    return entry[0]


def evaluate_chunk(f, work, theta, args, terms, kind: str, payload: tuple, lap=None):
    """One chunk on a working copy: (f_plus, f_minus, failure); failure is (position, text)."""
    m = 1 if terms is None else len(terms)
    size = payload[0].size
    f_plus, f_minus = np.empty((size, m)), np.empty((size, m))
    if kind == "pairs":
        index, step = payload
        failure = fill_pairs(f, work, index, step, args, terms, f_plus, f_minus, lap)
    else:
        key, lo, hi, step = payload
        failure = fill_directions(f, work, theta, key, lo, hi, step, args, terms, f_plus,
                                  f_minus, lap)
    if failure is not None:  # the exception itself may not pickle: its text does
        at, exc = failure
        failure = (at, f"{type(exc).__name__}: {exc}")
    return f_plus, f_minus, failure


def run_chunk(ref, kind: str, payload: tuple, blas_threads, lap=None):
    """One chunk in a worker process: (f_plus, f_minus, failure); failure is (position, text).
    ``lap``: (lap table name, slot, timeout) to tell of every call (faults.Lap)."""
    problem = _attached(ref)
    _limit_blas(blas_threads)
    if lap is not None:
        name, slot, timeout = lap
        lap = Lap(_lap_table(name), slot, timeout)
    return evaluate_chunk(problem.f, problem.work, problem.theta, problem.args, problem.terms,
                          kind, payload, lap)


# -- the backend -------------------------------------------------------------------------------------
class ProcessBackend(ChunkedBackend):
    """Chunks of coordinates (or directions) on ``workers`` worker processes (module docstring).

    Creating it pickles the problem (InvalidType naming what cannot be pickled) and writes the
    shared block; ``close()`` (or garbage collection) unlinks it.
    """

    name = "processes"

    def __init__(self, work: Workload, workers: int, blas_threads: int | None = 1):
        super().__init__(work, workers, 1 if blas_threads is None else blas_threads)
        self.shared = SharedProblem(work.theta, ship(work.f, work.args, work.terms))
        self._lap_block: LapBlock | None = None
        self._lap_rows = 0

    def close(self) -> None:
        self.shared.close()
        if self._lap_block is not None:
            self._lap_block.close()
            self._lap_block = None

    def _laps(self, rows: int) -> np.ndarray:
        """The lap table of at least ``rows`` slots, zeroed (a bigger block when needed)."""
        if self._lap_block is None or self._lap_rows < rows:
            if self._lap_block is not None:
                self._lap_block.close()
            self._lap_rows = max(rows, 64)
            self._lap_block = LapBlock(self._lap_rows)
        table = self._lap_block.table
        table[:rows] = 0.0
        return table

    def _run(self, k, kind, payload, fail, where, f_plus, f_minus, bar) -> None:
        """The chunks on the pool; when a worker dies (the pool breaks) the chunks without a
        result go to a fresh pool, and when that breaks too, run in this process."""
        chunks = batch_chunks(k, self.workers, kind, bar, self.work.tuning)
        timeout = self.work.timeout
        table = self._laps(2 * len(chunks))
        name = self._lap_block.name
        slot_of: dict[int, int] = {}  # chunk -> its slot in the latest submission
        slots = 0  # slots used so far (each submission has its own)
        pending = list(range(len(chunks)))
        in_process = 0  # evaluations run in this process after two pools broke
        futures: dict = {}

        def handle(c, result):
            fp, fm, failure = result
            if failure is not None:
                check_late()  # an evaluation that ended the chunk by running late
                fail(chunks[c][0], failure)
            a, b = chunks[c]
            f_plus[a:b], f_minus[a:b] = fp, fm
            bar.update(2 * (b - a))
            pending.remove(c)

        def check_late():
            late = overdue(table, slots, timeout)
            if late is not None:
                slot, j = late
                c = next(c for c, s in slot_of.items() if s == slot)
                stop_pool()  # the evaluation may still run: its worker is stopped with the pool
                text, index = where(chunks[c][0] + j)
                raise timeout_error(timeout, text, index)

        def result_of(fut):
            if timeout is None:
                return fut.result()
            while True:
                try:
                    return fut.result(timeout=POLL_SECONDS)
                except TimeoutError:
                    check_late()

        attempts = 0
        try:
            while pending:
                if attempts == 2:  # two pools broke: the rest in this process
                    in_process = self._in_process(chunks, pending, kind, payload, handle)
                    self.work.notes[-1] += (f"; {in_process} evaluations run in this process (a "
                                       f"fresh pool broke too)")
                    break
                pool = process_pool(self.workers)
                forked = list(_FORKED)
                try:
                    for c in pending:
                        slot_of[c] = slots
                        slots += 1
                        futures[c] = pool.submit(run_chunk, self.shared.ref, kind,
                                                 payload(*chunks[c]), self.blas_threads,
                                                 (name, slot_of[c], timeout))
                    for c in list(pending):
                        handle(c, result_of(futures[c]))
                except (BrokenProcessPool, CancelledError) as exc:
                    for c in list(pending):  # what finished before the pool broke stands
                        fut = futures.get(c)
                        if fut is not None and fut.done() and not fut.cancelled() \
                                and fut.exception() is None:
                            handle(c, fut.result())
                    why = exit_signals(pool, exc, forked)
                    discard_pool(pool)
                    attempts += 1
                    again = sum(2 * (chunks[c][1] - chunks[c][0]) for c in pending)
                    if attempts == 1:
                        self.work.notes.append(f"a worker process died ({why}); {again} "
                                          f"evaluations re-run on a fresh pool")
        except KeyboardInterrupt:
            stop_pool()  # no worker outlives a Ctrl-C
            self.close()
            raise
        except BaseException as exc:
            for fut in futures.values():
                fut.cancel()
            if isinstance(exc, NotLoadable):
                raise not_loadable(exc) from None
            raise
        finally:
            # every call of f the workers made, those of a worker that died included
            self.work.count(int(table[:slots, CALLS].sum()) + in_process)

    def _in_process(self, chunks, pending, kind, payload, handle) -> int:
        """The chunks left, in this process (every pool broke); returns the evaluations."""
        w = self.work
        done = 0
        work = w.borrow()
        try:
            with blas_limited(self.blas_threads):
                for c in list(pending):
                    a, b = chunks[c]
                    handle(c, evaluate_chunk(w.f, work, w.theta, w.args, w.terms, kind,
                                             payload(a, b)))
                    done += 2 * (b - a)
        finally:
            w.give_back(work)
        return done


class LapBlock:
    """A lap table (faults.py) in a shared-memory block the workers write; unlinked with this
    object (the mapping goes with the last view of the table)."""

    def __init__(self, rows: int):
        block = shared_memory.SharedMemory(create=True, size=rows * 3 * 8)
        self.name = block.name
        try:
            buffer, _ = _map_block(self.name, writable=True)
        except BaseException:
            _unlink_lap(block)
            raise
        block.close()  # no view of its own buffer exists: the table maps the file itself
        self.table = np.frombuffer(buffer, dtype=np.float64).reshape(rows, 3)
        self.table[:] = 0.0
        self._finalizer = weakref.finalize(self, _unlink_lap, block)

    def close(self) -> None:
        self.table = None
        self._finalizer()


def _unlink_lap(block) -> None:
    with contextlib.suppress(FileNotFoundError):
        block.unlink()
