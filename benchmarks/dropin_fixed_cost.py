"""Fixed cost of a drop-in check of a small function: fastgrad.torch.gradcheck against
torch.autograd.gradcheck (and fastgrad.jax.check_grads against jax's), median of N.

    python benchmarks/dropin_fixed_cost.py [--n 20] [--repeats 50]

The functions are cheap (a 20-element tanh), so the times are the tools' own overheads plus a
few dozen tiny evaluations. Not a timed test; quote ratios measured within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def median_ms(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    import torch

    import fastgrad.torch as ft

    x = torch.randn(args.n, dtype=torch.float64, requires_grad=True)

    def f(x):
        return torch.tanh(x) * 2

    rows = []
    for label, options in (("gradcheck", {}), ("gradcheck, check_forward_ad", {
            "check_forward_ad": True})):
        ours = median_ms(lambda o=options: ft.gradcheck(f, (x,), **o), args.repeats)
        theirs = median_ms(lambda o=options: torch.autograd.gradcheck(f, (x,), **o),
                           args.repeats)
        rows.append((f"torch {label}", ours, theirs))
    ours = median_ms(lambda: ft.gradgradcheck(f, (x,)), args.repeats)
    theirs = median_ms(lambda: torch.autograd.gradgradcheck(f, (x,)), args.repeats)
    rows.append(("torch gradgradcheck", ours, theirs))
    try:
        import jax.numpy as jnp
        import numpy as np
        from jax.test_util import check_grads

        import fastgrad.jax as fj

        xj = np.linspace(-1.0, 1.0, args.n)
        ours = median_ms(lambda: fj.check_grads(lambda v: jnp.tanh(v) * 2, (xj,), 1),
                         args.repeats)
        theirs = median_ms(lambda: check_grads(lambda v: jnp.tanh(v) * 2, (xj,), 1),
                           args.repeats)
        rows.append(("jax check_grads order 1", ours, theirs))
    except ImportError:
        print("jax not installed: its row skipped")
    print(f"| check ({args.n} elements) | fastgrad ms | framework's ms | ratio |")
    print("|---|---:|---:|---:|")
    for label, ours, theirs in rows:
        print(f"| {label} | {ours:.2f} | {theirs:.2f} | {ours / theirs:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
