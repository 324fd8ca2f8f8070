"""A built-in two-layer ReLU/softmax network (CS231n style), used by ``fastgrad demo``,
the benchmarks and the tests. Numpy and Numba versions of the same loss.

>>> from fastgrad.examples import two_layer_problem
>>> problem = two_layer_problem(bug="bias")          # b1's gradient dropped
>>> fastgrad.check(problem.f, problem.theta, problem.grad, segments=problem.segments,
...                args=problem.args).segments["b1"].passed
False

From the command line: ``fastgrad check fastgrad.examples:buggy_two_layer_problem``.
"""

from __future__ import annotations

import numpy as np

from .._numba_cache import cached_per_user
from ..checks.coordinates import Problem
from ..errors import InvalidValue
from ..segments import SegmentMap, flatten

BUGS = ("bias", "transpose", "reg")


def two_layer_data(
    N: int = 16, D: int = 64, H: int = 64, C: int = 10, seed: int = 0, reg: float = 0.05
) -> tuple[np.ndarray, SegmentMap, tuple]:
    """Random data, labels and parameters of a two-layer net.

    Parameters
    ----------
    N : int, default 16
        Number of examples.
    D : int, default 64
        Input dimension.
    H : int, default 64
        Hidden units.
    C : int, default 10
        Classes.
    seed : int, default 0
        Seed of ``numpy.random.default_rng`` for data, labels and parameters.
    reg : float, default 0.05
        L2 regularization strength.

    Returns
    -------
    theta : numpy.ndarray
        The parameters ``W1 (D, H), b1 (H,), W2 (H, C), b2 (C,)``, flattened.
    segments : SegmentMap
        Their map.
    args : tuple
        ``(X, y, reg, D, H, C)``: the extra arguments of the loss and gradient functions.
    """
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


def two_layer_loss(
    theta: np.ndarray, X: np.ndarray, y: np.ndarray, reg: float, D: int, H: int, C: int
) -> float:
    """Mean softmax loss of relu(X W1 + b1) W2 + b2, plus reg * (|W1|^2 + |W2|^2).

    Parameters
    ----------
    theta : numpy.ndarray
        The flat parameters, laid out as ``two_layer_data`` returns them.
    X, y, reg, D, H, C
        The ``args`` of ``two_layer_data``: data (N, D), integer labels (N,), regularization
        strength and the layer sizes.

    Returns
    -------
    float
        The loss.
    """
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


@cached_per_user(nogil=True)
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


def two_layer_grad(
    theta: np.ndarray, X: np.ndarray, y: np.ndarray, reg: float, D: int, H: int, C: int,
    bug: str | None = None,
) -> np.ndarray:
    """The analytic gradient of ``two_layer_loss``, by hand, optionally with a planted bug.

    Parameters
    ----------
    theta, X, y, reg, D, H, C
        As for ``two_layer_loss``.
    bug : {None, "bias", "transpose", "reg"}
        One of ``BUGS`` to plant: "bias" drops the b1 gradient, "transpose" transposes the W1
        gradient (W1 must be square, D == H), "reg" forgets the factor 2 of the regularization
        gradient.

    Returns
    -------
    numpy.ndarray
        The flat gradient, laid out like ``theta``.

    Raises
    ------
    ValueError
        When ``bug`` is not None or one of ``BUGS``.
    """
    if bug is not None and bug not in BUGS:
        raise InvalidValue(f"bug: expected one of {BUGS} or None, got {bug!r}")
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


def two_layer_problem(bug: str | None = None, jit: bool = True, **sizes: int | float) -> Problem:
    """A ready-made Problem for ``fastgrad check fastgrad.examples:two_layer_problem``.

    Parameters
    ----------
    bug : {None, "bias", "transpose", "reg"}
        A bug to plant in the gradient, as for ``two_layer_grad``.
    jit : bool, default True
        Use the Numba loss ``two_layer_loss_jit`` (True) or the numpy one.
    **sizes
        ``N``, ``D``, ``H``, ``C``, ``seed``, ``reg``, as for ``two_layer_data``.

    Returns
    -------
    fastgrad.Problem
        The loss, theta, gradient, segments and args.

    Raises
    ------
    ValueError
        When ``bug`` is not None or one of ``BUGS``.
    TypeError
        When ``sizes`` has a name ``two_layer_data`` does not take.
    """
    theta, segs, args = two_layer_data(**sizes)
    f = two_layer_loss_jit if jit else two_layer_loss
    grad = two_layer_grad(theta, *args, bug=bug)
    return Problem(f, theta, grad, segments=segs, args=args)


def buggy_two_layer_problem() -> Problem:
    """The same network with its b1 gradient missing (for the CLI's failing example).

    Returns
    -------
    fastgrad.Problem
        ``two_layer_problem(bug="bias")``.
    """
    return two_layer_problem(bug="bias")
