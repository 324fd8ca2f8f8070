"""Small torch models with planted backward bugs, for the model-audit tests (importable by
Dask worker processes: the classes are pickled by reference)."""

from __future__ import annotations

import torch


class RowBugLinear(torch.autograd.Function):
    """x @ w.T + b with a hand-written backward; row ``row`` of dW is scaled by ``factor``."""

    @staticmethod
    def forward(ctx, x, w, b, row, factor):
        ctx.save_for_backward(x, w)
        ctx.row, ctx.factor = row, factor
        return x @ w.T + b

    @staticmethod
    def backward(ctx, d_out):
        x, w = ctx.saved_tensors
        d_w = d_out.T @ x
        if ctx.row is not None:
            d_w[ctx.row] *= ctx.factor
        return d_out @ w, d_w, d_out.sum(0), None, None


class CustomLinear(torch.nn.Module):
    """A linear layer through RowBugLinear (row None: a correct backward)."""

    def __init__(self, n_in: int, n_out: int, row: int | None = None, factor: float = 1.01):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)
        self.bias = torch.nn.Parameter(0.1 * torch.randn(n_out))
        self.row, self.factor = row, factor

    def forward(self, x):
        return RowBugLinear.apply(x, self.weight, self.bias, self.row, self.factor)


class BiasBugLayerNorm(torch.autograd.Function):
    """Layer norm over the last axis with a hand-written backward; d bias[index] is scaled."""

    @staticmethod
    def forward(ctx, x, weight, bias, index, factor):
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, unbiased=False, keepdim=True)
        rstd = 1.0 / torch.sqrt(var + 1e-5)
        xhat = (x - mean) * rstd
        ctx.save_for_backward(xhat, weight, rstd)
        ctx.index, ctx.factor = index, factor
        return xhat * weight + bias

    @staticmethod
    def backward(ctx, d_out):
        xhat, weight, rstd = ctx.saved_tensors
        d_xhat = d_out * weight
        d_x = rstd * (d_xhat - d_xhat.mean(-1, keepdim=True)
                      - xhat * (d_xhat * xhat).mean(-1, keepdim=True))
        d_weight = (d_out * xhat).reshape(-1, xhat.shape[-1]).sum(0)
        d_bias = d_out.reshape(-1, xhat.shape[-1]).sum(0)
        if ctx.index is not None:
            d_bias[ctx.index] *= ctx.factor
        return d_x, d_weight, d_bias, None, None


class CustomLayerNorm(torch.nn.Module):
    def __init__(self, width: int, index: int | None = None, factor: float = 1.01):
        super().__init__()
        self.weight = torch.nn.Parameter(1.0 + 0.1 * torch.randn(width))
        self.bias = torch.nn.Parameter(0.1 * torch.randn(width))
        self.index, self.factor = index, factor

    def forward(self, x):
        return BiasBugLayerNorm.apply(x, self.weight, self.bias, self.index, self.factor)


def mlp(widths: list[int], bug_layer: int | None = None, row: int | None = None,
        factor: float = 1.01, seed: int = 0) -> torch.nn.Sequential:
    """A tanh MLP; layer ``bug_layer`` (an index into the Linear layers) is a CustomLinear with
    row ``row`` of its weight gradient scaled by ``factor``; the others are nn.Linear."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if k == bug_layer:
            layers.append(CustomLinear(a, b, row, factor))
        else:
            layers.append(torch.nn.Linear(a, b))
        if k < len(widths) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def mean_square(out):
    return out.pow(2).mean()


class FilterBugConv2d(torch.autograd.Function):
    """conv2d without bias, with a hand-written backward; filter ``row`` of dW is scaled by
    ``factor`` (so its taps whose gradient is exactly 0 stay 0)."""

    @staticmethod
    def forward(ctx, x, w, stride, padding, row, factor):
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.padding, ctx.row, ctx.factor = stride, padding, row, factor
        return torch.nn.functional.conv2d(x, w, None, stride, padding)

    @staticmethod
    def backward(ctx, d_out):
        x, w = ctx.saved_tensors
        d_x = torch.nn.grad.conv2d_input(x.shape, w, d_out, ctx.stride, ctx.padding)
        d_w = torch.nn.grad.conv2d_weight(x, w.shape, d_out, ctx.stride, ctx.padding)
        if ctx.row is not None:
            d_w[ctx.row] *= ctx.factor
        return d_x, d_w, None, None, None, None


class CustomConv2d(torch.nn.Conv2d):
    """A 3x3 convolution (padding 1, no bias) through FilterBugConv2d (row None: correct)."""

    def __init__(self, n_in: int, n_out: int, stride: int, row: int | None = None,
                 factor: float = 1.01):
        super().__init__(n_in, n_out, 3, stride=stride, padding=1, bias=False)
        self.row, self.factor = row, factor

    def forward(self, x):
        return FilterBugConv2d.apply(x, self.weight, self.stride, self.padding, self.row,
                                     self.factor)


def conv_net(row: int | None = None, dead=(3, 10, 11, 20, 27), seed: int = 0):
    """Conv 4->32 (stride 2: 4x4 -> 2x2), ReLU, CustomConv2d 32->16 (stride 2, padding 1:
    2x2 -> 1x1), Linear 16->3. The channels ``dead`` of the first conv have bias -50: the
    ReLU zeroes them everywhere, so their taps in the custom conv have gradient exactly 0; so
    do the taps of the first row and column of every filter, which only ever see padding."""
    torch.manual_seed(seed)
    first = torch.nn.Conv2d(4, 32, 3, stride=2, padding=1)
    with torch.no_grad():
        first.bias[list(dead)] = -50.0
    return torch.nn.Sequential(first, torch.nn.ReLU(), CustomConv2d(32, 16, 2, row),
                               torch.nn.Flatten(), torch.nn.Linear(16, 3))
