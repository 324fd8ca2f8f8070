"""Check PyTorch modules and functions: analytic gradients from autograd, numeric in float64.

>>> import torch, fastgrad.torch
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh())
>>> fastgrad.torch.check_module(net, lambda out: out.pow(2).sum(), torch.randn(5, 4)).passed
True

``check_module`` checks a module's parameters (and inputs that require grad) through a scalar
loss; ``check_function`` checks any differentiable function of tensors, such as a custom
``torch.autograd.Function``'s ``apply``. Both return a ``fastgrad.Report`` and take the options
of ``fastgrad.check``. ``audit_module`` audits every parameter of a large model (random
directions, then localization) and ``module_problem`` hands a module's loss to the core as a
``fastgrad.Problem``. ``gradcheck`` and ``gradgradcheck`` are drop-ins for torch's own (full
Jacobians, same signature, ``GradcheckError`` a subclass of torch's). Everything runs on copies:
the caller's module (its parameters, their ``.grad``, its buffers and its train/eval mode), its
tensors and torch's global RNG state are left untouched. Importing this package without PyTorch
installed raises an ``ImportError`` that says how to install it (``pip install fastgrad[torch]``).

Modules: ``tensors`` (what the adapters share), ``flat_module`` (a module's loss as a function
of the flat parameter vector, which check_module and audit_module both evaluate), ``check``
(check_module, check_function),
``audit`` (audit_module, module_problem; loaded on first use: a test suite that only runs the
drop-in gradcheck does not import the audit and its engine), ``dropin`` (gradcheck,
gradgradcheck).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastgrad.torch needs PyTorch, which is not installed: pip install fastgrad[torch]"
    ) from exc

from .check import check_function, check_module
from .dropin import GradcheckError, gradcheck, gradgradcheck

if TYPE_CHECKING:
    from .audit import audit_module, module_problem

__all__ = ["GradcheckError", "audit_module", "check_function", "check_module", "gradcheck",
           "gradgradcheck", "module_problem"]


def __getattr__(name: str):
    """``audit_module`` and ``module_problem``, imported on first access (PEP 562)."""
    if name in ("audit_module", "module_problem"):
        from . import audit

        return getattr(audit, name)
    raise AttributeError(f"module 'fastgrad.torch' has no attribute {name!r}")
