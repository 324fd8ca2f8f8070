"""The numbers of the method: step sizes, noise floors, tolerances, verdict bands, re-check
factors. One table, keyed by dtype where the dtype matters.

Every number the checker uses to decide "is this difference real?" comes from here; the C
accumulator receives the ones it needs as arguments (csrc/accumulate.h, fg_method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .arguments import positive_int
from .errors import InvalidType, InvalidValue


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

# ``depth ** DEPTH_EXPONENT`` reaches 100x (1e-4 -> 1e-2 in float64) at about 30 layers
DEPTH_EXPONENT = 1.35

# noise_factor 4: the roundoff of f(x+h) - f(x-h) measured on numpy sums of 1e6 terms
# (log cosh, |f| ~ 2e6) stays below 0.6 eps (|f+| + |f-|); 32 would hide a 1e-3 error there.

# verdict bands on the relative error (CS231n): > 1e-2 wrong, 1e-4..1e-2 suspect, 1e-7..1e-4 ok
# (fine with kinks), <= 1e-7 excellent
BAND_WRONG, BAND_SUSPECT, BAND_OK = 1e-2, 1e-4, 1e-7

# a failing coordinate is a kink candidate when its kink score (the disagreement of the one-sided
# slopes, csrc/accumulate.h) is at least this fraction of its relative error
KINK_EXPLAINS = 0.25

# kink re-checks (judge/rechecks.py): a failure whose numeric value moved by at most this
# fraction of tol between two steps is stable (no kink in between: a real error) ...
KINK_STABLE_CHANGE = 0.5
# ... the one-sided slopes (f+ - f0)/h, (f0 - f-)/h carry this multiple of the centered floor ...
ONE_SIDED_NOISE = 2.0
# ... and a kink is visible when the slopes differ by more than this many times their noise
KINK_VISIBLE = 4.0

# when more than this fraction of a check's coordinates cross kinks, the report suggests fewer
# data points (fewer kinks, CS231n) or kinks= an active-set signature
KINK_FRACTION_NOTE = 0.1

# a loss compiled by jit="auto" is the same function when it agrees at theta within this
# (relative, float64): a different summation order is fine
JIT_AGREEMENT_EPS = 8 * float(np.finfo(np.float64).eps)

# audit: a directional disagreement that changes by more than this fraction of itself between
# two extrapolated estimates depends on the step (truncation, kinks), not on the gradient
STEP_DEPENDENCE = 0.5

# audit, truncation along a direction: over n coordinates a direction has norm ~sqrt(n), and the
# centered difference along it carries a truncation error (h^2 / 6 times the third derivative
# along v) that grows with n (measured: 10-20x the roundoff floor on a 10^6-entry tanh-MLP
# weight) while a real gradient error does not depend on h. A disagreement at step h is
# re-measured at RICHARDSON_RATIO * h (larger: half the roundoff floor, four times the
# truncation, so truncation above half the floor at h shows in the difference) and, where the
# two differ beyond their floors, both are extrapolated to h = 0 (Richardson, error ~h^2):
# truncation (and the kinks the step crosses, whose share also shrinks ~h^2 in aggregate) drops
# out; the extrapolation's floor is 1.5x the floor at h.
RICHARDSON_RATIO = 2.0
# ... when the step-dependent part |e(2h) - e(h)| is more than this fraction of the extrapolated
# disagreement, the h^2 model is in doubt (a kink near the step gives an error ~h): the step
# shrinks by these factors in turn while the disagreement keeps changing by more than
# STEP_DEPENDENCE of itself; a real error stays, a kink is no longer crossed
RICHARDSON_TRUST = 0.25
DIRECTION_SHRINK = (0.1, 0.01)
# ... but a part under localization whose disagreement is more than this many times the step
# dependence measured on a part containing it (plus its floor) is not re-measured: truncation
# over a sub-support is of the containing part's size or smaller, so it cannot be what disagrees
# (should it be, the coordinate checks of the leaves clear it: no false suspect, only cost)
STEP_DEPENDENCE_MARGIN = 10.0


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


# audit localization (checks/directions.py):
# a range this small is settled by coordinate checks of all its members
LEAF_SIZE = 4
# a part that passes one random direction is tried with up to this many (two wrong coordinates
# can nearly cancel in one direction; in three independent ones they practically never do)
DIRECTIONS_PER_TEST = 3
# ... but no more than it takes to bring the chance of missing an error of tol on a coordinate of
# typical gradient (direction_miss_bound) below this
DIRECTION_MISS_PROBABILITY = 1e-3
# the entries of a random direction: a Rademacher sign times a magnitude uniform in [this, 1]
# (engine/kernels.py direction_value)
DIRECTION_MIN_MAGNITUDE = 0.25


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
# all four grandchildren of a part disagree: sample this many of its coordinates; if every one
# is wrong, the part is reported as a wrong block instead of being split further
BLOCK_SAMPLES = 6
# more disagreeing parts than this at one level: the disagreement is spread over the segment
MAX_FRONT = 64

# a kink re-check tries these fractions of the first step in turn (h/10, h/100, h/1000): a kink at
# distance d is no longer crossed once the step is below d
KINK_SHRINK = (0.1, 0.01, 0.001)


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


def tolerance(dtype, depth: int = 1, tol: float | None = None) -> tuple[float, str]:
    """The failure threshold on the relative error, and a sentence saying where it came from.

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
    value = min(p.max_tol, p.base_tol * float(depth) ** DEPTH_EXPONENT)
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


