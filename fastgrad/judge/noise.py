"""The noise of f near theta, measured (ECnoise-style) when a coordinate fails at the floor
assumed from eps, and what the check does about it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..sampling import direction_key
from ..steps import measured_noise, noise_sigma, pooled_noise_sigma, precision_of, rms

# the direction number of the noise probe (far from the numbers audits use for their tests)
NOISE_DIRECTION = (1 << 62) + 1


@dataclass
class NoiseLevel:
    """The roundoff noise of f near theta, measured, and what the check does about it."""

    sigma: tuple[float, ...]  # standard deviation of f's noise, per loss term
    noise_abs: tuple[float, ...]  # absolute noise of f(x+h) - f(x-h) the floor adds, per term
    step_gain: float  # automatic steps are multiplied by this (1.0: f is as quiet as assumed)
    note: str  # one sentence for the report; empty when nothing was raised
    # the largest sigma over eps max(1, |f|): how much noisier f is than the floor assumes
    excess: float = 0.0


# the noise of f was not measured: no coordinate failed at the floor assumed from eps
UNMEASURED = NoiseLevel((), (), 1.0, "")


def inconclusive_note(level: NoiseLevel, count: int, noun: str = "coordinate") -> str:
    """Why a check could not judge ``count`` coordinates (or segments: ``noun``), for the
    report's header."""
    what = noun if count == 1 else noun + "s"
    return (f"INCONCLUSIVE: {count} {what} cannot be judged: the measured noise of f (sigma "
            f"{max(level.sigma):.1e}, {level.excess:.1e} x eps*|f|) leaves the numeric derivative "
            f"uncertain by more than the tolerance at every step tried. Likely causes: a "
            f"thread-unsafe loss (state or scratch buffers shared between evaluations: try "
            f"workers=1), dropout or other randomness inside f, an inner solver's tolerance "
            f"(tighten it).")


def measure_noise(ev, x: np.ndarray, f0: np.ndarray, seed: int,
                  coordinate: int | None = None) -> NoiseLevel:
    """Measure the noise of f near theta (``tuning.noise_probe_evaluations`` evaluations, the
    tuning of the check, carried by its evaluator ``ev``), ECnoise-style.

    The default floor assumes a few eps |f| of roundoff; an f computed with an iterative solver,
    in lower precision inside, or summed in a long sequence along the perturbation can have far
    more, which would read as gradient errors. f is evaluated at x + j d v, j = -6..6, at the two
    spacings ``tuning.noise_probe_spacings`` (fractions of the automatic step), with v the unit vector of
    ``coordinate`` (what check() perturbs) or, when it is None, a random direction over the whole
    vector (what audit() perturbs: that moves every term of f, and its noise is larger).
    steps.noise_sigma turns each set of 13 values into an estimate; steps.pooled_noise_sigma keeps
    them only when they agree (a kink inside the stencils grows with the spacing, noise does not).
    """
    n = x.size
    tuning = ev.tuning
    if coordinate is None:
        spacing = precision_of(x.dtype).step_scale * max(1.0, rms(x))
    else:
        spacing = precision_of(x.dtype).step_scale * max(1.0, abs(float(x[coordinate])))
    points = np.arange(1.0, tuning.noise_probe_points + 1.0)
    offsets = np.concatenate([d * spacing * points for d in tuning.noise_probe_spacings])
    k = offsets.size
    if coordinate is None:
        key = direction_key(seed, NOISE_DIRECTION)
        f_plus, f_minus = ev.directions(np.full(k, key, dtype=np.uint64), np.zeros(k, np.int64),
                                        np.full(k, n, np.int64), offsets, label="noise probe",
                                        serial=True)
    else:
        f_plus, f_minus = ev.pairs(np.full(k, coordinate, dtype=np.int64), offsets,
                                   label="noise probe", plan=False)
    sigmas, levels, gain = [], [], 1.0
    for m in range(f0.size):
        per_spacing = []
        for p in range(len(tuning.noise_probe_spacings)):
            rows = slice(tuning.noise_probe_points * p, tuning.noise_probe_points * (p + 1))
            per_spacing.append(noise_sigma(np.concatenate(
                [f_minus[rows, m][::-1], [f0[m]], f_plus[rows, m]])))
        sigma = pooled_noise_sigma(per_spacing, tuning)
        level, term_gain = measured_noise(sigma, f0[m], x.dtype, tuning)
        sigmas.append(sigma)
        levels.append(level)
        gain = max(gain, term_gain)
    assumed = precision_of(x.dtype).eps * max(1.0, float(np.max(np.abs(f0))))
    note = ""
    if gain > 1.0:
        note = (f"f is noisier than assumed (measured noise sigma {max(sigmas):.1e} against "
                f"eps max(1, |f|) = {assumed:.1e}): noise floors raised to match, automatic "
                f"steps grown {gain:.1f}x")
    return NoiseLevel(tuple(sigmas), tuple(levels), gain, note, max(sigmas) / assumed)
