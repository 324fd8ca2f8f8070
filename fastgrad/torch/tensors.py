"""What the torch adapters share: nested tensor arguments, random cotangents, scalar losses,
seeded RNG, restored buffers, flat gradients and the caller's module for the analytic pass
(``fastgrad.torch.check_module`` / ``check_function`` and ``audit_module`` / ``module_problem``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from .._adapt import cotangent_rng
from ..errors import InvalidType, InvalidValue

CPU = torch.device("cpu")


def rebuild(obj: Any, path: str, visit: Callable[[torch.Tensor, str], Any]) -> Any:
    """``obj`` with every tensor ``t`` inside tuples/lists/dicts replaced by ``visit(t, path)``."""
    if isinstance(obj, torch.Tensor):
        return visit(obj, path)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(rebuild(v, f"{path}.{i}", visit) for i, v in enumerate(obj)))
    if isinstance(obj, (tuple, list)):
        return type(obj)(rebuild(v, f"{path}.{i}", visit) for i, v in enumerate(obj))
    if isinstance(obj, dict):
        return {k: rebuild(v, f"{path}.{k}", visit) for k, v in obj.items()}
    return obj


class Inputs:
    """Private CPU copies of the caller's (nested) tensor arguments, floating ones in ``dtype``.

    With ``wrt``, floating tensors that require grad are checked ones: they get a segment named
    after their position (``input0``, ``arg1``, ``input1.0`` for the first tensor of a tuple
    argument) in ``self.wrt`` (segment name -> value); without, every tensor is a constant.
    """

    def __init__(self, values: tuple, prefix: str, dtype: torch.dtype = torch.float64,
                 wrt: bool = True):
        self.prefix = prefix
        self.wrt: dict[str, torch.Tensor] = {}

        def convert(t: torch.Tensor, path: str) -> torch.Tensor:
            if t.is_complex():
                raise InvalidType(f"{path}: complex tensors are not supported (dtype {t.dtype})")
            if not t.is_floating_point():
                return t.detach().to(CPU).clone()
            value = t.detach().to(device=CPU, dtype=dtype).clone()
            if wrt and t.requires_grad and t.numel() > 0:
                self.wrt[path] = value
            return value

        self.values = tuple(rebuild(v, f"{prefix}{i}", convert) for i, v in enumerate(values))

    def bind(self, slot: Callable[[str], torch.Tensor | None], clone: bool = True) -> tuple:
        """The arguments with each checked tensor replaced by ``slot(name)`` (when not None);
        the other tensors cloned (a private copy), or with ``clone=False`` shared."""

        def visit(t: torch.Tensor, path: str) -> torch.Tensor:
            bound = slot(path) if path in self.wrt else None
            if bound is not None:
                return bound
            return t.clone() if clone else t

        return tuple(rebuild(v, f"{self.prefix}{i}", visit) for i, v in enumerate(self.values))


def _float_leaves(obj: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a (nested) output, in a fixed order."""
    leaves: list[torch.Tensor] = []

    def visit(t: torch.Tensor, path: str) -> torch.Tensor:
        if t.is_floating_point():
            leaves.append(t)
        return t

    rebuild(obj, "", visit)
    return leaves


def cotangents(output: Any, seed: int, what: str) -> list[torch.Tensor]:
    """One fixed standard-normal float64 cotangent per floating tensor of ``output``."""
    leaves = _float_leaves(output)
    if not leaves:
        raise InvalidValue(f"{what}: returned no floating-point tensor to take the gradient of")
    rng = cotangent_rng(seed)
    return [torch.from_numpy(rng.standard_normal(t.shape)) for t in leaves]


def contract(output: Any, cotangents: list[torch.Tensor], what: str) -> torch.Tensor:
    """``sum(output * c)`` over the floating tensors of the output: a scalar loss."""
    leaves = _float_leaves(output)
    if [t.shape for t in leaves] != [c.shape for c in cotangents]:
        raise InvalidValue(
            f"{what}: output shapes changed between evaluations "
            f"({[tuple(c.shape) for c in cotangents]} then {[tuple(t.shape) for t in leaves]})"
        )
    return sum((t.to(torch.float64) * c).sum()
               for t, c in zip(leaves, cotangents, strict=True))


def scalar_loss(loss: Any, what: str) -> torch.Tensor:
    """``loss`` (a one-element real tensor or a number) as a 0-d tensor."""
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            shape = tuple(loss.shape)
            raise InvalidValue(f"{what}: must return a scalar, got a tensor of shape {shape}")
        if loss.is_complex():
            raise InvalidValue(f"{what}: must return a real scalar, got dtype {loss.dtype}")
        return loss.reshape(())
    try:
        return torch.tensor(float(loss), dtype=torch.float64)
    except (TypeError, ValueError):
        raise InvalidType(
            f"{what}: must return a scalar tensor, got {type(loss).__name__}") from None


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's CPU RNG seeded with ``seed`` inside, and as it was outside."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


