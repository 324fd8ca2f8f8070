"""Who evaluates the perturbed losses: the Numba kernel, a thread pool, or an Executor.

``Evaluator`` is the only object the driver talks to. It counts every loss evaluation and never
writes to the caller's theta: each worker perturbs its own copy and restores it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .progress import Progress


class LossError(RuntimeError):
    """The loss raised (or returned something unusable) at a perturbed point."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


def is_numba_dispatcher(f) -> bool:
    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # pragma: no cover - numba is a dependency
        return False
    return isinstance(f, Dispatcher)


def resolve_workers(workers) -> int:
    if workers is None:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else (os.cpu_count() or 1))
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers: expected a positive int or None, got {workers!r}")
    return int(workers)


def loss_terms(value) -> tuple[str, ...] | None:
    """Names of the loss terms when f returns a mapping of them, else None."""
    if isinstance(value, Mapping):
        if not value:
            raise ValueError("f: returned an empty mapping of loss terms")
        return tuple(str(k) for k in value)
    return None


def as_loss(value, terms: tuple[str, ...] | None, where: str) -> np.ndarray:
    """A loss value as a float64 array of one entry per term (one entry for a plain loss)."""
    if terms is not None:
        if not isinstance(value, Mapping) or set(map(str, value)) != set(terms):
            raise LossError(f"f: {where} returned {value!r}; expected the terms {list(terms)}")
        return np.array([_scalar(value[t], f"{where}, term {t!r}") for t in terms])
    return np.array([_scalar(value, where)])


def _scalar(value, where: str) -> float:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise LossError(f"f: {where} returned {value!r}, which is not a number") from None
    if arr.size != 1:
        raise LossError(
            f"f: {where} returned an array of shape {arr.shape}; the loss must be a scalar"
        )
    return float(arr.reshape(()))


# -- one level of threads at a time ------------------------------------------------------------
_BLAS_CONTROLLER = None
_BLAS_MODULES = -1  # len(sys.modules) when the controller was built


def _blas_controller():
    """A threadpoolctl controller (building one scans the loaded libraries: ~3 ms), rebuilt when
    modules were imported since: Numba's np.dot loads scipy's own BLAS on first compile, and a
    controller built before that would leave it on all threads. None without threadpoolctl."""
    global _BLAS_CONTROLLER, _BLAS_MODULES
    if _BLAS_CONTROLLER is None or (_BLAS_CONTROLLER and _BLAS_MODULES != len(sys.modules)):
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a runtime dependency
            _BLAS_CONTROLLER = False
        else:
            _BLAS_MODULES = len(sys.modules)
            _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER or None


def blas_limited(threads: int | None):
    """Context: BLAS (numpy's and scipy's, which Numba's np.dot calls) on ``threads`` threads,
    restored on exit; ``None`` leaves BLAS alone. Threads inside threads oversubscribe the cores."""
    controller = _blas_controller() if threads is not None else None
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=threads, user_api="blas")


# -- plans remembered per loss: the first check of a loss calibrates, later ones reuse it --------
@dataclass(frozen=True)
class Plan:
    threads: int
    blas_threads: int | None
    path: str
    reason: str
    t_eval: float  # the evaluation time the plan was measured at


# f -> {problem key: Plan}. A multi-threaded BLAS call leaves OpenBLAS's workers spinning for
# ~0.1 s after it returns, holding a core the outer threads need: calibration times BLAS threads
# only after its outer-thread probe, and a check that knows its plan makes no such call at all.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# a remembered plan is reused while one evaluation takes within this factor of its time (one
# timing of a microsecond loss moves by 2x on a busy machine; a different problem moves more)
PLAN_T_EVAL_FACTOR = 4.0
# a one-worker plan is remembered only when it beat outer threads by this factor
PLAN_ONE_WORKER_MARGIN = 1.3
# calibration runs the BLAS-threads strategy only when BLAS threads made one evaluation at
# least this much faster than BLAS on one thread (otherwise it cannot beat outer threads)
BLAS_SPEEDUP_TO_PROBE = 1.4


def _plan_key(theta: np.ndarray, args: tuple, workers: int, jit: bool) -> tuple:
    """What a plan depends on besides f: the sizes of everything f is evaluated on."""
    parts: list = [theta.size, theta.dtype.str, workers, jit]
    for a in args:
        if isinstance(a, np.ndarray):
            parts.append((a.shape, a.dtype.str))
        elif isinstance(a, (list, tuple)):
            parts.append((type(a).__name__, len(a)))
        else:
            parts.append(type(a).__name__)
    return tuple(parts)


