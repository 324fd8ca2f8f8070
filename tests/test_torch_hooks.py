"""Whatever autograd applies when the caller runs backward is part of the analytic gradient:
parameter hooks, post-accumulate-grad hooks, forward hooks that register tensor hooks, module
backward hooks, parametrizations, tied parameters. Each planted hook bug is caught in the right
parameter, correct hooks and parametrizations pass, and the caller's model is bitwise unchanged
afterwards."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import fastgrad.torch as ft  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def data(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)


def snapshot(module):
    """Everything a check could change: values, dtypes, grads, hooks, mode."""
    params = {n: (p.detach().clone(), p.dtype, None if p.grad is None else p.grad.clone())
              for n, p in module.named_parameters()}
    buffers = {n: b.clone() for n, b in module.named_buffers()}
    hooks = [(len(m._forward_hooks), len(m._backward_hooks)) for m in module.modules()]
    return params, buffers, hooks, module.training


def assert_unchanged(module, before):
    params, buffers, hooks, training = snapshot(module)
    for name, (value, dtype, grad) in before[0].items():
        now_value, now_dtype, now_grad = params[name]
        assert now_dtype == dtype and torch.equal(now_value, value), name
        assert (grad is None) == (now_grad is None), name
        assert grad is None or torch.equal(grad, now_grad), name
    for name, value in before[1].items():
        assert torch.equal(buffers[name], value), name
    assert hooks == before[2] and training == before[3]


def failing(report):
    return sorted(name for name, s in report.segments.items() if not s.passed)


# ---------------------------------------------------------------- planted hook bugs


def test_a_one_percent_parameter_hook_is_caught_in_that_parameter():
    net = mlp()
    net[2].weight.register_hook(lambda g: g * 1.01)
    x, y = data()
    before = snapshot(net)
    report = ft.check_module(net, torch.nn.CrossEntropyLoss(), x, target=y)
    assert failing(report) == ["2.weight"]
    assert "loss.backward() on your module" in report.path_reason
    assert_unchanged(net, before)
    audit = ft.audit_module(net, torch.nn.CrossEntropyLoss(), x, target=y)
    assert not audit.passed and failing(audit) == ["2.weight"]
    assert_unchanged(net, before)


def test_a_post_accumulate_grad_hook_is_caught_and_grads_are_restored():
    net = mlp(2)
    def scale(p):
        p.grad.mul_(1.02)

    net[0].bias.register_post_accumulate_grad_hook(scale)
    x, y = data(3)
    # the caller has gradients of their own from a previous step: they are kept
    torch.nn.CrossEntropyLoss()(net(x), y).backward()
    before = snapshot(net)
    report = ft.check_module(net, torch.nn.CrossEntropyLoss(), x, target=y)
    assert failing(report) == ["0.bias"]
    assert_unchanged(net, before)


def test_a_forward_hook_registering_a_scaling_tensor_hook_is_caught_upstream():
    net = mlp(4)
    # the gradient flowing into layer 0's output is scaled: layer 0's parameters are 1% off,
    # layer 2's are not
    def scale_upstream(module, args, out):
        out.register_hook(lambda g: g * 1.01)  # returns None: the output is unchanged

    net[0].register_forward_hook(scale_upstream)
    x, y = data(5)
    before = snapshot(net)
    report = ft.check_module(net, torch.nn.CrossEntropyLoss(), x, target=y)
    assert failing(report) == ["0.bias", "0.weight"]
    audit = ft.audit_module(net, torch.nn.CrossEntropyLoss(), x, target=y)
    assert failing(audit) == ["0.bias", "0.weight"]
    assert_unchanged(net, before)


def test_a_module_backward_hook_is_caught():
    net = mlp(6)
    net[2].register_full_backward_hook(lambda m, gin, gout: (gin[0] * 1.01,))
    x, y = data(7)
    report = ft.check_module(net, torch.nn.CrossEntropyLoss(), x, target=y)
    assert failing(report) == ["0.bias", "0.weight"]  # the scaled grad_input flows upstream


class BuggyNorm(torch.autograd.Function):
    """v / ||v|| (rows) whose backward drops the normalization's projection: wrong."""

    @staticmethod
    def forward(ctx, v):
        norm = v.norm(dim=1, keepdim=True)
        ctx.save_for_backward(norm)
        return v / norm

    @staticmethod
    def backward(ctx, g):
        (norm,) = ctx.saved_tensors
        return g / norm  # bug: misses - w (w . g)


class RowNormalized(torch.nn.Module):
    def forward(self, v):
        return BuggyNorm.apply(v)


def test_weight_norm_passes_and_a_parametrization_with_a_planted_backward_bug_is_named():
    x, y = data(8)
    net = mlp(9)
    torch.nn.utils.parametrizations.weight_norm(net[0])
    torch.nn.utils.parametrizations.spectral_norm(net[2])
    net.eval()  # spectral norm's power iteration runs in train mode only
    before = snapshot(net)
    assert ft.check_module(net, torch.nn.CrossEntropyLoss(), x, target=y).passed
    assert ft.audit_module(net, torch.nn.CrossEntropyLoss(), x, target=y).passed
    assert_unchanged(net, before)

    buggy = mlp(10)
    torch.nn.utils.parametrize.register_parametrization(buggy[2], "weight", RowNormalized())
    report = ft.check_module(buggy, torch.nn.CrossEntropyLoss(), x, target=y)
    assert failing(report) == ["2.parametrizations.weight.original"]


def test_tied_parameters_and_correct_hooks_pass():
    torch.manual_seed(11)
    emb = torch.nn.Embedding(7, 4)
    head = torch.nn.Linear(4, 7, bias=False)
    head.weight = emb.weight  # tied
    net = torch.nn.Sequential(emb, torch.nn.Tanh(), head)
    # a hook that clips nothing and a forward hook that only observes: no change
    emb.weight.register_hook(lambda g: g.clamp(-1e6, 1e6))
    seen = []
    net[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    tokens = torch.randint(0, 7, (3, 5))
    before = snapshot(net)
    assert ft.check_module(net, lambda out: out.pow(2).mean(), tokens).passed
    assert ft.audit_module(net, lambda out: out.pow(2).mean(), tokens).passed
    assert seen  # the forward hook ran
    assert_unchanged(net, before)


def test_a_hook_that_steps_an_optimizer_in_backward_is_refused_with_the_reason():
    net = mlp(12)
    def sgd_step(p):
        p.data.add_(p.grad, alpha=-0.1)

    for p in net.parameters():
        p.register_post_accumulate_grad_hook(sgd_step)
    x, y = data(13)
    before = snapshot(net)
    with pytest.raises(ValueError, match="changed parameter .* in place"):
        ft.check_module(net, torch.nn.CrossEntropyLoss(), x, target=y)
    assert_unchanged(net, before)


def test_gradcheck_applies_the_inputs_own_hooks():
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x.register_hook(lambda g: g * 1.01)
    assert not torch.autograd.gradcheck(lambda x: x.sin(), (x,), raise_exception=False)
    assert not ft.gradcheck(lambda x: x.sin(), (x,), raise_exception=False)
    assert not ft.gradcheck(lambda x: x.sin(), (x,), raise_exception=False, fast_mode=True)
