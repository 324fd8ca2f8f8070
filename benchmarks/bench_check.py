"""asv: time and peak memory of fastgrad.check on the reference problems, the C accumulator
alone, and fastgrad.audit when it exists.

``FASTGRAD_BENCH_QUICK=1`` shrinks every problem to a few hundred parameters (CI smoke run).
"""

from __future__ import annotations

import os

import numpy as np

import fastgrad as fg
from fastgrad.judge import verdicts as accumulate

from . import problems as P

QUICK = os.environ.get("FASTGRAD_BENCH_QUICK") == "1"
KS = [10, 100] if QUICK else [100, 1000, 10000]


def _loss(p: P.Problem, which: str):
    """The fastest loss per problem: Numba for the nets (Python overhead dominates), numpy's
    vectorised ufuncs for the separable loss (Numba's scalar log/cosh are slower)."""
    if which == "best":
        return p.loss if p.kind == "separable" else p.loss_jit
    return p.loss if which == "numpy" else p.loss_jit


class Check:
    """check() on K sampled coordinates, the fastest loss of each problem."""

    params = (["small", "medium", "separable"], KS)
    param_names = ["problem", "K"]
    timeout = 900
    number = 1
    repeat = (1, 5, 60.0)
    warmup_time = 0

    def setup(self, problem, k):
        self.p = P.build(problem, QUICK)
        self.f = _loss(self.p, "best")
        self.samples = P.samples_for(self.p.segments, k)
        fg.check(self.f, self.p.theta, self.p.grad, args=self.p.args, segments=self.p.segments,
                 samples=2, progress=False)  # compiled (or loaded from the cache) here

    def _run(self):
        return fg.check(self.f, self.p.theta, self.p.grad, args=self.p.args,
                        segments=self.p.segments, samples=self.samples, progress=False)

    def time_check(self, problem, k):
        self._run()

    def peakmem_check(self, problem, k):
        self._run()



class Memory:
    """Peak resident memory one check adds, in copies of theta (target: threads + 3), measured
    in a fresh process (see problems.peak_extra_copies)."""

    params = ((["separable"], [10]) if QUICK else
              (["small", "medium", "separable"], KS))
    param_names = ["problem", "K"]
    timeout = 900

    def track_extra_memory_copies(self, problem, k):
        p = P.build(problem, QUICK)
        return P.peak_extra_copies(problem, "numba" if _loss(p, "best") is p.loss_jit
                                   else "numpy", k, QUICK)

    track_extra_memory_copies.unit = "copies of theta"


class CheckLossStyle:
    """The same 1000 coordinates with the numpy and the Numba version of each loss."""

    params = (["small", "medium", "separable"], ["numpy", "numba"])
    param_names = ["problem", "loss"]
    timeout = 600
    number = 1
    repeat = (1, 5, 60.0)
    warmup_time = 0

    def setup(self, problem, loss):
        self.p = P.build(problem, QUICK)
        self.f = _loss(self.p, loss)
        self.samples = P.samples_for(self.p.segments, 30 if QUICK else
                                     (100 if problem == "separable" else 1000))
        fg.check(self.f, self.p.theta, self.p.grad, args=self.p.args, segments=self.p.segments,
                 samples=2, progress=False)

    def time_check(self, problem, loss):
        fg.check(self.f, self.p.theta, self.p.grad, args=self.p.args, segments=self.p.segments,
                 samples=self.samples, progress=False)


class Accumulator:
    """The C accumulator alone on 10^7 coordinates (10^5 when quick)."""

    timeout = 300
    number = 1
    repeat = (1, 5, 30.0)

    def setup(self):
        n = 10**5 if QUICK else 10**7
        rng = np.random.default_rng(0)
        self.analytic = rng.standard_normal(n)
        self.step = np.full(n, 1e-5)
        self.f0 = 1.0
        self.f_plus = self.f0 + self.analytic * self.step * (1 + 1e-9 * rng.standard_normal(n))
        self.f_minus = self.f0 - self.analytic * self.step
        self.segment = np.sort(rng.integers(0, 8, size=n))
        self.stats = accumulate.coordinate_stats(self.analytic, self.f_plus, self.f_minus,
                                                 self.f0, self.step, 1e-4, 2.2e-16)

    def time_coordinate_stats(self):
        accumulate.coordinate_stats(self.analytic, self.f_plus, self.f_minus, self.f0, self.step,
                                    1e-4, 2.2e-16)

    def time_segment_stats(self):
        s = self.stats
        accumulate.segment_stats(self.segment, s.rel_error, s.verdict, s.failed, s.kink, 8)

    def peakmem_coordinate_stats(self):
        accumulate.coordinate_stats(self.analytic, self.f_plus, self.f_minus, self.f0, self.step,
                                    1e-4, 2.2e-16)


class Audit:
    """fastgrad.audit (directional checks + localization) on the reference problems."""

    params = (["small", "medium", "separable"],)
    param_names = ["problem"]
    timeout = 600
    number = 1
    repeat = (1, 5, 60.0)
    warmup_time = 0

    def setup(self, problem):
        if not hasattr(fg, "audit"):
            raise NotImplementedError("fastgrad.audit does not exist yet")
        self.p = P.build(problem, QUICK)
        self.f = _loss(self.p, "best")
        self._run()

    def _run(self):
        return fg.audit(self.f, self.p.theta, self.p.grad, args=self.p.args,
                        segments=self.p.segments, progress=False)

    def time_audit(self, problem):
        self._run()

    def peakmem_audit(self, problem):
        self._run()


class Backends:
    """check() of the numpy losses forced onto each backend (processes vs threads vs serial, by
    loss size): the pool of worker processes is started in setup, as a second check finds it."""

    params = (["small", "net34k", "medium", "separable"], ["serial", "threads", "processes"])
    param_names = ["problem", "backend"]
    timeout = 900
    number = 1
    repeat = (1, 5, 60.0)
    warmup_time = 0

    def setup(self, problem, backend):
        from .backends import build

        self.p = build(problem, QUICK)
        self.samples = P.samples_for(self.p.segments, 100 if problem == "separable" else 1000)
        fg.check(self.p.loss, self.p.theta, self.p.grad, args=self.p.args,
                 segments=self.p.segments, samples=2, progress=False, backend=backend)

    def time_check(self, problem, backend):
        fg.check(self.p.loss, self.p.theta, self.p.grad, args=self.p.args,
                 segments=self.p.segments, samples=self.samples, progress=False, backend=backend)


class FirstCheck:
    """The rows of ``benchmarks/backends.py``: a check in a fresh interpreter, so that it pays
    for everything a user's first check pays for (the planner's calibration and thread-safety
    guard, the worker processes' start-up), with the default options and with each backend
    forced; then a second check of the same loss in that process. The default should stay
    within a few percent of the fastest forced backend."""

    params = (["small", "net34k", "medium", "separable"],
              ["default", "serial", "threads", "processes"])
    param_names = ["problem", "config"]
    timeout = 900
    _seen: dict = {}

    def _row(self, problem, config) -> dict:
        from .backends import CASES, QUICK_CASES, in_fresh_process

        if (problem, config) not in self._seen:
            k = dict(QUICK_CASES if QUICK else CASES).get(problem, 10)
            self._seen[problem, config] = in_fresh_process(problem, k, config, QUICK)
        return self._seen[problem, config]

    def track_first_check(self, problem, config):
        return self._row(problem, config)["seconds"]

    track_first_check.unit = "seconds"

    def track_second_check(self, problem, config):
        return self._row(problem, config)["second"]

    track_second_check.unit = "seconds"
