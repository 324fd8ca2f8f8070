"""grad=True: f returns (loss, gradient) from one call, as scikit-learn's and scipy's do."""

import numpy as np
import pytest

import fastgrad as fg

sklearn = pytest.importorskip("sklearn", reason="the (loss, gradient) cases use scikit-learn")
from sklearn._loss.loss import HalfBinomialLoss, HalfMultinomialLoss  # noqa: E402
from sklearn.linear_model._linear_loss import LinearModelLoss  # noqa: E402

rng = np.random.default_rng(0)
X = rng.standard_normal((60, 5))
Y2 = (rng.random(60) > 0.5).astype(float)
Y3 = rng.integers(0, 3, 60).astype(float)


def binomial():
    model = LinearModelLoss(base_loss=HalfBinomialLoss(), fit_intercept=True)
    coef = rng.standard_normal(6) * 0.3
    return (lambda c: model.loss_gradient(c, X, Y2, l2_reg_strength=0.1)), coef, \
        {"w": (5,), "b": (1,)}


def multinomial():
    model = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=3), fit_intercept=True)
    coef = rng.standard_normal(18) * 0.3  # 3 x 5 weights, then the 3 intercepts
    return (lambda c: model.loss_gradient(c, X, Y3, l2_reg_strength=0.1)), coef, None


def test_scikit_learn_loss_gradient_correct_passes_and_a_halved_intercept_fails_in_b():
    f, coef, segments = binomial()
    assert fg.check(f, coef, True, segments=segments, samples="all").passed
    assert fg.audit(f, coef, True, segments=segments).passed

    def halved_intercept(c):
        loss, grad = f(c)
        grad = grad.copy()
        grad[-1] *= 0.5
        return loss, grad

    report = fg.check(halved_intercept, coef, True, segments=segments, samples="all")
    assert {n for n, s in report.segments.items() if not s.passed} == {"b"}
    audit = fg.audit(halved_intercept, coef, True, segments=segments)
    assert audit.suspects.tolist() == [5]


def test_scikit_learn_multinomial_l2_dropped_fails():
    f, coef, _ = multinomial()
    assert fg.check(f, coef, True, samples="all").passed
    model = LinearModelLoss(base_loss=HalfMultinomialLoss(n_classes=3), fit_intercept=True)

    def without_l2_gradient(c):
        loss, _ = model.loss_gradient(c, X, Y3, l2_reg_strength=0.1)
        return loss, model.loss_gradient(c, X, Y3, l2_reg_strength=0.0)[1]

    report = fg.check(without_l2_gradient, coef, True, samples="all")
    assert not report.passed
    # the intercepts (the last 3) are not regularized: only weight coordinates fail
    failed = {c.index for c in report.failures}
    assert failed and max(failed) < 15


def test_a_tuple_with_a_gradient_array_says_to_pass_grad_true():
    f, coef, segments = binomial()
    with pytest.raises(fg.LossError, match="grad=True"):
        fg.check(f, coef, f(coef)[1], segments=segments)


def test_cli_problem_with_grad_true(tmp_path, monkeypatch, capsys):
    from fastgrad.cli import main

    (tmp_path / "lossgrad.py").write_text(
        "import numpy as np\nimport fastgrad as fg\n"
        "def problem():\n"
        "    f = lambda t: (float(np.sum(np.sin(t))), np.cos(t))\n"
        "    return fg.Problem(f, np.linspace(-1, 1, 9), True)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "lossgrad:problem", "--samples", "all"]) == 0
    assert main(["check", "lossgrad:problem", "--audit"]) == 0
