"""Faults: a worker process killed mid-check (the OOM killer), a Dask worker lost mid-audit, a
loss that hangs (``timeout=``), Ctrl-C. The verdict is the serial one, the report says what
happened, and nothing broken is kept for the next check."""

from __future__ import annotations

import _thread
import math
import os
import signal
import textwrap
import threading
import time

import numpy as np
import pytest

import fastgrad as fg
from fastgrad import LossTimeout
from fastgrad.cli import main
from fastgrad.engine import processes
from fastgrad.errors import InvalidType, InvalidValue, LossError

_rng = np.random.default_rng(11)
A = _rng.standard_normal((40, 60))
THETA = _rng.standard_normal(60) * 0.05
GRAD = A.T @ (1 - np.tanh(A @ THETA) ** 2)
WRONG = GRAD.copy()
WRONG[17] *= 1.01  # one wrong coordinate
SEGMENTS = {"W": (6, 5), "b": (30,)}


def tanh_loss(theta):
    return float(np.sum(np.tanh(A @ theta)))


def killing_loss(theta, A, calls, flags, parent):
    """tanh_loss that counts its calls in a file; in a worker process (never in ``parent``),
    the call after ``n`` calls in all kills its own process with SIGKILL once per flag file
    ``(path, n)`` (whoever removes the flag dies)."""
    fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"x")
    os.close(fd)
    if os.getpid() != parent:
        made = os.path.getsize(calls)
        for flag, n in flags:
            if made > n:
                try:
                    os.remove(flag)
                except FileNotFoundError:
                    continue
                os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.001)  # the other worker is busy meanwhile
    return float(np.sum(np.tanh(A @ theta)))


def _killing_args(tmp_path, *after):
    flags = []
    for k, n in enumerate(after):
        flag = tmp_path / f"kill{k}"
        flag.touch()
        flags.append((str(flag), n))
    return (A, str(tmp_path / "calls"), tuple(flags), os.getpid())


def _calls(args) -> int:
    return os.path.getsize(args[1])


def _assert_counted(report, args, kills):
    """report.evaluations is every call the engine started. A call is counted when it starts:
    after a kill the pool may stop the other worker between that and the loss's first line, so
    the loss's own count can be short by one per kill, never over."""
    assert _calls(args) <= report.evaluations <= _calls(args) + kills


def _fingerprint(report):
    return (report.status, [(c.index, c.verdict) for c in report.coords])


@pytest.fixture(scope="module")
def serial_reports():
    return {name: fg.check(tanh_loss, THETA, g, segments=SEGMENTS, samples="all",
                           backend="serial") for name, g in (("right", GRAD), ("wrong", WRONG))}


@pytest.mark.parametrize("gradient", ["right", "wrong"])
def test_a_worker_killed_mid_check_gives_the_serial_verdict_and_the_next_check_works(
        tmp_path, serial_reports, gradient):
    g = GRAD if gradient == "right" else WRONG
    args = _killing_args(tmp_path, 40)
    report = fg.check(killing_loss, THETA, g, args=args, segments=SEGMENTS, samples="all",
                      backend="processes", workers=2)
    assert not os.path.exists(args[2][0][0]), "no worker was killed"
    assert _fingerprint(report) == _fingerprint(serial_reports[gradient])
    assert "a worker process died (signal 9); " in report.path_reason
    assert "evaluations re-run on a fresh pool" in report.path_reason
    # every call counts, the killed worker's included (its calls were made)
    _assert_counted(report, args, kills=1)
    # the broken pool was not kept: the next check runs on a working one
    again = fg.check(tanh_loss, THETA, g, segments=SEGMENTS, samples="all",
                     backend="processes", workers=2)
    assert _fingerprint(again) == _fingerprint(serial_reports[gradient])
    assert "died" not in again.path_reason


