"""The planner: the one place that chooses a Plan (plan.py) for a check.

Strategy, one level of threads at a time: ``workers`` threads (the Numba ``prange`` kernel for a
Numba loss, the thread pool otherwise) with BLAS limited to one thread inside them, or one worker
with BLAS on its own threads. With ``workers=None`` the first large batch calibrates: it runs a
few real coordinates under each strategy and keeps the faster one (nothing is evaluated twice).
``jit="auto"`` may compile a plain numpy loss with Numba when that is faster; a loss Numba cannot
compile stays on the thread pool, silently. An explicit ``workers`` or an executor is obeyed.
"""

from __future__ import annotations

import contextlib
import os
import time
import types
import warnings
import weakref
from typing import TYPE_CHECKING

import numpy as np

from ..arguments import optional_positive_int
from ..errors import InvalidType
from ..steps import JIT_AGREEMENT_EPS
from .plan import Plan, forget_plan, plan_key, remember, remembered_plan
from .processes import NotLoadable, pool_alive, start_up_seconds, start_workers

if TYPE_CHECKING:
    from .evaluator import Evaluator

# a remembered plan is reused while one evaluation takes within this factor of its time (one
# timing of a microsecond loss moves by 2x on a busy machine; a different problem moves more)
PLAN_T_EVAL_FACTOR = 4.0
# calibration runs the BLAS-threads strategy only when BLAS threads made one evaluation at
# least this much faster than BLAS on one thread (otherwise it cannot beat outer threads)
BLAS_SPEEDUP_TO_PROBE = 1.4
# jit="auto" tries to compile only when the Python path is predicted to take this long (seconds):
# compiling costs ~0.1-2 s, so a short check never pays for it
# (on a busy 2-core machine compiling the separable loss took 1.6 s of a check of 1 s)
AUTO_JIT_MIN_SECONDS = 3.0
# the calibration compares strategies on this much wall time of real coordinates each
CALIBRATION_SECONDS = 0.05
# a plan of one worker with BLAS threads is remembered only when it beat outer threads by this
BLAS_PLAN_MARGIN = 1.3
# the calibration's margin between outer threads and one worker (with or without BLAS threads):
# the measurement is noisy on a shared machine, so the strategy that is the right guess wins
# unless the other is this much faster: outer threads for most losses, one worker for a
# GIL-bound Python loss (one_worker_wins)
STRATEGY_MARGIN = 1.15
# a batch of evaluations shorter than this (seconds, serially) runs on one thread
SERIAL_BATCH_SECONDS = 0.002
# below this predicted time (seconds) the first strategy is used without calibrating
CALIBRATE_MIN_SECONDS = 0.15
# ... except that a Python loss faster than this (seconds) runs serially: it is GIL-bound (on the
# small two-layer net, 23 us, two threads took 0.084 s where one took 0.065 s), and the
# thread-safety guard threads would need costs 15-30% of a check this short. A busy machine
# doubles the time of one evaluation: 100 us keeps the 4.8k net serial there too
GIL_BOUND_SECONDS = 100e-6
# processes must beat the best in-process strategy by this factor to be chosen
PROCESS_MARGIN = 1.1
# the probe of processes runs only when their best case (the serial rate times the workers, after
# their start-up) would save this many times what the probe costs: the start-up (forking slows
# this process's own evaluations on a machine whose cores the workers share), the shipping of the
# problem, and a batch at their rate if they lose. A check of 0.3 s serially cannot afford it.
PROCESS_PAYBACK = 2.0
# what shipping the problem to the workers and one probe batch cost, besides the start-up (seconds)
PROCESS_PROBE_SECONDS = 0.02
# BLAS threads are timed (one evaluation at theta) only for evaluations at least this long: in a
# shorter one OpenBLAS's threads cannot beat outer threads, and they keep spinning ~0.1 s after
# the call, holding a core the next probe needs (on a busy 2-core machine they made the nets'
# evaluations 15x slower)
BLAS_PROBE_MIN_SECONDS = 1e-3
# ... and only when outer threads' parallel efficiency (their rate / (workers x the serial rate))
# is below this: above it BLAS threads could win by at most 1 / BLAS_PROBE_EFFICIENCY, and the
# probe leaves OpenBLAS's threads spinning on the cores the check then needs (the separable loss
# of 10^6, 2 ms an evaluation: 50 ms of a 0.35 s first check)
BLAS_PROBE_EFFICIENCY = 0.6
# after the guard, outer threads are measured once more (the guard's threaded batch also started
# the pool, and BLAS workers the caller left spinning can slow it) on a batch whose cost, should
# threads be as slow as the guard saw, stays below this fraction of the check's remaining work
RETRY_FRACTION = 0.03
# ... and measured again (retry_threads), up to this many rounds, while each round's rate is
# at least this factor above the previous one (threads still warming up)
RETRY_ROUNDS = 4
RETRY_GAIN = 1.2


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
    return Plan("processes", workers, 1, f"backend='processes': {workers} worker processes, "
                                         f"theta in shared memory, BLAS limited to 1 thread")


