"""fastgrad.numpy_models: CS231n-style numpy layers and a two-layer net pass; planted bugs fail."""

import numpy as np
import pytest

import fastgrad
from fastgrad.numpy_models import check_layer, check_model
from fastgrad.testing import assert_layer, assert_model

# ---------------------------------------------------------------- layers, CS231n conventions


def affine_forward(x, w, b):
    out = x.reshape(x.shape[0], -1) @ w + b
    return out, (x, w, b)


def affine_backward(dout, cache):
    x, w, b = cache
    dx = (dout @ w.T).reshape(x.shape)
    dw = x.reshape(x.shape[0], -1).T @ dout
    db = dout.sum(axis=0)
    return dx, dw, db


def affine_backward_no_bias(dout, cache):
    dx, dw, _ = affine_backward(dout, cache)
    return dx, dw, np.zeros(cache[2].shape)  # planted: forgot the bias gradient


def affine_backward_transposed(dout, cache):
    dx, dw, db = affine_backward(dout, cache)
    return dx, dw.T, db  # planted: transposed weight gradient (square w)


def relu_forward(x):
    return np.maximum(0, x), x


def relu_backward(dout, cache):
    return dout * (cache > 0)


def relu_backward_leaky(dout, cache):
    return dout * np.where(cache > 0, 1.0, 0.1)  # planted: wrong slope below zero


def batchnorm_forward(x, gamma, beta, bn_param):
    eps, momentum = bn_param.get("eps", 1e-5), bn_param.get("momentum", 0.9)
    if bn_param["mode"] == "train":
        mean, var = x.mean(axis=0), x.var(axis=0)
        running_mean = bn_param.get("running_mean", np.zeros(x.shape[1]))
        bn_param["running_mean"] = momentum * running_mean + (1 - momentum) * mean
    else:
        mean, var = bn_param["running_mean"], bn_param["running_var"]
    x_hat = (x - mean) / np.sqrt(var + eps)
    return gamma * x_hat + beta, (x_hat, gamma, var + eps, bn_param["mode"])


def batchnorm_backward(dout, cache):
    x_hat, gamma, var_eps, mode = cache
    n = dout.shape[0]
    dx_hat = dout * gamma
    if mode == "train":
        dx = (n * dx_hat - dx_hat.sum(0) - x_hat * (dx_hat * x_hat).sum(0)) / (n * np.sqrt(var_eps))
    else:
        dx = dx_hat / np.sqrt(var_eps)
    return dx, (dout * x_hat).sum(0), dout.sum(0)


def dropout_forward(x, dropout_param):
    p = dropout_param["p"]
    mask = (np.random.rand(*x.shape) < p) / p  # unseeded, as students write it
    return x * mask, mask


def dropout_backward(dout, cache):
    return dout * cache


def normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_affine_layer_passes_with_argument_names():
    report = check_layer(affine_forward, affine_backward, normal(4, 2, 3), normal(6, 5, seed=1),
                         normal(5, seed=2))
    assert report.passed, str(report)
    assert list(report.segments) == ["x", "w", "b"]
    assert report.max_rel_error < 1e-6


def test_relu_layer_single_gradient():
    report = assert_layer(relu_forward, relu_backward, normal(5, 4))
    assert list(report.segments) == ["x"]


@pytest.mark.parametrize("mode", ["train", "test"])
def test_batchnorm_layer_and_bn_param_untouched(mode):
    bn_param = {"mode": mode, "running_mean": normal(3, seed=3), "running_var": np.ones(3) * 2}
    saved = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in bn_param.items()}
    x = normal(6, 3) * 2 + 1
    report = check_layer(batchnorm_forward, batchnorm_backward, x, normal(3, seed=1),
                         normal(3, seed=2), bn_param)
    assert report.passed, str(report)
    assert list(report.segments) == ["x", "gamma", "beta"]
    assert set(bn_param) == set(saved)
    for key, value in saved.items():
        assert np.array_equal(bn_param[key], value), key


def test_unseeded_dropout_is_pinned_and_global_rng_restored():
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    report = check_layer(dropout_forward, dropout_backward, normal(4, 5), {"p": 0.5})
    assert report.passed, str(report)
    assert np.array_equal(np.random.get_state()[1], state)


def test_missing_bias_gradient_fails_in_b():
    report = check_layer(affine_forward, affine_backward_no_bias, normal(4, 3), normal(3, 3, seed=1),
                         normal(3, seed=2))
    assert not report.passed
    assert [name for name, seg in report.segments.items() if not seg.passed] == ["b"]


def test_transposed_weight_gradient_fails_in_w():
    report = check_layer(affine_forward, affine_backward_transposed, normal(4, 3),
                         normal(3, 3, seed=1), normal(3, seed=2))
    assert [name for name, seg in report.segments.items() if not seg.passed] == ["w"]


def test_wrong_relu_backward_fails():
    with pytest.raises(fastgrad.GradientCheckError) as info:
        assert_layer(relu_forward, relu_backward_leaky, normal(5, 4))
    assert not info.value.report.segments["x"].passed


def test_inputs_never_modified():
    x, w, b = normal(4, 3), normal(3, 2, seed=1), normal(2, seed=2)
    copies = [a.copy() for a in (x, w, b)]
    check_layer(affine_forward, affine_backward, x, w, b)
    for original, saved in zip((x, w, b), copies):
        assert np.array_equal(original, saved)


