"""The caller's tolerance as jax takes it (a number or a dict keyed by dtype, merged with
jax's table), fastgrad's precision per dtype, and the output rows grouped by their rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from ...errors import InvalidType, InvalidValue
from ...steps import PRECISIONS, Precision, coordinate_steps

try:  # jax's own table, so that a dtype-keyed override merges exactly as in jax
    from jax._src.public_test_util import default_gradient_tolerance as JAX_GRADIENT_TOL
except ImportError:  # pragma: no cover - a jax without the private module
    JAX_GRADIENT_TOL = {np.dtype(np.float16): 1e-2, np.dtype(np.float32): 2e-3,
                         np.dtype(np.float64): 1e-5, np.dtype(np.complex64): 1e-3,
                         np.dtype(np.complex128): 1e-5}


# assert_allclose's rtol when jax passes none (jax drops a zero rtol)
NUMPY_RTOL = 1e-7


def tolerance_arg(name: str, tol) -> float | dict | None:
    """``atol``/``rtol`` as jax takes them: None, a number, or a dict keyed by dtype."""
    if tol is None:
        return None
    if isinstance(tol, dict):
        out = {}
        for key, value in tol.items():
            try:
                dtype = np.dtype(key)
            except TypeError:
                raise InvalidType(f"{name}: {key!r} is not a dtype (keys of a tolerance dict "
                                  "are dtypes, e.g. np.float32)") from None
            out[dtype] = non_negative(f"{name}[{dtype}]", value)
        return out
    return non_negative(name, tol)


def non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidType(f"{name}: expected a non-negative number or a dict keyed by dtype, "
                          f"got {value!r}")
    if not float(value) >= 0:
        raise InvalidValue(f"{name}: expected a non-negative number, got {value!r}")
    return float(value)


def merge_tolerance(tol, default: dict):
    """jax's ``merge_tolerance``: a number replaces the table, a dict updates it."""
    if tol is None:
        return default
    if not isinstance(tol, dict):
        return tol
    out = dict(default)
    out.update(tol)
    return out


def _tolerance_for(dtype, tol) -> float:
    """jax's ``tolerance(dtype, tol)`` for a floating dtype (a number applies to every one)."""
    if not isinstance(tol, dict):
        return float(tol)
    dtype = jax.dtypes.canonicalize_dtype(np.dtype(dtype))
    table = {np.dtype(k): v for k, v in tol.items()}
    if dtype in table:
        return float(table[dtype])
    return float(JAX_GRADIENT_TOL.get(dtype, 0.0))


def _precision(dtype) -> Precision:
    """fastgrad's numbers for a dtype. float16/bfloat16 have no fastgrad band finer than
    jax's: the step is eps^(1/3) as for the others, the band is jax's gradient tolerance."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        dtype = np.dtype(np.finfo(dtype).dtype)
    if dtype in PRECISIONS:
        return PRECISIONS[dtype]
    eps = float(jax.numpy.finfo(dtype).eps)
    band = float(JAX_GRADIENT_TOL.get(dtype, 1e-1))
    return Precision(str(dtype), eps, eps ** (1 / 3), band, band, 4.0, 4.0)


def coarsest(dtypes) -> Precision:
    return max((_precision(d) for d in dtypes), key=lambda p: p.eps,
               default=PRECISIONS[np.dtype(np.float64)])


def dtype_steps(x: np.ndarray, h, dtype) -> np.ndarray:
    """Per-coordinate steps in ``dtype``'s precision, rounded so that x + h is representable."""
    dtype = np.dtype(dtype)
    if dtype in PRECISIONS:
        return coordinate_steps(x, h, dtype)
    raw = (_precision(dtype).step_scale * np.maximum(1.0, np.abs(x)) if h == "auto"
           else np.full(x.shape, float(h)))
    exact = (x + raw).astype(dtype).astype(np.float64) - x.astype(dtype).astype(np.float64)
    return np.where(exact > 0, exact, raw)


@dataclass
class Options:
    atol: Any  # merged: a number or a dict keyed by dtype
    rtol: Any
    eps: float | None
    strict: bool
    full: bool
    seed: int
    tolerated: list  # (sub-check, element names, count) of passing sub-checks


def caller_rule(dtype, size: int, opts: Options) -> tuple[float, float]:
    """jax's check_close for one output leaf: atol and rtol of its dtype, times its size."""
    atol = _tolerance_for(dtype, opts.atol) * size
    rtol = _tolerance_for(dtype, opts.rtol) * size
    return atol, (rtol if rtol else NUMPY_RTOL)


def jax_close(a: np.ndarray, n: np.ndarray, atol: float, rtol: float) -> np.ndarray:
    """assert_allclose's elementwise rule (equal values, NaNs included, always pass)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return (a == n) | (np.isnan(a) & np.isnan(n)) | (np.abs(a - n) <= atol + rtol * np.abs(n))
