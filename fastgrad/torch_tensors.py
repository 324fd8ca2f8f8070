"""What the torch adapters share: nested tensor arguments, scalar losses, seeded RNG, restored
buffers and flat gradients (``fastgrad.torch.check_module`` / ``check_function`` and
``audit_module`` / ``module_problem``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from .errors import InvalidType, InvalidValue

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


def converted(obj: Any, dtype: torch.dtype, what: str = "inputs") -> Any:
    """``obj`` with every tensor detached, cloned to the CPU, floating ones in ``dtype``:
    private copies, so nothing a module does reaches the caller's tensors."""

    def visit(t: torch.Tensor, path: str) -> torch.Tensor:
        if t.is_complex():
            raise InvalidType(f"{what}: complex tensors are not supported (dtype {t.dtype})")
        if t.is_floating_point():
            return t.detach().to(device=CPU, dtype=dtype).clone()
        return t.detach().to(CPU).clone()

    return rebuild(obj, what, visit)


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
