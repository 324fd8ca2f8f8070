"""The ways fastgrad evaluates a batch of perturbed losses, behind one small interface.

Every backend has ``pairs(index, step, f_plus, f_minus, bar)`` (f at theta +- step[j] e_index[j])
and ``directions(key, lo, hi, step, f_plus, f_minus, bar)`` (f at theta +- step[j] v_j), fills the
arrays it is given, counts its evaluations in the Workload and names the coordinate when f
raises. Which one runs, with how many workers and BLAS threads, is the Plan's (planner.py).

- ThreadBackend: a thread pool (one working copy of theta per thread, kept for the check); with
  one worker it is the serial backend, in the calling thread.
- KernelBackend: a Numba ``prange`` kernel calling a compiled loss (kernels.py).
- ExecutorBackend: chunks sent to a concurrent.futures Executor or a dask Client, the problem
  shipped once per worker (shipping.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import numpy as np

from ..errors import LossError
from ..tuning import DEFAULT_TUNING, Tuning
from .blas import blas_limited
from .faults import Lap, overdue, timeout_error
from .kernel_errors import collecting_kernel_errors
from .loops import direction_where, fill_directions, fill_pairs
from .pool import run_chunks
from .shipping import ShippedProblem, run_shipped
from .values import as_loss


class Workload:
    """What every backend evaluates: f(theta + perturbation, *args), one value per loss term.

    Holds the working copies of theta not in use (one per thread that ever ran at once, kept for
    the whole check; the copy f first ran on included), the count of loss evaluations, and the
    check's Tuning (how batches are chunked).
    """

    def __init__(self, f: Callable, theta: np.ndarray, args: tuple, terms, describe,
                 first_copy: np.ndarray | None = None, tuning: Tuning = DEFAULT_TUNING):
        self.f = f
        self.tuning = tuning
        self.theta = theta  # read-only: every perturbation happens on a copy
        self.args = tuple(args)
        self.terms = terms
        self.width = 1 if terms is None else len(terms)  # loss values per evaluation
        self.describe = describe
        self.timeout: float | None = None  # seconds per evaluation (faults.py), None: no limit
        self.evaluations = 0  # every call of f this check made
        self.guard_evaluations = 0  # of which the thread-safety guard's serial duplicates
        self.notes: list[str] = []  # what happened to the workers (the path line says it)
        self._count_lock = threading.Lock()
        self._duplicating = threading.local()
        self._copies: list[np.ndarray] = [first_copy] if first_copy is not None else []

    def count(self, n: int) -> None:
        """Count n loss evaluations (every call of f is one); those inside
        ``guard_duplicates()`` in this thread are also counted as the guard's."""
        with self._count_lock:
            self.evaluations += n
            if getattr(self._duplicating, "active", False):
                self.guard_evaluations += n

    @contextlib.contextmanager
    def guard_duplicates(self):
        """Evaluations made inside, in this thread, repeat points the check already has (the
        guard's serial comparison): counted in ``evaluations`` and in ``guard_evaluations``."""
        self._duplicating.active = True
        try:
            yield
        finally:
            self._duplicating.active = False

    def borrow(self) -> np.ndarray:
        """A working copy of theta (every perturbation is undone after its evaluation)."""
        try:
            return self._copies.pop()  # list.pop/append are atomic
        except IndexError:
            return self.theta.copy()

    def give_back(self, work: np.ndarray) -> None:
        self._copies.append(work)

    def release_copies(self) -> None:
        """Drop the idle working copies (the kernel makes its own, one per thread)."""
        self._copies.clear()

    def at(self, x: np.ndarray, where: str, blas_threads: int | None,
           in_place: bool = False) -> tuple[np.ndarray, float]:
        """The loss (per term) at one point, on a copy (at theta: a working copy; with
        ``in_place``, on ``x`` itself: a borrowed working copy), and the seconds it took."""
        own = x is self.theta
        if own:
            x = self.borrow()
        elif not in_place:
            x = x.copy()
        try:
            with blas_limited(blas_threads):
                start = time.perf_counter()
                value = self.f(x, *self.args)
                elapsed = time.perf_counter() - start
        except LossError:
            raise
        except Exception as exc:
            raise LossError(f"f raised at {where}: {type(exc).__name__}: {exc}") from exc
        finally:
            if own:
                self.give_back(x)
        self.count(1)
        return as_loss(value, self.terms, f"at {where}"), elapsed

    def coordinate_error(self, i: int, exc: BaseException) -> LossError:
        if isinstance(exc, LossError):
            return LossError(f"{exc} (while evaluating {self.describe(i)})", i)
        return self.raised_at(i, f"{type(exc).__name__}: {exc}")

    def raised_at(self, i: int, text: str) -> LossError:
        """The error for f raising ``text`` (type: message) at coordinate i."""
        return LossError(f"f raised while evaluating {self.describe(i)}: {text}", i)