def remembered_plan(f, theta, args, workers, jit) -> Plan | None:
    try:
        plans = _PLANS.get(f)
    except TypeError:  # not weakly referenceable (or unhashable)
        return None
    return None if plans is None else plans.get(_plan_key(theta, args, workers, jit))


def _remember(f, key: tuple, plan: Plan) -> None:
    with contextlib.suppress(TypeError):
        _PLANS.setdefault(f, {})[key] = plan


def theta_blas_limit(workers=None) -> int | None:
    """BLAS threads for the evaluations at theta before the check runs: 1 unless the check runs
    one worker by default (a one-core machine), where BLAS is left as the caller has it. A
    check that will run outer threads must not wake BLAS threads first (see _PLANS), and
    workers=1 is serial all the way down."""
    return 1 if workers is not None or resolve_workers(None) > 1 else None


# a plain numpy loss compiled by jit="auto": f -> Numba dispatcher, or None when Numba refused it
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# jit="auto" tries to compile only when the Python path is predicted to take this long (seconds):
# compiling costs ~0.1-2 s, so a short check never pays for it
AUTO_JIT_MIN_SECONDS = 1.0
# the calibration compares strategies on this much wall time of real coordinates each
CALIBRATION_SECONDS = 0.05
# BLAS threads (one outer worker) must beat outer threads by this factor to be chosen: the
# measurement is noisy on a shared machine, and outer threads are the right guess for most losses
BLAS_MARGIN = 1.15
# a batch of evaluations shorter than this (seconds, serially) runs on one thread
SERIAL_BATCH_SECONDS = 0.002
# below this predicted time (seconds) the first strategy is used without calibrating
CALIBRATE_MIN_SECONDS = 0.15
# ... except that a Python loss faster than this (seconds) runs serially: it is GIL-bound, and on
# the small two-layer net (23 us) two threads took 0.084 s where one took 0.065 s
GIL_BOUND_SECONDS = 50e-6


# -- the thread pool: started once per process, not once per batch -----------------------------
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_PID = os.getpid()
_POOLS_LOCK = threading.Lock()
_IN_POOL = threading.local()  # .active is True inside a pool thread


def _thread_pool(n: int) -> ThreadPoolExecutor | None:
    """A pool of n threads kept for the life of the process (starting threads for every batch
    cost 1-2 ms each on a busy machine), rebuilt after a fork (the child has no threads). None
    inside a pool thread: a loss that runs a check itself gets the serial path, not a deadlock."""
    global _POOLS_PID
    if getattr(_IN_POOL, "active", False):
        return None
    with _POOLS_LOCK:
        if _POOLS_PID != os.getpid():
            _POOLS.clear()
            _POOLS_PID = os.getpid()
        pool = _POOLS.get(n)
        if pool is None:
            pool = _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix="fastgrad",
                                                  initializer=_mark_pool_thread)
        return pool


def _mark_pool_thread():
    _IN_POOL.active = True


# -- errors inside a first-class loss call: numba hands them to sys.unraisablehook -------------
_UNRAISABLE_LOCK = threading.Lock()
_UNRAISABLE_USERS = 0
_UNRAISABLE_PREVIOUS = None
_KERNEL_ERRORS: list[BaseException] = []  # exceptions f raised inside a running kernel


def _kernel_unraisable(unraisable):
    """numba reports an exception raised through a first-class call as unraisable, from the
    thread that ran it: keep it for the kernel's caller; anything else goes on as before."""
    if isinstance(unraisable.object, str) and unraisable.object.startswith("<numba."):
        _KERNEL_ERRORS.append(unraisable.exc_value)
    elif _UNRAISABLE_PREVIOUS is not None:
        _UNRAISABLE_PREVIOUS(unraisable)


@contextlib.contextmanager
def _catching_kernel_errors():
    """sys.unraisablehook routed to _KERNEL_ERRORS while any kernel of this process runs (a
    counted install, so concurrent checks share one hook and the first one's is restored)."""
    global _UNRAISABLE_USERS, _UNRAISABLE_PREVIOUS
    with _UNRAISABLE_LOCK:
        if _UNRAISABLE_USERS == 0:
            _UNRAISABLE_PREVIOUS = sys.unraisablehook
            sys.unraisablehook = _kernel_unraisable
        _UNRAISABLE_USERS += 1
    try:
        yield
    finally:
        with _UNRAISABLE_LOCK:
            _UNRAISABLE_USERS -= 1
            if _UNRAISABLE_USERS == 0:
                sys.unraisablehook = _UNRAISABLE_PREVIOUS
                _UNRAISABLE_PREVIOUS = None


