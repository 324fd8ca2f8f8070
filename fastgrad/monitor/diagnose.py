"""Findings: what the tracked numbers say about a training run, in words, with the evidence.

Each rule reads the monitor's summaries and returns zero or more :class:`Finding`.  The
thresholds below are the whole policy; they follow the CS231n notes (update/weight ratio about
1e-3, tanh outputs stuck at +-1, ReLU outputs always 0, a growing train/val gap) and were
calibrated on a two-layer network trained on the 8x8 digits (see ``fastgrad.monitor.demo``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .filters import NOISY_FILTER_THRESHOLD
from .log import jsonable

SEVERITIES = ("error", "warning", "info")

#: Shape rules on the loss need at least this many logged losses.
MIN_LOSSES = 20
#: The loss curve is summarized as this many chunk means (its smoothed trend).
TREND_CHUNKS = 10
#: Final trend above the first chunk's, or above the very first loss, by this factor: diverging.
DIVERGE_RISE = 1.10
#: Relative decrease of the trend below this: no learning.
NO_LEARNING_DROP = 0.02
#: ...unless the fitted slope is clearly negative (|t| above this): then it is learning slowly.
FALLING_T = 4.0
#: Too low: still above this share of the start, with a second-half slope this close to the first.
SLOW_REMAINING = 0.5
SLOW_LINEARITY = 0.5
#: Plateau high: most of the drop in the first chunk, then flat, while still this high.
PLATEAU_LEVEL = 0.5
PLATEAU_FLAT = 0.05
#: Batch too small: spread of the loss around its trend, relative to the trend's level.
NOISE_RATIO = 1.0
#: Overfitting: final train/val accuracy gap at least this, grown by at least OVERFIT_GROWTH.
OVERFIT_GAP = 0.10
OVERFIT_GROWTH = 0.05
#: Update/weight ratio band around 1e-3 (median over the last half of the updates).
RATIO_LOW, RATIO_HIGH = 1e-4, 1e-2
#: Share of bounded outputs at |v| >= 0.99 that counts as saturated.
SATURATED_SHARE = 0.5
#: Share of units whose output was 0 for every sample of the epoch ("as much as 40% of your
#: network can be dead" is where CS231n draws the line).
DEAD_SHARE = 0.4
#: A gradient check whose coordinates crossed kinks more often than this is hard to trust: the
#: CS231n notes' advice is fewer data points (fewer data points, fewer kinks).
KINK_SHARE = 0.1
#: Gradient RMS of the input-side layer over the output-side layer's.
VANISHING_RATIO, EXPLODING_RATIO = 1e-2, 1e2


@dataclass(frozen=True)
class Finding:
    """One diagnosis: a stable ``kind``, a ``severity``, a sentence, and the numbers behind it.

    >>> f = Finding("lr_too_low", "warning", "the loss falls slowly", {"drop": 0.02})
    >>> f.to_dict()["kind"]
    'lr_too_low'
    """

    kind: str
    severity: str
    message: str
    evidence: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity: expected one of {SEVERITIES}, got {self.severity!r}")
        object.__setattr__(self, "evidence", jsonable(dict(self.evidence)))

    def to_dict(self) -> dict:
        """JSON-ready dict with kind, severity, message and evidence."""
        return {"kind": self.kind, "severity": self.severity, "message": self.message,
                "evidence": dict(self.evidence)}

    def __str__(self) -> str:
        return f"{self.kind} [{self.severity}]: {self.message}"


def _r(value: float, digits: int = 4) -> float | None:
    """A number rounded for evidence (significant digits), None when not finite."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    if x.size < 2 or np.ptp(x) == 0:
        return math.nan
    return float(np.polyfit(x.astype(np.float64), y, 1)[0])


def _slope_t(x: np.ndarray, y: np.ndarray) -> float:
    """t statistic of the least-squares slope of y on x (how clearly the loss moves at all)."""
    xc = x - x.mean()
    sxx = float(xc @ xc)
    if x.size < 3 or sxx == 0:
        return 0.0
    slope = float(xc @ (y - y.mean())) / sxx
    resid = y - y.mean() - slope * xc
    se = math.sqrt(float(resid @ resid) / (x.size - 2) / sxx)
    return slope / se if se > 0 else math.copysign(math.inf, slope) if slope else 0.0


def loss_trend(steps: np.ndarray, losses: np.ndarray, chunks: int = TREND_CHUNKS) -> np.ndarray:
    """The loss curve's smoothed trend: the means of ``chunks`` consecutive equal parts.

    >>> loss_trend(np.arange(100), np.linspace(2.0, 1.0, 100), chunks=4).round(2)
    array([1.88, 1.63, 1.37, 1.12])
    """
    del steps  # chunks of logged losses: steps may be uneven or restart
    return np.array([part.mean() for part in np.array_split(losses, min(chunks, losses.size))])


