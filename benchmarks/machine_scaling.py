"""What two cores give, measured apart from fastgrad: the facts the engine is built around.

    python benchmarks/machine_scaling.py          # a minute or two

1. OpenBLAS keeps a worker spinning for ~0.1 s after a multi-threaded call, even once
   threadpoolctl has set it to one thread: CPU seconds burned while the caller sleeps.
2. Speedup of two threads over one for pieces of the reference losses: pure arithmetic (the cores
   are real), a hand-written matrix product, Numba's np.dot (OpenBLAS small GEMM), and the numpy
   ufuncs of the separable loss, with and without a fresh 8 MB temporary per call.
3. fastgrad.check on two threads right after a workers=1 check, and in steady state.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from numba import njit, prange  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

REPEATS = 5


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def openblas_spin() -> str:
    X, W = np.random.rand(16, 360), np.random.rand(360, 360)
    for _ in range(50):
        X @ W  # BLAS on its default threads
    with threadpool_limits(1):
        before = cpu_seconds()
        time.sleep(0.5)
        burned = cpu_seconds() - before
    return f"CPU burned during 0.5 s of sleep after 50 threaded GEMMs: {burned:.3f} s"


@njit(nogil=True)
def _arith(X, W):
    s = 0.0
    for i in range(20000):
        s += np.sqrt(i * 1.0 + W[0, 0])
    return s


@njit(nogil=True)
def _dot(X, W):
    return (X @ W)[0, 0]


@njit(nogil=True)
def _loop_mm(X, W):
    out = np.zeros((X.shape[0], W.shape[1]))
    for i in range(X.shape[0]):
        for k in range(X.shape[1]):
            a = X[i, k]
            for j in range(W.shape[1]):
                out[i, j] += a * W[k, j]
    return out[0, 0]


@njit(parallel=True)
def _two(g, X, W, n):
    out = np.zeros(2)
    for t in prange(2):
        Wc = W.copy()
        for _ in range(n):
            out[t] += g(X, Wc)
    return out


def numba_speedup(g, n: int) -> float:
    import numba

    X, W = np.random.rand(16, 64), np.random.rand(64, 64)
    _two(g, X, W, 2)
    times = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        start = time.perf_counter()
        _two(g, X, W, n)
        times.append(time.perf_counter() - start)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    return times[0] / times[1]


def thread_speedup(op, n: int) -> float:
    def work(i, count):
        for _ in range(count):
            op(i)

    op(0)
    start = time.perf_counter()
    work(0, n)
    one = time.perf_counter() - start
    threads = [threading.Thread(target=work, args=(i, n // 2)) for i in range(2)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return one / (time.perf_counter() - start)


def after_serial() -> str:
    import fastgrad as fg
    from benchmarks import problems as P

    p = P.build("medium")
    samples = P.samples_for(p.segments, 100)

    def run(workers):
        start = time.perf_counter()
        fg.check(p.loss_jit, p.theta, p.grad, args=p.args, segments=p.segments,
                 samples=samples, workers=workers, progress=False)
        return time.perf_counter() - start

    run(2)
    run(1)
    first = run(2)  # right after a serial check
    steady = np.median([run(2) for _ in range(5)])
    return (f"medium net, K=100, workers=2: {first * 1e3:.1f} ms right after a workers=1 "
            f"check, {steady * 1e3:.1f} ms in steady state")


def spread(measure, repeats: int = REPEATS) -> str:
    """median (min-max) of a speedup measured ``repeats`` times: the spread is the point on a
    shared machine."""
    values = sorted(measure() for _ in range(repeats))
    return f"{np.median(values):.2f}x ({values[0]:.2f}-{values[-1]:.2f})"


def main() -> int:
    print("1.", openblas_spin())
    with threadpool_limits(1):
        print(f"2. two threads over one, median (min-max) of {REPEATS} measurements")
        print("   Numba, 16x64 @ 64x64 matrices:")
        for name, g, n in (("pure arithmetic", _arith, 400), ("hand-written matrix product",
                                                              _loop_mm, 4000),
                           ("np.dot (OpenBLAS GEMM)", _dot, 10000)):
            print(f"   {name:28s} {spread(lambda g=g, n=n: numba_speedup(g, n))}")
        size = 10**6
        xs = [np.random.rand(size) for _ in range(2)]
        outs = [np.empty(size) for _ in range(2)]
        print("   numpy on 10^6 doubles, one array per thread:")
        for name, op in (("cosh into a kept array", lambda i: np.cosh(xs[i], out=outs[i])),
                         ("cosh into a new array", lambda i: np.cosh(xs[i])),
                         ("sum", lambda i: outs[i].sum()),
                         ("dot", lambda i: np.dot(xs[i], xs[i]))):
            print(f"   {name:28s} {spread(lambda op=op: thread_speedup(op, 60))}")
    print("3.", after_serial())
    return 0


if __name__ == "__main__":
    sys.exit(main())
