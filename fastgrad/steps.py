"""The rules of the method: step sizes, noise floors, tolerances, verdict bands. The facts
(each dtype's roundoff, the published bands) are here; the numbers that tune the rules come in
a ``Tuning`` (tuning.py), passed by the caller.

The C accumulator receives the numbers it needs as arguments (csrc/accumulate.h, fg_method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .arguments import positive_int
from .errors import InvalidType, InvalidValue
from .tuning import DEFAULT_TUNING, Tuning


@dataclass(frozen=True)
class Precision:
    """What a floating-point dtype allows a centered difference to resolve."""

    name: str
    eps: float  # unit roundoff of the loss
    step_scale: float  # centered differences: eps^(1/3) balances truncation against roundoff
    base_tol: float  # failure threshold on rel_error at depth 1
    max_tol: float  # the threshold never grows past this, however deep the network
    noise_factor: float  # roundoff of a long reduction is a few eps times |f|, not one
    noise_growth: float  # a "noise" coordinate is re-checked with its step times this


_EPS64 = float(np.finfo(np.float64).eps)
_EPS32 = float(np.finfo(np.float32).eps)
PRECISIONS = {
    np.dtype(np.float64): Precision("float64", _EPS64, _EPS64 ** (1 / 3), 1e-4, 1e-2, 4.0, 10.0),
    np.dtype(np.float32): Precision("float32", _EPS32, _EPS32 ** (1 / 3), 3e-3, 5e-2, 4.0, 4.0),
}

# noise_factor 4: the roundoff of f(x+h) - f(x-h) measured on numpy sums of 1e6 terms
# (log cosh, |f| ~ 2e6) stays below 0.6 eps (|f+| + |f-|); 32 would hide a 1e-3 error there.

# verdict bands on the relative error (CS231n): > 1e-2 wrong, 1e-4..1e-2 suspect, 1e-7..1e-4 ok
# (fine with kinks), <= 1e-7 excellent
BAND_WRONG, BAND_SUSPECT, BAND_OK = 1e-2, 1e-4, 1e-7

# when more than this fraction of a check's coordinates cross kinks, the report suggests fewer
# data points (fewer kinks, CS231n) or kinks= an active-set signature (the report's wording:
# it changes no verdict, so it is not part of the Tuning)
KINK_FRACTION_NOTE = 0.1

# the entries of a random direction: a Rademacher sign times a magnitude uniform in [this, 1]
# (engine/kernels.py direction_value). Not tuning: it defines which direction a seed gives, and
# the Numba kernels compile it in as a constant.
DIRECTION_MIN_MAGNITUDE = 0.25


def richardson(e_large: float, e_small: float, noise_large: float, noise_small: float,
               ratio: float) -> tuple[float, float]:
    """The disagreement extrapolated to step 0 from its values at steps H and ratio * H
    (ratio < 1, an H^2 error term), and the noise floor of that value.

    >>> richardson(1.0 + 4.0, 1.0 + 1.0, 0.0, 0.0, 0.5)   # a real error 1, truncation 4 H^2
    (1.0, 0.0)
    """
    r2 = ratio * ratio
    value = (e_small - r2 * e_large) / (1.0 - r2)
    noise = (noise_small + r2 * noise_large) / (1.0 - r2)
    return value, noise


def rms(values: np.ndarray) -> float:
    """The root mean square of ``values``, without a temporary copy (the coordinates of a
    10^8-parameter model are 0.8 GB) and without BLAS: a BLAS call outside a check's own BLAS
    limit could race with another thread's check resizing OpenBLAS's pool, which OpenBLAS does
    not allow while in use.

    >>> rms(np.array([3.0, 4.0])) ** 2
    12.5
    """
    return math.sqrt(float(np.einsum("i,i->", values, values)) / values.size) \
        if values.size else 0.0


def direction_miss_bound(noise: float, tol: float, typical_gradient: float) -> float:
    """How likely a direction that agreed within ``noise`` missed a coordinate wrong by
    ``tol * typical_gradient``: at most ``noise / ((1 - DIRECTION_MIN_MAGNITUDE) * |error|)``.

    The derivative along v misses a coordinate error e (whatever the other coordinates' errors)
    only when ``|sum_j e_j v_j| <= noise``. The term ``e v_i`` has a density of at most
    ``1 / (2 (1 - m) |e|)`` (|v_i| uniform in [m, 1], a random sign), and adding independent
    terms never raises a density's maximum, so that happens with probability at most
    ``2 noise / (2 (1 - m) |e|)``. Independent directions multiply their bounds. (With +-1
    entries there is no such bound: two equal errors cancel in half of all directions.)

    >>> direction_miss_bound(1e-12, 1e-7, 1.0) < 1e-4
    True
    >>> direction_miss_bound(1e-12, 1e-7, 0.0)   # no scale to judge by: no bound
    1.0
    """
    error = (1.0 - DIRECTION_MIN_MAGNITUDE) * tol * typical_gradient
    if not error > 0 or not math.isfinite(noise):
        return 1.0
    return min(1.0, noise / error)


def band_name(rel: float) -> str:
    """The verdict band of a relative error: wrong, suspect, ok or excellent."""
    if rel > BAND_WRONG:
        return "wrong"
    if rel > BAND_SUSPECT:
        return "suspect"
    if rel > BAND_OK:
        return "ok"
    return "excellent"


def precision_of(dtype) -> Precision:
    dtype = np.dtype(dtype)
    try:
        return PRECISIONS[dtype]
    except KeyError:
        raise InvalidType(
            f"theta: dtype {dtype} is not supported; use float64 (or float32)"
        ) from None


def tolerance(dtype, depth: int = 1, tol: float | None = None,
              tuning: Tuning = DEFAULT_TUNING) -> tuple[float, str]:
    """The failure threshold on the relative error, and a sentence saying where it came from
    (the default grows with ``depth`` as ``depth ** tuning.depth_exponent``).

    >>> tolerance(np.float64)
    (0.0001, 'float64 default 1e-04 at depth 1')
    """
    depth = positive_int("depth", depth, meaning=" (number of layers)")
    if tol is not None:
        try:
            tol = float(tol)
        except TypeError:
            raise InvalidType(f"tol: expected a relative error in (0, 1), got {tol!r}") from None
        except ValueError:
            raise InvalidValue(f"tol: expected a relative error in (0, 1), got {tol!r}") from None
        if not (0.0 < tol < 1.0):
            raise InvalidValue(f"tol: expected a relative error in (0, 1), got {tol!r}")
        return tol, f"tol={tol:.0e} given by the caller"
    p = precision_of(dtype)
    value = min(p.max_tol, p.base_tol * float(depth) ** tuning.depth_exponent)
    if depth == 1:
        return value, f"{p.name} default {value:.0e} at depth 1"
    return value, (
        f"{p.name} default {p.base_tol:.0e} grown to {value:.1e} for depth {depth} "
        f"(errors accumulate through layers; capped at {p.max_tol:.0e})"
    )


def noise_eps(dtype) -> float:
    """Relative roundoff assumed for a loss value: eps times a safety factor for reductions."""
    p = precision_of(dtype)
    return p.eps * p.noise_factor


def noise_growth(dtype) -> float:
    """How much larger the step of a "noise" re-check is: roundoff shrinks as 1/h, truncation
    grows as h^2, so a real error that hid in the noise floor shows at the larger step."""
    return precision_of(dtype).noise_growth


def coordinate_steps(x: np.ndarray, h="auto", dtype=np.float64) -> np.ndarray:
    """Per-coordinate steps for the values ``x`` of the sampled coordinates.

    "auto": eps^(1/3) * max(1, |x_i|); a float: that step everywhere. Either way the step is
    rounded so that ``x + h`` is exactly representable in ``dtype``: the denominator is then the
    true distance between the two evaluation points.

    >>> coordinate_steps(np.array([0.0, 1e3]))
    array([6.05545445e-06, 6.05545445e-03])
    """
    p = precision_of(dtype)
    x = np.asarray(x, dtype=dtype)
    if isinstance(h, str):
        if h != "auto":
            raise InvalidValue(f"h: expected a positive float or 'auto', got {h!r}")
        raw = p.step_scale * np.maximum(1.0, np.abs(x.astype(np.float64)))
    else:
        try:
            value = float(h)
        except (TypeError, ValueError):
            raise InvalidType(f"h: expected a positive float or 'auto', got {h!r}") from None
        if not (value > 0.0 and np.isfinite(value)):
            raise InvalidValue(f"h: expected a positive finite step, got {h!r}")
        raw = np.full(x.shape, value)
    raw = raw.astype(dtype)
    # the difference in float64: in float32, fl(x + h) - x of a tiny x is not a float32 number
    exact = (x + raw).astype(np.float64) - x.astype(np.float64)
    # a step below the spacing of x rounds to 0: keep the spacing instead
    spacing = np.spacing(np.abs(x)).astype(np.float64)
    return np.where(exact > 0, exact, np.maximum(spacing, raw.astype(np.float64)))


def noise_sigma(values: np.ndarray) -> float:
    """Standard deviation of the noise of f from its values at equally spaced points.

    ECnoise (More & Wild 2011): the third difference of a smooth function at spacing d is
    d^3 f^(3), negligible at the tiny spacings of the probe, while independent noise of
    variance s^2 gives third differences of variance C(6, 3) s^2 = 20 s^2.

    >>> noise_sigma(np.arange(13.0) ** 2)     # a parabola has no noise
    0.0
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size < 7:
        raise InvalidValue(f"values: expected f at 7 or more equally spaced points, got shape "
                         f"{values.shape}")
    if not np.all(np.isfinite(values)):
        return float("nan")
    third = np.diff(values, 3)
    return math.sqrt(float(np.mean(third ** 2)) / 20.0)


def pooled_noise_sigma(sigmas, tuning: Tuning = DEFAULT_TUNING) -> float:
    """One noise estimate from the estimates at ``tuning.noise_probe_spacings`` (10x apart).

    Noise does not depend on the spacing; a kink or curvature inside the stencil grows with it
    (10x between the two spacings, or more). Estimates within ``tuning.noise_agreement`` of
    each other are
    noise: their RMS is kept. Otherwise nothing was measured (0.0) and the default floor applies:
    an inflated estimate would raise the floors and hide real errors.

    >>> pooled_noise_sigma([1e-9, 2e-9]), pooled_noise_sigma([1e-8, 1e-9])
    (1.5811388300841897e-09, 0.0)
    """
    finite = [float(s) for s in sigmas if math.isfinite(s)]
    if not finite:
        return 0.0
    low, high = min(finite), max(finite)
    if high <= tuning.noise_agreement * low:
        return math.sqrt(sum(s * s for s in finite) / len(finite))
    return 0.0


def assumed_noise(f0: float, dtype) -> float:
    """The noise of f(x+h) - f(x-h) the automatic step and the default floor assume: the
    roundoff of two loss values of size max(1, |f|). Measured noise at or below it is plain
    roundoff, which never makes a coordinate or direction inconclusive."""
    return 2.0 * noise_eps(dtype) * max(1.0, abs(float(f0)))


def measured_noise(sigma: float, f0: float, dtype,
                   tuning: Tuning = DEFAULT_TUNING) -> tuple[float, float]:
    """The absolute noise level of f(x+h) - f(x-h) that the accumulator's floor adds for a
    measured noise sigma of f, and the factor by which automatic steps grow.

    The floor becomes (noise_eps * (|f+| + |f-|) + noise_abs) / 2h with noise_abs =
    tuning.noise_sigmas * sqrt(2) * sigma (the noise of a difference of two values). Roundoff
    scales with the terms f sums, not with f: a loss that cancels to ~0 still has the roundoff
    of its terms, so the measured level is absolute. The automatic step eps^(1/3) max(1, |x|) assumes noise of
    about eps max(1, |f|); a noisier f balances truncation at a step larger by the cube root.

    >>> measured_noise(0.0, 1.0, np.float64)
    (0.0, 1.0)
    """
    noise_abs = tuning.noise_sigmas * math.sqrt(2.0) * float(sigma)
    if not math.isfinite(noise_abs) or noise_abs <= 0.0:
        return 0.0, 1.0
    assumed = assumed_noise(f0, dtype)
    excess = noise_abs / assumed
    gain = min(tuning.max_step_gain, excess ** (1.0 / 3.0)) if excess > 1.0 else 1.0
    return noise_abs, float(gain)
