"""Slow, obviously-correct references that the fast paths are tested against: centered and
directional differences, the random directions, the C accumulator (coordinates, segments, its
log10 histogram) and the monitor's one-pass summaries."""

import numpy as np

VERDICTS = ("excellent", "ok", "suspect", "wrong", "noise", "nan", "kink")
HIST_BINS = 18  # FG_HIST_BINS of csrc/accumulate.h


def centered_differences(f, theta, index, step, args=(), dtype=np.float64):
    """The CS231n loop: perturb one coordinate of a copy (in ``dtype``), evaluate twice, restore."""
    x = np.array(theta, dtype=dtype, copy=True)
    f_plus = np.empty(len(index))
    f_minus = np.empty(len(index))
    for j, i in enumerate(index):
        old = x[i]
        x[i] = old + step[j]
        f_plus[j] = f(x, *args)
        x[i] = old - step[j]
        f_minus[j] = f(x, *args)
        x[i] = old
    return f_plus, f_minus


def coordinate_stats(analytic, f_plus, f_minus, f0, step, tol, noise_eps, noise_abs=0.0):
    """What csrc/accumulate.c fg_coords computes, one coordinate at a time in Python."""
    out = {k: [] for k in ("numeric", "rel_error", "noise", "kink_score", "verdict", "failed",
                           "kink")}
    for a, fp, fm, h in zip(analytic, f_plus, f_minus, step):
        if not (np.isfinite(fp) and np.isfinite(fm)):
            for key, value in (("numeric", np.nan), ("rel_error", np.nan), ("noise", np.nan),
                               ("kink_score", np.nan), ("verdict", 5), ("failed", True),
                               ("kink", False)):
                out[key].append(value)
            continue
        num = (fp - fm) / (2 * h)
        diff = abs(a - num)
        scale = max(abs(a), abs(num))
        rel = diff / scale if scale > 0 else 0.0
        floor = (noise_eps * (abs(fp) + abs(fm)) + noise_abs) / (2 * h)
        s_plus, s_minus = (fp - f0) / h, (f0 - fm) / h
        gap = abs(s_plus - s_minus)
        score = gap / (abs(s_plus) + abs(s_minus) + floor) if gap > 0 else 0.0
        if rel > tol and diff <= floor:
            verdict, failed, kink = 4, False, False
        else:
            verdict = 3 if rel > 1e-2 else 2 if rel > 1e-4 else 1 if rel > 1e-7 else 0
            failed = rel > tol
            kink = failed and score >= 0.25 * rel
        for key, value in (("numeric", num), ("rel_error", rel), ("noise", floor),
                           ("kink_score", score), ("verdict", verdict), ("failed", failed),
                           ("kink", kink)):
            out[key].append(value)
    return {k: np.array(v) for k, v in out.items()}


def segment_stats(segment, rel_error, verdict, failed, kink, n_segments):
    """What fg_segments computes: counts, first max over eligible coordinates, log10 histogram."""
    checked = np.zeros(n_segments, dtype=int)
    n_failed = np.zeros(n_segments, dtype=int)
    kinks = np.zeros(n_segments, dtype=int)
    max_rel = np.zeros(n_segments)
    argmax = np.full(n_segments, -1)
    hist = np.zeros((n_segments, HIST_BINS), dtype=int)
    for i, s in enumerate(segment):
        checked[s] += 1
        n_failed[s] += bool(failed[i])
        kinks[s] += bool(kink[i])
        rel = rel_error[i]
        if not np.isnan(rel):
            hist[s, hist_bin(rel)] += 1
        if verdict[i] in (4, 5, 6, 7):  # noise, nan, kink, inconclusive
            continue
        if argmax[s] < 0 or rel > max_rel[s]:
            max_rel[s] = rel
            argmax[s] = i
    return checked, n_failed, kinks, max_rel, argmax, hist


def hist_bin(rel):
    """The bin of csrc/accumulate.h's log10 histogram: 0 for rel < 1e-16 (zero included),
    b in 1..16 for 10^(b-17) <= rel < 10^(b-16), 17 for rel >= 1."""
    if rel < 1e-16:
        return 0
    if rel >= 1:
        return HIST_BINS - 1
    return min(max(int(np.floor(np.log10(rel))) + 17, 1), 16)


