"""Slow, obviously-correct references that the fast paths are tested against."""

import numpy as np

VERDICTS = ("excellent", "ok", "suspect", "wrong", "noise", "nan", "kink")


def centered_differences(f, theta, index, step, args=()):
    """The CS231n loop: perturb one coordinate of a copy, evaluate twice, restore."""
    x = np.array(theta, dtype=np.float64, copy=True)
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
    hist = np.zeros((n_segments, 18), dtype=int)
    for i, s in enumerate(segment):
        checked[s] += 1
        n_failed[s] += bool(failed[i])
        kinks[s] += bool(kink[i])
        rel = rel_error[i]
        if not np.isnan(rel):
            if rel < 1e-16:
                b = 0
            elif rel >= 1:
                b = 17
            else:
                b = min(max(int(np.floor(np.log10(rel))) + 17, 1), 16)
            hist[s, b] += 1
        if verdict[i] in (4, 5, 6, 7):  # noise, nan, kink, inconclusive
            continue
        if argmax[s] < 0 or rel > max_rel[s]:
            max_rel[s] = rel
            argmax[s] = i
    return checked, n_failed, kinks, max_rel, argmax, hist
