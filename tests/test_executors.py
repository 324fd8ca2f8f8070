"""The same audit (and check) serially, with threads, the JIT kernel, a ProcessPoolExecutor and a
dask LocalCluster; theta goes to each worker once, not with every task."""

import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from fastgrad import audit, check
from fastgrad.engine.evaluator import Evaluator
from fastgrad.examples.problems import (
    weighted_logcosh,
    weighted_logcosh_data,
    weighted_logcosh_grad,
)
from fastgrad.examples.problems import weighted_logcosh_jit as separable_loss_jit

N = 1_000_000
_rng = np.random.default_rng(7)
A, C, THETA = weighted_logcosh_data(N, _rng)
GRAD = weighted_logcosh_grad(THETA, A, C)
SCALE = float(np.sqrt(np.mean(GRAD ** 2)))
PLANTED = np.sort(_rng.choice(N, size=3, replace=False))
WRONG = GRAD.copy()
WRONG[PLANTED] += 0.01 * SCALE * np.array([1.0, -1.0, 1.0])


def separable_loss(theta):
    return weighted_logcosh(theta, A, C)


def set_apart(report) -> int:
    """The evaluations the path line sets apart (0: none): the thread-safety guard's serial
    re-runs, and a second timing of f at theta when its first was read as a cold call."""
    found = re.search(r"(\d+) of the evaluations were the thread-safety guard", report.path_reason)
    return (int(found.group(1)) if found else 0) + ("f timed twice at theta" in report.path_reason)


def fingerprint(report):
    """What must not depend on who evaluated: the verdict, the suspects, the work done (every
    call of f is counted: the guard's serial re-runs on threads are set apart here)."""
    return (report.passed, report.suspects.tolist(), report.evaluations - set_apart(report),
            [(d.start, d.stop, d.significant) for d in report.directions])


@pytest.fixture(scope="module")
def serial():
    return audit(separable_loss, THETA, WRONG, workers=1)


@pytest.fixture(scope="module")
def process_pool():
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("fork")) as ex:
        yield ex


def test_serial_finds_the_planted_coordinates(serial):
    np.testing.assert_array_equal(serial.suspects, PLANTED)
    assert serial.path == "serial"


def test_threads_same_as_serial(serial):
    threads = audit(separable_loss, THETA, WRONG, workers=2)
    assert threads.path == "threads"
    assert fingerprint(threads) == fingerprint(serial)
    # the same losses, bit for bit: every path perturbs its own copy the same way
    assert [d.numeric for d in threads.directions] == [d.numeric for d in serial.directions]


@pytest.mark.slow
def test_jit_kernel_same_suspects(serial):
    report = audit(separable_loss_jit, THETA, WRONG, args=(A, C), workers=2)
    assert report.path == "jit"
    np.testing.assert_array_equal(report.suspects, serial.suspects)
    assert report.evaluations <= 40 * 3 * np.log2(N)


@pytest.mark.slow
def test_process_pool_same_as_serial(serial, process_pool):
    report = audit(separable_loss, THETA, WRONG, executor=process_pool)
    assert report.path == "executor"
    assert fingerprint(report) == fingerprint(serial)
    assert [d.numeric for d in report.directions] == [d.numeric for d in serial.directions]


def test_process_pool_ships_theta_once_per_worker(process_pool):
    x = THETA[:50_000].copy()
    f = separable_small
    ev = Evaluator(f, x, executor=process_pool, workers=2)
    index = np.arange(0, 50_000, 997)
    step = np.full(index.size, 1e-5)
    first = ev.pairs(index, step)
    for _ in range(3):
        again = ev.pairs(index, step)
        np.testing.assert_array_equal(again[0], first[0])
    assert ev.executor_width == 2
    # one copy rides with each of the first `width` tasks; later tasks and calls send none
    assert 1 <= ev.shipments <= 2 + 2
    serial = Evaluator(f, x, workers=1).pairs(index, step)
    np.testing.assert_array_equal(first[0], serial[0])
    np.testing.assert_array_equal(first[1], serial[1])


def separable_small(theta):
    return float(np.sum(A[: theta.size] * np.log(np.cosh(theta)) + C[: theta.size] * theta))


def test_check_with_a_process_pool_same_as_serial(process_pool):
    x = THETA[:50_000].copy()
    g = A[:50_000] * np.tanh(x) + C[:50_000]
    g[123] += 0.1
    kwargs = dict(samples="all")
    a = check(separable_small, x[:2000], g[:2000], workers=1, **kwargs)
    b = check(separable_small, x[:2000], g[:2000], executor=process_pool, **kwargs)
    assert b.path == "executor"
    assert [c.index for c in b.failures] == [c.index for c in a.failures] == [123]
    assert [c.numeric for c in b.coords] == [c.numeric for c in a.coords]


@pytest.mark.slow
def test_dask_local_cluster_same_as_serial(serial):
    distributed = pytest.importorskip(
        "distributed", reason='the Dask executor test needs dask.distributed: pip install -e ".[test,dask]"')
    # processes=False: the worker runs in this process, its comms are in-process (loopback)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        executor = client  # the Client itself: theta scattered once to every worker
        report = audit(separable_loss, THETA, WRONG, executor=executor)
        assert report.path == "executor"
        assert fingerprint(report) == fingerprint(serial)
        assert [d.numeric for d in report.directions] == [d.numeric for d in serial.directions]
        # theta is scattered once to every worker, never attached to a task
        ev = Evaluator(separable_small, THETA[:50_000].copy(), executor=executor)
        index = np.arange(0, 50_000, 997)
        ev.pairs(index, np.full(index.size, 1e-5))
        ev.pairs(index, np.full(index.size, 1e-5))
        assert ev.shipments == 1
        assert ev.executor_width == 2
