"""Hard problems for a gradient checker, shared by the tests and the benchmarks: losses with kinks
placed within one step of the evaluation point (ReLU units, hinge margins, max-pool ties), a
separable loss whose value is large where its gradient is tiny, and a way to plant errors.

Each ``*_problem`` returns ``(theta, args)``; the matching ``*_loss(theta, *args)`` and
``*_grad(theta, *args)`` are a correct loss and gradient pair, and ``*_SHAPES`` is the segment map.
The two-layer demo network lives in ``fastgrad.examples`` (``two_layer``).

>>> import fastgrad as fg
>>> from fastgrad.examples.problems import RELU_SHAPES, relu_grad, relu_loss, relu_problem
>>> theta, args = relu_problem()
>>> fg.check(relu_loss, theta, relu_grad(theta, *args), args=args, segments=RELU_SHAPES).passed
True
"""

from __future__ import annotations

import numpy as np

from .._numba_cache import cached_per_user
from ..segments import SegmentMap, flatten, unflatten
from ..steps import coordinate_steps

# -- a ReLU network with many pre-activations placed within h of zero ----------------------------

RELU_SHAPES = {"W1": (6, 12), "b1": (12,), "W2": (12, 3), "b2": (3,)}


def relu_parts(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The layers of the ReLU network, as views of ``theta``.

    Parameters
    ----------
    theta : numpy.ndarray
        The flat parameters laid out as ``RELU_SHAPES``.

    Returns
    -------
    tuple of numpy.ndarray
        ``W1 (6, 12), b1 (12,), W2 (12, 3), b2 (3,)``.
    """
    p = unflatten(theta, SegmentMap.from_shapes(RELU_SHAPES))
    return p["W1"], p["b1"], p["W2"], p["b2"]


def relu_loss(theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """Mean softmax loss of relu(X W1 + b1) W2 + b2.

    Parameters
    ----------
    theta : numpy.ndarray
        The flat parameters (``RELU_SHAPES``).
    X, y : numpy.ndarray
        The ``args`` of ``relu_problem``: data (N, 6) and integer labels (N,) in 0..2.

    Returns
    -------
    float
        The loss.
    """
    W1, b1, W2, b2 = relu_parts(theta)
    hidden = np.maximum(X @ W1 + b1, 0.0)
    scores = hidden @ W2 + b2
    scores = scores - scores.max(axis=1, keepdims=True)
    logp = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    return -logp[np.arange(X.shape[0]), y].mean()


def relu_grad(theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The analytic gradient of ``relu_loss`` (the ReLU's derivative at 0 taken as 0).

    Parameters
    ----------
    theta : numpy.ndarray
        The flat parameters (``RELU_SHAPES``).
    X, y : numpy.ndarray
        As for ``relu_loss``.

    Returns
    -------
    numpy.ndarray
        The flat gradient, laid out like ``theta``.
    """
    W1, b1, W2, b2 = relu_parts(theta)
    pre = X @ W1 + b1
    hidden = np.maximum(pre, 0.0)
    scores = hidden @ W2 + b2
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(X.shape[0]), y] -= 1.0
    p /= X.shape[0]
    dhidden = (p @ W2.T) * (pre > 0)
    return np.concatenate([(X.T @ dhidden).ravel(), dhidden.sum(0), (hidden.T @ p).ravel(),
                           p.sum(0)])


