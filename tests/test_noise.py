"""The measured noise of f: a noisy loss does not cry wolf, a quiet one keeps its sensitivity."""

import sys

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.judge.noise import NoiseLevel


def jitter(t, level):
    """Deterministic pseudo-noise of the bits of t: what an iterative solver or a float32
    accumulation inside f looks like from outside (the same t always gives the same value)."""
    bits = np.frombuffer(t.tobytes(), dtype=np.uint64)
    h = np.bitwise_xor.reduce(bits * np.uint64(0x9E3779B97F4A7C15))
    return level * ((int(h) % 2_000_001) / 1_000_000.0 - 1.0)


@pytest.fixture
def theta():
    return np.random.default_rng(0).standard_normal(300)


def noisy_loss(t):
    return float(np.sum(np.sin(t) + 0.5 * t * t)) + jitter(t, 1e-9)


def grad_of(t):
    return np.cos(t) + t


def test_noisy_loss_with_correct_gradient_passes_and_says_why(theta, monkeypatch):
    report = fg.check(noisy_loss, theta, grad_of(theta), samples="all")
    assert report.passed, str(report)
    assert report.noise_sigma > 1e-10
    assert "noisier than assumed" in report.noise_note and "noisier" in str(report)
    quiet = fg.check(lambda t: float(np.sum(np.sin(t) + 0.5 * t * t)), theta, grad_of(theta),
                     samples="all")
    assert quiet.passed and quiet.noise_note == ""
    # without the measurement the same correct gradient fails: the measured floor is what
    # keeps the check from crying wolf
    check_module = sys.modules["fastgrad.checks.coordinates"]
    unmeasured = NoiseLevel((0.0,), (0.0,), 1.0, "")
    monkeypatch.setattr(check_module, "measure_noise", lambda *a, **k: unmeasured)
    assert not fg.check(noisy_loss, theta, grad_of(theta), samples="all").passed


def test_noisy_loss_still_catches_a_real_bug(theta):
    grad = grad_of(theta)
    grad[[7, 150]] += 0.02  # far above the noise (~1e-9 / step ~ 1e-3 relative)
    report = fg.check(noisy_loss, theta, grad, samples="all")
    assert sorted(c.index for c in report.failures) == [7, 150]


def test_loss_that_cancels_to_zero_keeps_the_roundoff_of_its_terms():
    # sum(sin) over a symmetric grid is ~1e-16, but each term is ~1: the roundoff is not eps |f|
    theta = np.linspace(-1.0, 1.0, 25)
    f = lambda t: float(np.sum(np.sin(t)))
    report = fg.check(f, theta, np.cos(theta), samples="all")
    assert report.passed, str(report)
    assert all(c.verdict in ("excellent", "ok") for c in report.coords)
    wrong = np.cos(theta)
    wrong[3] *= 1.01
    report = fg.check(f, theta, wrong, samples="all")
    assert [c.index for c in report.failures] == [3]


def test_probe_on_a_kink_does_not_raise_the_floor():
    # max(t0, t1) at a tie: the noise probe straddles the kink at both spacings
    f = lambda t: float(max(t[0], t[1]) + np.sum(t[2:] ** 2))
    theta = np.array([1.0, 1.0, 0.5, -0.25])
    report = fg.check(f, theta, np.array([1.0, 0.0, 1.0, -0.5]), samples="all")
    assert report.noise_sigma == 0.0 and report.noise_note == ""
    assert report.passed, str(report)
    wrong = fg.check(f, theta, np.array([1.0, 0.0, 1.02, -0.5]), samples="all")
    assert [c.index for c in wrong.failures] == [2]
