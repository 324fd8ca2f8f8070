"""``report.evaluations`` is every call of the loss the check made, on every backend: the
thread-safety guard's serial re-runs, the noise probes and the re-checks included; an audit's
``budget=`` bounds all of them."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import fastgrad as fg

_rng = np.random.default_rng(3)
A = _rng.standard_normal((200, 300))
THETA = _rng.standard_normal(300) * 0.05
GRAD = A.T @ (1 - np.tanh(A @ THETA) ** 2)
WRONG = GRAD.copy()
WRONG[17] *= 1.01
SEGMENTS = {"W": (20, 10), "b": (100,)}


def counted_loss(theta, A, calls):
    """A tanh loss that appends one byte to the file ``calls`` per call: an atomic append, so
    the file's size counts the calls from every thread and every worker process."""
    fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
    return float(np.sum(np.tanh(A @ theta)))


class ScratchModel:
    """Not thread-safe (a scratch buffer on self), and counted as counted_loss is."""

    def __init__(self, calls):
        self.calls, self.out = calls, np.empty(A.shape[0])

    def loss(self, theta):
        counted_loss(theta[:0], A[:, :0], self.calls)  # the count only
        np.dot(A, theta, out=self.out)
        time.sleep(2e-4)  # another thread's call overwrites self.out meanwhile
        return float(np.sum(np.tanh(self.out)))


def _run(method, f, g, calls, **options):
    if method == "check":
        options.setdefault("samples", 40)
        return fg.check(f, THETA, g, segments=SEGMENTS, **options)
    return fg.audit(f, THETA, g, segments=SEGMENTS, **options)


@pytest.mark.parametrize("backend", ["serial", "threads", "processes", None])
@pytest.mark.parametrize("method", ["check", "audit"])
@pytest.mark.parametrize("gradient", ["right", "wrong"])
def test_evaluations_are_the_calls_of_the_loss(tmp_path, backend, method, gradient):
    calls = str(tmp_path / "calls")
    report = _run(method, counted_loss, GRAD if gradient == "right" else WRONG, calls,
                  args=(A, calls), backend=backend, workers=2)
    assert report.status == ("passed" if gradient == "right" else "failed")
    assert report.evaluations == os.path.getsize(calls)
    if method == "audit":
        assert sum(report.phases.values()) == report.evaluations


@pytest.mark.parametrize("method", ["check", "audit"])
def test_a_loss_refused_threads_counts_the_guard_and_the_serial_rerun(tmp_path, method):
    calls = str(tmp_path / "calls")
    report = _run(method, ScratchModel(calls).loss, WRONG, calls, workers=2,
                  backend="threads")
    assert report.status == "failed"
    assert "threads refused" in report.path_reason
    assert report.evaluations == os.path.getsize(calls)


def test_the_header_says_how_many_evaluations_were_the_guards(tmp_path):
    calls = str(tmp_path / "calls")
    report = _run("check", counted_loss, GRAD, calls, args=(A, calls), backend="threads",
                  workers=2, samples="all")
    assert report.evaluations == os.path.getsize(calls)
    assert "of the evaluations were the thread-safety guard's serial re-runs" in str(report)


@pytest.mark.parametrize("backend", ["serial", "threads", "processes"])
def test_an_audit_never_calls_the_loss_more_than_its_budget(tmp_path, backend):
    calls = str(tmp_path / "calls")
    for budget in (4, 30, 41, 60, 77, 100):
        if os.path.exists(calls):
            os.remove(calls)
        report = _run("audit", counted_loss, WRONG, calls, args=(A, calls), backend=backend,
                      workers=2, budget=budget)
        made = os.path.getsize(calls)
        assert report.evaluations == made <= budget, (budget, report.phases)


@pytest.mark.slow
def test_evaluations_are_the_calls_of_the_loss_on_dask(tmp_path):
    distributed = pytest.importorskip("distributed")
    calls = str(tmp_path / "calls")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        for method in ("check", "audit"):
            if os.path.exists(calls):
                os.remove(calls)
            report = _run(method, counted_loss, WRONG, calls, args=(A, calls), executor=client)
            assert report.status == "failed"
            assert report.evaluations == os.path.getsize(calls)
