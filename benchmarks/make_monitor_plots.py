"""Train the digits demo network and write the monitor guide's plots to docs/img/.

    python benchmarks/make_monitor_plots.py            # writes docs/img/monitor-*.png
    python benchmarks/make_monitor_plots.py --findings # also prints the findings of each scenario

The good run: a two-layer ReLU net (64-32-10) on scikit-learn's 8x8 digits, plain SGD, learning
rate 0.1, batch 32, L2 1e-4, 15 epochs, a gradient check after every epoch once warmed up.  One
contrast image comes from a run with a badly scaled tanh initialization (saturated units).
Needs scikit-learn and matplotlib.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from fastgrad.monitor.demo import GOOD_LR, train_digits  # noqa: E402
from fastgrad.monitor.plots import DEFAULT_DPI  # noqa: E402

SCENARIOS = {
    "good learning rate (0.1)": dict(lr=GOOD_LR, epochs=8),
    "100x too high (10.0)": dict(lr=100 * GOOD_LR, epochs=8),
    "100x too low (0.001)": dict(lr=GOOD_LR / 100, epochs=8),
    "50 training images, no L2": dict(lr=GOOD_LR, train_size=50, batch_size=10, reg=0.0,
                                      epochs=100),
    "tanh, init scale 3.0": dict(lr=GOOD_LR, activation="tanh", weight_scale=3.0, epochs=8),
    "batch size 1": dict(lr=GOOD_LR, batch_size=1, epochs=1),
}


def write_plots(outdir: str, dpi: int) -> list[str]:
    os.makedirs(outdir, exist_ok=True)
    run = train_digits(lr=GOOD_LR, epochs=15, gradcheck=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "digits.jsonl")
        run.monitor.save(log)
        from fastgrad.monitor.plots import plot_all

        for path in plot_all(run.monitor, tmp, dpi=dpi):
            target = os.path.join(outdir, "monitor-" + os.path.basename(path))
            shutil.copyfile(path, target)
            written.append(target)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            bad = train_digits(lr=GOOD_LR, activation="tanh", weight_scale=3.0, epochs=8).monitor
        bad_dir = os.path.join(tmp, "bad")
        for path in plot_all(bad, bad_dir, dpi=dpi):
            if os.path.basename(path) == "activations.png":
                target = os.path.join(outdir, "monitor-activations-saturated.png")
                shutil.copyfile(path, target)
                written.append(target)
    for finding in run.monitor.diagnose():
        print(f"good run: {finding}")
    print(f"good run: final val_acc {run.monitor.epochs()[-1]['val_acc']:.3f}, "
          f"{len(run.monitor.gradchecks())} gradient checks, all passed: "
          f"{all(g['passed'] for g in run.monitor.gradchecks())}")
    return written


def print_findings() -> None:
    for name, options in SCENARIOS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mon = train_digits(**options).monitor
        last = mon.epochs()[-1] if mon.epochs() else {}
        print(f"\n## {name}: train_acc {last.get('train_acc')}, val_acc {last.get('val_acc')}")
        for finding in mon.diagnose() or ["(no findings)"]:
            print(f"- {finding}")
            if hasattr(finding, "evidence"):
                print(f"  evidence: {finding.evidence}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", default=os.path.join(os.path.dirname(HERE), "docs", "img"))
    parser.add_argument("--dpi", type=int, default=DEFAULT_DPI,
                        help=f"resolution (default {DEFAULT_DPI}: the plots are 700-800 px wide)")
    parser.add_argument("--findings", action="store_true",
                        help="also print the findings of each scenario")
    args = parser.parse_args()
    for path in write_plots(args.outdir, args.dpi):
        print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path) // 1024} kB)")
    if args.findings:
        print_findings()
    return 0


if __name__ == "__main__":
    sys.exit(main())
