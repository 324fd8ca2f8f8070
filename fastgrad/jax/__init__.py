"""Check JAX losses of pytrees: analytic gradient from ``jax.grad``, both sides in float64.

>>> import jax.numpy as jnp, fastgrad.jax
>>> params, x = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}, jnp.ones((4, 3))
>>> fastgrad.jax.check(lambda p, x: jnp.sum(jnp.tanh(x @ p["w"] + p["b"])), params, x).passed
True

``check`` returns a ``fastgrad.Report`` whose segments are the pytree's leaves, and takes the
options of ``fastgrad.check``; ``audit`` audits every leaf of a large pytree (random directions,
then localization) and ``pytree_problem`` hands the loss to the core as a ``fastgrad.Problem``;
``check_grads`` is a drop-in for ``jax.test_util.check_grads`` (random directions as jax checks
them, the full Jacobian to localize a disagreement; forward, reverse and linearized mode, any
order, the caller's dtypes). ``check`` switches 64-bit mode on only around fastgrad's own calls
(``jax.enable_x64``, a thread-local context), so the caller's JAX configuration is left as it
was. Importing this package without JAX installed raises an ``ImportError`` that says how to
install it (``pip install fastgrad[jax]``).

Modules: ``pytrees`` (what the adapters share), ``flat_pytree`` (the loss as a function of the
flat vector of the leaves, which check and audit both evaluate), ``pytree_check`` (check),
``pytree_audit`` (audit, pytree_problem), ``dropin`` (check_grads). ``pytree_check`` and
``pytree_audit`` are not named ``check`` and ``audit``: the public functions of those names would
hide them.
"""

from __future__ import annotations

try:
    import jax  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastgrad.jax needs JAX, which is not installed: pip install fastgrad[jax]"
    ) from exc

from .dropin import CheckGradsError, check_grads
from .pytree_audit import audit, pytree_problem
from .pytree_check import check

__all__ = ["CheckGradsError", "audit", "check", "check_grads", "pytree_problem"]