def test_layer_errors():
    with pytest.raises(ValueError, match="backward: returned 2 gradient"):
        check_layer(affine_forward, lambda dout, cache: affine_backward(dout, cache)[:2],
                    normal(2, 3), normal(3, 2), normal(2))
    with pytest.raises(TypeError, match="forward: must return \\(out, cache\\)"):
        check_layer(lambda x: x * 2, relu_backward, normal(3))
    with pytest.raises(ValueError, match="gradient of 'w'.*shape \\(2, 3\\), expected \\(3, 2\\)"):
        check_layer(affine_forward, affine_backward_transposed, normal(2, 3), normal(3, 2),
                    normal(2))
    with pytest.raises(ValueError, match="nothing to check"):
        check_layer(relu_forward, relu_backward, [1.0, 2.0])


# ---------------------------------------------------------------- a two-layer net


class TwoLayerNet:
    """The CS231n assignment-1 network: affine - relu - affine - softmax, with L2."""

    def __init__(self, input_dim=4, hidden_dim=4, num_classes=3, reg=0.1, seed=1, bug=None):
        rng = np.random.default_rng(seed)
        self.params = {
            "W1": rng.standard_normal((input_dim, hidden_dim)) * 0.5,
            "b1": rng.standard_normal(hidden_dim) * 0.1,
            "W2": rng.standard_normal((hidden_dim, num_classes)) * 0.5,
            "b2": rng.standard_normal(num_classes) * 0.1,
        }
        self.reg = reg
        self.bug = bug
        self.calls = 0

    def loss(self, X, y):
        self.calls += 1
        p = self.params
        hidden, cache1 = affine_forward(X, p["W1"], p["b1"])
        active, cache2 = relu_forward(hidden)
        scores, cache3 = affine_forward(active, p["W2"], p["b2"])
        shifted = scores - scores.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        n = X.shape[0]
        loss = -np.log(probs[np.arange(n), y]).mean()
        loss += 0.5 * self.reg * (np.sum(p["W1"] ** 2) + np.sum(p["W2"] ** 2))
        dscores = probs.copy()
        dscores[np.arange(n), y] -= 1
        dscores /= n
        dactive, dW2, db2 = affine_backward(dscores, cache3)
        dhidden = relu_backward(dactive, cache2)
        _, dW1, db1 = affine_backward(dhidden, cache1)
        grads = {"W1": dW1 + self.reg * p["W1"], "b1": db1, "W2": dW2 + self.reg * p["W2"],
                 "b2": db2}
        if self.bug == "no_bias":
            grads["b1"] = np.zeros_like(db1)
        elif self.bug == "transposed":
            grads["W1"] = grads["W1"].T
        elif self.bug == "no_reg":
            grads["W2"] = dW2
        return loss, grads


def data(n=6, d=4, classes=3):
    return normal(n, d, seed=7), np.random.default_rng(8).integers(0, classes, n)


def test_two_layer_net_passes_and_model_untouched():
    model = TwoLayerNet()
    X, y = data()
    originals = dict(model.params)
    values = {k: v.copy() for k, v in model.params.items()}
    report = check_model(model, X=X, y=y)
    assert report.passed, str(report)
    assert list(report.segments) == ["W1", "b1", "W2", "b2"]
    for name in values:
        assert model.params[name] is originals[name]
        assert np.array_equal(model.params[name], values[name])
    assert model.calls == 0  # every evaluation ran on a copy


@pytest.mark.parametrize("bug, segment", [("no_bias", "b1"), ("transposed", "W1"),
                                          ("no_reg", "W2")])
def test_planted_bugs_fail_in_their_segment(bug, segment):
    X, y = data()
    report = check_model(TwoLayerNet(bug=bug), X=X, y=y)
    assert [name for name, seg in report.segments.items() if not seg.passed] == [segment]


def test_custom_loss_and_grads_and_param_subset():
    X, y = data()
    model = TwoLayerNet()
    calls = []

    def loss_and_grads(m, X, y):
        calls.append(m)
        return m.loss(X, y)

    report = check_model(model, loss_and_grads, X=X, y=y, params=["W2", "b2"])
    assert list(report.segments) == ["W2", "b2"] and report.passed
    assert all(m is not model for m in calls)


def test_assert_model_raises_with_report():
    X, y = data()
    with pytest.raises(fastgrad.GradientCheckError) as info:
        assert_model(TwoLayerNet(bug="no_bias"), X=X, y=y)
    assert "b1" in str(info.value)


def test_threads_give_the_same_numbers():
    X, y = data()
    serial = check_model(TwoLayerNet(), X=X, y=y, workers=1)
    threaded = check_model(TwoLayerNet(), X=X, y=y, workers=2)
    assert serial.path == "serial" and threaded.path == "threads"
    assert [r.numeric for r in serial.coords] == [r.numeric for r in threaded.coords]


def test_model_errors():
    X, y = data()
    with pytest.raises(TypeError, match="model: expected an object with a non-empty `params`"):
        check_model(object(), X=X, y=y)
    with pytest.raises(ValueError, match="params: 'W3' is not in model.params"):
        check_model(TwoLayerNet(), X=X, y=y, params=["W3"])

    def no_b2(m, X, y):
        loss, grads = m.loss(X, y)
        del grads["b2"]
        return loss, grads

    with pytest.raises(ValueError, match="grads has no entry for parameter 'b2'"):
        check_model(TwoLayerNet(), no_b2, X=X, y=y)