def log10_histogram(rel_error):
    """Counts of the relative errors per bin of hist_bin; NaN is not binned."""
    hist = np.zeros(HIST_BINS, dtype=int)
    for rel in rel_error:
        if not np.isnan(rel):
            hist[hist_bin(rel)] += 1
    return hist


def naive_direction(key, lo, hi):
    """Entries lo..hi-1 of the random direction of ``key``: splitmix64 in Python integers."""
    mask = (1 << 64) - 1
    out = []
    for i in range(lo, hi):
        z = (int(key) + i * 0x9E3779B97F4A7C15) & mask
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        z ^= z >> 31
        magnitude = 0.25 + 0.75 * ((z >> 11) / 2.0 ** 53)
        out.append(-magnitude if z & 1 else magnitude)
    return np.array(out)


def directional_differences(f, theta, key, lo, hi, step, args=()):
    """f(theta + h_j v_j) and f(theta - h_j v_j) for each direction j, v_j supported on
    [lo_j, hi_j): a fresh perturbed copy per evaluation, in theta's dtype."""
    theta = np.asarray(theta)
    f_plus = np.empty(len(key))
    f_minus = np.empty(len(key))
    for j in range(len(key)):
        v = naive_direction(key[j], int(lo[j]), int(hi[j]))
        for sign, out in ((1.0, f_plus), (-1.0, f_minus)):
            x = theta.copy()
            for offset, i in enumerate(range(int(lo[j]), int(hi[j]))):
                x[i] = float(theta[i]) + sign * float(step[j]) * v[offset]
            out[j] = f(x, *args)
    return f_plus, f_minus


def directional_numeric(f, theta, key, lo, hi, step, args=()):
    """The directional derivative (f(x + h v) - f(x - h v)) / 2h of each direction."""
    f_plus, f_minus = directional_differences(f, theta, key, lo, hi, step, args)
    return (f_plus - f_minus) / (2 * np.asarray(step, dtype=np.float64))


def direction_dot(grad, theta, key, lo, hi, step):
    """grad . d and sum |grad_i d_i| over [lo, hi), d_i = (fl(x_i + h v_i) - fl(x_i - h v_i)) / 2h
    with fl rounding to theta's dtype: the displacement the loss really sees."""
    theta = np.asarray(theta)
    v = naive_direction(key, lo, hi)
    dot = 0.0
    abs_gd = 0.0
    for offset, i in enumerate(range(lo, hi)):
        plus = float(theta.dtype.type(float(theta[i]) + step * v[offset]))
        minus = float(theta.dtype.type(float(theta[i]) - step * v[offset]))
        gd = float(grad[i]) * ((plus - minus) / (2.0 * step))
        dot += gd
        abs_gd += abs(gd)
    return dot, abs_gd


def naive_summary(batches, lo, hi, bins):
    """The monitor's one-pass summary, obviously: concatenate everything, then ask numpy."""
    values = np.concatenate([b.reshape(-1) for b in batches])
    finite = values[np.isfinite(values)]
    rows = np.concatenate([b.reshape(-1, b.shape[-1]) for b in batches])
    counts, _ = np.histogram(finite, bins=bins, range=(lo, hi))
    # the std of values scaled by a power of two near the largest (exact), scaled back: numpy's
    # own squares values near 1e-161 into subnormals (1.3% off) and above 1e154 into inf
    top = np.max(np.abs(finite))
    scale = 2.0 ** np.ceil(np.log2(top)) if top > 0 else 1.0
    return {
        "count": values.size, "finite": finite.size, "min": finite.min(), "max": finite.max(),
        "mean": finite.mean(), "std": (finite / scale).std() * scale,
        "zero_fraction": np.mean(finite == 0),
        "saturated_fraction": np.mean(np.abs(finite) >= 0.99),
        "dead_unit_fraction": np.mean(np.all(rows == 0, axis=0)), "counts": counts,
    }