def chunk_bounds(k: int, n_chunks: int) -> list[tuple[int, int]]:
    bounds = np.linspace(0, k, max(1, min(k, n_chunks)) + 1).astype(np.int64)
    return [(int(bounds[c]), int(bounds[c + 1])) for c in range(bounds.size - 1)]


def batch_chunks(k: int, workers: int, kind: str, bar, tuning: Tuning) -> list[tuple[int, int]]:
    """The chunks a batch of k pairs or directions goes in, over ``workers`` workers: a few
    per worker (``tuning.chunks_per_worker_pairs`` / ``_directions``), at least
    ``tuning.progress_chunks`` while a progress bar is on screen."""
    per_worker = tuning.chunks_per_worker_pairs if kind == "pairs" \
        else tuning.chunks_per_worker_directions
    n_chunks = workers * per_worker if workers > 1 else 1
    if bar.active:
        n_chunks = max(n_chunks, tuning.progress_chunks)
    return chunk_bounds(k, n_chunks)


class Backend:
    """The interface every evaluation strategy implements (see the module docstring)."""

    name = ""

    def __init__(self, work: Workload, workers: int, blas_threads: int | None):
        self.work = work
        self.workers = workers
        self.blas_threads = blas_threads

    def pairs(self, index, step, f_plus, f_minus, bar) -> None:
        raise NotImplementedError

    def directions(self, key, lo, hi, step, f_plus, f_minus, bar) -> None:
        raise NotImplementedError


class ThreadBackend(Backend):
    """A thread pool of ``workers`` threads; one worker: serially, in the calling thread."""

    @property
    def name(self) -> str:
        return "serial" if self.workers == 1 else "threads"

    def _run(self, k, kind, fill, bar, where):
        """k items in chunks, ``fill(work, a, b, lap)`` each; with a timeout every evaluation is
        watched (faults.py) and one past it raises LossTimeout naming ``where(position)``."""
        chunks = batch_chunks(k, self.workers, kind, bar, self.work.tuning)
        timeout = self.work.timeout
        table = np.zeros((len(chunks), 3)) if timeout is not None else None
        stopped = threading.Event() if timeout is not None else None

        def task(c, a, b):
            def run():
                lap = None if table is None else Lap(table, c, timeout, stopped)
                work = self.work.borrow()
                try:
                    failure = fill(work, a, b, lap)
                finally:
                    self.work.give_back(work)
                bar.update(2 * (b - a))
                return failure
            return run

        def watch():
            late = overdue(table, len(chunks), timeout)
            if late is not None:
                text, index = where(chunks[late[0]][0] + late[1])
                raise timeout_error(timeout, text, index)

        with blas_limited(self.blas_threads):
            results = run_chunks([task(c, a, b) for c, (a, b) in enumerate(chunks)],
                                 self.workers, None if table is None else watch, stopped)
        self.work.count(2 * k)
        return chunks, results

    def pairs(self, index, step, f_plus, f_minus, bar) -> None:
        w = self.work

        def fill(work, a, b, lap):
            return fill_pairs(w.f, work, index[a:b], step[a:b], w.args, w.terms, f_plus[a:b],
                              f_minus[a:b], lap)

        def where(j):
            return w.describe(int(index[j])), int(index[j])

        for _, failure in zip(*self._run(index.size, "pairs", fill, bar, where)):
            if failure is not None:
                raise w.coordinate_error(*failure) from failure[1]

    def directions(self, key, lo, hi, step, f_plus, f_minus, bar) -> None:
        w = self.work

        def fill(work, a, b, lap):
            return fill_directions(w.f, work, w.theta, key[a:b], lo[a:b], hi[a:b], step[a:b],
                                   w.args, w.terms, f_plus[a:b], f_minus[a:b], lap)

        def where(j):
            return direction_where(lo[j], hi[j]), None

        for (a, _), failure in zip(*self._run(key.size, "directions", fill, bar, where)):
            if failure is not None:
                j, exc = failure
                raise LossError(f"f raised while evaluating "
                                f"{direction_where(lo[a + j], hi[a + j])}: "
                                f"{type(exc).__name__}: {exc}") from exc


