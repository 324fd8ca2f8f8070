"""The planner: the one place that chooses a Plan (plan.py) for a check.

Strategy, one level of threads at a time: ``workers`` threads (the Numba ``prange`` kernel for a
Numba loss, the thread pool otherwise) with BLAS limited to one thread inside them, or one worker
with BLAS on its own threads. A Python loss in a process that may fork (forked.py) gets forked
batches, nothing measured. Otherwise, with ``workers=None``, the first large batch calibrates: it
runs a few real coordinates under each strategy and keeps the faster one (nothing is evaluated
twice).
``jit="auto"`` may compile a plain numpy loss with Numba when that is faster; a loss Numba cannot
compile stays on the thread pool, silently. An explicit ``workers`` or an executor is obeyed.

The planner decides on plain values: what the evaluator knows of the check (``PlanInputs``), the
check's ``Tuning``, and during calibration the rates a ``Probe`` measures on real coordinates.
It returns Plans; the evaluator (evaluator.py) applies them and is never imported here.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import types
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..arguments import optional_positive_int
from ..tuning import Tuning
from .plan import Plan, forget_plan, remember
from .processes import pool_alive, start_up_seconds


@dataclass(frozen=True)
class PlanInputs:
    """What the planner knows of a check when it calibrates, gathered by the evaluator.

    coordinates: the size of the first large batch (k).
    t_eval: seconds of one evaluation of f at theta (the fastest timing).
    workers: the outer workers the check may use.
    backend: the backend of the plan before calibration ("jit": the Numba kernel evaluates f).
    plain: f is a Python loss of one value that Numba may compile (no loss terms, no kernel).
    jit_option: the check's ``jit=`` (True, False or "auto").
    origin: where the evaluated loss came from, for the path line.
    remembered: the plan an earlier check of f on problems of these sizes calibrated, or None.
    forkable: batches may be fork-joined (forked.fork_join_possible(), and no timeout=).
    """

    coordinates: int
    t_eval: float
    workers: int
    backend: str
    plain: bool
    jit_option: bool | str
    origin: str
    remembered: Plan | None = None
    forkable: bool = False


class Probe(Protocol):
    """Calibration's measurements: each call evaluates the batch's next coordinates for real
    (their losses are kept) and says how fast. ``done``: coordinates evaluated so far."""

    done: int

    def run(self, size: int, workers: int, blas: int | None, plan: Plan | None = None) -> float:
        """``size`` coordinates on ``workers`` outer workers with ``blas`` BLAS threads (under
        ``plan`` when given); coordinates per second."""

    def guard(self) -> tuple[float, float]:
        """The thread-safety guard on the first coordinates: their rates on threads and
        serially (coordinates per second); it may refuse threads (``refusal``)."""

    def refusal(self) -> str | None:
        """Why threads may not evaluate this loss, or None."""

    def blas_seconds(self) -> float:
        """Seconds of one evaluation at theta with BLAS on its own threads."""

    def warm(self) -> None:
        """Compile or load what the plan's backend runs, before it is timed."""

    def processes(self, remaining: int, size: int) -> tuple[float, str] | None:
        """Coordinates per second on worker processes (started now if they are not running,
        while ``size`` coordinates at a time run serially), and a note on their start-up; None
        when f cannot run there."""


@dataclass(frozen=True)
class Calibration:
    """What calibrate() decided: the plan for the rest of the check (None: the current plan
    stays), and, when it measured the strategies, whether one worker with BLAS threads won
    only narrowly (``narrow``; None: nothing measured, nothing to remember)."""

    plan: Plan | None = None
    narrow: bool | None = None


def resolve_workers(workers) -> int:
    """The number of workers: ``workers``, or every core this process may run on."""
    workers = optional_positive_int("workers", workers)
    if workers is None:
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else (os.cpu_count() or 1))
    return workers