# a disagreement is noise while it stays within this many standard deviations of measured noise
# (six: an estimate from 7 points can come out at a quarter of the true value)
NOISE_SIGMAS = 6.0

# the noise of f is measured from f at x + j d v, j = -3..3, at these two spacings d (as fractions
# of the automatic step): roundoff does not depend on d, a kink or curvature inside the stencil
# grows with it, so only estimates that agree at both spacings are taken as noise
NOISE_PROBE_SPACINGS = (1e-2, 1e-3)
# f at x +- j d v for j = 1..NOISE_PROBE_POINTS at each spacing: 13 values per estimate (with f0)
NOISE_PROBE_POINTS = 6
NOISE_PROBE_EVALUATIONS = 2 * NOISE_PROBE_POINTS * len(NOISE_PROBE_SPACINGS)
# two estimates of the same noise agree within this factor 99% of the time (13 values each);
# a kink or curvature in the stencils makes them differ by the spacing ratio (10) or more
NOISE_AGREEMENT = 5.0


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


def pooled_noise_sigma(sigmas) -> float:
    """One noise estimate from the estimates at the NOISE_PROBE_SPACINGS (10x apart).

    Noise does not depend on the spacing; a kink or curvature inside the stencil grows with it
    (10x between the two spacings, or more). Estimates within NOISE_AGREEMENT of each other are
    noise: their RMS is kept. Otherwise nothing was measured (0.0) and the default floor applies:
    an inflated estimate would raise the floors and hide real errors.

    >>> pooled_noise_sigma([1e-9, 2e-9]), pooled_noise_sigma([1e-8, 1e-9])
    (1.5811388300841897e-09, 0.0)
    """
    finite = [float(s) for s in sigmas if math.isfinite(s)]
    if not finite:
        return 0.0
    low, high = min(finite), max(finite)
    if high <= NOISE_AGREEMENT * low:
        return math.sqrt(sum(s * s for s in finite) / len(finite))
    return 0.0


# a noisy f grows the automatic steps by at most this factor
MAX_STEP_GAIN = 10.0


def assumed_noise(f0: float, dtype) -> float:
    """The noise of f(x+h) - f(x-h) the automatic step and the default floor assume: the
    roundoff of two loss values of size max(1, |f|). Measured noise at or below it is plain
    roundoff, which never makes a coordinate or direction inconclusive."""
    return 2.0 * noise_eps(dtype) * max(1.0, abs(float(f0)))


def measured_noise(sigma: float, f0: float, dtype) -> tuple[float, float]:
    """The absolute noise level of f(x+h) - f(x-h) that the accumulator's floor adds for a
    measured noise sigma of f, and the factor by which automatic steps grow.

    The floor becomes (noise_eps * (|f+| + |f-|) + noise_abs) / 2h with noise_abs =
    NOISE_SIGMAS * sqrt(2) * sigma (the noise of a difference of two values). Roundoff scales with
    the terms f sums, not with f: a loss that cancels to ~0 still has the roundoff of its terms,
    so the measured level is absolute. The automatic step eps^(1/3) max(1, |x|) assumes noise of
    about eps max(1, |f|); a noisier f balances truncation at a step larger by the cube root.

    >>> measured_noise(0.0, 1.0, np.float64)
    (0.0, 1.0)
    """
    noise_abs = NOISE_SIGMAS * math.sqrt(2.0) * float(sigma)
    if not math.isfinite(noise_abs) or noise_abs <= 0.0:
        return 0.0, 1.0
    assumed = assumed_noise(f0, dtype)
    excess = noise_abs / assumed
    gain = min(MAX_STEP_GAIN, excess ** (1.0 / 3.0)) if excess > 1.0 else 1.0
    return noise_abs, float(gain)
