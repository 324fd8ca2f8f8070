"""Time fastgrad.check as one checkout of fastgrad has it, on one benchmark problem: for comparing
two commits side by side (run the same arguments against each checkout, interleaved, in fresh
processes).

    python benchmarks/checkout_ab.py CHECKOUT PROBLEM K LOSS
    python benchmarks/checkout_ab.py ../old-checkout medium 1000 numpy

PROBLEM: small | medium | separable (benchmarks/problems.py of that checkout); LOSS: numba |
numpy. Prints the first check (compilation and calibration included), then the median and the
minimum of 5 more, the verdict and the path.
"""

import statistics
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    checkout, name, k, which = (argv or sys.argv[1:])[:4]
    checkout = str(Path(checkout).resolve())
    sys.path[:0] = [checkout, checkout + "/benchmarks"]
    import problems as P

    import fastgrad as fg

    if not fg.__file__.startswith(checkout):
        sys.exit(f"fastgrad was imported from {fg.__file__}, not from {checkout}")
    p = P.build(name)
    f = p.loss_jit if which == "numba" else p.loss
    samples = P.samples_for(p.segments, int(k))

    def run():
        return fg.check(f, p.theta, p.grad, args=p.args, segments=p.segments, samples=samples,
                        progress=False)

    start = time.perf_counter()
    report = run()
    first = time.perf_counter() - start
    times = []
    for _ in range(5):
        start = time.perf_counter()
        report = run()
        times.append(time.perf_counter() - start)
    print(f"{Path(checkout).name:12s} {name:9s} {which:5s} K={int(k):5d} first {first:.4f} "
          f"median {statistics.median(times):.4f} min {min(times):.4f} "
          f"passed={report.passed} path={report.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