class KernelBackend(Backend):
    """A Numba ``prange`` kernel over per-thread working copies, calling ``loss`` (the compiled
    f as a first-class function value, kernels.first_class_loss)."""

    name = "jit"

    def __init__(self, work: Workload, workers: int, blas_threads, kernel_f, loss):
        super().__init__(work, workers, blas_threads)
        self.kernel_f = kernel_f  # the Numba dispatcher: f itself, or f compiled by jit="auto"
        self.loss = loss

    def warm(self) -> None:
        """Load (or compile once, then cache) the coordinate kernel before anything is timed."""
        from .kernels import centered_losses

        empty = np.empty(0)
        centered_losses(self.loss, np.ascontiguousarray(self.work.theta),
                        np.empty(0, np.int64), empty, self.work.args, empty, empty, 1)

    def _batches(self, k, bar, run, rerun, where) -> None:
        """k items through the kernel in batches (one batch unless a progress bar moves).

        An exception inside f does not cross a first-class call: numba reports it as unraisable
        (kernel_errors.py), and the batch is evaluated again one item at a time in this thread by
        rerun(a, b), which returns (item, exception) for the first that raises; that becomes a
        LossError naming where(failure). If nothing raises then, those values stand.
        """
        import numba

        threads = min(self.workers, numba.config.NUMBA_NUM_THREADS)
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        self.work.release_copies()
        try:
            batch = k if not bar.active else max(4 * threads, k // 50)
            theta = np.ascontiguousarray(self.work.theta)
            with blas_limited(self.blas_threads):
                for a in range(0, k, batch):
                    b = min(a + batch, k)
                    with collecting_kernel_errors() as errors:
                        run(theta, a, b, min(threads, b - a) or 1)
                    failure = rerun(a, b) if errors else None
                    if failure is not None:
                        index, text = where(failure)
                        exc = failure[1]
                        raise LossError(f"f raised in the parallel kernel while evaluating "
                                        f"{text}: {type(exc).__name__}: {exc}", index) from exc
                    bar.update(2 * (b - a))
        finally:
            numba.set_num_threads(previous)
        self.work.count(2 * k)

    def pairs(self, index, step, f_plus, f_minus, bar) -> None:
        from .kernels import centered_losses

        w = self.work
        fp, fm = f_plus[:, 0], f_minus[:, 0]

        def run(theta, a, b, n_chunks):
            centered_losses(self.loss, theta, index[a:b], step[a:b], w.args, fp[a:b], fm[a:b],
                            n_chunks)

        def rerun(a, b):
            return fill_pairs(self.kernel_f, w.theta.copy(), index[a:b], step[a:b], w.args,
                              None, f_plus[a:b], f_minus[a:b])

        def where(failure):
            return int(failure[0]), w.describe(int(failure[0]))

        self._batches(index.size, bar, run, rerun, where)

    def directions(self, key, lo, hi, step, f_plus, f_minus, bar) -> None:
        from .kernels import directional_losses

        w = self.work
        fp, fm = f_plus[:, 0], f_minus[:, 0]

        def run(theta, a, b, n_chunks):
            directional_losses(self.loss, theta, key[a:b], lo[a:b], hi[a:b], step[a:b], w.args,
                               fp[a:b], fm[a:b], n_chunks)

        def rerun(a, b):
            failure = fill_directions(self.kernel_f, w.theta.copy(), w.theta, key[a:b], lo[a:b],
                                      hi[a:b], step[a:b], w.args, None, f_plus[a:b],
                                      f_minus[a:b])
            return None if failure is None else (a + failure[0], failure[1])

        def where(failure):
            j = failure[0]
            return None, direction_where(lo[j], hi[j])

        self._batches(key.size, bar, run, rerun, where)


# rounds of a Dask batch: the first, and one more after the cluster lost what it needed
DASK_ATTEMPTS = 2


def _lost_on_dask(exc: BaseException) -> bool:
    """A Dask future that failed because a worker was lost (not because of f)."""
    from concurrent.futures import CancelledError

    return isinstance(exc, CancelledError) or type(exc).__name__ == "KilledWorker"


def is_dask_client(executor) -> bool:
    """A dask.distributed Client (public API: submit, scatter, nthreads)."""
    return type(executor).__name__ == "Client" and type(executor).__module__.startswith(
        "distributed")


class ChunkedBackend(Backend):
    """A backend that sends chunks of items to workers elsewhere (an executor, worker
    processes): ``_run(k, kind, payload, fail, where, f_plus, f_minus, bar)`` sends
    ``payload(a, b)`` for each chunk and calls ``fail(a, (position, text))`` for the first chunk
    whose worker reports that f raised (the text is ``"Type: message"``: an exception may not
    pickle); ``where(position)`` is (text, flat index or None) of an item of the batch."""

    def _run(self, k, kind, payload, fail, where, f_plus, f_minus, bar) -> None:
        raise NotImplementedError

    def pairs(self, index, step, f_plus, f_minus, bar) -> None:
        def fail(a, failure):
            i, text = failure
            raise self.work.raised_at(int(i), text)

        def where(j):
            return self.work.describe(int(index[j])), int(index[j])

        if index.size:
            self._run(index.size, "pairs", lambda a, b: (index[a:b], step[a:b]), fail, where,
                      f_plus, f_minus, bar)

    def directions(self, key, lo, hi, step, f_plus, f_minus, bar) -> None:
        def fail(a, failure):
            j, text = failure
            j = a + j
            raise LossError(f"f raised while evaluating {direction_where(lo[j], hi[j])}: {text}")

        def where(j):
            return direction_where(lo[j], hi[j]), None

        if key.size:
            self._run(key.size, "directions",
                      lambda a, b: (key[a:b], lo[a:b], hi[a:b], step[a:b]), fail, where,
                      f_plus, f_minus, bar)


class ExecutorBackend(ChunkedBackend):
    """Chunks sent to an Executor (or a dask Client); the problem goes once per worker.

    The problem (f, theta, args, terms) is not sent with every task: a worker keeps it under
    this backend's token (shipping.py). A dask Client scatters it once to every worker
    (``broadcast=True``); with any other executor it rides along with the first ``workers``
    tasks only, and a task that lands on a worker without it reports "missing" and is sent again
    with it. ``shipments`` counts the copies sent.
    """

    name = "executor"

    def __init__(self, work: Workload, workers: int, executor):
        super().__init__(work, workers, None)
        self.executor = executor
        self.client = executor if is_dask_client(executor) else None
        if self.client is not None:
            self.workers = max(1, sum(self.client.nthreads().values()))
        self.problem = ShippedProblem(work.f, work.theta, work.args, work.terms)
        self.shipments = 0
        self._scattered = None
        self._sent = False

    def _submit(self, *task):
        if self.client is not None:
            return self.client.submit(run_shipped, *task, pure=False)
        return self.executor.submit(run_shipped, *task)

    def _ship(self, kind: str, payloads: list):
        """(payload position, result) for every payload, as results arrive in order."""
        token = self.problem.token
        if self.client is not None:
            yield from self._ship_dask(token, kind, payloads)
            return
        pending = list(range(len(payloads)))
        attach = 0 if self._sent else self.workers
        while pending:
            futures = []
            for r, c in enumerate(pending):
                bundle = self.problem if r < attach else None
                self.shipments += bundle is not None
                futures.append((c, self._submit(token, bundle, kind, payloads[c])))
            self._sent = True
            missing = []
            for c, fut in futures:
                result = fut.result()
                if result is None:
                    missing.append(c)
                else:
                    yield c, result
            pending = missing
            attach = self.workers

    def _ship_dask(self, token, kind: str, payloads: list):
        """_ship on a Dask client. Dask re-runs the tasks of a worker it loses; what it cannot
        recover (the scattered problem lost with the worker that held the only copy: the
        futures fail as cancelled or KilledWorker) is scattered again and the chunks without a
        result sent again, once; the path line says so."""
        pending = list(range(len(payloads)))
        for attempt in range(DASK_ATTEMPTS):
            if self._scattered is None:
                self._scattered = self.client.scatter(self.problem, broadcast=True, hash=False)
                self.shipments += 1
            futures = {c: self._submit(token, self._scattered, kind, payloads[c])
                       for c in pending}
            try:
                for c in list(pending):
                    result = futures[c].result()
                    pending.remove(c)
                    yield c, result
                return
            except Exception as exc:  # run_shipped returns f's failures: this is the cluster's
                if attempt + 1 == DASK_ATTEMPTS or not _lost_on_dask(exc):
                    raise
                for fut in futures.values():
                    fut.cancel()
                self._scattered = None
                self.work.notes.append(
                    f"a Dask worker was lost ({type(exc).__name__}); the problem was scattered "
                    f"again and {len(pending)} chunks re-sent")

    def _run(self, k, kind, payload, fail, where, f_plus, f_minus, bar) -> None:
        chunks = batch_chunks(k, self.workers, kind, bar, self.work.tuning)
        for c, (fp, fm, failure) in self._ship(kind, [payload(a, b) for a, b in chunks]):
            a, b = chunks[c]
            if failure is not None:
                fail(a, failure)
            f_plus[a:b], f_minus[a:b] = fp, fm
            bar.update(2 * (b - a))
        self.work.count(2 * k)
