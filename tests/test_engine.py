"""The evaluation engine's choices: one level of threads, calibration, jit="auto" (behaviour
only; speed is measured by benchmarks/, never asserted here)."""

from __future__ import annotations

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import evaluate
from fastgrad.evaluate import Evaluator, blas_limited


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


def test_auto_jit_falls_back_silently_when_numba_cannot_compile(monkeypatch):
    monkeypatch.setattr(evaluate, "AUTO_JIT_MIN_SECONDS", 0.0)  # always try
    monkeypatch.setattr(evaluate, "CALIBRATE_MIN_SECONDS", 1e9)  # no calibration
    x = np.random.default_rng(1).standard_normal(40)
    m = x.reshape(4, -1)
    grad = (2 * (m - m.max(axis=1, keepdims=True))).ravel()
    grad.reshape(4, -1)[np.arange(4), m.argmax(axis=1)] -= 2 * (m - m.max(axis=1, keepdims=True)).sum(axis=1)
    report = fg.check(keepdims_loss, x, grad, samples="all", jit="auto")
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
    monkeypatch.setattr(evaluate, "CALIBRATE_MIN_SECONDS", 0.0)  # calibrate even a tiny check
    x = np.random.default_rng(2).standard_normal(400)
    index = np.arange(400, dtype=np.int64)
    step = np.full(400, 1e-5)
    calibrated = Evaluator(loop_loss, x)
    calibrated.at(x)
    fp, fm = calibrated.pairs(index, step)
    serial = Evaluator(loop_loss, x, workers=1)
    sp, sm = serial.pairs(index, step)
    assert np.array_equal(fp, sp) and np.array_equal(fm, sm)
    assert calibrated.evaluations == 1 + 2 * 400
    assert "calibrated" in calibrated.path_reason
    assert calibrated.path in ("threads", "serial")


def test_the_noise_probe_does_not_choose_the_strategy_for_the_check(monkeypatch):
    """The 24-evaluation noise probe runs first; the strategy must be chosen on the check's own
    coordinates (the first large batch), not on the probe."""
    seen = []
    original = Evaluator._calibrate

    def spy(self, index, step, f_plus, f_minus, bar):
        seen.append(index.size)
        return original(self, index, step, f_plus, f_minus, bar)

    monkeypatch.setattr(Evaluator, "_calibrate", spy)
    x = np.linspace(-1.0, 1.0, 300)
    fg.check(lambda t: float(np.sum(np.sin(t))), x, np.cos(x), samples="all")
    assert seen == [300]
