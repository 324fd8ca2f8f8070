"""The Evaluator: f at perturbed points of theta, the one engine object check and audit use.

It holds the Workload (f, theta, args, the working copies, the evaluation count), the check's
Tuning, the current Plan and the backends that carry it out. The planner (planner.py) chooses
Plans from plain values and the rates this module measures for it (``_Probe``); only the
evaluator assigns its plan. It never writes to the caller's theta: each worker perturbs its own
copy and restores it.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from ..arguments import one_of
from ..errors import InvalidType, InvalidValue
from ..progress import Progress
from ..tuning import DEFAULT_TUNING, Tuning
from . import planner
from .backends import Backend, ExecutorBackend, KernelBackend, ThreadBackend, Workload, is_dask_client
from .blas import blas_limited
from .faults import check_timeout
from .forked import ForkBackend, fork_join_possible
from .loops import direction_where
from .plan import Plan, plan_key, refuse_threads, remembered_plan, thread_unsafe
from .processes import NotLoadable, ProcessBackend, pool_alive, start_workers

# backend= values (docs/guides/parallel.md); "kernel" runs the plan whose path is "jit"
BACKENDS = (None, "serial", "threads", "kernel", "processes", "forked")

_UNSET = object()


def is_numba_dispatcher(f) -> bool:
    if "numba" not in sys.modules:  # no dispatcher exists yet; importing numba takes ~0.5 s
        return False
    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:  # pragma: no cover - numba is a dependency
        return False
    return isinstance(f, Dispatcher)


class Evaluator:
    """Evaluates ``f(theta + perturbation, *args)`` for batches of perturbations.

    ``pairs(index, step)``: f at theta +- step[j] e_index[j]; ``directions(key, lo, hi, step)``:
    f at theta +- step[j] v_j; ``at(x)``: f at one point. ``evaluations`` counts every loss
    evaluation; ``path`` / ``path_reason`` say which backend ran and why (the Plan).
    ``tuning``: the check's numbers (planner, guard, chunking; the judge reads them here too).
    """

    def __init__(self, f: Callable, theta: np.ndarray, args: tuple = (), *, workers=None,
                 executor=None, progress=None, describe=None,
                 terms: tuple[str, ...] | None = None, jit: bool | str = "auto",
                 first_copy: np.ndarray | None = None, spent: int = 0, backend: str | None = None,
                 timeout: float | None = None, tuning: Tuning = DEFAULT_TUNING):
        one_of("jit", jit, (True, False, "auto"))
        timeout = check_timeout(timeout)
        if timeout is not None and executor is not None:
            raise InvalidValue(
                f"timeout: {timeout:g} s cannot be enforced on executor= (its workers are not "
                f"fastgrad's to watch or stop); use the executor's own limits (a Dask worker's "
                f"lifetime, a future's timeout), or backend='processes'")
        one_of("backend", backend, BACKENDS)
        if backend is not None and executor is not None:
            raise InvalidValue(f"backend: {backend!r} and executor= both say who evaluates the "
                               f"loss; pass one of them")
        if not callable(f):
            raise InvalidType(f"f: expected a callable loss f(theta, *args), got {f!r}")
        if executor is not None and not (isinstance(executor, Executor)
                                         or is_dask_client(executor)):
            raise InvalidType(f"executor: expected a concurrent.futures.Executor or a dask "
                              f"Client, got {type(executor).__name__}")
        self.tuning = tuning
        self.work = Workload(f, theta, args, terms, describe or (lambda i: f"theta[{i}]"),
                             first_copy if executor is None else None, tuning)
        self.work.count(spent)  # evaluations made before the engine existed (f at theta)
        self.work.timeout = timeout
        self.budget: int | None = None  # the most evaluations the caller may spend (audit)
        self.workers = planner.resolve_workers(workers)
        self.workers_given = workers is not None
        self.jit_option = jit
        self.progress = progress
        self.executor = executor
        self.t_eval: float | None = None  # fastest timed evaluation of f at theta (seconds)
        dispatcher = is_numba_dispatcher(f) and terms is None and executor is None \
            and jit is not False and backend in (None, "kernel")
        self.forced = backend
        self._threads_verified = False  # the thread-safety guard ran in this check
        self._threads_ran = False  # threads evaluated a Python loss in this check
        self._directions_threaded = False  # ... the last batch of directions
        self.guard_rates: tuple[float, float] | None = None
        self._refused_before = thread_unsafe(f) is not None  # by an earlier check
        self.kernel_f = f if dispatcher else None  # what the Numba kernel calls
        self._backends: dict[tuple, Backend] = {}
        self._kernel_loss = None
        self._planned = workers is not None or executor is not None or self.workers == 1 \
            or backend is not None
        self.plan: Plan = planner.initial_plan(dispatcher, self.workers, workers is not None,
                                               executor, self.workers)
        if dispatcher:
            self.use_kernel(f, "f is a Numba dispatcher")
        if backend is not None:
            self._force(backend, workers is not None)
        elif self.plan.backend == "threads" and self.threads_refused():
            self.plan = self._instead_of_threads(self.refusal())
        if executor is not None:
            # one backend for the whole check: it holds what was shipped to the workers
            self.plan = Plan("executor", self._executor_backend().workers, None,
                             f"chunks sent to {type(executor).__name__}")

    # -- what the report shows -------------------------------------------------------------------
    @property
    def evaluations(self) -> int:
        return self.work.evaluations

    @property
    def guard_evaluations(self) -> int:
        """Of ``evaluations``, the thread-safety guard's serial duplicates (points evaluated
        again serially to compare them with threads)."""
        return self.work.guard_evaluations

    @property
    def timeout(self) -> float | None:
        return self.work.timeout

    @property
    def path(self) -> str:
        return self.plan.path

    @property
    def path_reason(self) -> str:
        """The plan's reason, then what else the evaluations cost or met: the guard's serial
        re-runs (counted in ``evaluations``), a worker process that died."""
        notes = [self.plan.reason]
        if self.work.guard_evaluations:
            notes.append(f"{self.work.guard_evaluations} of the evaluations were the "
                         f"thread-safety guard's serial re-runs")
        return "; ".join(notes + self.work.notes)

    @property
    def shipments(self) -> int:
        """Copies of the problem sent to executor workers (0 without an executor)."""
        backend = self._backends.get(("executor",))
        return 0 if backend is None else backend.shipments

    @property
    def executor_width(self) -> int:
        """Tasks the executor runs at once (chunking; the problem rides with that many)."""
        return self._executor_backend().workers

    def origin(self) -> str:
        """Where the kernel's loss came from, for the path line."""
        if self.plan.backend != "jit":
            return "Python callable"
        if self.kernel_f is self.work.f:
            return "f is a Numba dispatcher"
        return self._kernel_origin

    def close(self) -> None:
        """Release what the check holds outside this process (the process backend's shared
        block); also done when the evaluator is garbage collected."""
        backend = self._backends.pop(("processes",), None)
        if backend is not None:
            backend.close()

    # -- backends --------------------------------------------------------------------------------
    def _force(self, backend: str, workers_given: bool) -> None:
        """The plan backend= asks for (planner.forced_plan); backend='kernel' compiles f when
        it is not a Numba dispatcher, and says so when Numba cannot."""
        if backend == "kernel" and self.plan.backend != "jit":
            if self.work.terms is None and not is_numba_dispatcher(self.work.f):
                self._try_jit(math.inf)
            if self.plan.backend != "jit":
                raise InvalidValue(
                    "backend: 'kernel' needs a loss Numba can compile (an @njit function, or a "
                    "plain numpy loss that numba.njit accepts, returning one float); f is not "
                    "one. Use backend='threads', 'processes' or 'serial'")
            return
        self.plan = planner.forced_plan(backend, self.workers, workers_given)
        if backend == "processes":
            self.process_backend()  # a loss that cannot be pickled is refused here, up front
        elif backend == "threads" and self.threads_refused():
            self.plan = self._instead_of_threads(self.threads_refused())

    def _instead_of_threads(self, why: str) -> Plan:
        """The plan that replaces threads once they are refused (planner.instead_of_threads)."""
        def picklable() -> bool:
            try:
                self.process_backend()
            except InvalidType:
                return False
            return True

        return planner.instead_of_threads(why, self.workers,
                                          self.workers_given or self.forced == "threads",
                                          picklable)

    def _try_jit(self, beat: float) -> None:
        """Evaluate with f compiled by Numba when it agrees at theta and one evaluation takes
        less than ``beat`` seconds (planner.compiled_if_faster)."""
        found = planner.compiled_if_faster(self.work.f, self.work.theta, self.work.args, beat,
                                           self.tuning)
        if found is not None:
            self.use_kernel(*found)

    def process_backend(self) -> ProcessBackend:
        """The process backend of this check (the problem is pickled and shared once)."""
        backend = self._backends.get(("processes",))
        if backend is None:
            backend = self._backends[("processes",)] = ProcessBackend(self.work, self.workers)
        return backend

    def threads_refused(self) -> str | None:
        """Why threads may not evaluate this loss (the guard saw them change its values), or
        None. A Numba kernel is compiled code without Python state: never refused."""
        return None if self.plan.backend == "jit" else thread_unsafe(self.work.f)

    def refusal(self) -> str | None:
        """threads_refused(), saying so when an earlier check in this process refused them."""
        why = self.threads_refused()
        if why is not None and self._refused_before:
            why = f"{why} (seen by an earlier check in this process)"
        return why

    def use_kernel(self, compiled, origin: str) -> None:
        """Evaluate with the prange kernel calling ``compiled`` (or fall back, saying why)."""
        from .kernels import first_class_loss

        loss = first_class_loss(compiled, self.work.theta, self.work.args)
        self._kernel_origin = origin
        if loss is None:
            self.plan = planner.without_kernel(self.plan, origin)
            return
        self.kernel_f, self._kernel_loss = compiled, loss
        self._backends.pop(("jit",), None)
        blas = 1 if self.workers > 1 or self._planned else self.plan.blas_threads
        self.plan = Plan("jit", self.plan.workers if self.plan.backend == "jit" else self.workers,
                         blas, f"{origin}: prange kernel on {self.workers} threads")

    def _executor_backend(self) -> ExecutorBackend:
        backend = self._backends.get(("executor",))
        if backend is None:
            backend = self._backends[("executor",)] = ExecutorBackend(
                self.work, self.workers, self.executor)
        return backend

    def backend(self, plan: Plan, workers: int | None = None, blas=_UNSET) -> Backend:
        """The backend that carries out ``plan`` (with another worker count or BLAS limit)."""
        workers = plan.workers if workers is None else workers
        blas = plan.blas_threads if blas is _UNSET else blas
        if plan.backend == "executor":
            return self._executor_backend()
        # processes: a small batch of a parallel plan runs in this thread (bitwise the same);
        # backend="processes", workers=1 means one worker process for everything
        if plan.backend == "processes" and (workers > 1 or plan.workers == 1):
            backend = self.process_backend()
            backend.workers, backend.blas_threads = workers, 1 if blas is None else blas
            return backend
        if plan.backend == "forked" and workers > 1:
            key = ("forked", workers)
            if key not in self._backends:
                self._backends[key] = ForkBackend(self.work, workers)
            backend = self._backends[key]
            backend.t_eval = self.t_eval
            return backend
        if plan.backend == "jit":
            key = ("jit", workers, blas)
            if key not in self._backends:
                self._backends[key] = KernelBackend(self.work, workers, blas, self.kernel_f,
                                                    self._kernel_loss)
            return self._backends[key]
        key = ("threads", workers, blas)
        if key not in self._backends:
            self._backends[key] = ThreadBackend(self.work, workers, blas)
        return self._backends[key]

    def warm_kernel(self) -> None:
        if self.plan.backend == "jit":
            self.backend(self.plan).warm()

    # -- one point -------------------------------------------------------------------------------
    def at(self, x: np.ndarray, where: str = "theta", in_place: bool = False) -> np.ndarray:
        """The loss (per term) at one point, evaluated on a copy (at theta: a working copy).
        ``in_place``: on ``x`` itself, a working copy borrowed from ``self.work`` (no copy of
        theta: an audit of 10^8 parameters holds workers + 2 copies, no more)."""
        values, elapsed = self.work.at(x, where, self.plan.blas_threads, in_place)
        self.t_eval = elapsed if self.t_eval is None else min(self.t_eval, elapsed)
        return values

    def time_at_theta(self) -> None:
        """One timed evaluation at theta (the planner's measure of one evaluation)."""
        self.at(self.work.theta)

    def time_with_blas_threads(self) -> float:
        """Seconds of one evaluation at theta with BLAS on its own threads (a timing)."""
        f = self.kernel_f if self.plan.backend == "jit" else self.work.f
        work = self.work.borrow()
        try:
            with blas_limited(None):
                start = time.perf_counter()
                f(work, *self.work.args)
                return time.perf_counter() - start
        finally:
            self.work.give_back(work)
            self.work.count(1)

    # -- coordinate pairs ------------------------------------------------------------------------
    def pairs(self, index: np.ndarray, step: np.ndarray, label: str = "coordinates",
              plan: bool = True, bar: Progress | None = None):
        """Losses at theta +- step[j] e_index[j]: two arrays of shape (k, terms).

        The first call with ``plan=True`` lets the planner choose the strategy (calibration); a
        small batch before the real one (the noise probe) passes ``plan=False`` so as not to
        decide for it; such a batch also runs serially in this thread: the noise probe evaluates
        one coordinate again and again, and must measure f's own noise, not what threads do to
        a loss that is not thread-safe. ``bar``: a caller's progress bar (an audit's, over all
        its phases) that these evaluations move, instead of a bar of their own.
        """
        index = np.ascontiguousarray(index, dtype=np.int64)
        step = np.ascontiguousarray(step, dtype=np.float64)
        k = index.size
        f_plus = np.empty((k, self.work.width))
        f_minus = np.empty((k, self.work.width))
        with self._bar(bar, 2 * k, label) as bar:
            done = 0
            if plan and not self._planned:
                self._planned = True
                done = self._calibrate(index, step, f_plus, f_minus, bar)
            self.run_pairs(done, k, index, step, f_plus, f_minus, bar,
                           workers=None if plan else 1)
        return f_plus, f_minus

    def _calibrate(self, index, step, f_plus, f_minus, bar) -> int:
        """The planner's calibration on the first coordinates of this batch: the plan it
        returns is applied (and remembered for later checks of f); returns how many
        coordinates it evaluated (their losses are kept in f_plus, f_minus)."""
        if self.t_eval is None:
            self.time_at_theta()
        retimed = None
        if planner.needs_warm_timing(self._plan_inputs(index.size), self.tuning):
            cold = self.t_eval
            self.time_at_theta()  # counted, as every evaluation is
            retimed = (f"f timed twice at theta (first {cold * 1e6:.0f} us, fastest "
                       f"{self.t_eval * 1e6:.0f} us: a first call can be cold)")
        beat = planner.jit_trial(self._plan_inputs(index.size), self.tuning)
        if beat is not None:
            self._try_jit(beat)
        inputs = self._plan_inputs(index.size)
        probe = _Probe(self, index, step, f_plus, f_minus, bar)
        calibration = planner.calibrate(inputs, probe, self.tuning)
        if calibration.plan is not None:
            self.plan = calibration.plan
        if calibration.narrow is not None:
            key = plan_key(self.work.theta, self.work.args, self.workers,
                           inputs.backend == "jit")
            planner.remember_calibrated(self.work.f, key, self.plan, calibration.narrow)
        if retimed is not None:
            self.plan = self.plan.because(f"{self.plan.reason}; {retimed}")
        return probe.done

    def _plan_inputs(self, k: int) -> planner.PlanInputs:
        """What the planner decides on: plain values of this check."""
        jit = self.plan.backend == "jit"
        return planner.PlanInputs(
            coordinates=k, t_eval=self.t_eval, workers=self.workers, backend=self.plan.backend,
            plain=not jit and self.work.terms is None, jit_option=self.jit_option,
            origin=self.origin(),
            remembered=remembered_plan(self.work.f, self.work.theta, self.work.args,
                                       self.workers, jit),
            forkable=self.executor is None and self.work.timeout is None
            and fork_join_possible())

    def _bar(self, outer: Progress | None, total: int, label: str):
        """The caller's bar (left open: it spans more than this batch), or one of this batch."""
        if outer is not None:
            return contextlib.nullcontext(outer)
        return Progress(total=total, label=label, enabled=self.progress)

    def confirm_serially(self, index, step, f_plus, f_minus, suspect) -> bool:
        """The suspect coordinates (those that would fail), when threads evaluated a Python
        loss, evaluated again serially: the guard's first batch can miss a loss that is not
        thread-safe, and such a loss must not fail a correct gradient. Any bitwise difference
        refuses threads (as the guard does) and every coordinate is evaluated again with the new
        plan, in place. Returns True when the values were replaced."""
        if not self._threads_ran or not np.any(suspect):
            return False
        rows = np.flatnonzero(suspect)
        if not self._differs_serially(
                f_plus[rows], f_minus[rows],
                lambda sp, sm: self.backend(self.plan, 1, 1).pairs(index[rows], step[rows], sp,
                                                                   sm, _NO_BAR),
                lambda j: self.work.describe(int(index[rows[j]]))):
            return False
        with Progress(total=2 * index.size, label="serial re-check",
                      enabled=self.progress) as bar:
            self.run_pairs(0, index.size, index, step, f_plus, f_minus, bar)
        return True

    def run_pairs(self, lo, hi, index, step, f_plus, f_minus, bar, workers=None, blas=_UNSET,
                  plan: Plan | None = None):
        """Coordinates lo:hi with the plan's backend (or the worker count / BLAS limit / plan
        given)."""
        if hi <= lo:
            return
        if workers is None and self.t_eval is not None and self.plan.backend != "executor" \
                and 2 * (hi - lo) * self.t_eval < self.tuning.serial_batch_seconds:
            workers = 1  # waking threads up costs more than this batch (e.g. a re-check)
        backend = self.backend(plan or self.plan, workers, blas)
        if self._needs_guard(backend) and not self._guard_fits(hi - lo):
            backend = self.backend(plan or self.plan, 1, blas)  # serially: nothing to verify
        if self._needs_guard(backend):
            lo += self.verify_threads(lo, hi, index, step, f_plus, f_minus, bar, backend)
            if lo >= hi:
                return
            backend = self.backend(self.plan, workers, blas)
        self._threads_ran |= isinstance(backend, ThreadBackend) and backend.workers > 1
        backend.pairs(index[lo:hi], step[lo:hi], f_plus[lo:hi], f_minus[lo:hi], bar)

    # -- the thread-safety guard -----------------------------------------------------------------
    def _needs_guard(self, backend: Backend) -> bool:
        return (isinstance(backend, ThreadBackend) and backend.workers > 1
                and not self._threads_verified)

    def _guard_fits(self, k: int) -> bool:
        """Whether the guard's serial duplicates of a batch of k fit in the budget (an audit's
        ``budget=`` counts them); when they do not, the batch runs serially, unverified
        threads never evaluate."""
        if self.budget is None:
            return True
        g = min(k, self.guard_size(k))
        return self.evaluations + 2 * k + 2 * g <= self.budget

    def confirmation_cost(self, suspect, threaded: bool | None = None,
                          rerun: int = 0) -> int:
        """The most evaluations confirm_serially (``rerun``: the batch's size, evaluated again
        when threads are refused) or confirm_directions_serially (``threaded``: as there) can
        spend on ``suspect``: nothing when threads did not evaluate them."""
        ran = self._threads_ran if threaded is None else threaded
        rows = int(np.count_nonzero(suspect))
        return 2 * (rows + rerun) if ran and rows else 0

    def guard_size(self, k: int | None = None) -> int:
        """Coordinates the thread-safety guard evaluates twice (of a batch of ``k``): about
        ``tuning.guard_seconds`` of serial work, at most ``tuning.guard_fraction`` of the
        batch's, never fewer than a few per worker (``tuning.guard_min_per_worker``, or
        ``guard_min_per_worker_long`` for long evaluations, which overlap on threads for their
        whole length) nor more than ``tuning.guard_max``."""
        tuning = self.tuning
        t_eval = max(self.t_eval or 1e-6, 1e-7)
        seconds = tuning.guard_seconds if k is None else min(
            tuning.guard_seconds, tuning.guard_fraction * 2 * k * t_eval)
        least = tuning.guard_min_per_worker_long if t_eval >= tuning.guard_long_seconds \
            else tuning.guard_min_per_worker
        return max(least * self.workers, min(tuning.guard_max, int(seconds / (2 * t_eval))))

    def verify_threads(self, lo, hi, index, step, f_plus, f_minus, bar, backend=None) -> int:
        """The thread-safety guard: the first coordinates lo:lo+g on threads, and the same
        points serially. A pure loss gives bitwise the same values; any difference refuses
        threads for this loss for the rest of the process (plan.refuse_threads), keeps the
        serial values and moves the check to processes or serial, saying why. Returns g."""
        backend = backend or self.backend(self.plan)
        self._threads_verified = True
        g = min(hi - lo, self.guard_size(hi - lo))
        rows = slice(lo, lo + g)
        start = time.perf_counter()
        backend.pairs(index[rows], step[rows], f_plus[rows], f_minus[rows], bar)
        threaded = time.perf_counter() - start
        serial_plus, serial_minus = np.empty((g, self.work.width)), np.empty((g, self.work.width))
        start = time.perf_counter()
        with self.work.guard_duplicates():
            self.backend(self.plan, 1, backend.blas_threads).pairs(
                index[rows], step[rows], serial_plus, serial_minus, _NO_BAR)
        # coordinates per second on threads and serially: the calibration's first probe
        self.guard_rates = (g / max(threaded, 1e-9),
                            g / max(time.perf_counter() - start, 1e-9))
        self._compare(f_plus[rows], f_minus[rows], serial_plus, serial_minus,
                      lambda j: self.work.describe(int(index[lo + j])))
        return g

    def _compare(self, threaded_plus, threaded_minus, serial_plus, serial_minus, where) -> None:
        """Bitwise comparison of the guard's two evaluations; on a difference threads are
        refused and the threaded values (views into the caller's arrays) replaced."""
        for threaded, serial in ((threaded_plus, serial_plus), (threaded_minus, serial_minus)):
            differs = np.flatnonzero(np.any(threaded.view(np.int64) != serial.view(np.int64),
                                            axis=1))
            if differs.size:
                j = int(differs[0])
                self._refuse(where(j), float(threaded[j, 0]), float(serial[j, 0]))
                threaded_plus[:], threaded_minus[:] = serial_plus, serial_minus
                return

    def _refuse(self, where: str, threaded: float, serial: float) -> None:
        why = (f"threads refused: f gave different values on threads than serially (first at "
               f"{where}: {threaded!r} on threads vs {serial!r} serially, a difference of "
               f"{abs(threaded - serial):.2g}); f keeps state between calls (scratch buffers or "
               f"parameters stored on an object) and is not thread-safe")
        refuse_threads(self.work.f, why)
        self.plan = self._instead_of_threads(why)

    # -- random directions (audit) ---------------------------------------------------------------
    def directions(self, key: np.ndarray, lo: np.ndarray, hi: np.ndarray, step: np.ndarray,
                   label: str = "directions", serial: bool = False,
                   bar: Progress | None = None):
        """Losses at theta +- step[j] v_j, where v_j is the direction ``key[j]`` (kernels.py)
        supported on the flat range [lo[j], hi[j]): two arrays of shape (k, terms).

        The directions are generated where they are used; no n x k matrix is ever built.
        ``serial=True`` (the audit's noise probe) evaluates them one after another in this
        thread, as pairs(plan=False) does: the probe must measure f's own noise, not what
        threads do to a loss that is not thread-safe. ``bar``: as in pairs().
        """
        key = np.ascontiguousarray(key, dtype=np.uint64)
        lo = np.ascontiguousarray(lo, dtype=np.int64)
        hi = np.ascontiguousarray(hi, dtype=np.int64)
        step = np.ascontiguousarray(step, dtype=np.float64)
        k = key.size
        f_plus = np.empty((k, self.work.width))
        f_minus = np.empty((k, self.work.width))
        with self._bar(bar, 2 * k, label) as bar:
            backend = self.backend(self.plan, 1, 1) if serial and \
                self.plan.backend in ("threads", "serial") else self.backend(self.plan)
            done = 0
            if self._needs_guard(backend) and not self._guard_fits(k):
                backend = self.backend(self.plan, 1, 1)  # serially: nothing to verify
            if self._needs_guard(backend):
                done = self._verify_directions(key, lo, hi, step, f_plus, f_minus, bar, backend)
                backend = self.backend(self.plan)
            self._directions_threaded = isinstance(backend, ThreadBackend) and backend.workers > 1
            if done < k:
                rest = slice(done, k)
                backend.directions(key[rest], lo[rest], hi[rest], step[rest], f_plus[rest],
                                   f_minus[rest], bar)
        return f_plus, f_minus

    @property
    def last_directions_threaded(self) -> bool:
        """Whether threads evaluated a Python loss in the last batch of directions."""
        return self._directions_threaded

    def confirm_directions_serially(self, key, lo, hi, step, f_plus, f_minus, suspect,
                                    threaded: bool | None = None) -> bool:
        """confirm_serially for a batch of directions: the suspect ones (those that disagree),
        when threads evaluated them for a Python loss, evaluated again serially. Any bitwise
        difference refuses threads for this loss (the guard's registry and path line); returns
        True then, and the caller evaluates its directions again with the new plan.
        ``threaded``: whether threads evaluated that batch (``last_directions_threaded`` when
        it was taken); None: the last batch's."""
        if threaded is None:
            threaded = self._directions_threaded
        if not threaded or not np.any(suspect):
            return False
        rows = np.flatnonzero(suspect)
        return self._differs_serially(
            f_plus[rows], f_minus[rows],
            lambda sp, sm: self.backend(self.plan, 1, 1).directions(
                key[rows], lo[rows], hi[rows], step[rows], sp, sm, _NO_BAR),
            lambda j: direction_where(lo[rows[j]], hi[rows[j]]))

    def _differs_serially(self, threaded_plus, threaded_minus, run, where) -> bool:
        """The same points as the threaded values, evaluated serially by ``run(plus, minus)``
        (the guard's duplicates, not the method's evaluations) and compared bitwise; True when
        they differed and threads were refused."""
        serial_plus, serial_minus = np.empty_like(threaded_plus), np.empty_like(threaded_minus)
        with self.work.guard_duplicates():
            run(serial_plus, serial_minus)
        self._compare(threaded_plus, threaded_minus, serial_plus, serial_minus, where)
        return self.threads_refused() is not None

    def _verify_directions(self, key, lo, hi, step, f_plus, f_minus, bar, backend) -> int:
        """verify_threads for directions (an audit's first batch)."""
        self._threads_verified = True
        g = min(key.size, self.guard_size(key.size))
        rows = slice(0, g)
        backend.directions(key[rows], lo[rows], hi[rows], step[rows], f_plus[rows],
                           f_minus[rows], bar)
        serial_plus, serial_minus = np.empty((g, self.work.width)), np.empty((g, self.work.width))
        with self.work.guard_duplicates():
            self.backend(self.plan, 1, backend.blas_threads).directions(
                key[rows], lo[rows], hi[rows], step[rows], serial_plus, serial_minus, _NO_BAR)
        self._compare(f_plus[rows], f_minus[rows], serial_plus, serial_minus,
                      lambda j: direction_where(lo[j], hi[j]))
        return g


