"""The thread pool: one per process, grown when a check asks for more threads than it has.

A check that wants n workers submits n runners that take chunks from one shared list until it
is empty: at most n chunks run at once whatever the pool's size, and a pool is never kept per
worker count. Rebuilt after a fork (the child has no threads). Inside a pool thread (a loss that
runs a check itself) the work runs serially in the calling thread instead of deadlocking.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_SIZE = 0
_PID = os.getpid()
_IN_POOL = threading.local()  # .active is True inside a pool thread
POOL_THREAD_PREFIX = "fastgrad_"  # the pool threads' names (ThreadPoolExecutor adds _N)


def _mark_pool_thread():
    _IN_POOL.active = True


def _pool(n: int) -> ThreadPoolExecutor | None:
    global _POOL, _SIZE, _PID
    if getattr(_IN_POOL, "active", False):
        return None
    with _LOCK:
        if _PID != os.getpid():
            _POOL, _SIZE, _PID = None, 0, os.getpid()
        if _POOL is None or _SIZE < n:
            old = _POOL
            _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix=POOL_THREAD_PREFIX[:-1],
                                       initializer=_mark_pool_thread)
            _SIZE = n
            if old is not None:
                old.shutdown(wait=False)  # its threads end when their running chunks do
        return _POOL


def run_chunks(tasks: list[Callable[[], object]], workers: int, watch=None,
               stopped: threading.Event | None = None) -> list:
    """Run every task, at most ``workers`` at once; their results in order. The first exception
    raised by a task is raised here after every runner has stopped.

    ``watch`` (a timeout is set): called every POLL_SECONDS while the tasks run, and once at the
    end; what it raises (LossTimeout) ends the wait at once. The tasks then run on their own
    daemon threads, even with one worker: a Python function cannot be stopped, so a task that
    hangs is left running in the background (its result is discarded, ``stopped`` is set so that
    it stops at its next evaluation) and does not hold a pool thread or the exit of the process.
    """
    if watch is not None:
        return _run_watched(tasks, workers, watch, stopped or threading.Event())
    pool = _pool(workers) if workers > 1 and len(tasks) > 1 else None
    if pool is None:
        return [task() for task in tasks]
    results: list = [None] * len(tasks)
    taken = iter(range(len(tasks)))
    lock = threading.Lock()

    def runner():
        while True:
            with lock:
                j = next(taken, None)
            if j is None:
                return
            results[j] = tasks[j]()

    futures = [pool.submit(runner) for _ in range(min(workers, len(tasks)))]
    errors = [f.exception() for f in futures]
    for exc in errors:
        if exc is not None:
            raise exc
    return results


def _run_watched(tasks, workers, watch, stopped: threading.Event) -> list:
    if getattr(_IN_POOL, "active", False):  # a check inside a loss: inline, watched after
        results = [task() for task in tasks]
        watch()
        return results
    from .faults import POLL_SECONDS

    results: list = [None] * len(tasks)
    errors: list = []
    taken = iter(range(len(tasks)))
    lock = threading.Lock()

    def runner():
        _mark_pool_thread()
        try:
            while not stopped.is_set():
                with lock:
                    j = next(taken, None)
                if j is None:
                    return
                results[j] = tasks[j]()
        except BaseException as exc:  # noqa: BLE001 - raised in the waiting thread
            errors.append(exc)

    threads = [threading.Thread(target=runner, daemon=True, name="fastgrad-watched")
               for _ in range(max(1, min(workers, len(tasks))))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(POLL_SECONDS)
                watch()
        watch()
    except BaseException:
        stopped.set()  # the runners take no more chunks; a running one stops at its next call
        raise
    if errors:
        raise errors[0]
    return results