class SavedBuffers:
    """The buffers of a module (BatchNorm running statistics) as they are now; ``restore()``
    puts them back before an evaluation, so that the loss is a function of theta alone."""

    def __init__(self, module: torch.nn.Module):
        self.saved = [(owner._buffers, key, buf.clone())
                      for owner in module.modules()
                      for key, buf in owner._buffers.items() if buf is not None]

    def restore(self) -> None:
        with torch.no_grad():
            for buffers, key, saved in self.saved:
                buffers[key].copy_(saved)


def flat_gradient(loss: torch.Tensor, wrt: list[torch.Tensor]) -> np.ndarray:
    """d loss / d wrt, flat float64; tensors the loss does not depend on get zeros."""
    if loss.requires_grad:
        grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    else:
        grads = (None,) * len(wrt)
    out = np.zeros(sum(t.numel() for t in wrt), dtype=np.float64)
    start = 0
    for t, g in zip(wrt, grads, strict=True):
        stop = start + t.numel()
        if g is not None:
            if g.is_sparse:  # nn.Embedding(sparse=True)
                g = g.to_dense()
            out[start:stop] = g.detach().reshape(-1).to(torch.float64).numpy()
        start = stop
    return out


# what a report's path line says about the analytic side of check_module / audit_module
ANALYTIC_ON_CALLERS_MODULE = (
    "analytic gradient: loss.backward() on your module itself (its parameter and module hooks, "
    "post-accumulate-grad hooks, parametrizations, tied parameters and train/eval mode as your "
    "training sees them), its parameters bound to fastgrad's float64 values for that pass and "
    "put back afterwards")


def has_forward_hooks(module: torch.nn.Module) -> bool:
    """A forward (pre-)hook anywhere in the module: it may register tensor hooks on outputs,
    which needs grad mode on (the numeric evaluations then record autograd too)."""
    from torch.nn.modules import module as module_globals

    if getattr(module_globals, "_global_forward_hooks", None) or \
            getattr(module_globals, "_global_forward_pre_hooks", None):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


@contextlib.contextmanager
def on_callers_module(module: torch.nn.Module, bound: dict[str, torch.Tensor],
                      dtype: torch.dtype) -> Iterator[dict[str, torch.nn.Parameter]]:
    """The caller's own module, for one forward and backward pass as its training runs them.

    Inside, each parameter named in ``bound`` has ``bound[name]`` as its data (fastgrad's
    values: views of theta), every other floating parameter and every buffer a private copy
    in ``dtype`` (integers keep theirs), and no ``.grad``; hooks, parametrizations, tied
    parameters and the module's mode are the caller's own. Afterwards every parameter gets its
    own data tensor and ``.grad`` back and every buffer its own tensor (reassigned: the caller's
    tensors are never written, bitwise unchanged). Yields the bound Parameters by name.

    A hook that changes a bound parameter in place during the pass (an optimizer step inside a
    post-accumulate-grad hook) would change fastgrad's theta: that is refused with the reason.
    """
    params, buffers = [], []
    named = dict(module.named_parameters())
    with torch.no_grad():
        for name, p in named.items():
            params.append((p, p.data, p.grad))
            if name in bound:
                p.data = bound[name]
            elif p.is_floating_point():
                p.data = p.data.to(device=CPU, dtype=dtype, copy=True)
            p.grad = None
        for owner in module.modules():
            for key, buf in list(owner._buffers.items()):
                if buf is None:
                    continue
                buffers.append((owner._buffers, key, buf))
                owner._buffers[key] = buf.detach().to(
                    device=CPU, dtype=dtype if buf.is_floating_point() else buf.dtype, copy=True)
    originals = {id(p): data for p, data, _ in params}
    try:
        yield {name: named[name] for name in bound}
        # theta's values are the caller's (bitwise, one tensor at a time): none was stepped
        changed = [name for name in bound if not torch.equal(
            bound[name], originals[id(named[name])].to(device=CPU, dtype=bound[name].dtype))]
        if changed:
            raise InvalidValue(
                f"module: the backward pass changed parameter {changed[0]!r} in place (an "
                "optimizer step in a post-accumulate-grad hook?): the gradient of such a "
                "training step is not a gradient fastgrad can check; remove that hook for "
                "the check")
    finally:
        with torch.no_grad():
            for p, data, grad in params:
                p.data = data
                p.grad = grad
            for table, key, buf in buffers:
                table[key] = buf


def backward_gradient(loss: torch.Tensor, params: list[torch.nn.Parameter],
                      into: list[torch.Tensor]) -> None:
    """``loss.backward()`` accumulating into ``into`` (each parameter's ``.grad`` a view of
    fastgrad's flat gradient, so no second copy): tensor hooks and post-accumulate-grad hooks
    run as in training. A gradient autograd did not accumulate in place (a sparse one, or one a
    hook replaced) is copied in."""
    for param, view in zip(params, into, strict=True):
        param.grad = view if view.dtype == param.dtype else None
    if loss.requires_grad:
        loss.backward()
    for param, view in zip(params, into, strict=True):
        g = param.grad
        if g is None:
            view.zero_()
        elif g is not view and g.data_ptr() != view.data_ptr():
            view.copy_(g.to_dense() if g.is_sparse else g)
