"""A small numpy two-layer network trained on scikit-learn's 8x8 digits, watched by a monitor.

Used by the tests, by ``benchmarks/make_monitor_plots.py`` and as an example of where the
monitor's calls go in a training loop.  Needs scikit-learn (``pip install scikit-learn``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidValue
from .monitor import TrainingMonitor

#: A learning rate that trains the default network well with plain SGD.
GOOD_LR = 0.1


@dataclass
class DigitsRun:
    """What ``train_digits`` returns: the monitor, the final parameters, the data split."""

    monitor: TrainingMonitor
    params: dict[str, np.ndarray]
    theta: np.ndarray
    segments: dict[str, tuple[int, ...]]
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def load_digits_split(seed: int = 0, val_size: int = 450) -> tuple[np.ndarray, ...]:
    """(X_train, y_train, X_val, y_val): pixels scaled to [0, 1], a seeded random split.

    >>> X_train, y_train, X_val, y_val = load_digits_split()
    >>> X_train.shape, X_val.shape
    ((1347, 64), (450, 64))
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits demo needs scikit-learn: pip install scikit-learn") from None
    digits = load_digits()
    X = digits.data.astype(np.float64) / 16.0
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    val, train = order[:val_size], order[val_size:]
    return X[train], y[train], X[val], y[val]


def _activation(name: str):
    if name == "relu":
        return (lambda z: np.maximum(z, 0.0)), (lambda z, h: (z > 0).astype(z.dtype))
    if name == "tanh":
        return np.tanh, (lambda z, h: 1.0 - h * h)
    raise InvalidValue(f"activation: expected 'relu' or 'tanh', got {name!r}")


def digits_loss(theta: np.ndarray, X: np.ndarray, y: np.ndarray, reg: float = 0.0,
                activation: str = "relu", hidden: int = 32) -> float:
    """Softmax cross-entropy (+ L2) of the two-layer net at flat parameters ``theta``.

    >>> theta, segs = init_params(hidden=32)
    >>> round(digits_loss(theta, *load_digits_split()[:2]), 1)
    2.3
    """
    return _forward_backward(theta, X, y, reg, activation, hidden, need_grad=False)[0]


def digits_grad(theta: np.ndarray, X: np.ndarray, y: np.ndarray, reg: float = 0.0,
                activation: str = "relu", hidden: int = 32) -> np.ndarray:
    """Analytic gradient of :func:`digits_loss` (flat, same layout as ``theta``).

    >>> theta, segs = init_params(hidden=32)
    >>> digits_grad(theta, *load_digits_split()[:2]).shape == theta.shape
    True
    """
    return _forward_backward(theta, X, y, reg, activation, hidden, need_grad=True)[1]


def _segments(hidden: int, inputs: int = 64, classes: int = 10) -> dict[str, tuple[int, ...]]:
    return {"W1": (inputs, hidden), "b1": (hidden,), "W2": (hidden, classes), "b2": (classes,)}


