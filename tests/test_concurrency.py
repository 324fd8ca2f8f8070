"""Checks and audits running at once in several threads: each gives exactly the verdict it gives
alone, and nothing they touch process-wide (BLAS threads, sys.unraisablehook) stays changed."""

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import threadpoolctl
from numba import njit

import fastgrad as fg
from fastgrad.examples import two_layer_data, two_layer_grad, two_layer_loss, two_layer_loss_jit

DATA = two_layer_data()  # N=16, D=H=64, C=10: a numpy and a Numba version of the same loss


def _blas_threads():
    """BLAS thread count per loaded library (Numba's np.dot can load scipy's own BLAS)."""
    return {d["filepath"]: d["num_threads"] for d in threadpoolctl.threadpool_info()
            if d["user_api"] == "blas"}


def _separable(x):
    return float(np.sum(np.log(np.cosh(x)) + 0.1 * x * x))


def _separable_grad(x):
    return np.tanh(x) + 0.2 * x


def _outcome(report):
    """What must not depend on what else runs: the verdict and where it failed."""
    if isinstance(report, fg.AuditReport):
        return report.passed, report.suspects.tolist()
    return report.passed, sorted(name for name, s in report.segments.items() if not s.passed)


def _jobs(executor):
    theta, segs, args = DATA
    x = np.random.default_rng(3).standard_normal(20_000)
    wrong = _separable_grad(x)
    wrong[[17, 12_345]] *= 1.05
    common = dict(segments=segs, args=args, samples=24)
    # the gradients are computed here, before any check runs: a BLAS call of the program's own
    # (X @ W) in one thread while another thread's check starts or ends races with the change of
    # OpenBLAS's thread count, which OpenBLAS does not support (docs/guides/parallel.md)
    grads = {bug: two_layer_grad(theta, *args, bug=bug)
             for bug in (None, "bias", "transpose", "reg")}
    right = _separable_grad(x)
    return {
        "numpy, correct": lambda: fg.check(two_layer_loss, theta, grads[None], **common),
        "numpy, bias bug": lambda: fg.check(two_layer_loss, theta, grads["bias"], **common),
        "numba, correct": lambda: fg.check(two_layer_loss_jit, theta, grads[None], **common),
        "numba, transpose bug": lambda: fg.check(two_layer_loss_jit, theta, grads["transpose"],
                                                 **common),
        "numba, reg bug": lambda: fg.check(two_layer_loss_jit, theta, grads["reg"], **common),
        "audit, correct": lambda: fg.audit(_separable, x, right, budget=400),
        "audit, two wrong": lambda: fg.audit(_separable, x, wrong, budget=600),
        "executor, bias bug": lambda: fg.check(two_layer_loss, theta, grads["bias"],
                                               executor=executor, **common),
    }


@pytest.mark.slow
def test_eight_concurrent_checks_and_audits_give_their_own_verdicts_and_restore_blas():
    np.dot(np.ones((64, 64)), np.ones((64, 64)))  # BLAS loaded and at its own setting
    before = _blas_threads()
    with ThreadPoolExecutor(max_workers=2) as executor:
        jobs = _jobs(executor)
        alone = {name: _outcome(job()) for name, job in jobs.items()}
        assert alone["numpy, bias bug"] == (False, ["b1"])
        assert alone["numba, transpose bug"] == (False, ["W1"])
        assert alone["numba, reg bug"] == (False, ["W1", "W2"])
        assert alone["audit, two wrong"] == (False, [17, 12_345])
        assert alone["numpy, correct"][0] and alone["numba, correct"][0]
        assert alone["audit, correct"] == (True, [])
        after = _blas_threads()
        assert {k: after[k] for k in before} == before
        before = after  # libraries loaded meanwhile, at the setting they came with
        barrier = threading.Barrier(len(jobs))

        def run(job):
            barrier.wait()  # all eight start together
            return _outcome(job())

        for _ in range(2):
            with ThreadPoolExecutor(max_workers=len(jobs)) as callers:
                together = dict(zip(jobs, callers.map(run, jobs.values())))
            assert together == alone
            assert _blas_threads() == before


@njit(cache=True, nogil=True)
def _raises_above(theta, limit):
    total = 0.0
    for i in range(theta.size):
        if theta[i] > limit:
            raise ValueError("theta above the limit")
        total += theta[i] * theta[i]
    return total


@njit(cache=True, nogil=True)
def _quiet(theta, scale):
    total = 0.0
    for i in range(theta.size):
        total += scale * theta[i] * theta[i]
    return total


def test_a_kernel_error_in_one_thread_is_that_checks_own_and_the_hook_is_kept():
    """One check's Numba loss raises inside the prange kernel while another check runs its
    kernel: the first names its own coordinate, the second passes, a report that is not
    numba's still reaches the program's hook, and that hook is in place afterwards."""
    seen = []

    def program_hook(unraisable):
        seen.append(unraisable.exc_value)

    previous = sys.unraisablehook
    sys.unraisablehook = program_hook
    try:
        x = np.linspace(-1.0, 1.0, 4001)
        x[2000] = 0.9999999  # x + h crosses the limit at exactly this coordinate
        start = threading.Barrier(2)
        results = {}

        def failing():
            start.wait()
            try:
                fg.check(_raises_above, x, 2 * x, args=(1.0,), samples="all", workers=2)
            except fg.LossError as exc:
                results["failing"] = exc

        def passing():
            start.wait()
            results["passing"] = [fg.check(_quiet, x, 6 * x, args=(3.0,), samples="all",
                                           workers=2) for _ in range(5)]

        threads = [threading.Thread(target=failing), threading.Thread(target=passing)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        error = results["failing"]
        assert error.index == 2000 and "theta[2000]" in str(error)
        assert "theta above the limit" in str(error)
        assert all(r.passed for r in results["passing"])
        assert sys.unraisablehook is program_hook
        # a report that is not numba's goes to the program's hook, even during a kernel

        class Resource:
            def __del__(self):
                raise RuntimeError("not fastgrad's")

        Resource()
        assert [str(e) for e in seen] == ["not fastgrad's"]
    finally:
        sys.unraisablehook = previous


def test_a_hook_installed_while_a_kernel_runs_is_not_overwritten():
    from fastgrad.engine.kernel_errors import collecting_kernel_errors

    def theirs(unraisable):
        pass

    previous = sys.unraisablehook
    try:
        with collecting_kernel_errors():
            sys.unraisablehook = theirs  # the program installs its own meanwhile
        assert sys.unraisablehook is theirs
    finally:
        sys.unraisablehook = previous