def theta_blas_limit(workers=None) -> int | None:
    """BLAS threads for the evaluations at theta before the check runs: 1 unless the check runs
    one worker by default (a one-core machine), where BLAS is left as the caller has it. A
    check that will run outer threads must not wake BLAS threads first (see plan._PLANS), and
    workers=1 is serial all the way down."""
    return 1 if workers is not None or resolve_workers(None) > 1 else None


def initial_plan(is_dispatcher: bool, workers: int, workers_given: bool, executor,
                 executor_width: int) -> Plan:
    """The plan before anything is measured."""
    if executor is not None:
        return Plan("executor", executor_width, None,
                    f"chunks sent to {type(executor).__name__} ({executor_width} at once)")
    # an explicit workers=1 is serial all the way down: BLAS threads would also leave OpenBLAS
    # workers spinning ~0.1 s after the check
    blas = 1 if workers > 1 or workers_given else None
    if is_dispatcher:
        return Plan("jit", workers, blas,
                    f"f is a Numba dispatcher: prange kernel on {workers} threads")
    if workers == 1:
        return Plan("serial", 1, blas, "workers=1: strictly serial (BLAS on one thread too)")
    return Plan("threads", workers, blas, f"Python callable: thread pool of {workers} workers")


def forced_plan(backend: str, workers: int, workers_given: bool) -> Plan:
    """The plan backend="serial" | "threads" | "processes" asks for (no calibration)."""
    if backend == "serial":
        return Plan("serial", 1, 1, "backend='serial': one evaluation after another in this "
                                    "thread (BLAS on one thread too)")
    if backend == "threads":
        return Plan("threads", workers, 1, f"backend='threads': thread pool of {workers} workers, "
                                           f"BLAS limited to 1 thread")
    if backend == "forked":
        return Plan("forked", workers, 1, f"backend='forked': each batch shared by this process "
                                          f"and {forked_copies(workers)} of it, BLAS limited to "
                                          f"1 thread")
    return Plan("processes", workers, 1, f"backend='processes': {workers} worker processes, "
                                         f"theta in shared memory, BLAS limited to 1 thread")


def forked_copies(workers: int) -> str:
    """'1 forked copy', '3 forked copies': the copies beside this process, for a path line."""
    return f"{workers - 1} forked cop{'y' if workers == 2 else 'ies'}"


def instead_of_threads(why: str, workers: int, parallel_asked: bool,
                       picklable: Callable[[], bool]) -> Plan:
    """The plan once threads are refused for a loss (``why``): worker processes when the caller
    asked for parallel workers (workers= or backend='threads': ``parallel_asked``) and f can be
    pickled (``picklable()``, asked only then), else serial (the calibration of a long check
    still measures processes)."""
    if workers > 1 and parallel_asked:
        if not picklable():
            return Plan("serial", 1, 1, f"{why}; f cannot be pickled for worker processes: "
                                        f"serial")
        return Plan("processes", workers, 1, f"{why}: {workers} worker processes instead")
    return Plan("serial", 1, 1, f"{why}: serial")


def without_kernel(plan: Plan, origin: str) -> Plan:
    """The plan when Numba cannot pass the loss to the kernel as a first-class function."""
    return Plan("threads" if plan.workers > 1 else "serial", plan.workers, plan.blas_threads,
                f"{origin}, but Numba cannot pass it to the kernel as a first-class function "
                f"(it has no compiled version for these argument types that returns a number): "
                f"the thread pool calls it")


def jit_trial(inputs: PlanInputs, tuning: Tuning) -> float | None:
    """Whether to try compiling a plain loss with Numba before calibrating: None (no), or the
    seconds per evaluation the compiled loss must beat (``math.inf`` for jit=True: any).
    jit="auto" tries only when the Python path is predicted to take
    ``tuning.auto_jit_min_seconds``: compiling costs 0.1-2 s."""
    if inputs.backend == "jit" or not inputs.plain:
        return None
    if inputs.jit_option is True:
        return math.inf
    t_eval = max(inputs.t_eval, 1e-7)
    predicted = 2 * inputs.coordinates * t_eval / inputs.workers
    if inputs.jit_option == "auto" and predicted >= tuning.auto_jit_min_seconds:
        return t_eval
    return None


