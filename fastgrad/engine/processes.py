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
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory
from multiprocessing.util import Finalize

import numpy as np

from ..errors import InvalidType
from .backends import ChunkedBackend, Workload, batch_chunks
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
        self._close()


def _map_block(name: str):
    """The block as (buffer, close), mapped read-only without registering it with a resource
    tracker (the parent owns it and unlinks it)."""
    path = os.path.join("/dev/shm", name.lstrip("/"))
    if os.path.exists(path):
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
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


def run_chunk(ref, kind: str, payload: tuple, blas_threads):
    """One chunk in a worker process: (f_plus, f_minus, failure); failure is (position, text)."""
    problem = _attached(ref)
    m = 1 if problem.terms is None else len(problem.terms)
    size = payload[0].size
    f_plus, f_minus = np.empty((size, m)), np.empty((size, m))
    _limit_blas(blas_threads)
    if kind == "pairs":
        index, step = payload
        failure = fill_pairs(problem.f, problem.work, index, step, problem.args,
                             problem.terms, f_plus, f_minus)
    else:
        key, lo, hi, step = payload
        failure = fill_directions(problem.f, problem.work, problem.theta, key, lo, hi, step,
                                  problem.args, problem.terms, f_plus, f_minus)
    if failure is not None:  # the exception itself may not pickle: its text does
        at, exc = failure
        failure = (at, f"{type(exc).__name__}: {exc}")
    return f_plus, f_minus, failure


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

    def close(self) -> None:
        self.shared.close()

    def _run(self, k, kind, payload, fail, f_plus, f_minus, bar) -> None:
        pool = process_pool(self.workers)
        chunks = batch_chunks(k, self.workers, kind, bar)
        futures = []
        try:
            futures = [pool.submit(run_chunk, self.shared.ref, kind, payload(a, b),
                                   self.blas_threads) for a, b in chunks]
            for (a, b), fut in zip(chunks, futures):
                fp, fm, failure = fut.result()
                if failure is not None:
                    fail(a, failure)
                f_plus[a:b], f_minus[a:b] = fp, fm
                bar.update(2 * (b - a))
        except KeyboardInterrupt:
            stop_pool()  # no worker outlives a Ctrl-C
            self.close()
            raise
        except BaseException as exc:
            for fut in futures:
                fut.cancel()
            if isinstance(exc, NotLoadable):
                raise not_loadable(exc) from None
            raise
        self.work.count(2 * k)
