"""Fork-join (engine/forked.py): a batch shared by this process and forked copies of it, the
default for a GIL-bound numpy loss. Its values are bitwise the serial ones, a planted bug is
caught in its segment and kinks give no false alarm, every call is counted, and a child that
raises, dies, stalls, or is interrupted loses nothing and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.engine import forked
from fastgrad.engine.evaluator import Evaluator
from fastgrad.errors import LossError
from fastgrad.examples import two_layer_data, two_layer_grad, two_layer_loss


@pytest.fixture(autouse=True)
def can_fork(request):
    """The cases need a process that may fork (no torch or jax loaded, no thread running a
    loss): in a suite where this one may not, the last test runs this file again in a fresh
    interpreter."""
    fresh = request.node.name == "test_the_cases_in_an_interpreter_without_torch_or_jax"
    if not hasattr(os, "fork"):
        pytest.skip("fork-join needs os.fork (Linux, macOS)")
    if fresh == forked.fork_join_possible():
        pytest.skip("the cases ran in this process" if fresh else
                    "this process may not fork now (torch or jax loaded, or another thread "
                    "running): the cases run in a fresh interpreter")

_rng = np.random.default_rng(5)
A = _rng.standard_normal((40, 60))
THETA = _rng.standard_normal(60) * 0.05
GRAD = A.T @ (1 - np.tanh(A @ THETA) ** 2)
SEGMENTS = {"W": (6, 5), "b": (30,)}
PARENT = os.getpid()


@pytest.fixture
def always_fork(monkeypatch):
    """Fork for every batch, however short (the tests' losses take microseconds)."""
    monkeypatch.setattr(forked, "FORK_PAYBACK", 0.0)


def tanh_loss(theta, A):
    return float(np.sum(np.tanh(A @ theta)))


def slow_tanh_loss(theta, A):
    """tanh_loss taking a millisecond: a child forked after a few of them still finds work."""
    time.sleep(0.001)
    return tanh_loss(theta, A)


def counted_loss(theta, A, calls):
    """tanh_loss that counts every call, in whichever process, in the file ``calls``."""
    fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"x")
    os.close(fd)
    return slow_tanh_loss(theta, A)


def _fingerprint(report):
    return report.status, [(c.index, c.verdict) for c in report.coords]


def test_forked_values_are_bitwise_the_serial_ones(always_fork):
    index = np.arange(60, dtype=np.int64)
    step = np.full(60, 1e-5)
    fork = Evaluator(slow_tanh_loss, THETA, (A,), backend="forked", workers=2)
    serial = Evaluator(tanh_loss, THETA, (A,), backend="serial")
    fp, fm = fork.pairs(index, step)
    sp, sm = serial.pairs(index, step)
    assert np.array_equal(fp, sp) and np.array_equal(fm, sm)
    key = np.arange(1, 41, dtype=np.uint64)
    lo, hi = np.zeros(40, dtype=np.int64), np.full(40, 60, dtype=np.int64)
    step = np.full(40, 1e-4)
    fp, fm = fork.directions(key, lo, hi, step)
    sp, sm = serial.directions(key, lo, hi, step)
    assert np.array_equal(fp, sp) and np.array_equal(fm, sm)
    assert fork.evaluations == serial.evaluations == 2 * 60 + 2 * 40
    assert fork.path == "forked"


def test_the_default_forks_a_numpy_net_and_catches_its_planted_bug_in_its_segment():
    # the numpy two-layer net (ReLU kinks, a hinge-free softmax) is GIL-bound: the planner
    # shares its batch with a forked copy of this process, nothing measured first
    theta, segs, args = two_layer_data()
    right = fg.check(two_layer_loss, theta, two_layer_grad(theta, *args), args=args,
                     segments=segs, samples=600)
    assert right.path == "forked", right.path_reason
    assert right.passed, str(right)
    for bug, where in (("bias", {"b1"}), ("transpose", {"W1"})):
        wrong = fg.check(two_layer_loss, theta, two_layer_grad(theta, *args, bug=bug),
                         args=args, segments=segs, samples=600)
        assert wrong.path == "forked"
        assert not wrong.passed and {c.segment for c in wrong.failures} == where, str(wrong)
        serial = fg.check(two_layer_loss, theta, two_layer_grad(theta, *args, bug=bug),
                          args=args, segments=segs, samples=600, backend="serial")
        assert _fingerprint(wrong) == _fingerprint(serial)