def instead_of_threads(ev: Evaluator, why: str) -> Plan:
    """The plan once threads are refused for a loss: worker processes when the caller asked for
    parallel workers (workers= or backend='threads') and f can be pickled, else serial (the
    calibration of a long check still measures processes)."""
    if ev.workers > 1 and (ev.workers_given or ev.forced == "threads"):
        try:
            ev.process_backend()
        except InvalidType:
            return Plan("serial", 1, 1, f"{why}; f cannot be pickled for worker processes: "
                                        f"serial")
        return Plan("processes", ev.workers, 1, f"{why}: {ev.workers} worker processes instead")
    return Plan("serial", 1, 1, f"{why}: serial")


def without_kernel(plan: Plan, origin: str) -> Plan:
    """The plan when Numba cannot pass the loss to the kernel as a first-class function."""
    return Plan("threads" if plan.workers > 1 else "serial", plan.workers, plan.blas_threads,
                f"{origin}, but Numba cannot pass it to the kernel as a first-class function "
                f"(it has no compiled version for these argument types that returns a number): "
                f"the thread pool calls it")


def calibrate(ev: Evaluator, index, step, f_plus, f_minus, bar) -> int:
    """Decide threads/BLAS (and jit="auto") on the first coordinates; returns how many of them
    were evaluated (their losses are kept: calibration adds one timed evaluation at theta with
    BLAS threads, counted in the evaluations)."""
    k = index.size
    if ev.t_eval is None:
        ev.time_at_theta()
    t_eval = max(ev.t_eval, 1e-7)
    predicted = 2 * k * t_eval / ev.workers
    plain = ev.plan.backend != "jit" and ev.work.terms is None
    if plain and ev.jit_option == "auto" and predicted >= AUTO_JIT_MIN_SECONDS:
        try_jit(ev, t_eval)
    elif plain and ev.jit_option is True:
        try_jit(ev, None)
    jit = ev.plan.backend == "jit"
    # worker processes can pay off only with enough work left for their start-up (best case:
    # nothing in this process beats one thread)
    maybe_processes = not jit and ev.workers > 1 and processes_may_pay(
        k, 1 / (2 * t_eval), 1 / (2 * t_eval), ev.workers, pool_alive(ev.workers))
    if predicted < CALIBRATE_MIN_SECONDS and not maybe_processes:
        if ev.plan.backend == "threads" and t_eval < GIL_BOUND_SECONDS:
            # a loss this short holds the GIL most of the time: threads only add handoffs.
            # BLAS on one thread too: BLAS threads do not pay off in a 50 us evaluation, and a
            # BLAS call outside the limit races with concurrent checks changing it
            ev.plan = Plan("serial", 1, 1,
                           f"Python callable: serial (one evaluation takes {t_eval * 1e6:.0f} "
                           f"us: threads would contend for the GIL)", t_eval)
        return 0
    plan = remembered_plan(ev.work.f, ev.work.theta, ev.work.args, ev.workers, jit)
    if plan is not None and plan.t_eval / PLAN_T_EVAL_FACTOR <= t_eval <= \
            plan.t_eval * PLAN_T_EVAL_FACTOR and not (plan.backend == "threads"
                                                       and ev.threads_refused()):
        ev.plan = plan.because(f"{plan.reason}; plan remembered from an earlier check of this loss")
        return 0
    # each strategy gets the same number of coordinates, about CALIBRATION_SECONDS of work
    probe = int(np.clip(CALIBRATION_SECONDS / (2 * t_eval), 2, k // 8)) * ev.workers
    if 2 * probe > k // 2:
        return 0
    ev.warm_kernel()
    done = 0

    def timed(size, workers, blas, plan=None):
        nonlocal done
        size = min(size, k - done)
        start = time.perf_counter()
        ev.run_pairs(done, done + size, index, step, f_plus, f_minus, bar, workers, blas, plan)
        done += size
        return size / max(time.perf_counter() - start, 1e-9)

    if not jit and not ev.threads_refused():
        # the thread-safety guard first: a batch on threads and the same points serially
        done = ev.verify_threads(0, k, index, step, f_plus, f_minus, bar)
    threads_ok = jit or not ev.threads_refused()
    # outer threads first, before anything of ours wakes BLAS threads (OpenBLAS's workers spin
    # for ~0.1 s after a threaded call, holding a core). The caller's own BLAS call just before
    # the check can have left them spinning: the outer probe runs in two halves around a serial
    # one and keeps its faster half. Then one evaluation with BLAS threads says whether they
    # help; the one-worker strategy gets them only if so (otherwise it is the serial strategy,
    # which a GIL-bound loss wins).
    half = max(1, probe // 2)
    size = max(1, probe // 4)  # short: BLAS threads on a busy machine can be 100x slower
    if ev.guard_rates is not None:
        # a Python loss: the guard just timed the same coordinates on threads and serially;
        # threads once more after the serial run, on a batch that stays cheap should they be as
        # slow again (retry_size), the faster kept (the first threaded batch also woke the pool,
        # and BLAS workers the caller left spinning can slow either one)
        outer, serial = ev.guard_rates
        if not threads_ok:
            outer = 0.0
        else:
            outer = retry_threads(outer, serial, t_eval, jit, ev.workers, half, k - done,
                                  lambda size: timed(size, ev.workers, 1))
    else:
        outer = timed(half, ev.workers, 1) if threads_ok else 0.0
        serial = timed(size, 1, 1)
        if threads_ok:
            outer = max(outer, timed(half, ev.workers, 1))
    blas_helps = t_eval >= BLAS_PROBE_MIN_SECONDS and \
        outer < BLAS_PROBE_EFFICIENCY * ev.workers * serial and \
        t_eval >= BLAS_SPEEDUP_TO_PROBE * ev.time_with_blas_threads()
    rates = [outer, timed(size, 1, None) if blas_helps else serial]
    best = 1 if one_worker_wins(rates[0], rates[1], t_eval, jit) else 0
    how = "prange kernel" if jit else "thread pool"
    one = "1 thread x BLAS threads" if blas_helps else "1 thread"
    if best == 0:
        chosen = f"{how} on {ev.workers} threads, BLAS limited to 1 thread"
        backend, workers, blas = ("jit" if jit else "threads"), ev.workers, 1
    elif blas_helps:
        chosen = "one worker (no outer threads), BLAS left on its own threads"
        backend, workers, blas = ("jit" if jit else "serial"), 1, None
    else:
        chosen = "one worker (outer threads were slower)" if threads_ok else "one worker"
        if threads_ok and rates[0] > rates[1]:
            chosen = (f"one worker (one evaluation takes {t_eval * 1e6:.0f} us, GIL-bound: "
                      f"outer threads did not win by {STRATEGY_MARGIN:.2f}x)")
        backend, workers, blas = ("jit" if jit else "serial"), 1, 1
    measured = (f"calibrated: {rates[0]:.3g} coords/s on {ev.workers} threads x 1 BLAS "
                f"thread vs {rates[1]:.3g} coords/s on {one}" if threads_ok else
                f"calibrated: {rates[1]:.3g} coords/s on {one}")
    if not jit and ev.workers > 1 and processes_may_pay(k - done, max(rates), serial,
                                                        ev.workers, pool_alive(ev.workers)):
        processes = _processes_rate(ev, k - done, size, timed)
        if processes is not None:
            rate, note = processes
            measured += f", {rate:.3g} coords/s on {ev.workers} processes{note}"
            if rate > PROCESS_MARGIN * max(rates):
                chosen = (f"{ev.workers} worker processes (theta in shared memory, BLAS "
                          f"limited to 1 thread)")
                backend, workers, blas = "processes", ev.workers, 1
    if not threads_ok:
        chosen = f"{chosen}; {ev.refusal()}"
    ev.plan = Plan(backend, workers, blas, f"{ev.origin()}: {chosen} ({measured})", t_eval)
    remember_calibrated(ev.work.f, plan_key(ev.work.theta, ev.work.args, ev.workers, jit),
                        ev.plan, narrow=rates[1] <= BLAS_PLAN_MARGIN * rates[0])
    return done


def one_worker_wins(outer: float, one: float, t_eval: float, jit: bool) -> bool:
    """Does the one-worker strategy (``one`` coordinates per second) beat outer threads
    (``outer``)? Outer threads keep a nogil or long loss unless one worker is STRATEGY_MARGIN
    faster; a GIL-bound Python loss (under GIL_BOUND_SECONDS) gets threads only when they are
    STRATEGY_MARGIN faster: a narrow win of a short probe is noise, and over a whole check their
    handoffs cost more (the 4.8k net's full check, remembered on threads after a 5% win, ran
    1.6x slower than serially)."""
    if not jit and t_eval < GIL_BOUND_SECONDS:
        return not outer > STRATEGY_MARGIN * one
    return one > STRATEGY_MARGIN * outer


def retry_threads(outer: float, serial: float, t_eval: float, jit: bool, workers: int,
                  half: int, remaining: int, timed) -> float:
    """Outer threads measured again after the guard (``timed(size)`` runs ``size`` coordinates
    on them and returns their rate): the best rate seen. Threads that still lose to one worker
    (``serial``) are measured twice, then again while they keep getting faster (by RETRY_GAIN),
    up to RETRY_ROUNDS times, each round sized by retry_size at the latest rate: a thread's
    first batches pay for their first touch of a large loss's temporaries (the separable loss of
    10^6: 15, 28, 240, 280, then 350 coords/s on successive batches of 2-8 coordinates on 2
    threads, against 235 serially; a thread's first evaluation took 20-55 ms against 2 ms); a
    loss that threads really slow down stops after two rounds of at most RETRY_FRACTION of the
    remaining work each."""
    best = latest = outer
    for round_ in range(RETRY_ROUNDS):
        if remaining <= 0:
            break
        size = retry_size(half, remaining, latest, serial, workers)
        rate = timed(size)
        remaining -= size
        best = max(best, rate)
        if not one_worker_wins(best, serial, t_eval, jit) or \
                (round_ > 0 and rate < RETRY_GAIN * latest):
            break
        latest = rate
    return best


def retry_size(half: int, remaining: int, outer: float, serial: float, workers: int) -> int:
    """Coordinates for measuring outer threads once more after the guard: up to ``half``, as
    many as cost at most RETRY_FRACTION of the ``remaining`` coordinates' time should threads be
    as slow as the guard measured them (``outer`` and ``serial`` in coordinates per second), and
    at least one per worker: the guard's threaded batch is each thread's first, which pays for
    its first touch of a large loss's temporaries (the separable loss of 10^6: 32 coords/s on
    threads in the guard, 240 coords/s after)."""
    lost = 1.0 / outer - 1.0 / serial  # seconds lost per coordinate if threads are slower
    if lost > 0:
        half = min(half, int(RETRY_FRACTION * remaining / max(outer, serial) / lost))
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
                      warm: bool) -> bool:
    """Whether probing worker processes can pay for itself: ``remaining`` coordinates at
    ``best_rate`` (coordinates per second, the best in-process strategy measured) against their
    best case, ``serial_rate`` times the workers that have a core to themselves (idle_cores),
    after their start-up (none when the pool is ``warm``), saving PROCESS_PAYBACK times the
    probe's cost."""
    if remaining <= 0 or best_rate <= 0 or serial_rate <= 0:
        return False
    cost = PROCESS_PROBE_SECONDS + (0.0 if warm else start_up_seconds())
    in_process = remaining / best_rate
    best_case = remaining / (min(workers, idle_cores()) * serial_rate) + cost
    return in_process - best_case >= PROCESS_PAYBACK * cost


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


def _processes_rate(ev: Evaluator, remaining: int, size: int, timed):
    """Coordinates per second on worker processes, measured on real coordinates (the caller
    decided they may pay: processes_may_pay), or None when f cannot be pickled. A pool that is
    not running yet starts while this process evaluates coordinates serially (forked workers:
    ~0.02-0.1 s; loky's fork+exec: ~0.3-0.5 s on 2 cores)."""
    cold = not pool_alive(ev.workers)
    try:
        backend = ev.process_backend()
    except InvalidType:
        return None
    note = ""
    # a problem the workers cannot unpickle (NotLoadable, InvalidType from the backend): no
    # processes for this check; the probe's coordinates are evaluated by the plan chosen instead
    try:
        if cold:
            start = time.perf_counter()
            started = start_workers(ev.workers, backend.shared.ref)
            while not all(f.done() for f in started) and 2 * size * ev.workers < remaining:
                timed(size, 1, 1)  # real coordinates while the workers start
                remaining -= size
            for f in started:
                f.result()
            note = f" (after {time.perf_counter() - start:.2g} s starting them)"
        plan = Plan("processes", ev.workers, 1, "calibration")
        return timed(max(size, 2 * CHUNKS_FOR_PROBE * ev.workers), ev.workers, 1, plan), note
    except (NotLoadable, InvalidType):
        return None


# chunks per worker process in the calibration's probe of processes
CHUNKS_FOR_PROBE = 4


def try_jit(ev: Evaluator, t_eval) -> None:
    """Compile a plain loss with Numba; keep it when it agrees at theta and is faster."""
    compiled = compiled_loss(ev.work.f)
    if compiled is None:
        return
    # a writable copy: a read-only array is another type to Numba, and another compilation
    work = np.array(ev.work.theta, copy=True)
    args = ev.work.args
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Numba's performance hints are not the user's
            value = float(compiled(work, *args))
        reference = float(np.asarray(ev.work.f(work.copy(), *args)))
        best = np.inf
        for _ in range(3):
            start = time.perf_counter()
            compiled(work, *args)
            best = min(best, time.perf_counter() - start)
    except Exception:  # Numba could not compile or run it: the thread pool, silently
        return
    # the compiled loss must be the same function: a different summation order is fine
    if not abs(value - reference) <= JIT_AGREEMENT_EPS * max(1.0, abs(reference)):
        return
    if t_eval is not None and best * 1.1 >= t_eval:
        return  # numpy's vectorised math is faster (e.g. transcendental ufuncs)
    why = (f"{best * 1e6:.3g} us per evaluation vs {t_eval * 1e6:.3g} us in Python"
           if t_eval is not None else "jit=True")
    ev.use_kernel(compiled, f"jit='auto' compiled f with Numba ({why})")


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
