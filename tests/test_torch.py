"""fastgrad.torch: torch's own layers pass, a wrong custom backward fails in the right tensor."""

import copy
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason='the torch adapter needs torch: pip install -e ".[test,torch]"')

import fastgrad  # noqa: E402
import fastgrad.torch as fgt  # noqa: E402
from fastgrad.testing import assert_function, assert_module  # noqa: E402

nn = torch.nn
F = torch.nn.functional


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, requires_grad=False):
    return torch.randn(*shape, generator=gen(seed)).requires_grad_(requires_grad)


def module(factory, seed=0):
    torch.manual_seed(seed)
    return factory()


def assert_all_segments_pass(report, names):
    assert list(report.segments) == list(names)
    for name in names:
        seg = report.segments[name]
        assert seg.passed, (name, str(report))
        assert seg.checked > 0
    assert report.passed, str(report)


# ---------------------------------------------------------------- torch's own layers


def test_linear_parameters_and_input():
    net = module(lambda: nn.Linear(5, 3))
    x = randn(4, 5, requires_grad=True)
    report = fgt.check_module(net, lambda out: out.tanh().sum(), x)
    assert_all_segments_pass(report, ["weight", "bias", "input0"])
    assert report.segments["weight"].checked == 15
    assert report.max_rel_error < 1e-6


def test_sequential_names_follow_named_parameters():
    net = module(lambda: nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2)))
    report = fgt.check_module(net, lambda out: out.pow(2).sum(), randn(6, 4))
    assert_all_segments_pass(report, [n for n, _ in net.named_parameters()])
    assert list(report.segments) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_conv2d():
    net = module(lambda: nn.Conv2d(2, 3, kernel_size=3, padding=1))
    report = fgt.check_module(net, None, randn(2, 2, 5, 5, requires_grad=True), samples=24)
    assert_all_segments_pass(report, ["weight", "bias", "input0"])


def test_lstm_parameters_and_initial_state():
    lstm = module(lambda: nn.LSTM(3, 4, batch_first=True))
    x = randn(2, 5, 3, requires_grad=True)
    h0 = (randn(1, 2, 4, seed=1, requires_grad=True), randn(1, 2, 4, seed=2))
    report = fgt.check_module(lstm, lambda out: out[0].sum() + out[1][1].pow(2).sum(), x, h0)
    names = [n for n, _ in lstm.named_parameters()] + ["input0", "input1.0"]
    assert_all_segments_pass(report, names)


def test_layernorm():
    net = module(lambda: nn.LayerNorm(6))
    report = fgt.check_module(net, None, randn(4, 6, requires_grad=True))
    assert_all_segments_pass(report, ["weight", "bias", "input0"])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batchnorm1d(mode):
    bn = module(lambda: nn.BatchNorm1d(3))
    with torch.no_grad():
        bn.running_mean.copy_(randn(3, seed=4))
        bn.running_var.copy_(randn(3, seed=5).abs() + 0.5)
        bn.weight.copy_(randn(3, seed=6))
    bn.train(mode == "train")
    before = copy.deepcopy(bn.state_dict())
    report = fgt.check_module(bn, lambda out: out.pow(3).sum(), randn(5, 3, requires_grad=True))
    assert_all_segments_pass(report, ["weight", "bias", "input0"])
    assert bn.training == (mode == "train")
    for key, value in bn.state_dict().items():  # running stats did not move
        assert torch.equal(value, before[key]), key


def test_embedding_weights():
    emb = module(lambda: nn.Embedding(10, 4))
    idx = torch.tensor([[1, 2, 2, 7], [0, 9, 1, 1]])
    report = fgt.check_module(emb, lambda out: out.sin().sum(), idx, samples="all")
    assert_all_segments_pass(report, ["weight"])
    rows_used = {1, 2, 7, 0, 9}
    for rec in report.coords:  # unused rows have zero gradient both ways
        if rec.local[0] not in rows_used:
            assert rec.analytic == 0.0 and rec.numeric == 0.0


def test_embedding_sparse_gradient():
    emb = module(lambda: nn.Embedding(6, 3, sparse=True))
    report = fgt.check_module(emb, None, torch.tensor([0, 3, 3, 5]))
    assert report.passed, str(report)