def test_every_call_in_every_process_is_counted(always_fork, tmp_path):
    calls = str(tmp_path / "calls")
    report = fg.check(counted_loss, THETA, GRAD, args=(A, calls), segments=SEGMENTS,
                      samples="all", backend="forked", workers=2)
    assert report.path == "forked" and report.passed
    assert report.evaluations == os.path.getsize(calls)
    audit = fg.audit(counted_loss, THETA, GRAD, args=(A, calls), segments=SEGMENTS,
                     backend="forked", workers=2)
    assert audit.evaluations + report.evaluations == os.path.getsize(calls)


def killed_in_a_child(theta, A, flag):
    """tanh_loss; in a forked child, the first call after ``flag`` is seen kills the child."""
    if os.getpid() != PARENT:
        try:
            os.remove(flag)
        except FileNotFoundError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    return slow_tanh_loss(theta, A)


def test_a_child_killed_mid_batch_gives_the_serial_verdict(always_fork, tmp_path):
    flag = tmp_path / "kill"
    flag.touch()
    serial = fg.check(tanh_loss, THETA, GRAD, args=(A,), segments=SEGMENTS, samples="all",
                      backend="serial")
    report = fg.check(killed_in_a_child, THETA, GRAD, args=(A, str(flag)), segments=SEGMENTS,
                      samples="all", backend="forked", workers=2)
    assert not flag.exists(), "no child was killed"
    assert _fingerprint(report) == _fingerprint(serial)
    assert "a forked worker died (signal 9)" in report.path_reason
    assert "evaluations a forked worker left were run in this process" in report.path_reason
    again = fg.check(tanh_loss, THETA, GRAD, args=(A,), segments=SEGMENTS, samples="all",
                     backend="forked", workers=2)
    assert "died" not in again.path_reason and _fingerprint(again) == _fingerprint(serial)


def raises_at_17(theta, A):
    if theta[17] != THETA[17]:
        raise FloatingPointError("solver diverged")
    return tanh_loss(theta, A)


def test_a_loss_that_raises_names_the_coordinate_with_its_own_traceback(always_fork):
    with pytest.raises(LossError, match=r"theta\[17\].*FloatingPointError: solver diverged") \
            as info:
        fg.check(raises_at_17, THETA, GRAD, args=(A,), samples="all", backend="forked",
                 workers=2)
    assert info.value.index == 17
    # raised again in this process: the cause is the loss's own exception, with its frame
    cause = info.value.__cause__
    assert isinstance(cause, FloatingPointError)
    frames = []
    tb = cause.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "raises_at_17" in frames


def raises_in_a_child(theta, A):
    if os.getpid() != PARENT:
        raise RuntimeError("only in the child")
    return slow_tanh_loss(theta, A)


def test_a_loss_that_raises_only_in_a_child_is_finished_here_and_said(always_fork):
    serial = fg.check(tanh_loss, THETA, GRAD, args=(A,), segments=SEGMENTS, samples="all",
                      backend="serial")
    report = fg.check(raises_in_a_child, THETA, GRAD, args=(A,), segments=SEGMENTS,
                      samples="all", backend="forked", workers=2)
    assert _fingerprint(report) == _fingerprint(serial)
    assert "f raised in a forked worker but not when evaluated again in this process" in \
        report.path_reason