def test_a_worker_killed_between_checks_is_not_reused(serial_reports):
    fg.check(tanh_loss, THETA, GRAD, segments=SEGMENTS, samples=4, backend="processes",
             workers=2)
    pool = processes.process_pool(2)
    victim = next(iter(pool._processes))  # both executors keep {pid: process}
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not processes._broken(pool):
        time.sleep(0.05)
    report = fg.check(tanh_loss, THETA, WRONG, segments=SEGMENTS, samples="all",
                      backend="processes", workers=2)
    assert _fingerprint(report) == _fingerprint(serial_reports["wrong"])
    assert processes.process_pool(2) is not pool


def test_when_the_fresh_pool_breaks_too_the_rest_runs_in_this_process(tmp_path,
                                                                     serial_reports):
    args = _killing_args(tmp_path, 30, 45)
    report = fg.check(killing_loss, THETA, WRONG, args=args, segments=SEGMENTS, samples="all",
                      backend="processes", workers=2)
    assert not any(os.path.exists(flag) for flag, _ in args[2])
    assert _fingerprint(report) == _fingerprint(serial_reports["wrong"])
    assert "re-run on a fresh pool" in report.path_reason
    # the second kill lands in the fresh pool, or (when the first pool's other worker reaches
    # call 45 before it dies) in the first one: either way every evaluation ran and was counted
    assert ("run in this process (a fresh pool broke too)" in report.path_reason
            or "a worker process died" in report.path_reason)
    _assert_counted(report, args, kills=2)
    assert fg.check(tanh_loss, THETA, WRONG, segments=SEGMENTS, samples="all",
                    backend="processes", workers=2).status == "failed"


def test_a_worker_killed_mid_audit_gives_the_serial_audit(tmp_path):
    serial = fg.audit(tanh_loss, THETA, WRONG, segments=SEGMENTS, backend="serial")
    args = _killing_args(tmp_path, 50)
    report = fg.audit(killing_loss, THETA, WRONG, args=args, segments=SEGMENTS,
                      backend="processes", workers=2)
    assert not os.path.exists(args[2][0][0])
    assert (report.status, report.suspects.tolist()) == (serial.status, serial.suspects.tolist())
    assert "a worker process died (signal 9)" in report.path_reason
    _assert_counted(report, args, kills=1)


@pytest.mark.slow
def test_a_dask_worker_killed_mid_audit_gives_the_same_audit(tmp_path):
    distributed = pytest.importorskip("distributed")
    serial = fg.audit(tanh_loss, THETA, WRONG, segments=SEGMENTS, backend="serial")
    args = _killing_args(tmp_path, 50)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        report = fg.audit(killing_loss, THETA, WRONG, args=args, segments=SEGMENTS,
                          executor=client)
    assert not os.path.exists(args[2][0][0]), "no Dask worker was killed"
    assert (report.status, report.suspects.tolist()) == (serial.status, serial.suspects.tolist())
    assert [(d.start, d.stop, d.significant) for d in report.directions] == \
        [(d.start, d.stop, d.significant) for d in serial.directions]


# -- timeout= ---------------------------------------------------------------------------------------
def hanging_loss(theta, A, index, seconds):
    """Sleeps ``seconds`` at theta + h e_index (the + side of one coordinate) only."""
    if theta[index] > THETA[index] + 1e-9:
        time.sleep(seconds)
    return float(np.sum(np.tanh(A @ theta)))


@pytest.mark.parametrize("backend", ["serial", "threads", "processes"])
def test_a_loss_past_the_timeout_raises_naming_the_coordinate_at_the_deadline(backend):
    start = time.monotonic()
    with pytest.raises(LossTimeout) as caught:
        fg.check(hanging_loss, THETA, GRAD, args=(A, 37, 30.0), segments=SEGMENTS,
                 samples="all", backend=backend, workers=2, timeout=0.5)
    waited = time.monotonic() - start
    # the check ended at the deadline, not when the 30 s loss returned (the speed of that
    # ending belongs to benchmarks: on a loaded VM it was 0.51-0.87 s)
    assert waited < 30.0, f"raised after {waited:.1f} s: the check waited for the loss"
    assert str(caught.value) == ("f took more than 0.5 s at b[7] (flat index 37): the loss "
                                 "hangs or is slower than timeout=0.5")
    assert caught.value.index == 37 and isinstance(caught.value, LossError)
    # nothing stuck is reused: the next check (with a timeout, too) works at once
    start = time.monotonic()
    report = fg.check(tanh_loss, THETA, GRAD, segments=SEGMENTS, samples="all",
                      backend=backend, workers=2, timeout=0.5)
    # not blocked behind the stuck 30 s evaluation
    assert report.passed and time.monotonic() - start < 30.0