def _loss_findings(mon) -> list[Finding]:
    steps, losses = mon.losses()
    if losses.size == 0:
        return []
    bad = np.flatnonzero(~np.isfinite(losses))
    if bad.size:
        first = int(bad[0])
        last_finite = losses[:first][-1] if first else math.nan
        return [Finding(
            "lr_too_high", "error",
            f"the loss became {losses[first]} at step {steps[first]}: training diverged; lower the "
            f"learning rate (try 3-10x smaller)",
            {"step": int(steps[first]), "last_finite_loss": _r(last_finite),
             "initial_loss": _r(losses[0])})]
    if losses.size < MIN_LOSSES:
        return []
    trend = loss_trend(steps, losses)
    start, end = float(trend[0]), float(trend[-1])
    first_loss = float(losses[0])
    scale = max(abs(start), 1e-12)
    drop = (start - end) / scale
    base = {"initial_loss": _r(first_loss), "trend_start": _r(start), "trend_end": _r(end),
            "relative_drop": _r(drop), "steps": int(losses.size)}
    findings = []
    peak = float(trend.max())
    rose = end > DIVERGE_RISE * start
    if rose or end > DIVERGE_RISE * first_loss:
        what = (f"the loss rose from {start:.4g} to {end:.4g} (trend)" if rose else
                f"the loss ends at {end:.4g} (trend), above its first value {first_loss:.4g} "
                f"(trend peak {peak:.4g})")
        findings.append(Finding(
            "lr_too_high", "error",
            f"{what}: the learning rate is too high; lower it 3-10x",
            {**base, "trend_peak": _r(peak)}))
        return findings
    half = losses.size // 2
    x = np.arange(losses.size, dtype=np.float64)
    slope_first = _slope(x[:half], losses[:half])
    slope_second = _slope(x[half:], losses[half:])
    early_drop = (first_loss - float(trend[1])) / max(abs(first_loss), 1e-12)
    later_drop = (float(trend[1]) - end) / max(abs(float(trend[1])), 1e-12)
    falling_t = _slope_t(x, losses)
    if drop < NO_LEARNING_DROP and early_drop < NO_LEARNING_DROP and falling_t > -FALLING_T:
        findings.append(Finding(
            "no_learning", "error",
            f"the loss is not falling ({start:.4g} -> {end:.4g}, {100 * drop:.1f}%): check the "
            f"gradient (gradcheck), the learning rate (too low?) and that the update is applied",
            {**base, "slope_t": _r(falling_t), "slope_first_half": _r(slope_first),
             "slope_second_half": _r(slope_second)}))
    elif (early_drop > 0.2 and abs(later_drop) < PLATEAU_FLAT
          and end > PLATEAU_LEVEL * first_loss):
        findings.append(Finding(
            "lr_too_high", "warning",
            f"the loss dropped quickly ({first_loss:.4g} -> {trend[1]:.4g}) and then stopped at a "
            f"high level ({end:.4g}): typical of a learning rate that is too high",
            {**base, "early_drop": _r(early_drop), "later_drop": _r(later_drop)}))
    elif drop > 0 and end > SLOW_REMAINING * start and slope_first < 0:
        linearity = slope_second / slope_first
        if linearity > SLOW_LINEARITY:
            findings.append(Finding(
                "lr_too_low", "warning",
                f"the loss falls slowly and nearly linearly ({start:.4g} -> {end:.4g}, "
                f"{100 * drop:.1f}%; second-half slope {linearity:.2f}x the first): the learning "
                f"rate is probably too low; raise it 3-10x",
                {**base, "slope_t": _r(falling_t), "slope_first_half": _r(slope_first),
                 "slope_second_half": _r(slope_second), "linearity": _r(linearity)}))
    # spread of the loss around its moving average, against the average's level
    window = max(5, losses.size // 20)
    kernel = np.ones(window) / window
    smooth = np.convolve(losses, kernel, mode="valid")
    resid = losses[window - 1:] - smooth
    tail = slice(resid.size // 2, None)
    level = float(np.mean(np.abs(smooth[tail])))
    noise = float(np.std(resid[tail]))
    if level > 0 and noise / level > NOISE_RATIO:
        findings.append(Finding(
            "batch_too_small", "info",
            f"the loss oscillates strongly around its trend (spread {noise:.3g} against a level of "
            f"{level:.3g}): the batch may be too small; a larger batch (or a lower learning rate) "
            f"gives steadier steps",
            {"noise": _r(noise), "level": _r(level), "noise_ratio": _r(noise / level),
             "window": window}))
    return findings


def _accuracy_findings(mon) -> list[Finding]:
    rows = [e for e in mon.epochs() if e.get("train_acc") is not None
            and e.get("val_acc") is not None]
    if len(rows) < 3:
        return []
    gaps = np.array([e["train_acc"] - e["val_acc"] for e in rows])
    early = float(gaps[: max(1, len(gaps) // 3)].min())
    last = float(gaps[-1])
    if last >= OVERFIT_GAP and last - early >= OVERFIT_GROWTH:
        return [Finding(
            "overfitting", "warning",
            f"train accuracy {rows[-1]['train_acc']:.3f} vs validation {rows[-1]['val_acc']:.3f}: "
            f"a gap of {last:.3f} that grew from {early:.3f}; use stronger regularization (L2, "
            f"dropout), more data, or stop earlier",
            {"epoch": rows[-1]["epoch"], "train_acc": _r(rows[-1]["train_acc"]),
             "val_acc": _r(rows[-1]["val_acc"]), "gap": _r(last), "early_gap": _r(early),
             "epochs": len(rows)})]
    return []


def _judged(name: str, shape) -> bool:
    """Update ratios are judged for weight matrices/kernels; biases are plotted only."""
    return shape is None or len(shape) >= 2


def _update_findings(mon) -> list[Finding]:
    steps, ratios = mon.update_ratios()
    shapes = mon.segment_shapes()
    findings = []
    for name, series in ratios.items():
        if not _judged(name, shapes.get(name)):
            continue
        recent = series[series.size // 2:]
        recent = recent[np.isfinite(recent)]
        if recent.size == 0:
            continue
        median = float(np.median(recent))
        evidence = {"segment": name, "median_ratio": _r(median), "updates": int(recent.size),
                    "band": [RATIO_LOW, RATIO_HIGH]}
        if median > RATIO_HIGH:
            findings.append(Finding(
                "update_ratio_high", "warning",
                f"segment {name}: updates are {median:.2g} of the weights' norm (aim ~1e-3): the "
                f"learning rate is high for this segment", evidence))
        elif median < RATIO_LOW:
            findings.append(Finding(
                "update_ratio_low", "warning",
                f"segment {name}: updates are {median:.2g} of the weights' norm (aim ~1e-3): the "
                f"learning rate is low for this segment", evidence))
    return findings


def _latest(entries: list[dict]) -> dict | None:
    for entry in reversed(entries):
        if entry.get("finite"):
            return entry
    return None


def _activation_findings(mon) -> list[Finding]:
    findings = []
    for layer, entries in mon.histograms("activations").items():
        h = _latest(entries)
        if h is None:
            continue
        bounded = h["min"] >= -1.0 and h["max"] <= 1.0
        evidence = {"layer": layer, "epoch": h["epoch"], "min": _r(h["min"]),
                    "max": _r(h["max"]), "units": h["units"], "values": h["finite"]}
        if bounded and h["saturated_fraction"] >= SATURATED_SHARE:
            findings.append(Finding(
                "saturated_units", "warning",
                f"layer {layer}: {100 * h['saturated_fraction']:.0f}% of outputs are at +-1 "
                f"({100 * h['saturated_unit_fraction']:.0f}% of units almost always): saturated "
                f"tanh/sigmoid units pass no gradient; scale the initialization down (e.g. "
                f"Xavier) or normalize the inputs",
                {**evidence, "saturated_fraction": _r(h["saturated_fraction"]),
                 "saturated_unit_fraction": _r(h["saturated_unit_fraction"])}))
        if h["rows"] >= 10 and h["dead_unit_fraction"] >= DEAD_SHARE:
            findings.append(Finding(
                "dead_units", "error" if h["dead_unit_fraction"] >= 0.5 else "warning",
                f"layer {layer}: {100 * h['dead_unit_fraction']:.0f}% of units output 0 for every "
                f"sample of epoch {h['epoch']}: dead ReLUs; lower the learning rate or check the "
                f"initialization and biases",
                {**evidence, "dead_unit_fraction": _r(h["dead_unit_fraction"]),
                 "zero_fraction": _r(h["zero_fraction"]), "rows": h["rows"]}))
    return findings


def _gradient_findings(mon) -> list[Finding]:
    layers = mon.histograms("gradients")
    latest = {layer: _latest(entries) for layer, entries in layers.items()}
    findings = []
    for layer, entries in layers.items():
        nonfinite = sum(e["count"] - e["finite"] for e in entries)
        if nonfinite:
            findings.append(Finding(
                "exploding_gradients", "error",
                f"layer {layer}: {nonfinite} gradient values are NaN or inf",
                {"layer": layer, "nonfinite": int(nonfinite)}))
    if findings:
        return findings
    rms = {layer: h["rms"] for layer, h in latest.items() if h is not None}
    if len(rms) < 2:
        return []
    names = list(rms)  # forward order: first appearance
    first, last = names[0], names[-1]
    ratio = rms[first] / rms[last] if rms[last] > 0 else math.inf
    evidence = {"input_side": first, "output_side": last, "ratio": _r(ratio),
                "rms": {layer: _r(value) for layer, value in rms.items()}}
    if ratio < VANISHING_RATIO:
        shrink = (f"gradients shrink {1 / ratio:.3g}x from layer {last} to layer {first}" if ratio
                  else f"gradients are all zero at layer {first} (rms {rms[last]:.3g} at {last})")
        findings.append(Finding(
            "vanishing_gradients", "warning",
            f"{shrink}: the input-side layers barely learn; check for saturated or dead units and "
            f"the initialization scale",
            evidence))
    elif ratio > EXPLODING_RATIO:
        findings.append(Finding(
            "exploding_gradients", "warning",
            f"gradients grow {ratio:.3g}x from layer {last} to layer {first}: scale the "
            f"initialization down, clip gradients or lower the learning rate",
            evidence))
    return findings


def _filter_findings(mon) -> list[Finding]:
    records = mon.filters()
    if not records:
        return []
    latest = records[-1]
    score = latest["smoothness"]
    if score is None or not math.isfinite(score) or score >= NOISY_FILTER_THRESHOLD:
        return []
    return [Finding(
        "noisy_filters", "info",
        f"first-layer filters of {latest['layer']} look like noise (smoothness {score:.3f}; white "
        f"noise ~0, smooth ~1): the net may need to train longer, or stronger regularization",
        {"layer": latest["layer"], "epoch": latest["epoch"], "smoothness": _r(score),
         "threshold": NOISY_FILTER_THRESHOLD})]


def _gradcheck_findings(mon) -> list[Finding]:
    checks = mon.gradchecks()
    if not checks or checks[-1]["passed"]:
        return []
    last = checks[-1]
    failed = [name for name, seg in (last.get("report") or {}).get("segments", {}).items()
              if isinstance(seg, dict) and seg.get("passed") is False]
    where = f" in segment(s) {', '.join(failed)}" if failed else ""
    return [Finding(
        "gradcheck_failed", "error",
        f"the gradient check at step {last['step']} failed{where} (max relative error "
        f"{last['max_rel_error']:.3g}): fix the gradient before reading anything else",
        {"step": last["step"], "epoch": last["epoch"], "max_rel_error": _r(last["max_rel_error"]),
         "failed_segments": failed, "checks": len(checks)})]


def _kink_counts(record: dict) -> tuple[dict[str, int], dict[str, int]]:
    """({segment: kinks}, {segment: checked}) of a gradcheck record, as the report counted them.

    Logs written before the record carried the counts have them in the report's segments.
    """
    if "kinks" in record and "checked" in record:
        return dict(record["kinks"]), dict(record["checked"])
    segments = (record.get("report") or {}).get("segments") or {}
    rows = {name: seg for name, seg in segments.items()
            if isinstance(seg, dict) and "kinks" in seg and "checked" in seg}
    return ({name: int(seg["kinks"]) for name, seg in rows.items()},
            {name: int(seg["checked"]) for name, seg in rows.items()})


def _kink_findings(mon) -> list[Finding]:
    checks = mon.gradchecks()
    if not checks:
        return []
    last = checks[-1]
    kinks, checked = _kink_counts(last)
    total_kinks, total_checked = sum(kinks.values()), sum(checked.values())
    if total_checked == 0 or total_kinks <= KINK_SHARE * total_checked:
        return []
    share = total_kinks / total_checked
    return [Finding(
        "many_kinks", "warning",
        f"the gradient check at step {last['step']} crossed kinks at {total_kinks} of "
        f"{total_checked} coordinates ({100 * share:.0f}%): its verdict rests on re-checks with "
        f"smaller steps; check with fewer data points (fewer data points, fewer kinks: e.g. "
        f"args=(X[:4], y[:4])), or pass kinks= a function returning the active-set signature "
        f"(e.g. a hash of the ReLU mask)",
        {"step": last["step"], "epoch": last["epoch"], "fraction": _r(share),
         "kinks": total_kinks, "checked": total_checked, "threshold": KINK_SHARE,
         "kinks_per_segment": {name: n for name, n in kinks.items() if n}})]


RULES = (_gradcheck_findings, _kink_findings, _loss_findings, _accuracy_findings, _update_findings,
         _activation_findings, _gradient_findings, _filter_findings)


def diagnose(mon) -> list[Finding]:
    """All findings for a monitor: a failed gradient check first, then errors, warnings, info.

    >>> from fastgrad.monitor import TrainingMonitor
    >>> diagnose(TrainingMonitor())
    []
    """
    findings = [f for rule in RULES for f in rule(mon)]
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (f.kind != "gradcheck_failed", rank[f.severity]))
