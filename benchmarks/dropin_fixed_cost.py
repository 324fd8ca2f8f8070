"""Fixed cost of a drop-in check of a small function: fastgrad.torch.gradcheck against
torch.autograd.gradcheck (and fastgrad.jax.check_grads against jax's), median of N.

    python benchmarks/dropin_fixed_cost.py [--n 20] [--repeats 50] [--checkout DIR]

``--checkout DIR`` times the fastgrad of another checkout (e.g. ``git archive`` of an older
commit into DIR, with the compiled accumulator copied in): run it and this checkout back to back
for a before/after.

The functions are cheap (a 20-element tanh), so the times are the tools' own overheads plus a
few dozen tiny evaluations. Not a timed test; quote ratios measured within one run.
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--checkout", default=str(ROOT), help="the fastgrad checkout to time")
    args = parser.parse_args(argv)
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
    for label, options in (("gradcheck", {}), ("gradcheck, check_forward_ad", {
            "check_forward_ad": True})):
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