def test_an_audit_past_the_timeout_raises_naming_the_direction():
    with pytest.raises(LossTimeout, match=r"f took more than 0.3 s at a random direction on "
                                          r"theta\[\d+:\d+\]"):
        fg.audit(hanging_loss, THETA, GRAD, args=(A, 0, 30.0), segments=SEGMENTS,
                 backend="serial", timeout=0.3)


def slow_everywhere(theta, A, seconds):
    time.sleep(seconds)
    return float(np.sum(np.tanh(A @ theta)))


def test_a_timeout_that_every_evaluation_keeps_changes_nothing():
    plain = fg.check(tanh_loss, THETA, WRONG, segments=SEGMENTS, samples=8, backend="serial")
    for backend in ("serial", "threads", "processes"):
        timed = fg.check(slow_everywhere, THETA, WRONG, args=(A, 0.0), segments=SEGMENTS,
                         samples=8, backend=backend, workers=2, timeout=5.0)
        assert _fingerprint(timed) == _fingerprint(plain)
        if backend != "threads":  # threads add the thread-safety guard's serial re-runs
            assert timed.evaluations == plain.evaluations


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_a_bad_timeout_value_is_refused_naming_the_argument(bad):
    with pytest.raises(InvalidValue, match="timeout: expected seconds per evaluation"):
        fg.check(tanh_loss, THETA, GRAD, timeout=bad)
    with pytest.raises(InvalidValue, match="timeout:"):
        fg.audit(tanh_loss, THETA, GRAD, timeout=bad)


@pytest.mark.parametrize("bad", ["2", True, [1.0]])
def test_a_timeout_of_the_wrong_type_is_refused_naming_the_argument(bad):
    with pytest.raises(InvalidType, match="timeout: expected seconds per evaluation"):
        fg.check(tanh_loss, THETA, GRAD, timeout=bad)


def test_a_timeout_with_an_executor_is_refused_saying_why():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool, pytest.raises(InvalidValue, match="executor="):
        fg.check(tanh_loss, THETA, GRAD, executor=pool, timeout=1.0)


def test_the_command_line_takes_timeout(tmp_path, monkeypatch, capsys):
    (tmp_path / "hangs.py").write_text(textwrap.dedent("""
        import time
        import numpy as np
        import fastgrad as fg

        def problem():
            def f(theta):
                if theta[2] > 1e-9:
                    time.sleep(30)
                return float(theta @ theta)
            return fg.Problem(f, np.zeros(4), np.zeros(4), options={"samples": "all"})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    assert main(["check", "hangs:problem", "--timeout", "0.5", "--workers", "1"]) == 2
    assert time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert "f took more than 0.5 s at theta[2] (flat index 2)" in err
    assert main(["check", "hangs:problem", "--timeout", "-1"]) == 2
    assert "timeout: expected seconds per evaluation" in capsys.readouterr().err


# -- Ctrl-C ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["processes", "threads"])
def test_ctrl_c_during_a_check_raises_promptly_and_leaves_nothing_broken(backend):
    # SIGINT as the terminal sends it: KeyboardInterrupt in the main thread, mid-evaluation
    timer = threading.Timer(0.7, _thread.interrupt_main)
    timer.start()
    start = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            fg.check(slow_everywhere, THETA, GRAD, args=(A, 0.05), segments=SEGMENTS,
                     samples="all", backend=backend, workers=2, timeout=10.0)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 0.7 + 1.5
    if backend == "processes":
        assert not processes.pool_alive(1)  # the workers were stopped with the check
    report = fg.check(tanh_loss, THETA, GRAD, segments=SEGMENTS, samples="all",
                      backend=backend, workers=2)
    assert report.passed