def relu_mask_signature(theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> int:
    """A hash of which ReLU units are active: the exact kink signal for ``kinks=``.

    Parameters
    ----------
    theta : numpy.ndarray
        The flat parameters (``RELU_SHAPES``).
    X, y : numpy.ndarray
        As for ``relu_loss`` (y is not used).

    Returns
    -------
    int
        Equal for two points exactly when their ReLU masks are equal (up to hash collisions).
    """
    W1, b1, _, _ = relu_parts(theta)
    return hash(((X @ W1 + b1) > 0).tobytes())


def relu_problem(seed: int = 0, dead: int = 0) -> tuple[np.ndarray, tuple]:
    """Pre-activations of sample 0 (and sample 1 for half the units) sit within +-h of zero.

    Parameters
    ----------
    seed : int, default 0
        Seed of the data and parameters.
    dead : int, default 0
        The last ``dead`` hidden units get a bias of -50: never active, gradient exactly 0.

    Returns
    -------
    theta : numpy.ndarray
        The flat parameters (``RELU_SHAPES``).
    args : tuple
        ``(X, y)``: data (8, 6) and labels (8,).
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((8, 6))
    y = rng.integers(0, 3, size=8)
    W1 = rng.standard_normal((6, 12)) / np.sqrt(6)
    b1 = np.zeros(12)
    h = coordinate_steps(np.zeros(1))[0]
    b1 = -(X[0] @ W1) + rng.uniform(-0.8, 0.8, 12) * h
    # half of the units also get a near-zero pre-activation for sample 1: W1 column shifted along X1
    for j in range(6):
        gap = X[1] @ W1[:, j] + b1[j] - rng.uniform(-0.8, 0.8) * h
        direction = X[1] - (X[1] @ X[0]) / (X[0] @ X[0]) * X[0]  # keeps sample 0 where it is
        W1[:, j] -= gap * direction / (direction @ X[1])
    if dead:
        b1[-dead:] = -50.0  # dead units: their gradient is exactly zero
    theta, _ = flatten({"W1": W1, "b1": b1, "W2": rng.standard_normal((12, 3)),
                        "b2": rng.standard_normal(3) * 0.1})
    return theta, (X, y)


def near_kink_count(theta: np.ndarray, X: np.ndarray) -> int:
    """How many pre-activations lie within the automatic step of zero.

    Parameters
    ----------
    theta : numpy.ndarray
        The flat parameters (``RELU_SHAPES``).
    X : numpy.ndarray
        The data of ``relu_problem``.

    Returns
    -------
    int
        The number of (sample, unit) pairs with ``|X W1 + b1| < h``.
    """
    W1, b1, _, _ = relu_parts(theta)
    pre = X @ W1 + b1
    return int(np.sum(np.abs(pre) < coordinate_steps(np.zeros(1))[0]))


# -- multiclass SVM (hinge) with margins on the hinge ---------------------------------------------

SVM_SHAPES = {"W": (5, 4), "b": (4,)}


def svm_loss(theta: np.ndarray, X: np.ndarray, y: np.ndarray, reg: float) -> float:
    """Multiclass hinge loss (CS231n) of X W + b, plus reg * |W|^2.

    Parameters
    ----------
    theta : numpy.ndarray
        The flat parameters (``SVM_SHAPES``).
    X, y, reg
        The ``args`` of ``svm_problem``: data (10, 5), labels (10,) in 0..3 and the
        regularization strength.

    Returns
    -------
    float
        The loss.
    """
    W = theta[:20].reshape(5, 4)
    b = theta[20:]
    s = X @ W + b
    margins = np.maximum(0.0, s - s[np.arange(len(y)), y][:, None] + 1.0)
    margins[np.arange(len(y)), y] = 0.0
    return margins.sum() / len(y) + reg * np.sum(W * W)


def svm_grad(theta: np.ndarray, X: np.ndarray, y: np.ndarray, reg: float) -> np.ndarray:
    """The analytic gradient of ``svm_loss`` (a margin at exactly 0 counted as inactive).

    Parameters
    ----------
    theta : numpy.ndarray
        The flat parameters (``SVM_SHAPES``).
    X, y, reg
        As for ``svm_loss``.

    Returns
    -------
    numpy.ndarray
        The flat gradient, laid out like ``theta``.
    """
    W = theta[:20].reshape(5, 4)
    b = theta[20:]
    s = X @ W + b
    active = (s - s[np.arange(len(y)), y][:, None] + 1.0 > 0).astype(float)
    active[np.arange(len(y)), y] = 0.0
    active[np.arange(len(y)), y] = -active.sum(axis=1)
    ds = active / len(y)
    return np.concatenate([(X.T @ ds + 2 * reg * W).ravel(), ds.sum(0)])


def svm_problem() -> tuple[np.ndarray, tuple]:
    """Sample 0 has every wrong class on its margin, within +-h.

    Returns
    -------
    theta : numpy.ndarray
        The flat parameters (``SVM_SHAPES``).
    args : tuple
        ``(X, y, reg)``.
    """
    rng = np.random.default_rng(5)
    X = rng.standard_normal((10, 5))
    y = rng.integers(0, 4, size=10)
    W = rng.standard_normal((5, 4)) * 0.5
    h = coordinate_steps(np.zeros(1))[0]
    s0 = X[0] @ W
    b = np.zeros(4)
    # sample 0: every wrong class sits on its margin, within +-h
    for c in range(4):
        if c != y[0]:
            b[c] = -(s0[c] - s0[y[0]] + 1.0) + rng.uniform(-0.8, 0.8) * h
    theta, _ = flatten({"W": W, "b": b})
    return theta, (X, y.astype(np.int64), 0.1)


# -- max pooling with ties within h ---------------------------------------------------------------

POOL_SHAPES = {"W": (4, 8), "c": (8,), "V": (4, 3)}


def pool_forward(theta: np.ndarray, X: np.ndarray) -> tuple:
    """The forward pass of the max-pool network: z = X W + c, pooled = max over pairs of z.

    Parameters
    ----------
    theta : numpy.ndarray
        The flat parameters (``POOL_SHAPES``).
    X : numpy.ndarray
        Data (N, 4).

    Returns
    -------
    tuple
        ``W, c, V, z (N, 8), pooled (N, 4)``.
    """
    W = theta[:32].reshape(4, 8)
    c = theta[32:40]
    V = theta[40:].reshape(4, 3)
    z = X @ W + c  # (N, 8): four pools of two
    pooled = z.reshape(-1, 4, 2).max(axis=2)
    return W, c, V, z, pooled


def pool_loss(theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """Squared error of tanh(maxpool(X W + c)) V against y.

    Parameters
    ----------
    theta : numpy.ndarray
        The flat parameters (``POOL_SHAPES``).
    X, y : numpy.ndarray
        The ``args`` of ``pool_problem``: data (6, 4) and targets (6, 3).

    Returns
    -------
    float
        The loss.
    """
    *_, V, _, pooled = pool_forward(theta, X)
    scores = np.tanh(pooled) @ V
    return 0.5 * np.sum((scores - y) ** 2) / len(X)


def pool_grad(theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The analytic gradient of ``pool_loss`` (a tie goes to the first entry of its pool).

    Parameters
    ----------
    theta : numpy.ndarray
        The flat parameters (``POOL_SHAPES``).
    X, y : numpy.ndarray
        As for ``pool_loss``.

    Returns
    -------
    numpy.ndarray
        The flat gradient, laid out like ``theta``.
    """
    W, c, V, z, pooled = pool_forward(theta, X)
    t = np.tanh(pooled)
    ds = (t @ V - y) / len(X)
    dpooled = (ds @ V.T) * (1 - t * t)
    pairs = z.reshape(-1, 4, 2)
    first = pairs[:, :, 0] >= pairs[:, :, 1]  # ties go to the first: a valid one-sided choice
    dz = np.stack([dpooled * first, dpooled * ~first], axis=2).reshape(-1, 8)
    return np.concatenate([(X.T @ dz).ravel(), dz.sum(0), (t.T @ ds).ravel()])


def pool_problem() -> tuple[np.ndarray, tuple]:
    """Sample 0 has the two entries of every pool tied to within h.

    Returns
    -------
    theta : numpy.ndarray
        The flat parameters (``POOL_SHAPES``).
    args : tuple
        ``(X, y)``.
    """
    rng = np.random.default_rng(7)
    X = rng.standard_normal((6, 4))
    y = rng.standard_normal((6, 3))
    W = rng.standard_normal((4, 8))
    h = coordinate_steps(np.zeros(1))[0]
    z0 = X[0] @ W
    c = np.zeros(8)
    for p in range(4):  # sample 0: the two entries of every pool tie to within h
        c[2 * p + 1] = z0[2 * p] - z0[2 * p + 1] + rng.uniform(-0.8, 0.8) * h
    theta, _ = flatten({"W": W, "c": c, "V": rng.standard_normal((4, 3))})
    return theta, (X, y)


# -- the separable case: true gradient near 0 where |f| is large ----------------------------------


def logcosh_loss(x: np.ndarray) -> float:
    """sum(log cosh x + 0.1 x^2); its gradient is tanh(x) + 0.2 x.

    Parameters
    ----------
    x : numpy.ndarray
        Any flat vector (the tests and benchmarks use n = 10^6).

    Returns
    -------
    float
        The loss.
    """
    return np.sum(np.log(np.cosh(x)) + 0.1 * x * x)


# -- a weighted separable loss at any n (the audit's problem) -----------------------------------


def weighted_logcosh_data(n: int, seed: int | np.random.Generator = 0) -> tuple:
    """Weights and a point for ``weighted_logcosh``: a ~ U(0.5, 2), c and theta ~ N(0, 1).

    Parameters
    ----------
    n : int
        The number of parameters.
    seed : int or numpy.random.Generator, default 0
        Seed of ``numpy.random.default_rng``, or a generator to draw from (it then moves on).

    Returns
    -------
    a, c, theta : numpy.ndarray
        Drawn in this order, n values each.
    """
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0, n)
    c = rng.standard_normal(n)
    theta = rng.standard_normal(n)
    return a, c, theta