def _views(theta: np.ndarray, segments: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    views, start = {}, 0
    for name, shape in segments.items():
        size = int(np.prod(shape))
        views[name] = theta[start:start + size].reshape(shape)
        start += size
    return views


def init_params(hidden: int = 32, weight_scale: float | None = None,
                seed: int = 0) -> tuple[np.ndarray, dict[str, tuple[int, ...]]]:
    """Flat parameters and their segment shapes; W1 ~ 0.01 * N(0, 1) unless ``weight_scale``.

    >>> theta, segs = init_params(hidden=32)
    >>> theta.size, list(segs)
    (2410, ['W1', 'b1', 'W2', 'b2'])
    """
    segments = _segments(hidden)
    theta = np.zeros(sum(int(np.prod(s)) for s in segments.values()))
    p = _views(theta, segments)
    rng = np.random.default_rng(seed)
    s1 = 0.01 if weight_scale is None else weight_scale  # small, as in CS231n's two-layer net
    p["W1"][...] = s1 * rng.standard_normal(p["W1"].shape)
    p["W2"][...] = np.sqrt(1.0 / hidden) * rng.standard_normal(p["W2"].shape)
    return theta, segments


def _forward_backward(theta, X, y, reg, activation, hidden, need_grad, monitor=None):
    act, dact = _activation(activation)
    p = _views(theta, _segments(hidden))
    z = X @ p["W1"] + p["b1"]
    h = act(z)
    scores = h @ p["W2"] + p["b2"]
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = len(y)
    loss = -log_probs[np.arange(n), y].mean()
    loss += 0.5 * reg * (np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2))
    if not need_grad:
        return float(loss), None, None
    dscores = np.exp(log_probs)
    dscores[np.arange(n), y] -= 1.0
    dscores /= n
    grad = np.zeros_like(theta)
    g = _views(grad, _segments(hidden))
    g["W2"][...] = h.T @ dscores + reg * p["W2"]
    g["b2"][...] = dscores.sum(axis=0)
    dh = dscores @ p["W2"].T
    dz = dh * dact(z, h)
    g["W1"][...] = X.T @ dz + reg * p["W1"]
    g["b1"][...] = dz.sum(axis=0)
    if monitor is not None:
        monitor.log_activations("hidden", h)
        monitor.log_activations("output", scores)
        monitor.log_gradients("hidden", dz)
        monitor.log_gradients("output", dscores)
    return float(loss), grad, scores


def accuracy(theta: np.ndarray, X: np.ndarray, y: np.ndarray, activation: str = "relu",
             hidden: int = 32) -> float:
    """Share of ``X`` classified as ``y`` by the net at ``theta``.

    >>> theta, segs = init_params()
    >>> 0.0 <= accuracy(theta, *load_digits_split()[:2]) <= 1.0
    True
    """
    act, _ = _activation(activation)
    p = _views(theta, _segments(hidden))
    scores = act(X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]
    return float(np.mean(scores.argmax(axis=1) == y))


def train_digits(*, lr: float = GOOD_LR, epochs: int = 8, hidden: int = 32, batch_size: int = 32,
                 activation: str = "relu", weight_scale: float | None = None, reg: float = 1e-4,
                 train_size: int | None = None, seed: int = 0, gradcheck: bool = False,
                 monitor: TrainingMonitor | None = None) -> DigitsRun:
    """Train the two-layer net with minibatch SGD, logging everything into a TrainingMonitor.

    >>> run = train_digits(lr=0.1, epochs=8)
    >>> [f.kind for f in run.monitor.diagnose()]
    []
    """
    X_train, y_train, X_val, y_val = load_digits_split(seed)
    if train_size is not None:
        X_train, y_train = X_train[:train_size], y_train[:train_size]
    theta, segments = init_params(hidden, weight_scale, seed)
    mon = TrainingMonitor(segments=segments) if monitor is None else monitor
    rng = np.random.default_rng(seed + 1)
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(y_train))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss, grad, _ = _forward_backward(theta, X_train[batch], y_train[batch], reg,
                                              activation, hidden, need_grad=True, monitor=mon)
            mon.log_loss(step, loss)
            if not np.all(np.isfinite(grad)):
                break  # diverged: the monitor has seen it
            update = -lr * grad
            mon.log_update(theta, update)
            theta += update
            step += 1
        else:
            mon.log_epoch(epoch, train_acc=accuracy(theta, X_train, y_train, activation, hidden),
                          val_acc=accuracy(theta, X_val, y_val, activation, hidden))
            mon.log_filters(_views(theta, segments)["W1"], image_shape=(8, 8), layer="W1")
            if gradcheck:
                mon.gradcheck(digits_loss, theta, digits_grad,
                              args=(X_train[:8], y_train[:8], reg, activation, hidden))
            continue
        break
    return DigitsRun(mon, {k: v.copy() for k, v in _views(theta, segments).items()}, theta,
                     segments, (X_train, y_train, X_val, y_val))
