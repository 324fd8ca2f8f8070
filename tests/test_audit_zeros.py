"""Audit localization of wrong blocks whose analytic gradient has exact zeros (issue 15).

A filter of a convolution whose gradient is scaled by 1.01 keeps its zeros (taps over input
channels a ReLU zeroed, taps that only see padding): they are right, and the audit must report
exactly the coordinates that are really wrong. The opposite bug, an analytic gradient of 0
where the loss does change, must still be caught and localized.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fastgrad import audit
from fastgrad.examples.problems import weighted_logcosh, weighted_logcosh_grad

ROWS, COLS = 256, 256
N = ROWS * COLS
ROW = 37  # the wrong row of W


def _problem():
    """sum a_i log cosh(x_i) + c_i x_i over W (256 x 256); a = c = 0 on the odd columns of row
    ROW: f does not depend on them and their gradient is exactly 0."""
    rng = np.random.default_rng(4)
    a, c, theta = rng.uniform(0.5, 2.0, N), rng.normal(size=N), rng.normal(size=N)
    dead = ROW * COLS + np.arange(1, COLS, 2)
    a[dead] = c[dead] = 0.0
    grad = weighted_logcosh_grad(theta, a, c)
    assert np.all(grad[dead] == 0.0)
    return theta, (a, c), grad, {"W": (ROWS, COLS)}


THETA, ARGS, GRAD, SEGS = _problem()
LIVE = ROW * COLS + np.arange(0, COLS, 2)  # the row's coordinates f depends on


def _audit(grad):
    return audit(weighted_logcosh, THETA, grad, args=ARGS, segments=SEGS, workers=1)


def test_scaled_row_with_zero_gradients_found_exactly():
    wrong = GRAD.copy()
    wrong[ROW * COLS:(ROW + 1) * COLS] *= 1.01  # the zeros stay zero: they are right
    report = _audit(wrong)
    assert not report.passed
    assert report.suspects.tolist() == LIVE.tolist()  # every odd column left out
    assert np.all(wrong[report.suspects] != 0)
    [block] = report.blocks
    assert (block.segment, block.first[0], block.last[0]) == ("W", ROW, ROW)
    assert block.counted == LIVE.size and block.cleared == block.size - LIVE.size
    assert block.unsettled == 0 and report.complete
    assert report.segments["W"].wrong_in_blocks == LIVE.size
    assert "counted wrong" in str(report)
    assert report.to_dict()["blocks"][0]["counted"] == LIVE.size
    assert report.evaluations <= 40 * math.log2(N)


def test_gradient_wrongly_zero_on_a_block_is_caught_and_localized():
    wrong = GRAD.copy()
    # a missing term: the gradient of W[ROW + 1, 64:192] returned as 0, where f does change
    missing = (ROW + 1) * COLS + np.arange(64, 192)
    assert np.all(GRAD[missing] != 0)
    wrong[missing] = 0.0
    report = _audit(wrong)
    assert not report.passed
    assert report.suspects.tolist() == missing.tolist()
    assert [(b.segment, b.first, b.last, b.cleared) for b in report.blocks] == [
        ("W", (ROW + 1, 64), (ROW + 1, 191), 0)]
    assert report.evaluations <= 40 * math.log2(N)


def _row_with_wrong_zeros():
    wrong = GRAD.copy()
    wrong[ROW * COLS:(ROW + 1) * COLS] *= 1.01
    zeroed = LIVE[[3, 40, 41, 90, 120]]
    wrong[zeroed] = 0.0
    return wrong, zeroed


def test_scaled_row_with_some_gradients_wrongly_zero():
    """The row scaled by 1.01, and 5 of its live coordinates returned as 0 (wrong, among the
    right zeros): the zeros of the block disagree and are localized; the right ones are not
    counted."""
    wrong, zeroed = _row_with_wrong_zeros()
    report = _audit(wrong)
    assert not report.passed and report.complete
    assert report.suspects.tolist() == LIVE.tolist()
    [block] = report.blocks
    assert block.cleared == block.size - LIVE.size and block.unsettled == 0
    assert set(zeroed.tolist()) <= set(report.suspects.tolist())
    assert report.evaluations <= 40 * math.log2(N)


def test_correct_gradient_with_zeros_passes():
    report = _audit(GRAD)
    assert report.passed, str(report)
    assert report.suspects.size == 0 and not report.blocks


def test_budget_during_the_zeros_leaves_them_out_of_the_suspects():
    wrong, zeroed = _row_with_wrong_zeros()
    full = _audit(wrong)
    assert full.phases["zeros"] > 0
    # the largest budget that runs out while the block's zeros are being judged
    for budget in range(full.evaluations - 1, 3, -1):
        report = audit(weighted_logcosh, THETA, wrong, args=ARGS, segments=SEGS, workers=1,
                       budget=budget)
        if report.blocks and report.blocks[0].unsettled:
            break
    else:
        pytest.fail("no budget ran out inside the zeros phase")
    assert report.incomplete and not report.passed and report.evaluations <= budget
    # the zeros not judged are not suspects, and the block says so; no right zero is a suspect
    [block] = report.blocks
    assert block.unsettled > 0 and block.counted < LIVE.size + zeroed.size
    found = set(report.suspects.tolist())
    assert set(LIVE.tolist()) - set(zeroed.tolist()) <= found <= set(LIVE.tolist())
    assert ("W", block.start, block.stop) in report.unresolved
    assert "not judged" in str(report)


# -- torch: a conv filter 1% off, with dead input channels and padding-only taps ---------------
torch = pytest.importorskip("torch")
from audit_models import conv_net  # noqa: E402

import fastgrad.torch  # noqa: E402

FILTER = 5


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, 4, 4, generator=g), torch.randint(0, 3, (2,), generator=g)


@pytest.fixture(scope="module")
def conv_case():
    x, y = _inputs()
    loss = torch.nn.CrossEntropyLoss()
    buggy, correct = conv_net(FILTER), conv_net(None)
    bad = fastgrad.torch.module_problem(buggy, loss, x, target=y).grad
    good = fastgrad.torch.module_problem(correct, loss, x, target=y).grad
    really_wrong = np.flatnonzero(bad != good)
    report = fastgrad.torch.audit_module(buggy, loss, x, target=y)
    return report, really_wrong, good, correct, (loss, x, y)


def test_conv_filter_found_exactly(conv_case):
    report, really_wrong, good, _, _ = conv_case
    names = list(report.segments)
    start = sum(report.segments[n].size for n in names[:names.index("2.weight")])
    lo, hi = start + FILTER * 32 * 9, start + (FILTER + 1) * 32 * 9
    # the planted filter really has zero-gradient taps (dead channels and padding): the case
    # is the one the test is about
    assert 0 < np.count_nonzero(good[lo:hi] == 0) < hi - lo
    assert really_wrong.min() >= lo and really_wrong.max() < hi
    assert report.suspects.tolist() == really_wrong.tolist()
    assert np.all(good[report.suspects] != 0)
    # found as a block whose zeros were cleared, not coordinate by coordinate
    assert sum(b.cleared for b in report.blocks) == hi - lo - really_wrong.size
    assert [n for n, s in report.segments.items() if not s.passed] == ["2.weight"]
    assert all(b.segment == "2.weight" and b.first[0] == b.last[0] == FILTER
               for b in report.blocks)
    n = sum(s.size for s in report.segments.values())
    assert report.evaluations <= 40 * math.log2(n)


def test_conv_net_correct_has_no_suspects(conv_case):
    _, _, _, correct, (loss, x, y) = conv_case
    report = fastgrad.torch.audit_module(correct, loss, x, target=y)
    assert report.passed, str(report)
    assert report.suspects.size == 0 and not report.blocks
