"""A built-in two-layer ReLU/softmax network (CS231n style), used by ``fastgrad demo``,
the benchmarks and the tests. Numpy and Numba versions of the same loss."""

from __future__ import annotations

import numpy as np
from numba import njit

from .checks.coordinates import Problem
from .segments import flatten

BUGS = ("bias", "transpose", "reg")


def two_layer_data(N=16, D=64, H=64, C=10, seed=0, reg=0.05):
    """Random data, labels and parameters of a two-layer net; returns (theta, segs, args)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, D))
    y = rng.integers(0, C, size=N)
    params = {
        "W1": rng.standard_normal((D, H)) / np.sqrt(D),
        "b1": 0.1 * rng.standard_normal(H),
        "W2": rng.standard_normal((H, C)) / np.sqrt(H),
        "b2": 0.1 * rng.standard_normal(C),
    }
    theta, segs = flatten(params)
    return theta, segs, (X, y.astype(np.int64), float(reg), D, H, C)


def two_layer_loss(theta, X, y, reg, D, H, C):
    """Mean softmax loss of relu(X W1 + b1) W2 + b2, plus reg * (|W1|^2 + |W2|^2)."""
    W1 = theta[: D * H].reshape(D, H)
    b1 = theta[D * H : D * H + H]
    W2 = theta[D * H + H : D * H + H + H * C].reshape(H, C)
    b2 = theta[D * H + H + H * C :]
    hidden = np.maximum(0.0, X @ W1 + b1)
    scores = hidden @ W2 + b2
    scores = scores - scores.max(axis=1, keepdims=True)
    log_probs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    data = -log_probs[np.arange(X.shape[0]), y].mean()
    return data + reg * (np.sum(W1 * W1) + np.sum(W2 * W2))


@njit(cache=True, nogil=True)
def two_layer_loss_jit(theta, X, y, reg, D, H, C):
    """The same loss compiled by Numba (what the JIT kernel calls per perturbation)."""
    W1 = theta[: D * H].reshape((D, H))
    b1 = theta[D * H : D * H + H]
    W2 = theta[D * H + H : D * H + H + H * C].reshape((H, C))
    b2 = theta[D * H + H + H * C :]
    N = X.shape[0]
    hidden = np.maximum(X @ W1 + b1, 0.0)
    scores = hidden @ W2 + b2
    data = 0.0
    for n in range(N):
        top = scores[n].max()
        total = 0.0
        for c in range(C):
            total += np.exp(scores[n, c] - top)
        data += np.log(total) + top - scores[n, y[n]]
    return data / N + reg * (np.sum(W1 * W1) + np.sum(W2 * W2))


def two_layer_grad(theta, X, y, reg, D, H, C, bug=None):
    """The analytic gradient by hand; ``bug`` plants one of BUGS: "bias" drops the b1 gradient,
    "transpose" transposes the W1 gradient (W1 must be square, D == H), "reg" forgets the
    factor 2 of the regularization gradient."""
    if bug is not None and bug not in BUGS:
        raise ValueError(f"bug: expected one of {BUGS} or None, got {bug!r}")
    W1 = theta[: D * H].reshape(D, H)
    b1 = theta[D * H : D * H + H]
    W2 = theta[D * H + H : D * H + H + H * C].reshape(H, C)
    b2 = theta[D * H + H + H * C :]
    N = X.shape[0]
    pre = X @ W1 + b1
    hidden = np.maximum(0.0, pre)
    scores = hidden @ W2 + b2
    scores = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=1, keepdims=True)
    dscores = probs
    dscores[np.arange(N), y] -= 1.0
    dscores /= N
    dW2 = hidden.T @ dscores
    db2 = dscores.sum(axis=0)
    dhidden = (dscores @ W2.T) * (pre > 0)
    dW1 = X.T @ dhidden
    db1 = dhidden.sum(axis=0)
    factor = 1.0 if bug == "reg" else 2.0
    dW1 = dW1 + factor * reg * W1
    dW2 = dW2 + factor * reg * W2
    if bug == "bias":
        db1 = np.zeros_like(db1)
    if bug == "transpose":
        dW1 = dW1.T
    return np.concatenate([dW1.ravel(), db1, dW2.ravel(), db2])


def two_layer_problem(bug: str | None = None, jit: bool = True, **sizes) -> Problem:
    """A ready-made Problem for ``fastgrad check``: ``fastgrad check fastgrad.examples:two_layer_problem``."""
    theta, segs, args = two_layer_data(**sizes)
    f = two_layer_loss_jit if jit else two_layer_loss
    grad = two_layer_grad(theta, *args, bug=bug)
    return Problem(f, theta, grad, segments=segs, args=args)


def buggy_two_layer_problem() -> Problem:
    """The same network with its b1 gradient missing (for the CLI's failing example)."""
    return two_layer_problem(bug="bias")
