"""fastgrad.testing: assert_audit, and assert_passed on every report type."""

from __future__ import annotations

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.errors import InvalidType
from fastgrad.examples.problems import RELU_SHAPES, relu_grad, relu_loss, relu_problem
from fastgrad.testing import assert_audit, assert_passed

SEGMENTS = fg.SegmentMap.from_shapes(RELU_SHAPES)


def _sq(t):
    return float(t @ t)


def test_assert_audit_catches_a_wrong_bias_gradient_and_names_its_segment():
    theta, args = relu_problem()
    grad = relu_grad(theta, *args)
    bias = SEGMENTS["b1"]
    grad[bias.start + 4] += 0.3  # one bias entry wrong
    with pytest.raises(fg.GradientCheckError) as caught:
        assert_audit(relu_loss, theta, grad, args=args, segments=RELU_SHAPES)
    report = caught.value.report
    assert isinstance(report, fg.AuditReport) and report.status == "failed"
    assert report.suspects.tolist() == [bias.start + 4]
    message = str(caught.value)
    assert message == str(report)  # the message is the audit's table
    assert "b1[4]" in message and "FAILED" in message


def test_assert_audit_passes_a_correct_relu_gradient_with_kinks():
    theta, args = relu_problem()
    report = assert_audit(relu_loss, theta, relu_grad(theta, *args), args=args,
                          segments=RELU_SHAPES, budget=400)
    assert isinstance(report, fg.AuditReport) and report.passed


def test_assert_audit_refuses_bad_input_as_the_audit_does():
    with pytest.raises(fg.errors.InvalidValue, match=r"grad: has 2 values"):
        assert_audit(_sq, np.ones(3), np.ones(2))
    with pytest.raises(fg.errors.InvalidValue, match=r"budget"):
        assert_audit(_sq, np.ones(3), 2 * np.ones(3), budget=-1)


def test_assert_passed_takes_a_report_and_an_audit_report():
    theta = np.array([1.0, 2.0, 3.0])
    for run in (fg.check, fg.audit):
        good = run(_sq, theta, 2 * theta)
        assert assert_passed(good) is good
        bad = run(_sq, theta, np.array([2.0, 4.0, 7.0]), segments={"w": (2,), "b": (1,)})
        with pytest.raises(fg.GradientCheckError) as caught:
            assert_passed(bad)
        assert caught.value.report is bad and str(caught.value) == str(bad)
        assert "FAILED" in str(caught.value)


def test_assert_passed_takes_a_jacobian_report():
    torch = pytest.importorskip("torch")
    import fastgrad.torch

    x = torch.linspace(0.1, 1.0, 3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(fg.GradientCheckError) as caught:
        fastgrad.torch.gradcheck(lambda x: x.detach() * 2 + x, (x,))
    report = caught.value.report
    assert type(report).__name__ == "JacobianReport"
    with pytest.raises(fg.GradientCheckError) as again:
        assert_passed(report)
    assert again.value.report is report and str(again.value) == str(report)


@pytest.mark.parametrize("value", [True, None, {"passed": True}, "passed"])
def test_assert_passed_refuses_anything_else_with_invalid_type(value):
    with pytest.raises(InvalidType, match="report: expected a fastgrad Report or AuditReport"):
        assert_passed(value)


def test_gradient_check_error_of_an_audit_report_is_its_table():
    report = fg.audit(_sq, np.array([1.0, 2.0]), np.array([2.0, 5.0]))
    error = fg.GradientCheckError(report)
    assert isinstance(error, AssertionError)
    assert str(error) == str(report) and error.report is report
    assert "fastgrad audit FAILED" in str(error)
