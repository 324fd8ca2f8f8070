"""Nothing fastgrad keeps between checks holds a loss the user dropped: not the remembered plans,
not the losses compiled by jit, not the thread pool, not what an executor was sent."""

import gc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastgrad as fg

MB = 1 << 20


def _rss() -> int:
    gc.collect()
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _loss_holding(megabytes: int):
    """A loss whose closure holds a fresh array of that size (as a model's data would)."""
    data = np.ones(megabytes * MB // 8)

    def loss(theta):
        return float(np.sum(theta * theta) + 0.0 * data[0])

    return loss


def _loss_numba_compiles(megabytes: int):
    """A loss Numba compiles (jit=True: the compiled loss runs in the kernel), holding a fresh
    array of that size (a function bound to its data; Numba would freeze an array the body
    reads into the compiled code, so the body does not read it)."""

    def loss(theta):
        return np.sum(theta * theta)

    loss.data = np.ones(megabytes * MB // 8)
    return loss


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"jit": "auto"}, {"jit": False}, {"executor": "threads"}],
                         ids=["jit='auto'", "numpy", "executor"])
def test_two_hundred_checks_of_16mb_closures_keep_less_than_50mb(options):
    """The default path (jit="auto": a short check of a numpy loss is not compiled, its
    plan is remembered weakly), the plain numpy path and an executor keep nothing of a loss."""
    theta = np.linspace(-1.0, 1.0, 40)
    grad = 2.0 * theta
    with ThreadPoolExecutor(max_workers=2) as executor:
        if "executor" in options:
            options = {"executor": executor}
        for _ in range(3):  # warm: kernels loaded, pools started
            assert fg.check(_loss_holding(16), theta, grad, samples="all", **options).passed
        before = _rss()
        for _ in range(200):
            assert fg.check(_loss_holding(16), theta, grad, samples="all", **options).passed
        grown = _rss() - before
    assert grown < 50 * MB, f"resident memory grew by {grown / MB:.0f} MB over 200 checks"


@pytest.mark.slow
def test_two_hundred_jit_compiled_losses_are_freed_with_their_data():
    """jit=True (the path jit="auto" takes for a long check): each loss is compiled by Numba and
    run in the kernel. fastgrad keeps none of them: every loss and its 16 MB are freed. Resident
    memory still grows by the machine code Numba keeps for each function it compiles (about
    1-2 MB here, never freed by Numba), far below the 16 MB a kept loss would cost."""
    import weakref

    theta = np.linspace(-1.0, 1.0, 40)
    grad = 2.0 * theta
    for _ in range(3):
        assert fg.check(_loss_numba_compiles(16), theta, grad, samples="all", jit=True).passed
    before = _rss()
    alive = []
    for _ in range(200):
        loss = _loss_numba_compiles(16)
        report = fg.check(loss, theta, grad, samples="all", jit=True)
        assert report.passed and report.path == "jit", report.path_reason
        alive.append(weakref.ref(loss))
        del loss
    grown = _rss() - before
    assert not any(ref() is not None for ref in alive)
    assert grown < 200 * 4 * MB, f"resident memory grew by {grown / MB:.0f} MB over 200 checks"
