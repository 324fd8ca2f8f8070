"""Fixed cost of a drop-in check of a small function: fastgrad.torch.gradcheck against
torch.autograd.gradcheck (and fastgrad.jax.check_grads against jax's), median of N.

    python benchmarks/dropin_fixed_cost.py [--n 20] [--repeats 50] [--checkout DIR]
    python benchmarks/dropin_fixed_cost.py --first-call [--repeats 7]

``--checkout DIR`` times the fastgrad of another checkout (e.g. ``git archive`` of an older
commit into DIR, with the compiled accumulator copied in): run it and this checkout back to back
for a before/after.

The functions are cheap (a 20-element tanh), so the times are the tools' own overheads plus a
few dozen tiny evaluations. ``--first-call``: the first check in a fresh interpreter that has
imported torch, as a test suite switched with ``pytest --fastgrad-gradcheck`` pays it (fastgrad's
import counted in), against torch's own first gradcheck (which pays for importing sympy on its
first backward with explicit cotangents), fast mode and full, medians over fresh processes.
Not a timed test; quote ratios measured within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def times_ms(ours, theirs, repeats: int) -> tuple[float, float, float, float]:
    """(median, min) of each, the two calls interleaved (both see the same load)."""
    for _ in range(3):
        ours(), theirs()
    a, b = [], []
    for _ in range(repeats):
        for fn, into in ((ours, a), (theirs, b)):
            start = time.perf_counter()
            fn()
            into.append(time.perf_counter() - start)
    return (statistics.median(a) * 1e3, min(a) * 1e3, statistics.median(b) * 1e3,
            min(b) * 1e3)


FIRST_CALL = """
import sys, time
sys.path.insert(0, {checkout!r})
import torch
x = torch.randn({n}, dtype=torch.float64, requires_grad=True)
start = time.perf_counter()
if {ours}:
    from fastgrad.torch import gradcheck
else:
    from torch.autograd import gradcheck
gradcheck(lambda x: torch.tanh(x) * 2, (x,), fast_mode={fast})
print(time.perf_counter() - start)
"""


def first_call(checkout: str, n: int, repeats: int) -> int:
    """Median seconds of the first check in fresh interpreters, both tools interleaved."""
    import subprocess

    print("| first check in a fresh process | fastgrad s median (min) | torch s median (min) "
          "| fastgrad - torch, s |")
    print("|---|---:|---:|---:|")
    for fast in (True, False):
        times = {True: [], False: []}
        for _ in range(repeats):
            for ours in (True, False):
                code = FIRST_CALL.format(checkout=checkout, n=n, ours=ours, fast=fast)
                done = subprocess.run([sys.executable, "-c", code], capture_output=True,
                                      text=True, check=True)
                times[ours].append(float(done.stdout.strip().splitlines()[-1]))
        ours, theirs = statistics.median(times[True]), statistics.median(times[False])
        print(f"| gradcheck{', fast_mode' if fast else ''} | {ours:.3f} ({min(times[True]):.3f})"
              f" | {theirs:.3f} ({min(times[False]):.3f}) | {ours - theirs:+.3f} |")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--checkout", default=str(ROOT), help="the fastgrad checkout to time")
    parser.add_argument("--first-call", action="store_true",
                        help="time the first check in fresh processes (fastgrad's import in)")
    args = parser.parse_args(argv)
    if args.first_call:
        return first_call(str(Path(args.checkout).resolve()), args.n, min(args.repeats, 15))
    checkout = str(Path(args.checkout).resolve())
    sys.path.insert(0, checkout)
    import torch

    import fastgrad
    import fastgrad.torch as ft

    if not fastgrad.__file__.startswith(checkout):
        sys.exit(f"fastgrad was imported from {fastgrad.__file__}, not from {checkout}")
    print(f"fastgrad from {checkout}")

    x = torch.randn(args.n, dtype=torch.float64, requires_grad=True)

    def f(x):
        return torch.tanh(x) * 2

    rows = []
    for label, options in (("gradcheck", {}), ("gradcheck, fast_mode", {"fast_mode": True}),
                           ("gradcheck, check_forward_ad", {"check_forward_ad": True})):
        rows.append((f"torch {label}", *times_ms(
            lambda o=options: ft.gradcheck(f, (x,), **o),
            lambda o=options: torch.autograd.gradcheck(f, (x,), **o), args.repeats)))
    rows.append(("torch gradgradcheck", *times_ms(
        lambda: ft.gradgradcheck(f, (x,)), lambda: torch.autograd.gradgradcheck(f, (x,)),
        args.repeats)))
    try:
        import jax.numpy as jnp
        import numpy as np
        from jax.test_util import check_grads

        import fastgrad.jax as fj

        xj = np.linspace(-1.0, 1.0, args.n)
        rows.append(("jax check_grads order 1", *times_ms(
            lambda: fj.check_grads(lambda v: jnp.tanh(v) * 2, (xj,), 1),
            lambda: check_grads(lambda v: jnp.tanh(v) * 2, (xj,), 1), args.repeats)))
    except ImportError:
        print("jax not installed: its row skipped")
    print(f"| check ({args.n} elements) | fastgrad ms median (min) | framework's ms median (min)"
          " | ratio of medians (of mins) |")
    print("|---|---:|---:|---:|")
    for label, ours, ours_min, theirs, theirs_min in rows:
        print(f"| {label} | {ours:.2f} ({ours_min:.2f}) | {theirs:.2f} ({theirs_min:.2f}) | "
              f"{ours / theirs:.2f} ({ours_min / theirs_min:.2f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
