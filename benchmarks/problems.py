"""The reference problems of the benchmarks, built once for every tool (asv suite, compare.py).

Each problem has a numpy loss, a Numba loss of the same function, the analytic gradient and
a way to pick K coordinates (proportionally to the segment sizes, every segment at least one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from fastgrad.examples import two_layer_data, two_layer_grad, two_layer_loss, two_layer_loss_jit
from fastgrad.segments import SegmentMap

# (N, D, H, C) of the two-layer nets: ~5k and ~134k parameters
SMALL = (16, 64, 64, 10)
MEDIUM = (16, 360, 360, 10)
SEPARABLE_N = 10**6


@dataclass
class Problem:
    name: str
    theta: np.ndarray
    segments: SegmentMap
    args: tuple
    loss: object  # numpy version
    loss_jit: object  # Numba version of the same function
    grad: np.ndarray
    # for the torch / jax peers: which function this is, to rebuild it in their arrays
    kind: str


def separable_loss(x):
    """sum(log cosh x + 0.1 x^2): ufunc-heavy, one temporary the size of x."""
    t = np.cosh(x)
    np.log(t, out=t)
    return float(t.sum() + 0.1 * np.dot(x, x))


@njit(cache=True, nogil=True)
def separable_loss_jit(x):
    total = 0.0
    for i in range(x.size):
        total += np.log(np.cosh(x[i])) + 0.1 * x[i] * x[i]
    return total


def separable_grad(x):
    return np.tanh(x) + 0.2 * x


def two_layer(name: str, sizes=SMALL) -> Problem:
    N, D, H, C = sizes
    theta, segs, args = two_layer_data(N=N, D=D, H=H, C=C)
    return Problem(name, theta, segs, args, two_layer_loss, two_layer_loss_jit,
                   two_layer_grad(theta, *args), "two_layer")


def separable(name: str = "separable", n: int = SEPARABLE_N) -> Problem:
    theta = np.random.default_rng(0).standard_normal(n)
    segs = SegmentMap.from_shapes({"theta": (n,)})
    return Problem(name, theta, segs, (), separable_loss, separable_loss_jit,
                   separable_grad(theta), "separable")


def build(name: str, quick: bool = False) -> Problem:
    """``small``, ``medium`` or ``separable``; quick: tiny sizes for a CI smoke run."""
    if name == "small":
        return two_layer("small", (4, 8, 8, 3) if quick else SMALL)
    if name == "medium":
        return two_layer("medium", (4, 24, 24, 3) if quick else MEDIUM)
    if name == "separable":
        return separable("separable", 2000 if quick else SEPARABLE_N)
    raise ValueError(f"problem: expected small, medium or separable, got {name!r}")


def samples_for(segments: SegmentMap, k: int) -> dict[str, int] | str:
    """A ``samples=`` mapping that checks about k coordinates, proportionally to segment size."""
    if k >= segments.size:
        return "all"
    counts = {s.name: max(1, min(s.size, round(k * s.size / segments.size))) for s in segments}
    # fix the rounding on the largest segment so the total is k
    largest = max(segments, key=lambda s: s.size)
    counts[largest.name] = max(1, min(largest.size, counts[largest.name] + k - sum(counts.values())))
    return counts


def sampled_index(segments: SegmentMap, k: int, seed: int = 0) -> np.ndarray:
    """The flat indices check() picks for samples_for(segments, k): peers check the same ones."""
    from fastgrad.sampling import sample_coordinates

    return sample_coordinates(segments, samples_for(segments, k), seed)


def peak_extra_copies(problem: str, loss: str, k: int, quick: bool = False) -> float:
    """Peak resident memory one check adds, in copies of theta, measured in a fresh process.

    There glibc is told to give every large block back on free (MALLOC_MMAP_THRESHOLD_), so the
    resident size follows the live arrays and is sampled every 0.2 ms while the check runs.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-m", "benchmarks.problems", problem, loss, str(k),
                          "quick" if quick else "full"], env=env, cwd=root, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def _measure_peak(problem: str, loss: str, k: int, quick: bool) -> float:
    import threading
    import time

    import fastgrad as fg

    p = build(problem, quick)
    f = p.loss if loss == "numpy" else p.loss_jit
    # compile the kernels and touch every code path on a tiny check first
    fg.check(f, p.theta, p.grad, args=p.args, segments=p.segments, samples=1, progress=False)
    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * page

    base = peak = rss()
    stop = threading.Event()

    def watch():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss())
            time.sleep(0.0002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        fg.check(f, p.theta, p.grad, args=p.args, segments=p.segments,
                 samples=samples_for(p.segments, k), progress=False)
    finally:
        stop.set()
        watcher.join()
    return (peak - base) / p.theta.nbytes


if __name__ == "__main__":
    import os
    import sys

    name, which, count, size = sys.argv[1:5]
    print(_measure_peak(name, which, int(count), size == "quick"))
