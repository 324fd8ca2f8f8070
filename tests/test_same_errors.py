"""check() and audit() share one preparation step: the same bad input gets the same exception
type and names the same argument, whichever is called."""

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.errors import InputError

X = np.linspace(-1.0, 1.0, 12)


def loss(t):
    return float(np.sum(np.sin(t)))


def grad(t):
    return np.cos(t)


def _writes(t):
    t[0] = 5.0
    return float(np.sum(t))


_calls = {"n": 0}


def _random(t):
    _calls["n"] += 1
    return float(np.sum(t) + 1e-3 * _calls["n"])


CASES = [
    # (what is wrong, f, theta, grad, options, exception, words in the message)
    ("theta with NaN", loss, np.array([1.0, np.nan]), np.ones(2), {}, ValueError, "theta"),
    ("theta of ints", loss, np.arange(3), np.ones(3), {}, TypeError, "theta"),
    ("empty theta", loss, np.zeros(0), np.zeros(0), {}, ValueError, "theta"),
    ("grad of the wrong size", loss, X, np.ones(5), {}, ValueError, "grad"),
    ("grad with inf", loss, X, np.full(12, np.inf), {}, ValueError, "grad"),
    ("grad of strings", loss, X, np.array(["a"] * 12), {}, TypeError, "grad"),
    ("args not a tuple", loss, X, grad(X), {"args": [1]}, TypeError, "args"),
    ("negative seed", loss, X, grad(X), {"seed": -1}, ValueError, "seed"),
    ("depth zero", loss, X, grad(X), {"depth": 0}, ValueError, "depth"),
    ("tol above one", loss, X, grad(X), {"tol": 2.0}, ValueError, "tol"),
    ("workers zero", loss, X, grad(X), {"workers": 0}, ValueError, "workers"),
    ("jit a string", loss, X, grad(X), {"jit": "yes"}, ValueError, "jit"),
    ("nondet_tol negative", loss, X, grad(X), {"nondet_tol": -1.0}, ValueError, "nondet_tol"),
    ("executor not one", loss, X, grad(X), {"executor": object()}, TypeError, "executor"),
    ("segments too small", loss, X, grad(X), {"segments": {"a": (5,)}}, ValueError, "segment"),
    ("f not callable", 3.0, X, grad(X), {}, TypeError, "f"),
    ("loss returns None", lambda t: None, X, grad(X), {}, fg.LossError, "None"),
    ("loss returns a vector", lambda t: t, X, grad(X), {}, fg.LossError, "scalar"),
    ("loss returns (loss, grad)", lambda t: (loss(t), grad(t)), X, grad(X), {}, fg.LossError,
     "grad=True"),
    ("loss not finite", lambda t: float("inf"), X, grad(X), {}, ValueError, "not finite"),
    ("loss writes into theta", _writes, X, grad(X), {}, ValueError, "writes into"),
    ("loss is random", _random, X, grad(X), {}, fg.NondeterminismError, "not deterministic"),
    ("loss raises", lambda t: 1 / 0, X, grad(X), {}, fg.LossError, "ZeroDivisionError"),
    ("grad=True but f returns a number", loss, X, True, {}, fg.LossError, "grad=True"),
]


@pytest.mark.parametrize("what, f, theta, g, options, error, words", CASES,
                         ids=[c[0] for c in CASES])
def test_check_and_audit_raise_the_same_error(what, f, theta, g, options, error, words):
    raised = {}
    for name, run in (("check", fg.check), ("audit", fg.audit)):
        _calls["n"] = 0  # the random loss gives the same two values to both
        with pytest.raises(error, match=words) as info:
            run(f, theta, g, **options)
        raised[name] = info.value
    assert type(raised["check"]) is type(raised["audit"]), what
    assert str(raised["check"]) == str(raised["audit"]), what


def test_bad_input_is_an_input_error_and_a_loss_that_raises_is_not():
    with pytest.raises(InputError):
        fg.check(loss, X, np.ones(5))
    with pytest.raises(fg.LossError) as info:
        fg.check(lambda t: 1 / 0, X, grad(X))
    assert not isinstance(info.value, InputError)


def test_grad_true_takes_the_gradient_from_f():
    def loss_and_grad(t):
        return loss(t), grad(t)

    assert fg.check(loss_and_grad, X, True, samples="all").passed
    assert fg.audit(loss_and_grad, X, True).passed

    def wrong(t):
        g = grad(t)
        g[3] *= 1.1
        return loss(t), g

    report = fg.check(wrong, X, True, samples="all")
    assert [c.index for c in report.failures] == [3]
    assert fg.audit(wrong, X, True).suspects.tolist() == [3]