class _Probe:
    """The calibration's measurements (planner.Probe) on the first coordinates of a batch of
    pairs: every call evaluates the next ones for real, into the batch's f_plus and f_minus."""

    def __init__(self, ev: Evaluator, index, step, f_plus, f_minus, bar):
        self.ev, self.index, self.step = ev, index, step
        self.f_plus, self.f_minus, self.bar = f_plus, f_minus, bar
        self.done = 0

    def run(self, size: int, workers: int, blas: int | None, plan: Plan | None = None) -> float:
        size = min(size, self.index.size - self.done)
        start = time.perf_counter()
        self.ev.run_pairs(self.done, self.done + size, self.index, self.step, self.f_plus,
                          self.f_minus, self.bar, workers, blas, plan)
        self.done += size
        return size / max(time.perf_counter() - start, 1e-9)

    def guard(self) -> tuple[float, float]:
        self.done = self.ev.verify_threads(0, self.index.size, self.index, self.step,
                                           self.f_plus, self.f_minus, self.bar)
        return self.ev.guard_rates

    def refusal(self) -> str | None:
        return self.ev.refusal()

    def blas_seconds(self) -> float:
        return self.ev.time_with_blas_threads()

    def warm(self) -> None:
        self.ev.warm_kernel()

    def processes(self, remaining: int, size: int) -> tuple[float, str] | None:
        """Coordinates per second on worker processes, or None when f cannot be pickled or
        the workers cannot load the problem (then no processes for this check: the probe's
        coordinates are evaluated by the plan chosen instead). A pool that is not running yet
        starts while this process evaluates coordinates serially (forked workers: ~0.02-0.1 s;
        loky's fork+exec: ~0.3-0.5 s on 2 cores)."""
        ev = self.ev
        cold = not pool_alive(ev.workers)
        try:
            backend = ev.process_backend()
        except InvalidType:
            return None
        note = ""
        try:
            if cold:
                start = time.perf_counter()
                started = start_workers(ev.workers, backend.shared.ref)
                while not all(f.done() for f in started) and 2 * size * ev.workers < remaining:
                    self.run(size, 1, 1)  # real coordinates while the workers start
                    remaining -= size
                for f in started:
                    f.result()
                note = f" (after {time.perf_counter() - start:.2g} s starting them)"
            plan = Plan("processes", ev.workers, 1, "calibration")
            chunks = 2 * ev.tuning.process_probe_chunks * ev.workers
            return self.run(max(size, chunks), ev.workers, 1, plan), note
        except (NotLoadable, InvalidType):
            return None


class _NoBar:
    """The progress bar of the guard's serial duplicate: it counts nothing."""

    active = False

    def update(self, n: int) -> None:
        """Nothing to show: the duplicate's evaluations are the guard's, not the check's."""


_NO_BAR = _NoBar()