def needs_warm_timing(inputs: PlanInputs, tuning: Tuning) -> bool:
    """Whether to time f at theta once more before deciding: the first timing is f's first call
    in the check (cold caches, first allocations) and reads up to 2x a warm call. A Python loss
    whose first timing lies between the GIL bound and ``tuning.plan_t_eval_factor`` times it
    could be a GIL-bound loss read as a slow one, and given threads it loses with (the 4.8k
    net: 117 us cold, 60 us warm; on threads 0.58x the CS231n loop's speed, serially 0.97x)."""
    if inputs.backend != "threads" or inputs.remembered is not None or inputs.forkable:
        return False  # forked batches are planned without the timing (calibrate)
    bound = tuning.gil_bound_seconds
    return bound <= inputs.t_eval < tuning.plan_t_eval_factor * bound


def calibrate(inputs: PlanInputs, probe: Probe, tuning: Tuning) -> Calibration:
    """Decide threads/BLAS/processes on the first coordinates of the first large batch
    (``probe`` evaluates them; their losses are kept, and calibration adds one timed
    evaluation at theta with BLAS threads, counted in the evaluations)."""
    k = inputs.coordinates
    workers = inputs.workers
    t_eval = max(inputs.t_eval, 1e-7)
    predicted = 2 * k * t_eval / workers
    jit = inputs.backend == "jit"
    # worker processes can pay off only with enough work left for their start-up (best case:
    # nothing in this process beats one thread)
    maybe_processes = not jit and workers > 1 and processes_may_pay(
        k, 1 / (2 * t_eval), 1 / (2 * t_eval), workers, pool_alive(workers), tuning)
    python = inputs.backend == "threads"
    serial_seconds = 2 * k * t_eval
    if python and inputs.forkable:
        # a Python loss in a process that may fork: each batch shared with forked copies of
        # this process, which hold f already (forked.py). Nothing to measure: a process per
        # core is what threads are at best, without the GIL, the thread-safety guard or a
        # pool to feed; a batch too short to pay for its forks runs serially
        return Calibration(Plan(
            "forked", workers, 1, f"Python callable: each batch shared by this process and "
                                  f"{forked_copies(workers)} of it (one evaluation takes "
                                  f"{t_eval * 1e6:.0f} us), BLAS limited to 1 thread", t_eval))
    if python and not maybe_processes and (
            serial_seconds < tuning.calibrate_min_seconds
            or (predicted < tuning.calibrate_min_seconds and t_eval < tuning.gil_bound_seconds)):
        # a Python loss whose whole check is short even serially, or short on the workers and
        # GIL-bound: serial, at the plain loop's speed, nothing measured. Unmeasured threads
        # would be a guess that a GIL-bound loss loses (the 4.8k net: 0.58x the loop, the
        # thread-safety guard included). A longer check of a slower loss is calibrated even
        # when it would be short on many workers: 64 cores make 2 k t_eval / workers small,
        # and there threads are measured, not assumed. BLAS on one thread too: BLAS threads
        # do not pay off in so short an evaluation, and a BLAS call outside the limit races
        # with concurrent checks changing it
        why = (f"one evaluation takes {t_eval * 1e6:.0f} us: threads would contend for the GIL"
               if t_eval < tuning.gil_bound_seconds else
               f"the whole check takes {serial_seconds:.2g} s serially: too short for threads "
               f"to win back their guard")
        return Calibration(Plan("serial", 1, 1, f"Python callable: serial ({why})", t_eval))
    if predicted < tuning.calibrate_min_seconds and not maybe_processes and not python:
        return Calibration()
    plan = inputs.remembered
    factor = tuning.plan_t_eval_factor
    if plan is not None and plan.t_eval / factor <= t_eval <= plan.t_eval * factor and \
            not (plan.backend == "threads" and probe.refusal()):
        return Calibration(plan.because(
            f"{plan.reason}; plan remembered from an earlier check of this loss"))
    # each strategy gets the same number of coordinates, about tuning.calibration_seconds
    probed = int(np.clip(tuning.calibration_seconds / (2 * t_eval), 2, k // 8)) * workers
    if 2 * probed > k // 2:
        if python:  # too few coordinates to measure threads against one worker: no guess
            return Calibration(Plan(
                "serial", 1, 1, f"Python callable: serial ({k} coordinates are too few to "
                                f"measure threads against one worker)", t_eval))
        return Calibration()
    probe.warm()
    # the thread-safety guard first (a Python loss): a batch on threads, the same points serially
    guard_rates = probe.guard() if not jit and probe.refusal() is None else None
    threads_ok = jit or probe.refusal() is None
    # outer threads first, before anything of ours wakes BLAS threads (OpenBLAS's workers spin
    # for ~0.1 s after a threaded call, holding a core). The caller's own BLAS call just before
    # the check can have left them spinning: the outer probe runs in two halves around a serial
    # one and keeps its faster half. Then one evaluation with BLAS threads says whether they
    # help; the one-worker strategy gets them only if so (otherwise it is the serial strategy,
    # which a GIL-bound loss wins).
    half = max(1, probed // 2)
    size = max(1, probed // 4)  # short: BLAS threads on a busy machine can be 100x slower
    if guard_rates is not None:
        # a Python loss: the guard just timed the same coordinates on threads and serially;
        # threads once more after the serial run, on a batch that stays cheap should they be as
        # slow again (retry_size), the faster kept (the first threaded batch also woke the pool,
        # and BLAS workers the caller left spinning can slow either one)
        outer, serial = guard_rates
        if not threads_ok:
            outer = 0.0
        else:
            outer = retry_threads(outer, serial, t_eval, jit, workers, half, k - probe.done,
                                  lambda n: probe.run(n, workers, 1), tuning)
    else:
        outer = probe.run(half, workers, 1) if threads_ok else 0.0
        serial = probe.run(size, 1, 1)
        if threads_ok:
            outer = max(outer, probe.run(half, workers, 1))
    blas_helps = t_eval >= tuning.blas_probe_min_seconds and \
        outer < tuning.blas_probe_efficiency * workers * serial and \
        t_eval >= tuning.blas_speedup_to_probe * probe.blas_seconds()
    rates = [outer, probe.run(size, 1, None) if blas_helps else serial]
    best = 1 if one_worker_wins(rates[0], rates[1], t_eval, jit, tuning) else 0
    how = "prange kernel" if jit else "thread pool"
    one = "1 thread x BLAS threads" if blas_helps else "1 thread"
    if best == 0:
        chosen = f"{how} on {workers} threads, BLAS limited to 1 thread"
        backend, plan_workers, blas = ("jit" if jit else "threads"), workers, 1
    elif blas_helps:
        chosen = "one worker (no outer threads), BLAS left on its own threads"
        backend, plan_workers, blas = ("jit" if jit else "serial"), 1, None
    else:
        chosen = "one worker (outer threads were slower)" if threads_ok else "one worker"
        if threads_ok and rates[0] > rates[1]:
            chosen = (f"one worker (one evaluation takes {t_eval * 1e6:.0f} us, GIL-bound: "
                      f"outer threads did not win by {tuning.strategy_margin:.2f}x)")
        backend, plan_workers, blas = ("jit" if jit else "serial"), 1, 1
    measured = (f"calibrated: {rates[0]:.3g} coords/s on {workers} threads x 1 BLAS "
                f"thread vs {rates[1]:.3g} coords/s on {one}" if threads_ok else
                f"calibrated: {rates[1]:.3g} coords/s on {one}")
    if not jit and workers > 1 and processes_may_pay(k - probe.done, max(rates), serial,
                                                     workers, pool_alive(workers), tuning):
        processes = probe.processes(k - probe.done, size)
        if processes is not None:
            rate, note = processes
            measured += f", {rate:.3g} coords/s on {workers} processes{note}"
            if rate > tuning.process_margin * max(rates):
                chosen = (f"{workers} worker processes (theta in shared memory, BLAS "
                          f"limited to 1 thread)")
                backend, plan_workers, blas = "processes", workers, 1
    if not threads_ok:
        chosen = f"{chosen}; {probe.refusal()}"
    return Calibration(Plan(backend, plan_workers, blas,
                            f"{inputs.origin}: {chosen} ({measured})", t_eval),
                       narrow=rates[1] <= tuning.blas_plan_margin * rates[0])


def one_worker_wins(outer: float, one: float, t_eval: float, jit: bool, tuning: Tuning) -> bool:
    """Does the one-worker strategy (``one`` coordinates per second) beat outer threads
    (``outer``)? Outer threads keep a nogil or long loss unless one worker is
    ``tuning.strategy_margin`` faster; a GIL-bound Python loss (under
    ``tuning.gil_bound_seconds``) gets threads only when they are that much faster: a narrow
    win of a short probe is noise, and over a whole check their handoffs cost more (the 4.8k
    net's full check, remembered on threads after a 5% win, ran 1.6x slower than serially)."""
    if not jit and t_eval < tuning.gil_bound_seconds:
        return not outer > tuning.strategy_margin * one
    return one > tuning.strategy_margin * outer


def retry_threads(outer: float, serial: float, t_eval: float, jit: bool, workers: int,
                  half: int, remaining: int, timed: Callable[[int], float],
                  tuning: Tuning) -> float:
    """Outer threads measured again after the guard (``timed(size)`` runs ``size`` coordinates
    on them and returns their rate): the best rate seen. Threads that still lose to one worker
    (``serial``) are measured twice, then again while they keep getting faster (by
    ``tuning.retry_gain``), up to ``tuning.retry_rounds`` times, each round sized by retry_size
    at the latest rate: a thread's first batches pay for their first touch of a large loss's
    temporaries (the separable loss of 10^6: 15, 28, 240, 280, then 350 coords/s on successive
    batches of 2-8 coordinates on 2 threads, against 235 serially; a thread's first evaluation
    took 20-55 ms against 2 ms); a loss that threads really slow down stops after two rounds of
    at most ``tuning.retry_fraction`` of the remaining work each."""
    best = latest = outer
    for round_ in range(tuning.retry_rounds):
        if remaining <= 0:
            break
        size = retry_size(half, remaining, latest, serial, workers, tuning)
        rate = timed(size)
        remaining -= size
        best = max(best, rate)
        if not one_worker_wins(best, serial, t_eval, jit, tuning) or \
                (round_ > 0 and rate < tuning.retry_gain * latest):
            break
        latest = rate
    return best


def retry_size(half: int, remaining: int, outer: float, serial: float, workers: int,
               tuning: Tuning) -> int:
    """Coordinates for measuring outer threads once more after the guard: up to ``half``, as
    many as cost at most ``tuning.retry_fraction`` of the ``remaining`` coordinates' time should threads be
    as slow as the guard measured them (``outer`` and ``serial`` in coordinates per second), and
    at least one per worker: the guard's threaded batch is each thread's first, which pays for
    its first touch of a large loss's temporaries (the separable loss of 10^6: 32 coords/s on
    threads in the guard, 240 coords/s after)."""
    lost = 1.0 / outer - 1.0 / serial  # seconds lost per coordinate if threads are slower
    if lost > 0:
        half = min(half, int(tuning.retry_fraction * remaining / max(outer, serial) / lost))
    return min(max(half, workers), remaining)


def remember_calibrated(f, key: tuple, plan: Plan, narrow: bool) -> None:
    """Remember the plan a calibration chose for f on problems of ``key``'s sizes, so that
    later checks use it without calibrating.

    The latest calibration is remembered, whichever strategy won: a remembered plan never
    replaces one that a calibration measured faster. Except one worker with BLAS on its own
    threads that won narrowly (``narrow``): on a busy machine BLAS threads can be 100x slower
    from one check to the next, and a remembered wrong one would slow every later check of
    this loss. Then nothing is remembered, and a plan remembered earlier is forgotten (the
    calibration just measured it slower): the next check calibrates again.
    """
    if plan.backend != "processes" and plan.blas_threads is None and narrow:
        forget_plan(f, key)
    else:
        remember(f, key, plan)


def processes_may_pay(remaining: int, best_rate: float, serial_rate: float, workers: int,
                      warm: bool, tuning: Tuning) -> bool:
    """Whether probing worker processes can pay for itself: ``remaining`` coordinates at
    ``best_rate`` (coordinates per second, the best in-process strategy measured) against their
    best case, ``serial_rate`` times the workers that have a core to themselves (idle_cores),
    after their start-up (none when the pool is ``warm``), saving ``tuning.process_payback``
    times the probe's cost (``tuning.process_probe_seconds`` plus the start-up)."""
    if remaining <= 0 or best_rate <= 0 or serial_rate <= 0:
        return False
    cost = tuning.process_probe_seconds + (0.0 if warm else start_up_seconds())
    in_process = remaining / best_rate
    best_case = remaining / (min(workers, idle_cores()) * serial_rate) + cost
    return in_process - best_case >= tuning.process_payback * cost


def idle_cores() -> float:
    """The cores worker processes could have to themselves: this process's cores less the
    load of everything else (the 1-minute load average, this process counted as one); all of
    them where the load average is not known."""
    cores = resolve_workers(None)
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return float(cores)
    return float(min(cores, max(1.0, cores - max(0.0, load - 1.0))))


def compiled_if_faster(f, theta: np.ndarray, args: tuple, beat: float,
                       tuning: Tuning) -> tuple[Callable, str] | None:
    """f compiled with Numba, and a sentence saying so, when it agrees with f at theta (within
    ``tuning.jit_agreement_eps``) and one evaluation takes less than ``beat`` seconds (with a
    10% margin; ``math.inf``: jit=True, any time); None otherwise (Numba refused it: the thread
    pool, silently)."""
    compiled = compiled_loss(f)
    if compiled is None:
        return None
    # a writable copy: a read-only array is another type to Numba, and another compilation
    work = np.array(theta, copy=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Numba's performance hints are not the user's
            value = float(compiled(work, *args))
        reference = float(np.asarray(f(work.copy(), *args)))
        best = np.inf
        for _ in range(3):
            start = time.perf_counter()
            compiled(work, *args)
            best = min(best, time.perf_counter() - start)
    except Exception:  # Numba could not compile or run it: the thread pool, silently
        return None
    # the compiled loss must be the same function: a different summation order is fine
    if not abs(value - reference) <= tuning.jit_agreement_eps * max(1.0, abs(reference)):
        return None
    if best * 1.1 >= beat:
        return None  # numpy's vectorised math is faster (e.g. transcendental ufuncs)
    why = ("jit=True" if math.isinf(beat) else
           f"{best * 1e6:.3g} us per evaluation vs {beat * 1e6:.3g} us in Python")
    return compiled, f"jit='auto' compiled f with Numba ({why})"


# a plain loss compiled by jit="auto", per function: weakly keyed, and the compiled version is
# made from a twin of f (same code, globals and closure cells) so that it does not hold f itself:
# when the user drops f, its compiled version goes too. (Numba's dispatcher does not take part in
# garbage collection of cycles, so f -> dispatcher -> f would never be freed.)
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_loss(f):
    """Numba's njit of a plain Python function, or None when Numba refuses it (cached per f)."""
    with contextlib.suppress(KeyError, TypeError):  # not seen yet, or f cannot be a weak key
        return _COMPILED[f]
    compiled = None
    if isinstance(f, types.FunctionType):
        twin = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__,
                                  f.__closure__)
        twin.__kwdefaults__, twin.__qualname__ = f.__kwdefaults__, f.__qualname__
        twin.__module__ = f.__module__
        try:
            import numba

            compiled = numba.njit(nogil=True)(twin)
        except Exception:
            compiled = None
    with contextlib.suppress(TypeError):
        _COMPILED[f] = compiled
    return compiled
