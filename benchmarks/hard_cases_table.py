"""The issue-3 table: for each hard case, kink crossings counted, coordinates re-checked, verdict
and loss evaluations, measured with the current code on the problems of fastgrad.examples.problems
(those of tests/test_hard_cases.py).

    python benchmarks/hard_cases_table.py
"""

import numpy as np

import fastgrad as fg
from fastgrad.examples import problems as hc


def row(case, report, term=None):
    segments = report.terms[term] if term else report.segments
    failed = sorted(n for n, s in segments.items() if not s.passed)
    verdict = "PASS" if not failed else "FAIL " + ", ".join(failed)
    if term:
        verdict += f" (term {term!r})"
    kinks = sum(s.kinks for s in report.segments.values())
    print(f"| {case} | {kinks} | {report.rechecked} | {verdict} | {report.evaluations} |")


def main():
    print("| case | kink crossings | re-checked | verdict | evaluations |")
    print("|---|---|---|---|---|")
    theta, args = hc.relu_problem()
    grad = hc.relu_grad(theta, *args)
    common = dict(args=args, segments=hc.RELU_SHAPES, samples="all")
    row("ReLU net, units within h of the kink, correct", fg.check(hc.relu_loss, theta, grad, **common))
    row("same, kinks='ignore'", fg.check(hc.relu_loss, theta, grad, kinks="ignore", **common))
    row("same, kinks=ReLU-mask signature",
        fg.check(hc.relu_loss, theta, grad, kinks=hc.relu_mask_signature, **common))
    segs = fg.SegmentMap.from_shapes(hc.RELU_SHAPES)
    for layer in ("W1", "b1", "W2"):
        wrong = grad.copy()
        wrong[segs[layer].start:segs[layer].stop] *= 1.02
        row(f"ReLU net, {layer} gradient 2% off", fg.check(hc.relu_loss, theta, wrong, **common))
    theta_d, args_d = hc.relu_problem(dead=4)
    row("ReLU net, 4 dead units, correct",
        fg.check(hc.relu_loss, theta_d, hc.relu_grad(theta_d, *args_d), args=args_d,
                 segments=hc.RELU_SHAPES, samples="all"))

    theta, args = hc.svm_problem()
    grad = hc.svm_grad(theta, *args)
    common = dict(args=args, segments=hc.SVM_SHAPES, samples="all")
    row("SVM hinge, margins within h, correct", fg.check(hc.svm_loss, theta, grad, **common))
    segs = fg.SegmentMap.from_shapes(hc.SVM_SHAPES)
    for layer in ("W", "b"):
        wrong = grad.copy()
        wrong[segs[layer].start:segs[layer].stop] += 0.01
        row(f"SVM hinge, {layer} gradient +0.01", fg.check(hc.svm_loss, theta, wrong, **common))

    theta, args = hc.pool_problem()
    grad = hc.pool_grad(theta, *args)
    common = dict(args=args, segments=hc.POOL_SHAPES, samples="all")
    row("max-pool, ties within h, correct", fg.check(hc.pool_loss, theta, grad, **common))
    segs = fg.SegmentMap.from_shapes(hc.POOL_SHAPES)
    for layer in ("W", "c", "V"):
        wrong = grad.copy()
        wrong[segs[layer].start:segs[layer].stop] *= 1.02
        row(f"max-pool, {layer} gradient 2% off", fg.check(hc.pool_loss, theta, wrong, **common))

    rng = np.random.default_rng(0)
    x = rng.standard_normal(1_000_000)
    x[:500] *= 1e-7
    grad = np.tanh(x) + 0.2 * x
    report = fg.check(hc.logcosh_loss, x, grad, samples=64)
    row("log cosh + 0.1 x^2, n = 10^6, 64 samples, correct", report)
    picked = [c.index for c in report.coords][:3]
    wrong = grad.copy()
    wrong[picked] += 1e-3
    row("same, 3 sampled coordinates +1e-3", fg.check(hc.logcosh_loss, x, wrong, samples=64))


if __name__ == "__main__":
    main()