def _compile(f):
    """Numba's njit of a plain Python loss, or None (cached per function)."""
    with contextlib.suppress(KeyError, TypeError):  # not seen yet, or f cannot be a weak key
        return _COMPILED[f]
    try:
        import numba

        compiled = numba.njit(nogil=True)(f)
    except Exception:
        compiled = None
    with contextlib.suppress(TypeError):
        _COMPILED[f] = compiled
    return compiled


class Evaluator:
    """Evaluates ``f(theta + perturbation, *args)`` for batches of perturbations.

    Strategy (one level of threads at a time): ``workers`` threads (a Numba ``prange`` kernel for
    a Numba loss, a thread pool otherwise) with BLAS limited to one thread inside them, or one
    worker with BLAS on its own threads. With ``workers=None`` the first large batch calibrates:
    it runs a few real coordinates under each strategy and keeps the faster one (nothing is
    evaluated twice). ``jit="auto"`` may compile a plain numpy loss with Numba when that is
    faster; a loss Numba cannot compile stays on the thread pool, silently.
    """

    def __init__(self, f: Callable, theta: np.ndarray, args: tuple = (), *, workers=None,
                 executor: Executor | None = None, progress=None, describe=None,
                 terms: tuple[str, ...] | None = None, jit: bool | str = "auto",
                 first_copy: np.ndarray | None = None):
        if jit not in (True, False, "auto"):
            raise ValueError(f"jit: expected True, False or 'auto', got {jit!r}")
        if not callable(f):
            raise TypeError(f"f: expected a callable loss f(theta, *args), got {f!r}")
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError(
                f"executor: expected a concurrent.futures.Executor, got {type(executor).__name__}"
            )
        self.f = f
        self.theta = theta  # read-only here: every perturbation happens on a copy
        self.args = tuple(args)
        self.workers = resolve_workers(workers)
        self.workers_given = workers is not None  # an explicit count is obeyed, not calibrated
        self.jit_option = jit
        self.t_eval: float | None = None  # fastest timed evaluation of f at theta (seconds)
        self.threads = 1 if (executor is None and self.workers == 1) else self.workers
        # None: BLAS left alone. An explicit workers=1 is serial all the way down: BLAS threads
        # would also leave OpenBLAS workers spinning ~0.1 s after the check
        self.blas_threads: int | None = (1 if self.threads > 1 or (self.workers_given and
                                                                   self.workers == 1) else None)
        self._planned = self.workers_given or executor is not None or self.workers == 1
        self.executor = executor
        self.progress = progress
        self.terms = terms
        self.describe = describe or (lambda i: f"theta[{i}]")
        self.evaluations = 0
        # working copies of theta not in use, kept for every batch of the check: one per thread
        # that ever ran at once, never one per batch
        # (first_copy: the caller's copy of theta, already evaluated and found unchanged)
        self._copies: list[np.ndarray] = ([first_copy] if first_copy is not None
                                          and executor is None else [])
        self.shipments = 0  # copies of theta sent to executor workers (see _ship)
        self._token: str | None = None
        self._bundle = None
        self._bundle_ref = None
        self._sent = False
        self.jit = is_numba_dispatcher(f) and terms is None and executor is None
        if jit is False:
            self.jit = False
        self.kernel_f = f  # what the Numba kernel calls (f itself, or f compiled by jit="auto")
        self._first_class = None  # kernel_f as the coordinate kernel calls it (kernels.py)
        if self.jit:
            self.path = "jit"
            self.path_reason = f"f is a Numba dispatcher: prange kernel on {self.workers} threads"
        elif executor is not None:
            self.path = "executor"
            self.path_reason = f"chunks sent to {type(executor).__name__}"
        elif self.workers == 1:
            self.path = "serial"
            self.path_reason = "workers=1: strictly serial (BLAS on one thread too)"
        else:
            self.path = "threads"
            self.path_reason = f"Python callable: thread pool of {self.workers} workers"

    # -- one point ----------------------------------------------------------------------------
    def at(self, x: np.ndarray, where: str = "theta") -> np.ndarray:
        """The loss (per term) at one point, evaluated on a copy (at theta: a working copy)."""
        own = x is self.theta
        x = self._borrow() if own else x.copy()
        try:
            with blas_limited(self.blas_threads):
                start = time.perf_counter()
                value = self.f(x, *self.args)
                elapsed = time.perf_counter() - start
        except LossError:
            raise
        except Exception as exc:
            raise LossError(f"f raised at {where}: {type(exc).__name__}: {exc}") from exc
        finally:
            if own:
                self._copies.append(x)
        self.t_eval = elapsed if self.t_eval is None else min(self.t_eval, elapsed)
        self.evaluations += 1
        return as_loss(value, self.terms, f"at {where}")

    # -- coordinate pairs ---------------------------------------------------------------------
    def pairs(self, index: np.ndarray, step: np.ndarray, label: str = "coordinates",
              plan: bool = True):
        """Losses at theta +- step[j] e_index[j]: two arrays of shape (k, terms).

        The first call with ``plan=True`` chooses the strategy (see _calibrate); a small batch
        before the real one (the noise probe) passes ``plan=False`` so as not to decide for it.
        """
        index = np.ascontiguousarray(index, dtype=np.int64)
        step = np.ascontiguousarray(step, dtype=np.float64)
        k = index.size
        m = 1 if self.terms is None else len(self.terms)
        f_plus = np.empty((k, m))
        f_minus = np.empty((k, m))
        with Progress(total=2 * k, label=label, enabled=self.progress) as bar:
            done = 0
            if plan and not self._planned:
                done = self._calibrate(index, step, f_plus, f_minus, bar)
            self._pairs_range(done, k, index, step, f_plus, f_minus, bar)
        self.evaluations += 2 * k
        return f_plus, f_minus

    def _pairs_range(self, lo, hi, index, step, f_plus, f_minus, bar, threads=None, blas=0):
        """Coordinates lo:hi with the chosen strategy (or the one given, for calibration)."""
        if hi <= lo:
            return
        if threads is None:
            threads = self.threads
            if self.t_eval is not None and 2 * (hi - lo) * self.t_eval < SERIAL_BATCH_SECONDS:
                threads = 1  # waking threads up costs more than this batch (e.g. a re-check)
        blas = self.blas_threads if blas == 0 else blas
        with blas_limited(blas):
            if self.jit:
                self._pairs_jit(index[lo:hi], step[lo:hi], f_plus[lo:hi, 0], f_minus[lo:hi, 0],
                                bar, threads)
            else:
                self._pairs_python(index[lo:hi], step[lo:hi], f_plus[lo:hi], f_minus[lo:hi],
                                   bar, threads)

    # -- calibration: which strategy is faster for this loss, measured on real coordinates -----
    def _calibrate(self, index, step, f_plus, f_minus, bar) -> int:
        """Decide threads/BLAS (and jit="auto") on the first coordinates; returns how many of
        them were evaluated (their losses are kept: calibration adds one timed evaluation at
        theta with BLAS threads, counted in self.evaluations)."""
        self._planned = True
        k = index.size
        if self.t_eval is None:
            self.at(self.theta)
            self.evaluations -= 1  # a timing, not part of the check
        t_eval = max(self.t_eval, 1e-7)
        predicted = 2 * k * t_eval / self.workers
        done = 0
        if (not self.jit and self.jit_option == "auto" and self.terms is None
                and predicted >= AUTO_JIT_MIN_SECONDS):
            self._try_jit(t_eval)
        elif not self.jit and self.jit_option is True and self.terms is None:
            self._try_jit(None)
        if predicted < CALIBRATE_MIN_SECONDS:
            if not self.jit and self.executor is None and t_eval < GIL_BOUND_SECONDS:
                # a loss this short holds the GIL most of the time: threads only add handoffs
                self.threads, self.blas_threads = 1, None
                self.path = "serial"
                self.path_reason = (f"Python callable: serial (one evaluation takes "
                                    f"{t_eval * 1e6:.0f} us: threads would contend for the GIL)")
            return done
        plan = None if self.executor is not None else remembered_plan(
            self.f, self.theta, self.args, self.workers, self.jit)
        if plan is not None and plan.t_eval / PLAN_T_EVAL_FACTOR <= t_eval <= \
                plan.t_eval * PLAN_T_EVAL_FACTOR:
            self.threads, self.blas_threads, self.path = plan.threads, plan.blas_threads, plan.path
            self.path_reason = f"{plan.reason}; plan remembered from an earlier check of this loss"
            return done
        # each strategy gets the same number of coordinates, about CALIBRATION_SECONDS of work
        probe = int(np.clip(CALIBRATION_SECONDS / (2 * t_eval), 2, k // 8)) * self.workers
        if 2 * probe > k // 2:
            return done
        if self.jit:
            self._warm()
        # outer threads first, before anything of ours wakes BLAS threads (OpenBLAS's workers
        # spin for ~0.1 s after a threaded call, holding a core). The caller's own BLAS call
        # just before the check can have left them spinning: the outer probe runs in two
        # halves around a serial one and keeps its faster half. Then one evaluation with BLAS
        # threads says whether they help; the one-worker strategy gets them only if so
        # (otherwise it is the serial strategy, which a GIL-bound loss wins).
        def timed(size, threads, blas):
            nonlocal done
            start = time.perf_counter()
            self._pairs_range(done, done + size, index, step, f_plus, f_minus, bar, threads,
                              blas)
            done += size
            return size / max(time.perf_counter() - start, 1e-9)

        half = max(1, probe // 2)
        size = max(1, probe // 4)  # short: BLAS threads on a busy machine can be 100x slower
        outer = timed(half, self.workers, 1)
        serial = timed(size, 1, 1)
        outer = max(outer, timed(half, self.workers, 1))
        blas_helps = t_eval >= BLAS_SPEEDUP_TO_PROBE * self._timed_with_blas_threads()
        strategies = [(self.workers, 1), (1, None if blas_helps else 1)]
        rates = [outer, timed(size, 1, None) if blas_helps else serial]
        best = 1 if rates[1] > BLAS_MARGIN * rates[0] else 0
        self.threads, self.blas_threads = strategies[best]
        how = "prange kernel" if self.jit else "thread pool"
        one = "1 thread x BLAS threads" if blas_helps else "1 thread"
        if best == 0:
            chosen = f"{how} on {self.threads} threads, BLAS limited to 1 thread"
        elif blas_helps:
            chosen = "one worker (no outer threads), BLAS left on its own threads"
        else:
            chosen = "one worker (outer threads were slower)"
        measured = (f"calibrated: {rates[0]:.3g} coords/s on {self.workers} threads x 1 BLAS "
                    f"thread vs {rates[1]:.3g} coords/s on {one}")
        if best == 1:
            self.path = "jit" if self.jit else "serial"
        self.path_reason = f"{self._origin()}: {chosen} ({measured})"
        # a one-worker choice is remembered only when it wins clearly: on a noisy machine a
        # remembered wrong one would halve the speed of every later check of this loss
        if self.executor is None and (best == 0 or rates[1] > PLAN_ONE_WORKER_MARGIN * rates[0]):
            _remember(self.f, _plan_key(self.theta, self.args, self.workers, self.jit),
                      Plan(self.threads, self.blas_threads, self.path, self.path_reason, t_eval))
        return done

    def _timed_with_blas_threads(self) -> float:
        """Seconds of one evaluation at theta with BLAS on its own threads (a timing only)."""
        work = self._borrow()
        try:
            with blas_limited(None):
                start = time.perf_counter()
                self.kernel_f(work, *self.args)
                return time.perf_counter() - start
        finally:
            self._copies.append(work)
            self.evaluations += 1

    def _warm(self):
        """Load (or compile once, then cache) the coordinate kernel before anything is timed."""
        from .kernels import _centered_losses

        loss = self._kernel_loss()
        if loss is None:
            return
        empty = np.empty(0)
        _centered_losses(loss, np.ascontiguousarray(self.theta), np.empty(0, np.int64), empty,
                         self.args, empty, empty, 1)

    def _kernel_loss(self):
        """kernel_f as a first-class function value, or None when Numba cannot pass it that way
        (the thread pool then evaluates the coordinates)."""
        from .kernels import first_class_loss

        if self._first_class is None or self._first_class[0] is not self.kernel_f:
            self._first_class = (self.kernel_f,
                                 first_class_loss(self.kernel_f, self.theta, self.args))
            if self._first_class[1] is None:
                self.path = "threads" if self.threads > 1 else "serial"
                self.path_reason = (f"{self._origin()}, but Numba cannot pass it to the kernel "
                                    f"as a first-class function (it has no compiled version "
                                    f"for these argument types that returns a number): the "
                                    f"thread pool calls it")
        return self._first_class[1]

    def _origin(self) -> str:
        if not self.jit:
            return "Python callable"
        if self.kernel_f is self.f:
            return "f is a Numba dispatcher"
        return f"jit='auto' compiled f with Numba ({self._jit_why})"

    def _try_jit(self, t_eval):
        """Compile a plain loss with Numba; keep it when it agrees at theta and is faster."""
        compiled = _compile(self.f)
        if compiled is None:
            return
        theta = np.ascontiguousarray(self.theta)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Numba's performance hints are not the user's
                value = float(compiled(theta.copy(), *self.args))
            reference = float(np.asarray(self.f(theta.copy(), *self.args)))
            best = np.inf
            for _ in range(3):
                start = time.perf_counter()
                compiled(theta, *self.args)
                best = min(best, time.perf_counter() - start)
        except Exception:  # Numba could not compile or run it: the thread pool, silently
            return
        # the compiled loss must be the same function: a different summation order is fine
        if not abs(value - reference) <= 8 * np.finfo(np.float64).eps * max(1.0, abs(reference)):
            return
        if t_eval is not None and best * 1.1 >= t_eval:
            return  # numpy's vectorised math is faster (e.g. transcendental ufuncs)
        self.jit, self.kernel_f = True, compiled
        self.path = "jit"
        self._jit_why = (f"{best * 1e6:.3g} us per evaluation vs {t_eval * 1e6:.3g} us in Python"
                         if t_eval is not None else "jit=True")
        self.path_reason = f"{self._origin()}: prange kernel on {self.threads} threads"

    def _pairs_jit(self, index, step, f_plus, f_minus, bar, threads=None):
        from .kernels import _centered_losses

        def run(loss, theta, a, b, n_chunks):
            _centered_losses(loss, theta, index[a:b], step[a:b], self.args, f_plus[a:b],
                             f_minus[a:b], n_chunks)

        def rerun(a, b):
            return _fill_pairs(self.kernel_f, self.theta.copy(), index[a:b], step[a:b],
                               self.args, None, f_plus[a:b, None], f_minus[a:b, None])

        def where(failure):
            return int(failure[0]), self.describe(int(failure[0]))

        if not self._kernel_batches(index.size, threads or self.threads, bar, run, rerun, where):
            # not a first-class function: the thread pool calls the dispatcher
            self._pairs_python(index, step, f_plus[:, None], f_minus[:, None], bar, threads)

    def _kernel_batches(self, k, threads, bar, run, rerun, where) -> bool:
        """k items through a prange kernel in batches (one batch unless a progress bar moves);
        False when kernel_f cannot be passed as a first-class function (nothing was run).

        An exception inside f does not cross a first-class call: numba reports it as unraisable
        (caught here), and the batch is evaluated again one item at a time in this thread by
        rerun(a, b), which returns (item, exception) for the first that raises; that becomes a
        LossError naming where(failure). If nothing raises then, those values stand.
        """
        import numba

        loss = self._kernel_loss()
        if loss is None:
            return False
        threads = min(threads, numba.config.NUMBA_NUM_THREADS)
        previous = numba.get_num_threads()
        numba.set_num_threads(threads)
        self._copies.clear()  # the kernel makes its own, one per thread: no copy is held idle
        try:
            batch = k if not bar.active else max(4 * threads, k // 50)
            theta = np.ascontiguousarray(self.theta)
            for a in range(0, k, batch):
                b = min(a + batch, k)
                with _catching_kernel_errors():
                    seen = len(_KERNEL_ERRORS)
                    run(loss, theta, a, b, min(threads, b - a) or 1)
                    raised = len(_KERNEL_ERRORS) > seen
                failure = rerun(a, b) if raised else None
                if failure is not None:
                    index, text = where(failure)
                    exc = failure[1]
                    raise LossError(f"f raised in the parallel kernel while evaluating {text}: "
                                    f"{type(exc).__name__}: {exc}", index) from exc
                bar.update(2 * (b - a))
        finally:
            numba.set_num_threads(previous)
        return True

    def _pairs_python(self, index, step, f_plus, f_minus, bar, threads=None):
        def fill(work, a, b):
            return _fill_pairs(self.f, work, index[a:b], step[a:b], self.args, self.terms,
                               f_plus[a:b], f_minus[a:b])

        # failures name the flat index already
        self._run_chunks(index.size, threads or self.threads, 4, "pairs",
                         lambda a, b: (index[a:b], step[a:b]), fill,
                         lambda a, failure: self._raise(*failure), f_plus, f_minus, bar)

    def _run_chunks(self, k, n_workers, per_worker, kind, payload, fill, fail, f_plus, f_minus,
                    bar):
        """k perturbations in chunks, on the thread pool (one working copy of theta per thread,
        kept across its chunks) or shipped to the executor (theta once per worker process).

        fill(work, a, b) evaluates chunk a:b into f_plus/f_minus and returns a failure or None;
        payload(a, b) is what the executor's task needs for it; fail(a, failure) raises.
        """
        if k == 0:
            return
        if self.executor is not None:
            n_workers = self._executor_width()
        # a few chunks per worker keeps them balanced when evaluations differ in cost
        n_chunks = min(k, n_workers * per_worker) if n_workers > 1 else 1
        bounds = np.linspace(0, k, n_chunks + 1).astype(np.int64)
        chunks = [(int(bounds[c]), int(bounds[c + 1])) for c in range(n_chunks)]
        if self.executor is not None:
            for c, (fp, fm, failure) in self._ship(kind, [payload(a, b) for a, b in chunks]):
                a, b = chunks[c]
                if failure is not None:
                    fail(a, failure)
                f_plus[a:b], f_minus[a:b] = fp, fm
                bar.update(2 * (b - a))
            return
        def run(chunk):
            a, b = chunk
            work = self._borrow()
            try:
                failure = fill(work, a, b)
            finally:
                self._copies.append(work)  # list.append/pop are atomic
            bar.update(2 * (b - a))
            return failure

        pool = _thread_pool(n_workers) if n_workers > 1 else None
        if pool is None:
            results = [run(c) for c in chunks]
        else:
            results = list(pool.map(run, chunks))
        for (a, _), failure in zip(chunks, results):
            if failure is not None:
                fail(a, failure)

    def _borrow(self) -> np.ndarray:
        """A working copy of theta (every perturbation is undone after its evaluation; a loss
        that writes into its argument is refused at its first evaluation, see check.start)."""
        try:
            return self._copies.pop()
        except IndexError:
            return self.theta.copy()

    def _raise(self, i, exc):
        if isinstance(exc, LossError):
            raise LossError(f"{exc} (while evaluating {self.describe(i)})", i) from exc
        raise LossError(
            f"f raised while evaluating {self.describe(i)}: {type(exc).__name__}: {exc}", i
        ) from exc

    # -- random directions (audit) ------------------------------------------------------------
    def directions(self, key: np.ndarray, lo: np.ndarray, hi: np.ndarray, step: np.ndarray,
                   label: str = "directions"):
        """Losses at theta +- step[j] v_j, where v_j is the direction ``key[j]`` (kernels.py)
        supported on the flat range [lo[j], hi[j]): two arrays of shape (k, terms).

        The directions are generated where they are used; no n x k matrix is ever built.
        """
        key = np.ascontiguousarray(key, dtype=np.uint64)
        lo = np.ascontiguousarray(lo, dtype=np.int64)
        hi = np.ascontiguousarray(hi, dtype=np.int64)
        step = np.ascontiguousarray(step, dtype=np.float64)
        k = key.size
        m = 1 if self.terms is None else len(self.terms)
        f_plus = np.empty((k, m))
        f_minus = np.empty((k, m))
        with Progress(total=2 * k, label=label, enabled=self.progress) as bar, \
                blas_limited(self.blas_threads):
            if self.jit:
                self._directions_jit(key, lo, hi, step, f_plus[:, 0], f_minus[:, 0], bar)
            else:
                self._directions_python(key, lo, hi, step, f_plus, f_minus, bar)
        self.evaluations += 2 * k
        return f_plus, f_minus

    def _directions_jit(self, key, lo, hi, step, f_plus, f_minus, bar):
        from .kernels import _directional_losses

        def run(loss, theta, a, b, n_chunks):
            _directional_losses(loss, theta, key[a:b], lo[a:b], hi[a:b], step[a:b], self.args,
                                f_plus[a:b], f_minus[a:b], n_chunks)

        def rerun(a, b):
            failure = _fill_directions(self.kernel_f, self.theta.copy(), self.theta, key[a:b],
                                       lo[a:b], hi[a:b], step[a:b], self.args, None,
                                       f_plus[a:b, None], f_minus[a:b, None])
            return None if failure is None else (a + failure[0], failure[1])

        def where(failure):
            j = failure[0]
            return None, _direction_where(lo[j], hi[j])

        if not self._kernel_batches(key.size, self.workers, bar, run, rerun, where):
            self._directions_python(key, lo, hi, step, f_plus[:, None], f_minus[:, None], bar)

    def _directions_python(self, key, lo, hi, step, f_plus, f_minus, bar):
        def fill(work, a, b):
            return _fill_directions(self.f, work, self.theta, key[a:b], lo[a:b], hi[a:b],
                                    step[a:b], self.args, self.terms, f_plus[a:b], f_minus[a:b])

        def fail(first, failure):
            j, exc = failure
            j = first + j
            raise LossError(f"f raised while evaluating {_direction_where(lo[j], hi[j])}: "
                            f"{type(exc).__name__}: {exc}") from exc

        n_workers = 1 if self.path == "serial" else self.workers
        self._run_chunks(key.size, n_workers, 2, "directions",
                         lambda a, b: (key[a:b], lo[a:b], hi[a:b], step[a:b]), fill, fail,
                         f_plus, f_minus, bar)

    # -- executors: the problem goes once per worker --------------------------------------------
    def _executor_width(self) -> int:
        """How many tasks the executor runs at once (for chunking)."""
        width = getattr(self.executor, "_max_workers", None)
        client = _dask_client(self.executor)
        if client is not None:
            try:
                width = sum(client.nthreads().values())
            except Exception:  # a client that cannot answer: fall back to workers
                width = None
        return max(1, int(width or self.workers))

    def _ship(self, kind: str, payloads: list):
        """Run ``_shipped_task`` on every payload; yields (payload position, result).

        The problem (f, theta, args, terms) is not sent with every task: a worker process keeps
        it in a module-level cache under this Evaluator's token. With dask it is scattered once
        to every worker (``broadcast=True``); with any other executor it rides along with the
        first ``width`` tasks only, and a task that lands on a worker without it reports
        "missing" and is sent again with it. ``self.shipments`` counts the copies sent.
        """
        if self._token is None:
            self._token = uuid.uuid4().hex
            self._bundle = _ShippedProblem(self.f, self.theta, self.args, self.terms)
        client = _dask_client(self.executor)
        if client is not None:
            if self._bundle_ref is None:
                self._bundle_ref = client.scatter(self._bundle, broadcast=True, hash=False)
                self.shipments += 1
            futures = [self.executor.submit(_shipped_task, self._token, self._bundle_ref, kind, p)
                       for p in payloads]
            for c, fut in enumerate(futures):
                yield c, fut.result()
            return
        pending = list(range(len(payloads)))
        attach = 0 if self._sent else self._executor_width()
        while pending:
            futures = []
            for r, c in enumerate(pending):
                bundle = self._bundle if r < attach else None
                self.shipments += bundle is not None
                futures.append((c, self.executor.submit(_shipped_task, self._token, bundle, kind,
                                                        payloads[c])))
            self._sent = True
            missing = []
            for c, fut in futures:
                result = fut.result()
                if result is None:
                    missing.append(c)
                else:
                    yield c, result
            pending = missing
            attach = self._executor_width()


def _fill_pairs(f, work, index, step, args, terms, f_plus, f_minus):
    """Serial loop over coordinates on one working copy; returns (index, exception) or None."""
    loss = _plain_loss if terms is None else as_loss
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


def _plain_loss(value, terms, where):
    """as_loss for a plain loss, without an array per evaluation when it is already a float."""
    if isinstance(value, float):  # Python float and np.float64
        return value
    return as_loss(value, terms, where)


def _direction_where(lo, hi) -> str:
    return f"a random direction on theta[{int(lo)}:{int(hi)}]"


def _fill_directions(f, work, theta, key, lo, hi, step, args, terms, f_plus, f_minus):
    """Serial loop over directions on one working copy; returns (position, exception) or None."""
    from .kernels import _direction_fill

    for j in range(key.size):
        a, b = int(lo[j]), int(hi[j])
        hv = np.empty(b - a)  # h v: the only array besides the working copy
        _direction_fill(key[j], a, b, hv)
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


class _ShippedProblem:
    """What a worker needs to evaluate perturbations: sent once per worker, then cached."""

    __slots__ = ("f", "theta", "args", "terms")

    def __init__(self, f, theta, args, terms):
        self.f, self.theta, self.args, self.terms = f, theta, args, terms

    def __getstate__(self):
        return (self.f, self.theta, self.args, self.terms)

    def __setstate__(self, state):
        self.f, self.theta, self.args, self.terms = state


# worker side: token -> _ShippedProblem, the last few only (each holds one theta)
_SHIPPED: OrderedDict[str, _ShippedProblem] = OrderedDict()
_SHIPPED_KEEP = 2
_SHIPPED_LOCK = threading.Lock()
_WORKER_LOCAL = threading.local()


def _dask_client(executor):
    """The dask Client behind ``Client.get_executor()``, or None for any other executor."""
    if executor is None or not type(executor).__module__.startswith("distributed"):
        return None
    return getattr(executor, "_client", None)


def _shipped_task(token, bundle, kind, payload):
    """One chunk on a worker: (f_plus, f_minus, failure), or None when the problem is missing."""
    with _SHIPPED_LOCK:
        problem = _SHIPPED.get(token)
        if problem is None:
            if bundle is None:
                return None
            problem = _SHIPPED[token] = bundle
            while len(_SHIPPED) > _SHIPPED_KEEP:
                _SHIPPED.popitem(last=False)
    cached = getattr(_WORKER_LOCAL, "work", None)
    if cached is None or cached[0] != token:
        cached = _WORKER_LOCAL.work = (token, np.array(problem.theta, copy=True))
    work = cached[1]
    m = 1 if problem.terms is None else len(problem.terms)
    if kind == "pairs":
        index, step = payload
        f_plus, f_minus = np.empty((index.size, m)), np.empty((index.size, m))
        failure = _fill_pairs(problem.f, work, index, step, problem.args, problem.terms,
                              f_plus, f_minus)
    else:
        key, lo, hi, step = payload
        f_plus, f_minus = np.empty((key.size, m)), np.empty((key.size, m))
        failure = _fill_directions(problem.f, work, problem.theta, key, lo, hi, step,
                                   problem.args, problem.terms, f_plus, f_minus)
    if failure is not None:
        i, exc = failure
        failure = (i, RuntimeError(f"{type(exc).__name__}: {exc}"))
    return f_plus, f_minus, failure
