"""Assertions for test suites: each raises ``fastgrad.GradientCheckError`` when a check fails.

>>> from fastgrad.testing import assert_audit, assert_gradients, assert_module
>>> assert_gradients(loss, theta, grad, segments=segs)
>>> assert_audit(loss, theta, grad, segments=segs)      # every coordinate, by directions
>>> assert_module(net, lambda out: out.sum(), x)        # torch

``GradientCheckError`` is an ``AssertionError`` whose message is the report table and whose
``.report`` is the report (``Report``, ``AuditReport`` or a drop-in's ``JacobianReport``); with
the fastgrad pytest plugin (installed with the package) a failing test shows that table instead
of a traceback through fastgrad's internals. Every function returns the report when the check
passes, and takes the same arguments as the check it wraps.
``assert_module``/``assert_function`` need PyTorch and ``assert_jax`` needs JAX: the adapters
are imported on first use (an ``ImportError`` saying how to install the extra when the framework
is missing), so importing this module never imports torch or jax.

The pytest plugin (``fastgrad.testing.plugin``, registered through the ``pytest11`` entry
point) lives here too; the assertions load on first use, so loading the plugin at pytest
start-up does not import fastgrad's checks.
"""

from ..errors import GradientCheckError

__all__ = [
    "GradientCheckError",
    "assert_audit",
    "assert_function",
    "assert_gradients",
    "assert_jax",
    "assert_layer",
    "assert_model",
    "assert_module",
    "assert_passed",
]


def __getattr__(name: str):
    """The assertions of ``__all__``, imported on first access (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module 'fastgrad.testing' has no attribute {name!r}")
    from . import assertions

    value = getattr(assertions, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