def weighted_logcosh(theta: np.ndarray, a: np.ndarray, c: np.ndarray) -> float:
    """sum a_i log cosh(x_i) + c_i x_i: ~3 ms per evaluation at n = 10^6.

    Parameters
    ----------
    theta : numpy.ndarray
        The point, n values.
    a, c : numpy.ndarray
        The weights of ``weighted_logcosh_data``.

    Returns
    -------
    float
        The loss.
    """
    return float(np.sum(a * np.log(np.cosh(theta)) + c * theta))


@cached_per_user(nogil=True)
def weighted_logcosh_jit(theta, a, c):
    """``weighted_logcosh`` compiled by Numba, one coordinate at a time."""
    total = 0.0
    for i in range(theta.size):
        total += a[i] * np.log(np.cosh(theta[i])) + c[i] * theta[i]
    return total


def weighted_logcosh_grad(theta: np.ndarray, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The gradient of ``weighted_logcosh``: a tanh(theta) + c.

    Parameters
    ----------
    theta, a, c : numpy.ndarray
        As for ``weighted_logcosh``.

    Returns
    -------
    numpy.ndarray
        The gradient, n values.
    """
    return a * np.tanh(theta) + c


# -- planting errors -----------------------------------------------------------------------------


def plant(grad: np.ndarray, k: int, seed: int, scale: float, lo: int = 0,
          hi: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k wrong coordinates in [lo, hi), each off by 1% of the gradient's scale.

    Parameters
    ----------
    grad : numpy.ndarray
        The correct flat gradient (not modified).
    k : int
        How many coordinates to make wrong.
    seed : int
        Seed of the choice of coordinates and of the signs of the errors.
    scale : float
        The gradient's scale, e.g. its RMS: each error is +-0.01 * scale.
    lo, hi : int
        The range to plant in; ``hi`` None is the end of ``grad``.

    Returns
    -------
    wrong : numpy.ndarray
        A copy of ``grad`` with the k errors.
    index : numpy.ndarray
        The sorted flat indices of the wrong coordinates.
    """
    rng = np.random.default_rng(seed)
    hi = grad.size if hi is None else hi
    index = np.sort(rng.choice(np.arange(lo, hi), size=k, replace=False))
    wrong = grad.copy()
    wrong[index] += 0.01 * scale * rng.choice([-1.0, 1.0], size=k)
    return wrong, index