def stalls_in_a_child(theta, A):
    if os.getpid() != PARENT:
        time.sleep(60)  # a lock copied held at the fork would look like this
    return slow_tanh_loss(theta, A)


def test_a_stalled_child_is_stopped_and_its_work_done_here(always_fork, monkeypatch):
    monkeypatch.setattr(forked, "STALL_SECONDS", 0.3)
    serial = fg.check(tanh_loss, THETA, GRAD, args=(A,), segments=SEGMENTS, samples="all",
                      backend="serial")
    report = fg.check(stalls_in_a_child, THETA, GRAD, args=(A,), segments=SEGMENTS,
                      samples="all", backend="forked", workers=2)
    # stopped, not awaited: its 60 s sleep did not end the wait
    assert "a forked worker finished nothing for" in report.path_reason
    assert _fingerprint(report) == _fingerprint(serial)


def slow_with_pid(theta, A, pids):
    fd = os.open(pids, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    time.sleep(0.05)
    return tanh_loss(theta, A)


def test_ctrl_c_kills_the_children_and_the_next_check_works(always_fork, tmp_path):
    pids = tmp_path / "pids"

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)  # a timer: no thread of its own
    signal.setitimer(signal.ITIMER_REAL, 0.4)
    try:
        with pytest.raises(KeyboardInterrupt):
            fg.check(slow_with_pid, THETA, GRAD, args=(A, str(pids)), samples="all",
                     backend="forked", workers=2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    calls = pids.read_text().split()
    assert len(calls) < 2 + 2 * THETA.size, "the interrupt did not end the check early"
    children = {int(p) for p in calls} - {os.getpid()}
    assert children, "no child ran"
    time.sleep(0.2)
    assert pids.read_text().split() == calls, "a child went on evaluating after Ctrl-C"
    forked._reap_exited()  # a child of an earlier batch that finished its work exits alone
    for pid in children:  # killed and reaped: no such process
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert fg.check(tanh_loss, THETA, GRAD, args=(A,), samples="all", backend="forked",
                    workers=2).passed


def test_a_program_that_ignores_sigchld_still_gets_every_value(always_fork, tmp_path):
    # SIGCHLD ignored: the kernel reaps the children itself, and waitpid finds none
    flag = tmp_path / "kill"
    flag.touch()
    serial = fg.check(tanh_loss, THETA, GRAD, args=(A,), segments=SEGMENTS, samples="all",
                      backend="serial")
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        report = fg.check(slow_tanh_loss, THETA, GRAD, args=(A,), segments=SEGMENTS,
                          samples="all", backend="forked", workers=2)
        killed = fg.check(killed_in_a_child, THETA, GRAD, args=(A, str(flag)),
                          segments=SEGMENTS, samples="all", backend="forked", workers=2)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert _fingerprint(report) == _fingerprint(serial) == _fingerprint(killed)
    assert not flag.exists(), "no child was killed"


def test_what_was_printed_before_the_fork_is_printed_once(always_fork, capfd):
    print("before the check", end="")  # still in this process's buffer
    fg.check(tanh_loss, THETA, GRAD, args=(A,), samples="all", backend="forked", workers=2)
    print()
    assert capfd.readouterr().out.count("before the check") == 1


def test_no_fork_while_another_thread_of_the_program_runs():
    theta, segs, args = two_layer_data()
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        report = fg.check(two_layer_loss, theta, two_layer_grad(theta, *args), args=args,
                          segments=segs, samples=600)
        forced = fg.check(slow_tanh_loss, THETA, GRAD, args=(A,), samples="all",
                          backend="forked", workers=2)
    finally:
        release.set()
        other.join()
    assert report.path != "forked" and report.passed
    assert "not forked: another thread of this program is running" in forced.path_reason
    assert forced.passed


def test_the_cases_in_an_interpreter_without_torch_or_jax():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           __file__], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "11 passed, 1 skipped" in done.stdout, done.stdout[-2000:]