def test_maxpool2d_near_ties_are_resolved_kinks():
    x = randn(1, 2, 4, 4)
    x[..., 1::2, :] = x[..., 0::2, :] + 2e-6  # within the first step: every window crosses a kink
    x.requires_grad_(True)
    report = fgt.check_module(nn.MaxPool2d(2), None, x, samples="all")
    assert report.passed, str(report)
    assert report.segments["input0"].kinks > 0


def test_maxpool2d_ties_are_kinks_not_failures():
    x = randn(1, 2, 4, 4)
    x[..., 1::2, :] = x[..., 0::2, :]  # every 2x2 window has a tie: perturbations cross kinks
    x.requires_grad_(True)
    report = fgt.check_module(nn.MaxPool2d(2), None, x, samples="all")
    assert report.passed, str(report)
    assert report.segments["input0"].kinks > 0
    assert any(rec.verdict == "kink" or rec.kink for rec in report.coords)


def test_conv_relu_maxpool_network():
    net = module(lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)))
    report = fgt.check_module(net, lambda out: out.pow(2).sum(), randn(2, 1, 6, 6), samples=16)
    assert_all_segments_pass(report, ["0.weight", "0.bias"])


def test_cross_entropy_loss_module_with_target():
    net = module(lambda: nn.Linear(5, 3))
    x, y = randn(6, 5), torch.tensor([0, 2, 1, 1, 0, 2])
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1)
    report = fgt.check_module(net, criterion, x, target=y)
    assert_all_segments_pass(report, ["weight", "bias"])
    assert criterion.weight.dtype == torch.float32  # the caller's loss module was copied


def test_cross_entropy_functional():
    x = randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 4, 2, 2])
    report = fgt.check_function(lambda logits: F.cross_entropy(logits, y), x)
    assert_all_segments_pass(report, ["arg0"])


@pytest.mark.parametrize("layer", [nn.GELU(), nn.GELU(approximate="tanh"), nn.Softmax(dim=1)])
def test_activation_modules(layer):
    report = fgt.check_module(layer, None, randn(3, 4, requires_grad=True))
    assert_all_segments_pass(report, ["input0"])


@pytest.mark.parametrize("fn", [F.gelu, lambda x: F.softmax(x, dim=-1), torch.tanh, F.silu])
def test_activation_functions(fn):
    assert_function(fn, randn(3, 5, requires_grad=True))


def test_dropout_in_train_mode_is_pinned():
    net = module(lambda: nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 2)))
    net.train()
    state = torch.get_rng_state()
    report = fgt.check_module(net, lambda out: out.pow(2).sum(), randn(3, 4))
    assert report.passed, str(report)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG did not move
    assert net.training


# ---------------------------------------------------------------- custom autograd.Function


class ScaledProduct(torch.autograd.Function):
    """out = x * w + b (w broadcast over rows); backward correct unless ``wrong`` names an input."""

    wrong = None

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return x * w + b

    @staticmethod
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        dx = grad_out * w
        dw = (grad_out * x).sum(0)
        db = grad_out.sum(0)
        return dx, dw, db


class WrongWeightGrad(ScaledProduct):
    @staticmethod
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        return grad_out * w, (grad_out * x).sum(0) * 1.5, grad_out.sum(0)  # dw is wrong


class WrongInputGrad(ScaledProduct):
    @staticmethod
    def backward(ctx, grad_out):
        x, w = ctx.saved_tensors
        return grad_out * w.flip(0), (grad_out * x).sum(0), grad_out.sum(0)  # dx is wrong


def custom_args():
    return randn(4, 3, requires_grad=True), randn(3, seed=1, requires_grad=True), randn(3, seed=2,
                                                                                        requires_grad=True)


def test_custom_function_correct_backward_passes():
    report = assert_function(ScaledProduct.apply, *custom_args())
    assert_all_segments_pass(report, ["arg0", "arg1", "arg2"])


@pytest.mark.parametrize("fn, bad", [(WrongWeightGrad.apply, "arg1"), (WrongInputGrad.apply, "arg0")])
def test_custom_function_wrong_backward_fails_in_that_tensor(fn, bad):
    report = fgt.check_function(fn, *custom_args())
    assert not report.passed
    for name, seg in report.segments.items():
        assert seg.passed == (name != bad), (name, str(report))
    assert report.segments[bad].failed > 0
    assert {rec.segment for rec in report.failures} == {bad}


