"""Losses that are not thread-safe get the verdicts of a serial evaluation.

scikit-learn's MLPClassifier._loss_grad_lbfgs stores the unpacked parameters on the estimator and
writes into shared scratch lists; a CS231n-style model keeps its hidden layer in a buffer on self.
On a thread pool both give wrong values; fastgrad must notice (the thread-safety guard, or the
serial confirmation of failing coordinates), refuse threads for them and judge serial values:
every correct gradient passes, every planted bug fails in its own block.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.engine import plan as plans
from fastgrad.engine import planner  # noqa: F401 - fg.engine.planner below

sklearn = pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402


def mlp_problem(activation: str, alpha: float = 0.1, seed: int = 0):
    """A fitted MLPClassifier and what its `_loss_grad_lbfgs` is called with (as lbfgs does)."""
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((120, 10)), rng.integers(0, 3, 120)
    mlp = MLPClassifier(hidden_layer_sizes=(24,), activation=activation, alpha=alpha,
                        solver="lbfgs", max_iter=20, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(X, y)
    Y = mlp._label_binarizer.transform(y).astype(float)
    # _pack's order: every coefficient matrix, then every intercept vector
    shapes = {f"W{i}": c.shape for i, c in enumerate(mlp.coefs_)}
    shapes.update({f"b{i}": b.shape for i, b in enumerate(mlp.intercepts_)})
    segs = fg.SegmentMap.from_shapes(shapes)
    theta = np.concatenate([c.ravel() for c in mlp.coefs_ + mlp.intercepts_])
    layers = len(mlp.coefs_) + 1
    args = (X, Y, None, [X] + [None] * (layers - 1), [None] * (layers - 1),
            [np.empty_like(c) for c in mlp.coefs_], [np.empty_like(b) for b in mlp.intercepts_])
    return mlp, theta, segs, args


def failed_blocks(report) -> set[str]:
    return {s.name for s in report.segments.values() if not s.passed}


@pytest.mark.slow
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
def test_mlp_classifier_gets_serial_verdicts_with_default_options(activation):
    mlp, theta, segs, args = mlp_problem(activation)
    correct = fg.check(mlp._loss_grad_lbfgs, theta, True, args=args, segments=segs)
    assert correct.passed, correct

    def loss(t, *a):
        return mlp._loss_grad_lbfgs(t, *a)[0]

    grad = mlp._loss_grad_lbfgs(theta.copy(), *args)[1].copy()
    halved = grad.copy()
    halved[segs["b0"].start:segs["b0"].stop] *= 0.5  # an intercept gradient halved
    assert failed_blocks(fg.check(loss, theta, halved, args=args, segments=segs)) == {"b0"}

    no_l2 = grad.copy()  # the L2 term (alpha * W / n_samples) dropped from every coefficient
    for name in ("W0", "W1"):
        s = segs[name]
        no_l2[s.start:s.stop] -= 0.1 * theta[s.start:s.stop] / args[0].shape[0]
    assert failed_blocks(fg.check(loss, theta, no_l2, args=args, segments=segs)) == {"W0", "W1"}

    w0 = segs["W0"]
    planted = w0.start + int(np.argmax(np.abs(grad[w0.start:w0.stop])))
    one_off = grad.copy()
    one_off[planted] *= 1.01  # one coefficient 1% off
    report = fg.check(loss, theta, one_off, args=args, segments=segs, samples="all")
    assert [c.index for c in report.failures] == [planted]
    audit = fg.audit(loss, theta, one_off, args=args, segments=segs)
    assert planted in audit.suspects.tolist()


class ScratchNet:
    """A two-layer tanh/softmax net, CS231n style, computing its hidden layer in a buffer on self
    (fine serially; on threads one call overwrites another's hidden layer)."""

    def __init__(self, X, y, hidden):
        self.X, self.y = X, y
        self.segments = fg.SegmentMap.from_shapes(
            {"W1": (X.shape[1], hidden), "b1": (hidden,), "W2": (hidden, int(y.max()) + 1),
             "b2": (int(y.max()) + 1,)})
        self.hidden = np.empty((X.shape[0], hidden))

    def loss(self, theta):
        p = fg.unflatten(theta, self.segments)
        np.dot(self.X, p["W1"], out=self.hidden)
        self.between_layers()
        self.hidden += p["b1"]
        np.tanh(self.hidden, out=self.hidden)
        scores = self.hidden @ p["W2"] + p["b2"]
        scores -= scores.max(1, keepdims=True)
        rows = np.arange(len(self.y))
        return float(np.mean(np.log(np.exp(scores).sum(1)) - scores[rows, self.y]))

    def between_layers(self):
        """Nothing here; a subclass pauses."""

    def grad(self, theta):
        p = fg.unflatten(theta, self.segments)
        h = np.tanh(self.X @ p["W1"] + p["b1"])
        e = np.exp(h @ p["W2"] + p["b2"])
        e /= e.sum(1, keepdims=True)
        e[np.arange(len(self.y)), self.y] -= 1
        e /= len(self.y)
        dh = (e @ p["W2"].T) * (1 - h * h)
        return np.concatenate([(self.X.T @ dh).ravel(), dh.sum(0), (h.T @ e).ravel(), e.sum(0)])


class PausingScratchNet(ScratchNet):
    """ScratchNet pausing after it wrote its hidden layer (as a model that logs, or waits on
    I/O, between layers): on threads another call overwrites the buffer in that pause, every
    time two calls overlap, not only when the scheduler happens to interleave them. On the
    calling thread the pause is 2 ms; on any other thread it lasts until another call has
    written its hidden layer (at most 50 ms), so that two calls of one threaded batch overlap
    even when the second thread starts late. A fixed pause was not enough: with 0.2 ms one CI
    run's threaded audit saw no overlap at all, and with 2 ms one loaded CI run's did not
    either (nothing to refuse: the assertion on the refusal failed, the verdicts were right)."""

    def __init__(self, X, y, hidden):
        super().__init__(X, y, hidden)
        self.writes = 0  # hidden layers written so far, by any thread

    def between_layers(self):
        self.writes += 1
        mine = self.writes
        pause = 2e-3 if threading.current_thread() is threading.main_thread() else 50e-3
        deadline = time.perf_counter() + pause
        while self.writes == mine and time.perf_counter() < deadline:
            time.sleep(1e-4)


def scratch_net(seed=0, cls=ScratchNet):
    rng = np.random.default_rng(seed)
    net = cls(rng.standard_normal((400, 40)), rng.integers(0, 5, 400), 100)
    return net, 0.2 * rng.standard_normal(net.segments.size)


@pytest.mark.skipif(fg.engine.planner.resolve_workers(None) < 2, reason="needs 2 cores for threads")
def test_a_model_with_a_scratch_buffer_on_self_is_refused_threads_and_judged_serially():
    # pausing between layers: without the pause, whether two threaded calls overlap is up to the
    # scheduler, and one loaded CI run saw none (the guard had nothing to refuse)
    net, theta = scratch_net(cls=PausingScratchNet)
    grad = net.grad(theta)
    # workers=2: threads asked for (a default check this short runs serially, unguarded)
    report = fg.check(net.loss, theta, grad, segments=net.segments, workers=2)
    assert report.passed, report
    assert report.path in ("serial", "processes")
    assert "threads refused" in report.path_reason and "flat index" in report.path_reason
    assert plans.thread_unsafe(net.loss) is not None  # for this object, for the process
    halved = grad.copy()
    b1 = net.segments["b1"]
    halved[b1.start:b1.stop] *= 0.5
    again = fg.check(net.loss, theta, halved, segments=net.segments, workers=2)
    assert failed_blocks(again) == {"b1"}
    assert "earlier check" in again.path_reason
    # another object of the same class has its own verdict: it is guarded anew
    other, _ = scratch_net(1)
    assert plans.thread_unsafe(other.loss) is None


def test_a_pure_loss_keeps_its_threads_and_the_guard_costs_one_small_batch():
    from fastgrad.engine.evaluator import Evaluator

    rng = np.random.default_rng(5)
    A = rng.standard_normal((300, 60))

    def pure(theta):
        return float(np.sum(np.tanh(A @ theta.reshape(60, -1))))

    x = rng.standard_normal(60 * 20)
    ev = Evaluator(pure, x, workers=2)
    ev.at(x)
    index = np.arange(x.size, dtype=np.int64)
    f_plus, f_minus = ev.pairs(index, np.full(x.size, 1e-5))
    assert ev.path == "threads" and "refused" not in ev.path_reason
    assert 0 < ev.guard_evaluations <= 2 * ev.guard_size() < x.size
    serial = Evaluator(pure, x, workers=1)
    sp, sm = serial.pairs(index, np.full(x.size, 1e-5))
    assert np.array_equal(f_plus, sp) and np.array_equal(f_minus, sm)
    # every call of f is counted: the guard's duplicates too, and said in the path line
    assert ev.evaluations == 1 + 2 * x.size + ev.guard_evaluations
    assert f"{ev.guard_evaluations} of the evaluations were the thread-safety guard's" \
        in ev.path_reason


@pytest.mark.skipif(fg.engine.planner.resolve_workers(None) < 2, reason="needs 2 cores for threads")
def test_an_audit_of_a_model_with_a_scratch_buffer_gets_serial_verdicts():
    """fg.audit's first batch (one global direction) cannot show what threads do to the loss:
    a disagreeing direction evaluated on threads is evaluated again serially, and a difference
    refuses threads and starts the audit again on the new plan."""
    net, theta = scratch_net(cls=PausingScratchNet)
    grad = net.grad(theta)
    correct = fg.audit(net.loss, theta, grad, segments=net.segments)
    assert correct.passed, correct
    assert correct.suspects.size == 0 and not correct.blocks
    assert "threads refused" in correct.path_reason
    assert plans.thread_unsafe(net.loss) is not None
    assert correct.path in ("serial", "processes")

    fresh, _ = scratch_net(cls=PausingScratchNet)  # another object: guarded anew, threads at first
    assert plans.thread_unsafe(fresh.loss) is None
    w1 = fresh.segments["W1"]
    planted = w1.start + 123
    wrong = grad.copy()
    wrong[planted] += 0.5 * max(1.0, abs(wrong[planted]))
    found = fg.audit(fresh.loss, theta, wrong, segments=fresh.segments)
    assert not found.passed
    assert found.suspects.tolist() == [planted]
    assert "threads refused" in found.path_reason
    # the evaluations before the refusal are counted, in a phase of their own
    assert sum(found.phases.values()) == found.evaluations


@pytest.mark.skipif(fg.engine.planner.resolve_workers(None) < 2, reason="needs 2 cores for threads")
@pytest.mark.parametrize("planted", [False, True])
def test_the_audit_confirms_disagreeing_directions_serially_when_the_guard_missed(
        monkeypatch, planted):
    """The guard's first batch can miss a rare interference (here it is switched off): the
    directions that disagree on threads are evaluated again serially, the difference refuses
    threads, and the audit starts again serially: the verdicts of a serial audit."""
    from fastgrad.engine.evaluator import Evaluator

    monkeypatch.setattr(Evaluator, "_needs_guard", lambda self, backend: False)
    net, theta = scratch_net(cls=PausingScratchNet)
    grad = net.grad(theta)
    w1 = net.segments["W1"]
    index = w1.start + 123
    if planted:
        grad[index] += 0.5 * max(1.0, abs(grad[index]))
    report = fg.audit(net.loss, theta, grad, segments=net.segments)
    assert report.passed is not planted
    assert report.suspects.tolist() == ([index] if planted else [])
    assert "threads refused" in report.path_reason and "random direction" in report.path_reason
    assert report.phases["before threads were refused"] > 0
    assert sum(report.phases.values()) == report.evaluations
    serial = fg.audit(net.loss, theta, grad, segments=net.segments, workers=1)
    assert serial.suspects.tolist() == report.suspects.tolist()


@pytest.mark.skipif(fg.engine.planner.resolve_workers(None) < 2, reason="needs 2 cores for threads")
def test_the_audit_does_not_rerun_serially_a_disagreement_that_was_truncation(monkeypatch):
    """A direction that disagrees at step h only from truncation (a steep exponential) is shown to
    be truncation by the second step and reports nothing: its threaded values are not evaluated
    again serially (GPT-2's first 382 evaluations on threads had 114 such re-runs, serial while
    the workers waited)."""
    from fastgrad.engine.evaluator import Evaluator
    from fastgrad.tuning import DEFAULT_TUNING

    rows = []
    confirm = Evaluator.confirm_directions_serially

    def counting(self, key, lo, hi, step, f_plus, f_minus, suspect, threaded=None):
        rows.append(int(np.count_nonzero(suspect)))
        return confirm(self, key, lo, hi, step, f_plus, f_minus, suspect, threaded)

    monkeypatch.setattr(Evaluator, "confirm_directions_serially", counting)
    theta = np.random.default_rng(0).uniform(-0.2, 0.2, 200_000)
    report = fg.audit(lambda t: float(np.sum(np.exp(1000 * t)) / 1000), theta,
                      np.exp(1000 * theta), segments={"a": (100_000,), "b": (100_000,)},
                      workers=2)
    assert report.passed and report.path == "threads"
    # the premise: the segments' directions disagreed at h and were measured at a second step
    assert report.phases["segments"] > 2 * 2 * DEFAULT_TUNING.directions_per_test
    assert rows and sum(rows) == 0
