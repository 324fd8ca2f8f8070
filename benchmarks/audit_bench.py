"""What an audit costs against checking every coordinate, for one planted bug at n = 10^6.

    python benchmarks/audit_bench.py              # n = 10^6 (separable + network), memory at 10^7
    python benchmarks/audit_bench.py --quick      # n = 10^5, memory at 10^6 (seconds)

For each problem it prints the evaluations and seconds of ``fg.audit``; of
``fg.check(samples="all")`` (2 n evaluations: ESTIMATED from a timed ``check`` of a sample of
coordinates, the full run would take hours); and of uniform sampling that finds the one wrong
coordinate with probability 0.99 (m = 0.99 n coordinates without replacement: 2 m evaluations,
seconds at the same measured rate). Then the peak extra memory of an audit at n = 10^7 (tracemalloc,
the numpy/threads path) next to the size of theta and the loss's own temporaries.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import tracemalloc

import numpy as np
from threadpoolctl import threadpool_limits

from fastgrad import audit, check
from fastgrad.examples import two_layer_data, two_layer_grad, two_layer_loss
from fastgrad.examples.problems import (
    plant,
    weighted_logcosh,
    weighted_logcosh_data,
    weighted_logcosh_grad,
)

PROBABILITY = 0.99


def separable(n: int, seed: int = 0):
    a, c, theta = weighted_logcosh_data(n, seed)

    def loss(x):
        return weighted_logcosh(x, a, c)

    return loss, theta, weighted_logcosh_grad(theta, a, c), (), None


def network(n: int, seed: int = 0):
    hidden = 1000 if n >= 10**6 else 300
    inputs = max(1, (n - 11 * hidden - 10) // hidden)
    theta, segs, args = two_layer_data(N=8, D=inputs, H=hidden, C=10, seed=seed)
    return two_layer_loss, theta, two_layer_grad(theta, *args), args, segs


def plant_one(grad, seed=1):
    """One wrong coordinate, off by 1% of the gradient's RMS: (wrong gradient, its index)."""
    wrong, index = plant(grad, 1, seed, float(np.sqrt(np.mean(grad ** 2))))
    return wrong, int(index[0])


def bench_problem(name, build, n, sample, workers):
    f, theta, grad, args, segs = build(n)
    n = theta.size
    wrong, planted = plant_one(grad)
    t = time.perf_counter()
    report = audit(f, theta, wrong, args=args, segments=segs, workers=workers)
    audit_s = time.perf_counter() - t
    found = report.suspects.tolist() == [planted]
    # check(samples="all") would cost 2n evaluations: time a sample, extrapolate per evaluation
    t = time.perf_counter()
    partial = check(f, theta, wrong, args=args, segments=None, samples=sample, workers=workers,
                    kinks="ignore")
    check_s = time.perf_counter() - t
    per_eval = check_s / partial.evaluations
    full_evals = 2 * n + 2
    m = math.ceil(PROBABILITY * n)
    print(f"\n{name}: n = {n:,}, one wrong coordinate (flat {planted}), {workers} workers")
    print(f"  audit                      {report.evaluations:>12,} evaluations  {audit_s:10.1f} s"
          f"   found exactly it: {found}  phases {report.phases}")
    print(f"  check(samples='all')       {full_evals:>12,} evaluations  "
          f"{full_evals * per_eval:10.0f} s   ESTIMATED: {per_eval * 1e3:.2f} ms/evaluation "
          f"timed on check(samples={sample}) ({partial.evaluations} evaluations, {check_s:.1f} s)")
    print(f"  uniform sampling, p={PROBABILITY}   {2 * m:>12,} evaluations  "
          f"{2 * m * per_eval:10.0f} s   (m = {PROBABILITY} n coordinates; same rate)")
    print(f"  audit / check(all)         {report.evaluations / full_evals:12.1e} of the "
          f"evaluations")
    return report


def bench_memory(n, workers):
    f, theta, grad, args, _ = separable(n, seed=3)
    wrong, planted = plant_one(grad)
    del grad
    theta_mb = theta.nbytes / 2**20
    tracemalloc.start()
    f(theta)
    _, loss_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    t = time.perf_counter()
    report = audit(f, theta, wrong, workers=workers)
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    extra = (peak - base) / 2**20
    print(f"\nmemory: n = {n:,} (theta {theta_mb:.0f} MB), {workers} workers, numpy loss on threads")
    print(f"  audit: {report.evaluations} evaluations, {seconds:.1f} s, found exactly it: "
          f"{report.suspects.tolist() == [planted]}")
    print(f"  peak extra memory during the audit: {extra:,.0f} MB = {extra / theta_mb:.1f} x theta"
          f" (of which the loss's own temporaries: {loss_peak / 2**20:,.0f} MB = "
          f"{loss_peak / 2**20 / theta_mb:.1f} x theta per concurrent evaluation)")
    own = extra - workers * loss_peak / 2**20
    print(f"  the audit's own share: {own:,.0f} MB = {own / theta_mb:.1f} x theta (private copies "
          f"of theta and grad, then per worker one working copy and one h*v)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 10^5, memory at 10^6")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--sample", type=int, default=500,
                        help="coordinates timed to estimate check(samples='all')")
    opts = parser.parse_args(argv)
    n, n_memory = (10**5, 10**6) if opts.quick else (10**6, 10**7)
    print(f"fastgrad audit benchmark: {os.cpu_count()} cpus, numpy {np.__version__}, BLAS on 1 "
          f"thread (the evaluations are already parallel)")
    with threadpool_limits(1):
        bench_problem("separable log-cosh loss", separable, n, opts.sample, opts.workers)
        bench_problem("two-layer network (flattened W1, b1, W2, b2)", network, n, opts.sample,
                      opts.workers)
        bench_memory(n_memory, opts.workers)


if __name__ == "__main__":
    main()
