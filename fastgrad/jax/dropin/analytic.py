"""Analytic derivatives from jax: the full Jacobian (JVP columns or VJP rows, batched by
jax.vmap) and the derivative along one tangent."""

from __future__ import annotations

import jax
import numpy as np

from ...checks.jacobian import BATCH_VALUES
from .flatten import VMAP_MIN_ROWS, Level, conj_rows, flat64


def jacobian_of(level: Level, mode: str) -> np.ndarray:
    """The analytic Jacobian (outputs x inputs, float64): columns from JVPs ("fwd", "lin") or
    rows from VJPs ("rev"), batched by jax.vmap (one by one when vmap cannot run them)."""
    n_in, n_out = level.x.size, level.f0.size
    if mode == "rev":
        parts, fn, count = level.out_parts, level.pull(), n_out
    else:
        parts, fn, count = level.parts, level.push(mode), n_in
    bounds = np.cumsum([0, *(p.size for p in parts)])
    out = np.empty((count, n_in if mode == "rev" else n_out))
    chunk = max(1, BATCH_VALUES // max(1, n_in + n_out))

    def basis(a, b):
        eye = np.zeros((b - a, bounds[-1]))
        eye[np.arange(b - a), np.arange(a, b)] = 1.0
        if mode == "rev":  # jax's check_vjp pulls conj(c)
            eye = conj_rows(parts, eye)
        return [p.batch(eye[:, bounds[i]:bounds[i + 1]]) for i, p in enumerate(parts)]

    batched = count >= VMAP_MIN_ROWS
    for a in range(0, count, chunk):
        b = min(count, a + chunk)
        vectors = basis(a, b)
        if batched:
            try:
                out[a:b] = flat64(jax.vmap(fn)(*vectors), b - a)
                continue
            except Exception:  # a rule vmap cannot batch: one by one
                batched = False
        for r in range(b - a):
            one = [v[r] if p.scalar is None else p.scalar(v[r].item())
                   for v, p in zip(vectors, parts)]
            out[a + r] = flat64(fn(*one))
    # the real VJP of the real and imaginary parts: conj(vjp(conj(c))), as jax's check_vjp
    return conj_rows(level.parts, out) if mode == "rev" else out.T


def analytic_along(level: Level, mode: str, t_eff: np.ndarray, rng):
    """(analytic directional value, cotangent or None, primal output) of one mode."""
    primals = tuple(level.leaves(level.x))
    tangent = tuple(level.leaves(t_eff))
    if mode == "fwd":
        out, t_out = jax.jvp(level.jax_fun, primals, tangent)
        return flat64(t_out), None, flat64(out)
    if mode == "lin":
        out, f_lin = jax.linearize(level.jax_fun, *primals)
        return flat64(f_lin(*tangent)), None, flat64(out)
    out, vjp_fun = jax.vjp(level.jax_fun, *primals)
    level.vjp_at_x = (out, vjp_fun)
    ct = [p.leaf(rng.standard_normal(p.size)) for p in level.out_parts]
    # the real VJP of the real and imaginary parts: conj(vjp(conj(c))), as jax's check_vjp
    pulled = flat64([np.conj(v) for v in vjp_fun(tuple(np.conj(c) for c in ct))])
    finite = np.isfinite(t_eff)
    with np.errstate(invalid="ignore", over="ignore"):
        value = float(pulled[finite] @ t_eff[finite]) if finite.any() else 0.0
    return value, flat64(ct), flat64(out)