def test_assert_function_raises_gradient_check_error_with_report():
    with pytest.raises(fastgrad.GradientCheckError) as info:
        assert_function(WrongWeightGrad.apply, *custom_args())
    assert not info.value.report.segments["arg1"].passed
    assert "arg1" in str(info.value)


def test_only_tensors_that_require_grad_are_checked():
    x, w, b = custom_args()
    report = fgt.check_function(ScaledProduct.apply, x.detach(), w, b.detach())
    assert list(report.segments) == ["arg1"]


def test_custom_function_inside_module_fails_in_the_parameter():
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(randn(3, seed=3))
            self.shift = nn.Parameter(randn(3, seed=4))

        def forward(self, x):
            return WrongWeightGrad.apply(x, self.scale, self.shift)

    report = fgt.check_module(Layer(), None, randn(4, 3, requires_grad=True))
    assert not report.segments["scale"].passed
    assert report.segments["shift"].passed and report.segments["input0"].passed


# ---------------------------------------------------------------- the caller's objects


def test_callers_module_and_tensors_untouched():
    net = module(lambda: nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)))
    net.train()
    net[0].weight.grad = torch.ones_like(net[0].weight)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = randn(5, 4, requires_grad=True)
    x_before = x.detach().clone()
    fgt.check_module(net, lambda out: out.pow(2).sum(), x)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]) and value.dtype == before[key].dtype, key
    assert torch.equal(net[0].weight.grad, torch.ones(3, 4))
    assert net[2].weight.grad is None and x.grad is None
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(x.detach(), x_before) and x.dtype == torch.float32


def test_eval_mode_kept_on_the_copy():
    net = module(lambda: nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9)))
    net.eval()
    report = fgt.check_module(net, None, randn(3, 4))
    assert report.passed and not net.training


def test_workers_share_nothing():
    net = module(lambda: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)))
    x = randn(5, 6)
    serial = fgt.check_module(net, None, x, samples=12, workers=1)
    threaded = fgt.check_module(net, None, x, samples=12, workers=2)
    assert threaded.passed and threaded.path == "threads"
    assert [r.numeric for r in serial.coords] == [r.numeric for r in threaded.coords]


def test_default_is_serial():
    report = fgt.check_function(torch.tanh, randn(3, requires_grad=True))
    assert report.path == "serial"


def test_double_input_checked_in_float64():
    x = randn(3, 4, requires_grad=True).double()
    report = fgt.check_function(lambda t: t.exp().sum(1), x)
    assert report.dtype == "float64" and report.passed


# ---------------------------------------------------------------- errors


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="module: expected a torch.nn.Module"):
        fgt.check_module(lambda x: x, None, randn(2))
    with pytest.raises(ValueError, match="loss_fn: must return a scalar.*shape \\(2, 3\\)"):
        fgt.check_module(nn.Linear(4, 3), lambda out: out, randn(2, 4))
    with pytest.raises(ValueError, match="tensors: no floating tensor requires grad"):
        fgt.check_function(torch.tanh, randn(3))
    with pytest.raises(ValueError, match="nothing to check"):
        net = nn.Linear(2, 2).requires_grad_(False)
        fgt.check_module(net, None, randn(3, 2))
    with pytest.raises(ValueError, match="seed"):
        fgt.check_function(torch.tanh, randn(3, requires_grad=True), seed=-1)


def test_truly_random_loss_is_refused():
    def noisy(x):
        return x * np.random.default_rng().random()  # numpy RNG, not pinned by torch's seed

    with pytest.raises(ValueError, match="different values"):
        fgt.check_function(noisy, randn(3, requires_grad=True))


# ---------------------------------------------------------------- import hygiene


def test_import_fastgrad_does_not_import_frameworks():
    code = "import sys, fastgrad; assert not {'torch', 'jax'} & set(sys.modules), 'heavy import'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_torch_says_how_to_install():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import fastgrad.torch\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "pip install fastgrad[torch]" in out.stdout


def test_check_module_returns_a_report():
    report = fgt.check_module(nn.Linear(2, 1), None, randn(3, 2))
    assert isinstance(report, fastgrad.Report)
    assert report.to_dict()["passed"] is True
    assert_module(nn.Linear(2, 1), None, randn(3, 2))
