"""The numbers that tune the method: one frozen value a check is given.

``check(..., tuning=...)`` and ``audit(..., tuning=...)`` hand a ``Tuning`` down to the engine
(planner, thread-safety guard, chunking), the judge (noise probe, re-checks) and the audit
(directions, localization); nothing reads a module global, so two concurrent checks with
different tunings never see each other's numbers. ``DEFAULT_TUNING`` is
what every check uses unless told otherwise; change one number by passing it, or with
``dataclasses.replace``:

>>> import dataclasses
>>> faster = dataclasses.replace(DEFAULT_TUNING, calibrate_min_seconds=1.0)
>>> faster.calibrate_min_seconds, DEFAULT_TUNING.calibrate_min_seconds
(1.0, 0.15)
>>> Tuning(calibrate_min_seconds=1.0) == faster
True

Numbers that are facts rather than tuning stay beside the code that uses them: the published
CS231n verdict bands (steps.BAND_*), each dtype's roundoff and default tolerance
(steps.PRECISIONS), the distribution of the audit's random directions (compiled into the Numba
kernels), and the engine's mechanics that change no value and no choice (poll intervals, the
process pool's idle lifetime, cache sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import InvalidType, InvalidValue

_EPS64 = 2.0 ** -52  # numpy.finfo(numpy.float64).eps, without importing numpy here


@dataclass(frozen=True)
class Tuning:
    """The method's numbers, each with its unit and the reason for its value.

    Every field is a non-negative finite number (or a tuple of positive ones); a Tuning is
    immutable and hashable, so one value can be shared by concurrent checks. ``Tuning()`` is
    the default (``fastgrad.tuning.DEFAULT_TUNING``); pass the numbers to change.

    Attributes
    ----------
    gil_bound_seconds : float
        Seconds. A Python loss faster than this is GIL-bound: calibration gives it threads
        only on a clear win (strategy_margin), and a first timing between this and
        plan_t_eval_factor times it is taken again (a cold first call reads up to 2x). On the
        small two-layer net (23 us) two threads took 0.084 s where one took 0.065 s, and the
        guard that threads need costs 15-30% of such a check. Default: ``0.0001``.
    calibrate_min_seconds : float
        Seconds of predicted work below which the check is not calibrated (the probes would
        cost a good part of it): a Python loss runs serially (the plain loop's speed) when its
        whole check, 2 k t_eval, is this short, or when 2 k t_eval / workers is and the loss is
        GIL-bound; a longer Python check is calibrated (threads measured, never assumed, also
        when many cores make it short on them). A Numba loss stays on the kernel's threads
        when 2 k t_eval / workers is below it. Default: ``0.15``.
    calibration_seconds : float
        Seconds of real coordinates each strategy is timed on during calibration (nothing is
        evaluated twice: the probes' losses are kept). Default: ``0.05``.
    serial_batch_seconds : float
        Seconds. A batch whose serial time is below this runs on one thread: waking threads up
        costs more (re-checks of a few coordinates). Default: ``0.002``.
    strategy_margin : float
        Factor. Calibration on a shared machine is noisy: the strategy that is the right guess
        (outer threads for most losses, one worker for a GIL-bound one) wins unless the other is
        this much faster. The 4.8k net, remembered on threads after a 5% win, ran 1.6x slower
        over its whole check than serially. Default: ``1.15``.
    plan_t_eval_factor : float
        Factor. A remembered plan is reused while one evaluation takes within this factor of the
        time it was calibrated at: one timing of a microsecond loss moves by 2x on a busy
        machine, a different problem moves more. Default: ``4.0``.
    auto_jit_min_seconds : float
        Seconds of predicted Python work before jit="auto" tries to compile the loss with Numba:
        compiling costs 0.1-2 s (1.6 s of a 1 s check for the separable loss on a busy 2-core
        machine), so a short check never pays for it. Default: ``3.0``.
    jit_agreement_eps : float
        Relative difference (float64) within which a loss compiled by jit="auto" agrees with the
        Python loss at theta: a different summation order is fine, a different function not.
        Default: ``8 * eps``
        (1.8e-15).
    blas_probe_min_seconds : float
        Seconds. BLAS threads are timed only for evaluations at least this long: in a shorter
        one they cannot beat outer threads, and OpenBLAS's threads keep spinning ~0.1 s after
        the call, holding a core the next probe needs (15x slower evaluations of the nets seen).
        Default: ``0.001``.
    blas_probe_efficiency : float
        Fraction. ... and only while outer threads' parallel efficiency (their rate over workers
        x the serial rate) is below this: above it BLAS threads could win by at most its
        inverse, and the probe costs the separable loss of 10^6 50 ms of a 0.35 s check.
        Default: ``0.6``.
    blas_speedup_to_probe : float
        Factor. The one-worker strategy gets BLAS threads only when they made one evaluation at
        least this much faster than BLAS on one thread (otherwise they cannot beat outer
        threads). Default: ``1.4``.
    blas_plan_margin : float
        Factor. A plan of one worker with BLAS threads is remembered only when it beat outer
        threads by this: BLAS threads can be 100x slower from one check to the next on a busy
        machine, and a wrong remembered plan would slow every later check of the loss. Default:
        ``1.3``.
    process_margin : float
        Factor by which worker processes must beat the best in-process strategy to be chosen.
        Default: ``1.1``.
    process_payback : float
        Factor. Processes are probed only when their best case (the serial rate times the idle
        cores, after their start-up) would save this many times what the probe costs: a check of
        0.3 s serially cannot afford it. Default: ``2.0``.
    process_probe_seconds : float
        Seconds that shipping the problem to worker processes and one probe batch cost, besides
        their start-up (the probe's price in process_payback). Default: ``0.02``.
    process_probe_chunks : int
        Chunks per worker process in the calibration's probe of processes: enough to keep each
        worker busy past its first chunk. Default: ``4``.
    retry_fraction : float
        Fraction of the check's remaining work that re-measuring outer threads after the guard
        may cost should threads be as slow as the guard saw (the guard's threaded batch is each
        thread's first: it pays for a large loss's first touch of its temporaries). Default:
        ``0.03``.
    retry_rounds : int
        Rounds of re-measuring outer threads at most, while each is retry_gain faster than the
        previous (the separable loss of 10^6: 15, 28, 240, 280, then 350 coords/s on 2 threads).
        Default: ``4``.
    retry_gain : float
        Factor a round of re-measured threads must gain over the previous to earn another.
        Default: ``1.2``.
    guard_seconds : float
        Seconds of serial work the guard compares with the same points evaluated on threads.
        Default: ``0.01``.
    guard_fraction : float
        Fraction of a batch's serial work the guard's duplicates may cost at most. Default:
        ``0.03``.
    guard_min_per_worker : int
        Coordinates per worker the guard evaluates at least (short evaluations): with 1 per
        worker it missed tests/test_thread_safety.py's scratch buffer one time in two. Default:
        ``4``.
    guard_min_per_worker_long : int
        ... for evaluations of guard_long_seconds or more, which overlap on threads for their
        whole length. An interference the guard misses is still caught by the serial
        confirmation of every failure. Default: ``2``.
    guard_long_seconds : float
        Seconds of one evaluation from which guard_min_per_worker_long applies. Default:
        ``0.001``.
    guard_max : int
        Coordinates the guard evaluates twice at most. Default: ``64``.
    chunks_per_worker_pairs : int
        Chunks per worker of a batch of coordinate pairs: a few keep the workers balanced when
        evaluations differ in cost. Default: ``4``.
    chunks_per_worker_directions : int
        ... of a batch of random directions (each one touches a whole segment: fewer, larger).
        Default: ``2``.
    progress_chunks : int
        Chunks a batch goes in at least while a progress bar is on screen, so that the bar moves
        (an audit's first batch of a 124M-parameter model takes about a minute). Default:
        ``32``.
    depth_exponent : float
        Exponent. The default tolerance grows as depth ** this: 100x (1e-4 -> 1e-2 in float64)
        at about 30 layers. Default: ``1.35``.
    kink_explains : float
        Fraction. A failing coordinate is a kink candidate when its kink score (the disagreement
        of the one-sided slopes, csrc/accumulate.h) is at least this fraction of its relative
        error. Default: ``0.25``.
    kink_stable_change : float
        Fraction of tol. A failure whose numeric value moved by at most this between two steps
        is stable: no kink in between, a real error. Default: ``0.5``.
    one_sided_noise : float
        Factor. The one-sided slopes (f+ - f0)/h, (f0 - f-)/h carry this multiple of the
        centered difference's noise floor. Default: ``2.0``.
    kink_visible : float
        Factor. A kink is visible when the one-sided slopes differ by more than this many times
        their noise. Default: ``4.0``.
    kink_shrink : tuple of float
        Fractions of the first step a kink re-check tries in turn: a kink at distance d is no
        longer crossed once the step is below d. Default: ``(0.1, 0.01, 0.001)``.
    noise_sigmas : float
        Standard deviations. A disagreement is noise while within this many of the measured
        noise: an estimate from 7 points can come out at a quarter of the true value. Default:
        ``6.0``.
    noise_probe_spacings : tuple of float
        Fractions of the automatic step. The noise of f is measured at x + j d v at each spacing
        d: roundoff does not depend on d, a kink or curvature grows with it, so only estimates
        that agree at every spacing are noise. Default: ``(0.01, 0.001)``.
    noise_probe_points : int
        f at x +- j d v for j = 1..this at each spacing: 13 values per estimate (with f0), the
        ECnoise stencil (More & Wild 2011). Default: ``6``.
    noise_agreement : float
        Factor. Two estimates of the same noise (13 values each) agree within this 99% of the
        time; a kink or curvature in the stencils makes them differ by the spacing ratio (10).
        Default: ``5.0``.
    max_step_gain : float
        Factor by which a noisy f grows the automatic steps at most. Default: ``10.0``.
    step_dependence : float
        Fraction. A directional disagreement that changes by more than this of itself between
        two extrapolated estimates depends on the step (truncation, kinks), not on the gradient.
        Default: ``0.5``.
    richardson_ratio : float
        Factor. A disagreement at step h is re-measured at this times h (half the roundoff, four
        times the truncation) and both are extrapolated to h = 0 (Richardson, error ~h^2).
        Default: ``2.0``.
    richardson_trust : float
        Fraction. When the step-dependent part |e(2h) - e(h)| is more than this of the
        extrapolated disagreement, the h^2 model is in doubt (a kink near the step). Default:
        ``0.25``.
    direction_shrink : tuple of float
        ... then the step shrinks by these factors in turn while the disagreement keeps changing
        by more than step_dependence of itself. Default: ``(0.1, 0.01)``.
    step_dependence_margin : float
        Factor. A part whose disagreement is more than this many times the step dependence
        measured on a part containing it (plus its floor) is not re-measured: truncation over a
        sub-support cannot be what disagrees. Default: ``10.0``.
    leaf_size : int
        Coordinates (at least 1). A range this small is settled by coordinate checks of all its
        members. Default: ``4``.
    directions_per_test : int
        Random directions (at least 1) a part that passes one is tried with at most: two wrong
        coordinates can nearly cancel in one direction, in three independent ones practically
        never. Default: ``3``.
    direction_miss_probability : float
        Probability. ... but no more directions than bring the chance of missing an error of tol
        on a coordinate of typical gradient below this (steps.direction_miss_bound). Default:
        ``0.001``.
    block_samples : int
        Coordinates sampled from a part whose four grandchildren all disagree: if every one is
        wrong, the part is reported as a wrong block instead of being split further. Default:
        ``6``.
    max_front : int
        Disagreeing parts at one level beyond which the disagreement is spread over the segment.
        Default: ``64``.

    Raises
    ------
    TypeError
        A field of the wrong type, naming it (``fastgrad.errors.InvalidType``).
    ValueError
        A negative or non-finite number, or an empty tuple, naming the field
        (``fastgrad.errors.InvalidValue``).

    Examples
    --------
    >>> tuning = fg.Tuning(gil_bound_seconds=1e-3)   # Python losses under 1 ms: serial
    >>> report = fg.check(loss, theta, grad, tuning=tuning)
    >>> dataclasses.replace(tuning, noise_sigmas=8.0).noise_sigmas
    8.0
    """

    # -- the planner (engine/planner.py): which backend evaluates a check -----------------------
    gil_bound_seconds: float = 100e-6
    calibrate_min_seconds: float = 0.15
    calibration_seconds: float = 0.05
    serial_batch_seconds: float = 0.002
    strategy_margin: float = 1.15
    plan_t_eval_factor: float = 4.0
    auto_jit_min_seconds: float = 3.0
    jit_agreement_eps: float = 8 * _EPS64
    blas_probe_min_seconds: float = 1e-3
    blas_probe_efficiency: float = 0.6
    blas_speedup_to_probe: float = 1.4
    blas_plan_margin: float = 1.3
    process_margin: float = 1.1
    process_payback: float = 2.0
    process_probe_seconds: float = 0.02
    process_probe_chunks: int = 4
    retry_fraction: float = 0.03
    retry_rounds: int = 4
    retry_gain: float = 1.2

    # -- the thread-safety guard (engine/evaluator.py) ------------------------------------------
    guard_seconds: float = 0.01
    guard_fraction: float = 0.03
    guard_min_per_worker: int = 4
    guard_min_per_worker_long: int = 2
    guard_long_seconds: float = 1e-3
    guard_max: int = 64

    # -- chunking (engine/backends.py) -----------------------------------------------------------
    chunks_per_worker_pairs: int = 4
    chunks_per_worker_directions: int = 2
    progress_chunks: int = 32

    # -- tolerance, noise and re-checks (steps.py, judge/) ---------------------------------------
    depth_exponent: float = 1.35
    kink_explains: float = 0.25
    kink_stable_change: float = 0.5
    one_sided_noise: float = 2.0
    kink_visible: float = 4.0
    kink_shrink: tuple[float, ...] = (0.1, 0.01, 0.001)
    noise_sigmas: float = 6.0
    noise_probe_spacings: tuple[float, ...] = (1e-2, 1e-3)
    noise_probe_points: int = 6
    noise_agreement: float = 5.0
    max_step_gain: float = 10.0

    # -- the audit's directions and localization (checks/audit/) ---------------------------------
    step_dependence: float = 0.5
    richardson_ratio: float = 2.0
    richardson_trust: float = 0.25
    direction_shrink: tuple[float, ...] = (0.1, 0.01)
    step_dependence_margin: float = 10.0
    leaf_size: int = 4
    directions_per_test: int = 3
    direction_miss_probability: float = 1e-3
    block_samples: int = 6
    max_front: int = 64

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            values = value if isinstance(value, tuple) else (value,)
            whole = spec.type == "int"
            if not values or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                 or (whole and not isinstance(v, int)) for v in values):
                kind = "an int" if whole else ("a non-empty tuple of numbers"
                                               if isinstance(value, tuple) else "a number")
                raise InvalidType(f"tuning.{spec.name}: expected {kind}, got {value!r}")
            if not all(math.isfinite(v) and v >= 0 for v in values) or \
                    (isinstance(value, tuple) and not all(v > 0 for v in values)):
                raise InvalidValue(f"tuning.{spec.name}: expected a non-negative finite value "
                                   f"(positive in a tuple), got {value!r}")
            if spec.name in _AT_LEAST_ONE and value < 1:
                raise InvalidValue(f"tuning.{spec.name}: expected at least 1, got {value!r}")

    @property
    def noise_probe_evaluations(self) -> int:
        """Loss evaluations of the noise probe: 2 per point per spacing."""
        return 2 * self.noise_probe_points * len(self.noise_probe_spacings)


# counts without which the audit would not test at all (no direction) or never stop splitting
_AT_LEAST_ONE = ("leaf_size", "directions_per_test")

DEFAULT_TUNING = Tuning()


def as_tuning(tuning) -> Tuning:
    """``tuning`` when it is a Tuning; InvalidType naming the argument otherwise."""
    if not isinstance(tuning, Tuning):
        raise InvalidType(f"tuning: expected a fastgrad.Tuning (e.g. fastgrad.Tuning("
                          f"gil_bound_seconds=1e-3)), got {type(tuning).__name__}")
    return tuning
