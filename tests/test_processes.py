"""The process backend: closures, lambdas and bound methods are shipped once per check; the values
are bitwise those of a serial evaluation; what cannot be pickled, a loss that raises in a worker
and Ctrl-C get clear outcomes; a forked child can run checks."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.engine import processes

rng = np.random.default_rng(11)
A = rng.standard_normal((40, 30))
X = rng.standard_normal(30 * 4)


def numerics(report):
    return [c.numeric for c in report.coords]


class Model:
    """A model whose loss is a bound method (the state lives on the object)."""

    def __init__(self, A):
        self.A = A

    def loss(self, theta):
        return float(np.sum(np.log(np.cosh(self.A @ theta.reshape(self.A.shape[1], -1)))))

    def grad(self, theta):
        W = theta.reshape(self.A.shape[1], -1)
        return (self.A.T @ np.tanh(self.A @ W)).ravel()


def test_closures_lambdas_and_bound_methods_give_the_serial_values():
    scale = 0.5

    def closure(theta):  # captures A and scale
        return scale * float(np.sum(np.sin(A @ theta.reshape(30, -1))))

    def closure_grad(theta):
        return scale * (A.T @ np.cos(A @ theta.reshape(30, -1))).ravel()

    model = Model(A)
    cases = [(closure, closure_grad(X)),
             (lambda t: float(np.sum(t ** 3)), 3 * X ** 2),
             (model.loss, model.grad(X))]
    for f, grad in cases:
        serial = fg.check(f, X, grad, samples="all", backend="serial")
        report = fg.check(f, X, grad, samples="all", backend="processes", workers=2)
        assert report.path == "processes" and serial.path == "serial"
        assert report.passed and serial.passed
        assert numerics(report) == numerics(serial)  # bit for bit
        assert report.evaluations == serial.evaluations
    # one worker process: still a process, still the serial values
    one = fg.check(closure, X, closure_grad(X), samples="all", backend="processes", workers=1)
    serial = fg.check(closure, X, closure_grad(X), samples="all", backend="serial")
    assert one.path == "processes" and numerics(one) == numerics(serial)


def test_a_planted_bug_fails_in_its_block_on_processes():
    model = Model(A)
    segs = {"W": (30, 3), "last": (30,)}
    grad = model.grad(X)
    grad[95] *= 1.5
    report = fg.check(model.loss, X, grad, segments=segs, samples="all", backend="processes",
                      workers=2)
    assert [c.index for c in report.failures] == [95] and not report.segments["last"].passed
    audit = fg.audit(model.loss, X, grad, segments=segs, backend="processes", workers=2)
    assert audit.path == "processes" and audit.suspects.tolist() == [95]


def test_an_unpicklable_loss_is_refused_naming_what_and_the_fixes():
    lock = threading.Lock()

    def locked(theta):
        with lock:
            return float(np.sum(theta ** 2))

    with pytest.raises(fg.errors.InvalidType) as caught:
        fg.check(locked, X, 2 * X, backend="processes", workers=2)
    message = str(caught.value)
    assert "closure variable 'lock'" in message and "lock" in message
    assert "backend='threads'" in message and "workers=1" in message
    # threads and serial still check it
    assert fg.check(locked, X, 2 * X, backend="threads", workers=2).passed


def test_a_loss_the_workers_cannot_import_is_refused_naming_why_and_the_fixes(monkeypatch):
    # a class in a module that exists only in this process (a script run with runpy, a module
    # made at run time): cloudpickle sends it by reference, and loky's workers (fork+exec, as
    # when torch is loaded) cannot import it
    processes.stop_pool()
    monkeypatch.setattr(processes, "FORK", False)
    module = types.ModuleType("made_at_run_time")
    module.__file__ = "/nonexistent/made_at_run_time.py"  # as runpy.run_path sets it
    exec(textwrap.dedent("""
        import time
        import numpy as np

        class Model:
            def loss(self, theta):
                time.sleep(1e-3)  # batches long enough to go to the workers
                return float(np.sum(theta ** 2))
        """), module.__dict__)
    sys.modules[module.__name__] = module
    try:
        with pytest.raises(fg.errors.InvalidType) as caught:
            fg.check(module.Model().loss, X, 2 * X, backend="processes", workers=2)
        message = str(caught.value)
        assert "cannot be loaded in the worker processes" in message
        assert "made_at_run_time" in message
        assert "backend='threads'" in message and "workers=1" in message
        # the pool is still usable, and the other backends check it
        assert fg.check(lambda t: float(np.sum(t ** 2)), X, 2 * X, backend="processes",
                        workers=2).passed
        assert fg.check(module.Model().loss, X, 2 * X, backend="threads", workers=2).passed
    finally:
        del sys.modules[module.__name__]
        processes.stop_pool()  # later tests start their own (forked) pool


def test_a_loss_raising_in_a_worker_names_the_coordinate():
    def fragile(theta):
        if theta[37] > X[37]:
            raise ValueError("outside the domain")
        return float(np.sum(theta ** 2))

    with pytest.raises(fg.LossError, match=r"theta\[37\] \(flat index 37\): ValueError: "
                                           r"outside the domain") as caught:
        fg.check(fragile, X, 2 * X, samples="all", backend="processes", workers=2)
    assert caught.value.index == 37
    # the serial backend says the same
    with pytest.raises(fg.LossError, match=r"theta\[37\] \(flat index 37\): ValueError"):
        fg.check(fragile, X, 2 * X, samples="all", backend="serial")


def test_bad_backend_values_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match="backend"):
        fg.check(lambda t: float(np.sum(t * t)), X, 2 * X, backend="gpu")
    with pytest.raises(ValueError, match="backend: 'kernel'"):
        fg.check(lambda t: {"a": float(np.sum(t * t))}, X, {"a": 2 * X}, backend="kernel")


def _check_in_forked_child(queue):
    report = fg.check(lambda t: float(np.sum(np.sin(t))), X, np.cos(X), samples="all",
                      backend="processes", workers=2)
    queue.put((report.passed, report.path))


def test_a_forked_child_of_a_process_that_ran_checks_can_run_checks():
    first = fg.check(lambda t: float(np.sum(np.sin(t))), X, np.cos(X), backend="processes",
                     workers=2)
    assert first.path == "processes" and processes.pool_alive(2)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_check_in_forked_child, args=(queue,))
    child.start()
    try:
        assert queue.get(timeout=120) == (True, "processes")
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0


_SLOW_CHECK = textwrap.dedent("""
    import time, numpy as np, fastgrad as fg

    def slow(theta):
        time.sleep(0.02)
        return float(np.sum(theta ** 2))

    x = np.linspace(-1.0, 1.0, 2000)
    fg.check(slow, x, 2 * x, samples="all", backend="processes", workers=2)
""")


def _descendants(pid: int) -> set[int]:
    """Every process below pid, from /proc (children of children too)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task") if os.path.isdir(f"/proc/{parent}") else ():
            try:
                with open(f"/proc/{parent}/task/{task}/children") as fh:
                    kids = {int(k) for k in fh.read().split()}
            except OSError:
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads /proc")
def test_ctrl_c_during_a_process_check_leaves_no_worker_running():
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_CHECK], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    workers: set[int] = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(workers) < 2 and proc.poll() is None:
        time.sleep(0.2)
        workers = {p for p in _descendants(proc.pid) if b"resource_tracker" not in _cmdline(p)}
    assert len(workers) >= 2, "the worker processes never started"
    time.sleep(1.0)  # the check is now evaluating in the workers
    everything = _descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in everything):
        time.sleep(0.2)
    assert not [p for p in everything if _alive(p)]
