"""The evaluation engine's choices: one level of threads, calibration, jit="auto" (behaviour
only; speed is measured by benchmarks/, never asserted here)."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
from numba import njit

import fastgrad as fg
from fastgrad.engine import evaluator as engine_evaluator
from fastgrad.engine import plan as plans
from fastgrad.engine import planner as evaluate
from fastgrad.engine.blas import blas_limited
from fastgrad.engine.evaluator import Evaluator
from fastgrad.tuning import DEFAULT_TUNING


@pytest.fixture(autouse=True)
def measuring_planner(monkeypatch):
    """These tests are about the planner that measures (where forking is not safe: macOS,
    Windows, torch or jax loaded, another thread running): no forked batches here
    (tests/test_forked.py has them)."""
    monkeypatch.setattr(engine_evaluator, "fork_join_possible", lambda: False)


def tuned(**fields):
    """The default tuning with some numbers changed (what a test passes as tuning=)."""
    return dataclasses.replace(DEFAULT_TUNING, **fields)


def loop_loss(x):
    total = 0.0
    for i in range(x.size):
        total += x[i] * x[i] * (1.0 + 0.1 * i)
    return total


def loop_grad(x):
    return 2.0 * x * (1.0 + 0.1 * np.arange(x.size))


def keepdims_loss(x):  # Numba cannot compile max(axis=..., keepdims=True)
    m = x.reshape(4, -1)
    return float(np.sum((m - m.max(axis=1, keepdims=True)) ** 2))


def test_jit_true_compiles_a_plain_loss_and_says_so():
    x = np.random.default_rng(0).standard_normal(50)
    report = fg.check(loop_loss, x, loop_grad(x), samples="all", jit=True)
    assert report.passed and report.path == "jit"
    assert "compiled f with Numba" in report.path_reason


def test_auto_jit_falls_back_silently_when_numba_cannot_compile():
    # always try to compile; no calibration
    tuning = tuned(auto_jit_min_seconds=0.0, calibrate_min_seconds=1e9)
    x = np.random.default_rng(1).standard_normal(40)
    m = x.reshape(4, -1)
    grad = (2 * (m - m.max(axis=1, keepdims=True))).ravel()
    grad.reshape(4, -1)[np.arange(4), m.argmax(axis=1)] -= 2 * (m - m.max(axis=1, keepdims=True)).sum(axis=1)
    report = fg.check(keepdims_loss, x, grad, samples="all", jit="auto", tuning=tuning)
    # the Python path (threads, or serial for a loss this short), not a compiled kernel
    assert report.path in ("threads", "serial") and "compiled" not in report.path_reason
    assert report.passed


def test_jit_false_keeps_a_numba_loss_on_the_thread_pool():
    from fastgrad.examples import two_layer_data, two_layer_grad, two_layer_loss_jit

    theta, segs, args = two_layer_data(N=4, D=6, H=5, C=3)
    report = fg.check(two_layer_loss_jit, theta, two_layer_grad(theta, *args), args=args,
                      segments=segs, jit=False)
    assert report.path in ("threads", "serial") and report.passed


def test_bad_jit_option():
    with pytest.raises(ValueError, match="jit"):
        Evaluator(loop_loss, np.ones(3), jit="yes")


def test_blas_limited_restores_the_thread_count():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [d["num_threads"] for d in threadpoolctl.threadpool_info()
              if d["user_api"] == "blas"]
    with blas_limited(1):
        inside = [d["num_threads"] for d in threadpoolctl.threadpool_info()
                  if d["user_api"] == "blas"]
        assert all(n == 1 for n in inside)
    after = [d["num_threads"] for d in threadpoolctl.threadpool_info()
             if d["user_api"] == "blas"]
    assert after == before


def test_calibration_keeps_every_evaluation_and_matches_the_serial_values(monkeypatch):
    tuning = tuned(calibrate_min_seconds=0.0)  # calibrate even a tiny check
    # threads against one worker (on an idle machine the planner may also try processes and
    # keep them: a choice this test is not about)
    monkeypatch.setattr(evaluate, "processes_may_pay", lambda *args, **kwargs: False)
    x = np.random.default_rng(2).standard_normal(400)
    index = np.arange(400, dtype=np.int64)
    step = np.full(400, 1e-5)
    calibrated = Evaluator(loop_loss, x, tuning=tuning)
    calibrated.at(x)
    fp, fm = calibrated.pairs(index, step)
    serial = Evaluator(loop_loss, x, workers=1)
    sp, sm = serial.pairs(index, step)
    assert np.array_equal(fp, sp) and np.array_equal(fm, sm)
    # the evaluation at theta, the 400 pairs, and calibration's one timing with BLAS threads
    # when one evaluation is long enough for them and outer threads scaled poorly (the
    # thread-safety guard's serial duplicates of its first threaded batch, counted too, and a
    # second timing at theta when the first read near the GIL bound, said in the path line)
    retimed = "f timed twice at theta" in calibrated.path_reason
    blas_timed = calibrated.evaluations - calibrated.guard_evaluations - (1 + 2 * 400) - retimed
    assert blas_timed in (0, 1)
    assert not blas_timed or calibrated.t_eval >= tuning.blas_probe_min_seconds
    assert calibrated.guard_evaluations > 0
    assert "calibrated" in calibrated.path_reason
    assert calibrated.path in ("threads", "serial")


def test_the_noise_probe_does_not_choose_the_strategy_for_the_check(monkeypatch):
    """The 24-evaluation noise probe runs first; the strategy must be chosen on the check's own
    coordinates (the first large batch), not on the probe."""
    seen = []
    original = evaluate.calibrate

    def spy(inputs, probe, tuning):
        seen.append(inputs.coordinates)
        return original(inputs, probe, tuning)

    monkeypatch.setattr(evaluate, "calibrate", spy)
    x = np.linspace(-1.0, 1.0, 300)
    fg.check(lambda t: float(np.sum(np.sin(t))), x, np.cos(x), samples="all")
    assert seen == [300]


def _blas_loss(x, A):
    """A loss that calls BLAS (np.dot) on a matrix of theta: the kind the plan is about."""
    W = x.reshape(A.shape[1], -1)
    return float(np.sum(np.tanh(A @ W)))


def _blas_grad(x, A):
    W = x.reshape(A.shape[1], -1)
    return (A.T @ (1.0 - np.tanh(A @ W) ** 2)).ravel()


def test_a_calibrated_plan_is_remembered_and_reused_for_the_same_loss(monkeypatch):
    # calibrate even a small check; and reuse the plan whatever one timing of the loss reads
    # (a 40 us evaluation timed once moves by more than plan_t_eval_factor on a busy VM: the
    # CI run of 1995358 recalibrated here)
    tuning = tuned(calibrate_min_seconds=0.0, plan_t_eval_factor=1e6)
    monkeypatch.setattr(plans, "_PLANS", type(plans._PLANS)())
    rng = np.random.default_rng(3)
    A = rng.standard_normal((8, 20))
    x = rng.standard_normal(20 * 30)
    first = fg.check(_blas_loss, x, _blas_grad(x, A), args=(A,), samples="all", tuning=tuning)
    assert first.passed and "calibrated" in first.path_reason
    assert "remembered" not in first.path_reason
    second = fg.check(_blas_loss, x, _blas_grad(x, A), args=(A,), samples="all", tuning=tuning)
    assert second.passed and "plan remembered" in second.path_reason
    # the same choice, and the losses of the same coordinates, whatever ran them
    assert second.path == first.path
    assert np.allclose([c.numeric for c in first.coords], [c.numeric for c in second.coords],
                       rtol=1e-12, atol=0.0)
    plan = plans.remembered_plan(_blas_loss, x, (A,), evaluate.resolve_workers(None), False)
    assert plan is not None and plan.path == first.path
    # other shapes are another problem: calibrated again
    B = rng.standard_normal((9, 20))
    other = fg.check(_blas_loss, x, _blas_grad(x, B), args=(B,), samples="all", tuning=tuning)
    assert "remembered" not in other.path_reason
    # an explicit worker count is obeyed, never replaced by a remembered plan
    one = fg.check(_blas_loss, x, _blas_grad(x, A), args=(A,), samples="all", workers=1,
                   tuning=tuning)
    assert one.path == "serial" and "remembered" not in one.path_reason
    # before a check, f at theta never wakes BLAS threads unless one worker is all there is
    assert evaluate.theta_blas_limit(workers=2) == 1 and evaluate.theta_blas_limit(workers=1) == 1
    assert evaluate.theta_blas_limit() == (1 if evaluate.resolve_workers(None) > 1 else None)


def test_a_remembered_plan_is_not_reused_when_the_loss_got_much_slower(monkeypatch):
    monkeypatch.setattr(plans, "_PLANS", type(plans._PLANS)())
    x = np.random.default_rng(4).standard_normal(200)
    key = plans.plan_key(x, (), evaluate.resolve_workers(None), False)
    start = time.perf_counter()
    loop_loss(x)
    t_eval = time.perf_counter() - start
    # a plan measured on a loss 100x faster than this one
    plans._PLANS[loop_loss] = {key: plans.Plan("serial", 1, 1, "made up", t_eval / 100)}
    again = fg.check(loop_loss, x, loop_grad(x), samples="all",
                     tuning=tuned(calibrate_min_seconds=0.0))
    assert "remembered" not in again.path_reason and "calibrated" in again.path_reason


def test_a_slow_first_timing_is_taken_again_before_a_short_check_gets_threads(monkeypatch):
    """A loss whose first calls are slow (caches, allocations: here a 1.5 ms sleep in the two
    calls before the planner decides) and the next ones far faster: the first timing alone
    reads it as a loss threads pay off for; a second timing at theta (counted) shows it
    GIL-bound, and the short check runs serially, as fast as the plain loop. (A GIL bound of
    1 ms: a loaded machine does not push the warm calls over it.)"""
    monkeypatch.setattr(plans, "_PLANS", type(plans._PLANS)())
    x = np.random.default_rng(5).standard_normal(40)
    grad = 2 * np.tanh(x) * (1 - np.tanh(x) ** 2)

    def counted(slow_calls):
        calls = []

        def loss(x):
            if len(calls) < slow_calls:
                time.sleep(1.5e-3)
            calls.append(1)
            return float(np.sum(np.tanh(x) ** 2))
        return loss, calls

    cold, cold_calls = counted(2)
    tuning = tuned(gil_bound_seconds=1e-3)
    report = fg.check(cold, x, grad, samples="all", tuning=tuning)
    assert report.passed and report.path == "serial", report.path_reason
    assert "GIL" in report.path_reason
    assert report.evaluations == len(cold_calls)
    warm, warm_calls = counted(0)
    again = fg.check(warm, x, grad, samples="all", tuning=tuning)
    assert again.passed and again.path == "serial" and again.evaluations == len(warm_calls)
    assert report.evaluations == again.evaluations + 1  # the second timing, counted


def _check_in_child():
    x = np.linspace(-1.0, 1.0, 64)
    report = fg.check(lambda t: float(np.sum(np.sin(t))), x, np.cos(x), samples="all",
                      workers=2)
    return report.passed


def test_the_thread_pool_works_in_a_forked_child():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    assert _check_in_child()  # the parent's pool exists now
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        assert pool.submit(_check_in_child).result(timeout=120)


def test_a_check_inside_a_loss_runs_serially_instead_of_deadlocking():
    inner_paths = []

    def outer(t):
        inner = fg.check(lambda u: float(np.sum(u * u)), t[:3].copy(), 2 * t[:3], samples="all",
                         workers=2)
        inner_paths.append(inner.passed)
        return float(np.sum(np.sin(t)))

    x = np.linspace(-1.0, 1.0, 16)
    report = fg.check(outer, x, np.cos(x), samples="all", workers=2)
    assert report.passed and inner_paths and all(inner_paths)


_LOSS_MODULE = '''
import numpy as np
from numba import njit

@njit(cache=True)
def {name}(theta, scale):
    return 0.5 * np.sum(scale * theta * theta)
'''

_RUN = '''
import sys
import numpy as np
import fastgrad as fg
from fastgrad.engine import kernels
from {name} import {name} as loss
x = np.linspace(-1.0, 1.0, 200)
scale = np.arange(1.0, 201.0)
report = fg.check(loss, x, scale * x, args=(scale,), samples="all")
assert report.passed and report.path == "jit", report.path
print(sum(kernels.centered_losses.stats.cache_hits.values()),
      sum(kernels.centered_losses.stats.cache_misses.values()))
'''


@pytest.mark.slow
def test_the_coordinate_kernel_is_cached_on_disk_and_names_no_loss_module(tmp_path):
    """A second process loads the kernel instead of compiling it, and a process that cannot
    import the first one's loss module still loads it (the index names types, not modules)."""
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("PYTHONPATH", None)
    results = []
    for name in ("loss_a", "loss_a", "loss_b"):
        where = tmp_path / name
        where.mkdir(exist_ok=True)
        (where / f"{name}.py").write_text(_LOSS_MODULE.format(name=name))
        done = subprocess.run([sys.executable, "-c", _RUN.format(name=name)], cwd=where,
                              env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(tuple(int(v) for v in done.stdout.split()[-2:]))
    assert results[0][1] >= 1  # compiled (and written to the cache) in the first process
    assert results[1] == (1, 0)  # loaded in the second: nothing compiled
    assert results[2] == (1, 0)  # another loss module, the first one not importable: loaded


@njit(cache=True)
def _raises_past_limit(theta, limit):
    if theta[7] > limit:
        raise ValueError("theta[7] above the limit")
    return np.sum(theta * theta)


def test_an_exception_inside_the_kernel_is_reported_and_the_hook_restored():
    import sys

    before = sys.unraisablehook
    x = np.linspace(-1.0, 1.0, 64)
    x[7] = 2.0 - 1e-7  # fine at theta, raises at theta + h e_7
    with pytest.raises(fg.LossError, match=r"theta\[7\].*above the limit") as info:
        fg.check(_raises_past_limit, x, 2 * x, args=(2.0,), samples="all", workers=2)
    assert info.value.index == 7 and "parallel kernel" in str(info.value)
    assert sys.unraisablehook is before
    # the same loss away from its limit: no false error, the values are exact
    x[7] = 0.5
    assert fg.check(_raises_past_limit, x, 2 * x, args=(2.0,), samples="all").passed
    assert sys.unraisablehook is before


def test_an_exception_inside_the_directional_kernel_names_the_direction():
    x = np.linspace(-1.0, 1.0, 64)
    x[7] = 2.0 - 1e-9  # any direction that moves theta[7] up by more than 1e-9 raises
    with pytest.raises(fg.LossError, match=r"parallel kernel.*random direction.*above the limit"):
        fg.audit(_raises_past_limit, x, 2 * x, args=(2.0,), workers=2)
    x[7] = 0.5
    report = fg.audit(_raises_past_limit, x, 2 * x, args=(2.0,), workers=2)
    assert report.passed and report.suspects.size == 0


@njit("float64(float64[:], float64[:])")
def _eager_loss(x, scale):  # compiled at import for arrays of any layout; no other signature
    return 0.5 * np.sum(scale * x * x)


@njit
def _tuple_loss(x):  # not a number: the kernel cannot call it
    return np.sum(x * x), 1.0


def test_an_eagerly_compiled_loss_runs_in_the_kernel_and_odd_ones_fall_back_clearly():
    x = np.linspace(-1.0, 1.0, 300)
    scale = np.arange(1.0, 301.0)
    report = fg.check(_eager_loss, x, scale * x, args=(scale,), samples="all")
    assert report.passed and report.path == "jit" and "prange kernel" in report.path_reason
    wrong = scale * x
    wrong[5] *= 1.01
    assert [c.index for c in fg.check(_eager_loss, x, wrong, args=(scale,),
                                      samples="all").failures] == [5]
    from fastgrad.engine.kernels import first_class_loss

    assert first_class_loss(_tuple_loss, x, ()) is None
    assert first_class_loss(_eager_loss, x.astype(np.float32), (scale,)) is None


def test_a_remembered_plan_never_replaces_one_the_latest_calibration_measured_faster(
        monkeypatch):
    """The planner's memory (planted plans, no timing): the latest calibration's plan replaces
    what an earlier one remembered, and a narrow win of BLAS threads, which is not remembered,
    forgets the earlier plan (the calibration just measured it slower) instead of leaving it
    for the next check."""
    monkeypatch.setattr(plans, "_PLANS", type(plans._PLANS)())
    x = np.zeros(10)
    key = plans.plan_key(x, (), 2, False)
    threads = plans.Plan("threads", 2, 1, "calibrated: threads won", 1e-3)
    serial = plans.Plan("serial", 1, 1, "calibrated: one thread won", 1e-3)
    blas = plans.Plan("serial", 1, None, "calibrated: BLAS threads won", 1e-3)
    processes = plans.Plan("processes", 2, 1, "calibrated: processes won", 1e-3)

    evaluate.remember_calibrated(loop_loss, key, threads, narrow=False)
    assert plans.remembered_plan(loop_loss, x, (), 2, False) == threads
    evaluate.remember_calibrated(loop_loss, key, serial, narrow=True)  # only BLAS wins are narrow
    assert plans.remembered_plan(loop_loss, x, (), 2, False) == serial
    evaluate.remember_calibrated(loop_loss, key, blas, narrow=False)  # a clear BLAS win: kept
    assert plans.remembered_plan(loop_loss, x, (), 2, False) == blas
    evaluate.remember_calibrated(loop_loss, key, threads, narrow=False)
    evaluate.remember_calibrated(loop_loss, key, blas, narrow=True)
    # threads were measured slower than BLAS threads: not reused; the next check calibrates
    assert plans.remembered_plan(loop_loss, x, (), 2, False) is None
    evaluate.remember_calibrated(loop_loss, key, processes, narrow=True)
    assert plans.remembered_plan(loop_loss, x, (), 2, False) == processes
    # another problem's plan is untouched by this one's
    other = plans.plan_key(np.zeros(11), (), 2, False)
    evaluate.remember_calibrated(loop_loss, other, threads, narrow=False)
    evaluate.remember_calibrated(loop_loss, key, blas, narrow=True)
    assert plans.remembered_plan(loop_loss, np.zeros(11), (), 2, False) == threads


def test_processes_are_probed_only_when_their_best_case_pays_for_the_probe(monkeypatch):
    """The speculative process probe (no timing: rates in coordinates per second)."""
    monkeypatch.setattr(evaluate, "idle_cores", lambda: 2.0)
    monkeypatch.setattr(evaluate, "start_up_seconds", lambda: 0.1)
    pays = evaluate.processes_may_pay
    # a check of 0.3 s serially cannot afford a 0.1 s start-up: at best it saves 0.15 s
    assert not pays(1000, 3333.0, 3333.0, 2, warm=False, tuning=DEFAULT_TUNING)
    # a GIL-bound loss (threads no faster than one) with 10 s of work left: worth measuring
    assert pays(10000, 1000.0, 1000.0, 2, warm=False, tuning=DEFAULT_TUNING)
    # threads already run at twice the serial rate: processes cannot beat them
    assert not pays(10000, 2000.0, 1000.0, 2, warm=False, tuning=DEFAULT_TUNING)
    # a running pool costs no start-up: less work left suffices
    assert pays(500, 1000.0, 1000.0, 2, warm=True, tuning=DEFAULT_TUNING)
    assert not pays(500, 1000.0, 1000.0, 2, warm=False, tuning=DEFAULT_TUNING)
    # nothing left, or nothing measured
    assert not pays(0, 1000.0, 1000.0, 2, warm=True, tuning=DEFAULT_TUNING)
    assert not pays(1000, 0.0, 0.0, 2, warm=True, tuning=DEFAULT_TUNING)
    # a machine whose other work leaves one core: processes cannot beat one thread
    monkeypatch.setattr(evaluate, "idle_cores", lambda: 1.0)
    assert not pays(10**6, 1000.0, 1000.0, 2, warm=True, tuning=DEFAULT_TUNING)


def test_outer_threads_are_measured_again_only_where_a_slow_retry_is_cheap():
    """After the guard: threads measured no slower than serially get the whole retry; slower,
    as many coordinates as lose at most Tuning.retry_fraction of the rest, and at least one per worker
    (the guard's batch was each thread's first) (no timing: rates in coordinates per second)."""
    retry = evaluate.retry_size
    assert retry(40, 1000, 2000.0, 1000.0, 2, DEFAULT_TUNING) == 40
    # threads at half the serial rate lose 1 ms per coordinate; the rest takes 1 s serially
    assert retry(40, 1000, 500.0, 1000.0, 2, DEFAULT_TUNING) == \
        int(DEFAULT_TUNING.retry_fraction * 1000 / 1000.0 / 1e-3)
    # the separable loss: 98 coordinates left, threads at 17/s against 63/s serially
    assert retry(6, 98, 17.0, 63.0, 2, DEFAULT_TUNING) == 2
    assert retry(6, 1, 17.0, 63.0, 2, DEFAULT_TUNING) == 1  # never more than what is left



def test_threads_still_warming_up_after_the_guard_are_measured_again():
    """retry_threads (no timing: a scripted sequence of rates, coordinates per second)."""
    def scripted(rates):
        sizes = []

        def timed(size):
            sizes.append(size)
            return rates[len(sizes) - 1]
        return sizes, timed

    long = 10 * DEFAULT_TUNING.gil_bound_seconds
    # the separable loss of 10^6 on 2 threads: 15 coords/s in the guard, then 28, 240, 350,
    # against 235 serially; one round would have chosen one worker
    sizes, timed = scripted([28.0, 240.0, 350.0, 350.0])
    best = evaluate.retry_threads(15.0, 235.0, long, False, 2, 40, 1000, timed, DEFAULT_TUNING)
    assert best == 240.0 and not evaluate.one_worker_wins(best, 235.0, long, False, DEFAULT_TUNING)
    assert len(sizes) == 2 and sizes[1] > sizes[0]  # the second round sized by the faster rate
    # a loss that threads really slow down: two rounds, then no more (no gain)
    sizes, timed = scripted([100.0, 105.0, 110.0, 120.0])
    assert evaluate.retry_threads(90.0, 235.0, long, False, 2, 6, 98, timed, DEFAULT_TUNING) == 105.0
    assert len(sizes) == 2
    # still getting faster but still losing: at most Tuning.retry_rounds rounds
    sizes, timed = scripted([20.0, 40.0, 80.0, 160.0, 320.0])
    evaluate.retry_threads(10.0, 1000.0, long, False, 2, 6, 98, timed, DEFAULT_TUNING)
    assert len(sizes) == DEFAULT_TUNING.retry_rounds
    # threads as fast as one worker after the guard: one round
    sizes, timed = scripted([300.0, 300.0])
    assert evaluate.retry_threads(15.0, 235.0, long, False, 2, 6, 98, timed, DEFAULT_TUNING) == 300.0
    assert len(sizes) == 1


def test_a_gil_bound_loss_needs_a_clear_win_for_threads():
    # the 4.8k net's full check (51 us per evaluation): outer threads calibrated 5% faster than
    # one thread, remembered, then ran 1.6x slower than serially over the whole check
    from fastgrad.engine.planner import one_worker_wins

    tuning = DEFAULT_TUNING
    margin = tuning.strategy_margin
    short, long = tuning.gil_bound_seconds / 2, tuning.gil_bound_seconds * 10
    assert one_worker_wins(outer=1.05, one=1.0, t_eval=short, jit=False, tuning=tuning)
    assert not one_worker_wins(outer=1.05 * margin, one=1.0, t_eval=short, jit=False,
                               tuning=tuning)
    # longer evaluations (and the nogil kernel) keep the bias towards outer threads
    assert not one_worker_wins(outer=1.05, one=1.0, t_eval=long, jit=False, tuning=tuning)
    assert not one_worker_wins(outer=1.05, one=1.0, t_eval=short, jit=True, tuning=tuning)
    assert one_worker_wins(outer=1.0, one=1.05 * margin, t_eval=long, jit=False, tuning=tuning)
