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

from ..errors import InvalidValue
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
#: A loss spike: a loss at least this many times the median of the SPIKE_WINDOW losses before it.
SPIKE_FACTOR = 5.0
SPIKE_WINDOW = 10
#: ...followed by a plateau: the losses after it stay above this share of the first loss (the net
#: lost what it had learned: for cross-entropy the first loss is about log(classes)).
SPIKE_NO_GAIN = 0.9
#: Updates this large against the weights' norm (500x the 1e-3 target), then ~0, with the loss
#: above LOSS_ROSE times the first loss meanwhile: the first steps were too large.
UPDATE_BLOWUP, LOSS_ROSE = 0.5, 2.0
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
            raise InvalidValue(f"severity: expected one of {SEVERITIES}, got {self.severity!r}")
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


def loss_spike(steps: np.ndarray, losses: np.ndarray) -> dict | None:
    """The first loss spike that the run never recovered from, or None.

    A spike is a loss at least ``SPIKE_FACTOR`` times the median of the ``SPIKE_WINDOW`` losses
    before it; it counts when the second half of the losses after it stays above
    ``SPIKE_NO_GAIN`` times the first loss and is not clearly falling (a plateau at the level of
    an untrained net: with a too-high learning rate the first updates are huge, ReLUs die, and
    the gradients and updates are ~0 from then on).  Only the first spike is judged: a run that
    recovered from it (a noisy batch) gives None.

    Parameters
    ----------
    steps : numpy.ndarray
        The steps of ``losses`` (``TrainingMonitor.losses()[0]``).
    losses : numpy.ndarray
        The per-step training losses; None is returned unless at least ``MIN_LOSSES`` are given,
        all finite (a NaN/inf loss is divergence, told apart) and the first positive.

    Returns
    -------
    dict or None
        ``index`` and ``step`` of the spike, ``before`` (the loss at the step before),
        ``level_before`` (the median the jump is measured against), ``loss`` (at the spike),
        ``peak`` and ``peak_step`` (the largest loss within ``SPIKE_WINDOW`` steps),
        ``plateau`` (the median of the last half after it) and ``plateau_from_step``.

    Examples
    --------
    >>> spike = loss_spike(np.arange(30), np.r_[2.3, 2.3, 40.0, 9.0, np.full(26, 2.3)])
    >>> spike["step"], spike["loss"], spike["plateau"]
    (2, 40.0, 2.3)
    """
    losses = np.asarray(losses, dtype=np.float64)
    first = float(losses[0]) if losses.size else math.nan
    if losses.size < MIN_LOSSES or not np.all(np.isfinite(losses)) or first <= 0:
        return None
    for k in range(1, losses.size - MIN_LOSSES // 2):
        before = float(np.median(losses[max(0, k - SPIKE_WINDOW):k]))
        if before <= 0 or losses[k] < SPIKE_FACTOR * before:
            continue
        after = losses[k + 1:]
        tail = after[after.size // 2:]
        plateau = float(np.median(tail))
        x = np.arange(tail.size, dtype=np.float64)
        if plateau < SPIKE_NO_GAIN * first or _slope_t(x, tail) < -FALLING_T:
            return None  # the run recovered from its first spike: not this pattern
        episode = losses[k:k + SPIKE_WINDOW]
        peak = k + int(np.argmax(episode))
        return {"index": k, "step": int(steps[k]), "before": float(losses[k - 1]),
                "level_before": before, "loss": float(losses[k]), "peak": float(losses[peak]),
                "peak_step": int(steps[peak]), "plateau": plateau,
                "plateau_from_step": int(steps[k + 1 + after.size // 2])}
    return None


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
    spike = loss_spike(steps, losses)
    if spike is not None:
        peak_text = (f"; peak {spike['peak']:.4g} at step {spike['peak_step']}"
                     if spike["peak_step"] != spike["step"] else "")
        findings.append(Finding(
            "lr_too_high", "error",
            f"loss spike at step {spike['step']}: the loss jumped from {spike['before']:.4g} to "
            f"{spike['loss']:.4g} ({spike['loss'] / spike['level_before']:.3g}x its level "
            f"before{peak_text}), then stayed at {spike['plateau']:.4g} (first loss "
            f"{first_loss:.4g}: about what an untrained net scores): learning rate too high; lower it "
            f"3-10x (or warm it up), and restart from a fresh initialization",
            {**base, "spike_step": spike["step"], "loss_before": _r(spike["before"]),
             "spike_loss": _r(spike["loss"]), "jump": _r(spike["loss"] / spike["level_before"]),
             "peak": _r(spike["peak"]), "peak_step": spike["peak_step"],
             "plateau": _r(spike["plateau"]), "plateau_from_step": spike["plateau_from_step"]}))
        return findings  # the spike explains the rest of the curve
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
    return findings + _noise_findings(losses)


def _noise_findings(losses: np.ndarray) -> list[Finding]:
    findings = []
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


def _low_since(series: np.ndarray) -> int:
    """Index of the first update below the band after which the median stays below it."""
    for i, ratio in enumerate(series):
        rest = series[i:][np.isfinite(series[i:])]
        if ratio < RATIO_LOW and np.median(rest) < RATIO_LOW:
            return i
    return 0


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
        if median < RATIO_LOW:
            since = _low_since(series)
            evidence["low_since_step"] = int(steps[since])
            earlier = np.where(np.isfinite(series[:since]), series[:since], -np.inf)
            if since and np.isfinite(earlier.max()):
                evidence["max_ratio_before"] = _r(float(earlier.max()))
                evidence["max_ratio_step"] = int(steps[int(np.argmax(earlier))])
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


def _epoch_steps(mon, epoch: int) -> tuple[int, int]:
    """(first, last) logged step of ``epoch``; the epoch still open ends at the last loss."""
    steps, _ = mon.losses()
    ends = {e["epoch"]: e["step"] for e in mon.epochs() if e.get("step") is not None}
    earlier = [step for e, step in ends.items() if e < epoch]
    first = max(earlier) + 1 if earlier else (int(steps[0]) if steps.size else 0)
    last = ends.get(epoch, int(steps[-1]) if steps.size else first)
    return int(first), int(last)


def _dead_since(mon, entries: list[dict]) -> dict:
    """The first epoch from which the layer's dead share stayed at or above DEAD_SHARE."""
    since = entries[-1]["epoch"]
    for entry in reversed(entries):
        if not entry.get("finite") or entry["dead_unit_fraction"] < DEAD_SHARE:
            break
        since = entry["epoch"]
    first, last = _epoch_steps(mon, since)
    return {"epoch": since, "first_step": first, "last_step": last}


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
            since = _dead_since(mon, entries)
            findings.append(Finding(
                "dead_units", "error" if h["dead_unit_fraction"] >= 0.5 else "warning",
                f"layer {layer}: {100 * h['dead_unit_fraction']:.0f}% of units output 0 for every "
                f"sample of epoch {h['epoch']} (dead since epoch {since['epoch']}, steps "
                f"{since['first_step']}-{since['last_step']}): dead ReLUs; lower the learning rate "
                f"or check the initialization and biases",
                {**evidence, "dead_unit_fraction": _r(h["dead_unit_fraction"]),
                 "zero_fraction": _r(h["zero_fraction"]), "rows": h["rows"],
                 "dead_since_epoch": since["epoch"], "dead_since_step": since["first_step"],
                 "dead_since_epoch_last_step": since["last_step"]}))
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


def _nonfinite_findings(mon) -> list[Finding]:
    """NaN/inf in the monitor's own series: kept in the log, left out of plots and TensorBoard.

    A non-finite loss is not listed: the divergence finding (``lr_too_high``) names its step.
    """
    places = []
    update_steps, ratios = mon.update_ratios()
    series = [(f"update ratio of {name}", update_steps, r) for name, r in ratios.items()]
    rows = mon.epochs()
    metrics = sorted({k for e in rows for k in e} - {"epoch", "step"})
    for key in metrics:
        values = [e.get(key) for e in rows]
        given = [i for i, v in enumerate(values) if v is not None]
        series.append((key, np.array([rows[i]["epoch"] for i in given]),
                       np.array([values[i] for i in given], dtype=np.float64)))
    for what, at, values in series:
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            unit = "epoch" if what in metrics else "step"
            places.append({"series": what, "count": int(bad.size),
                           f"first_{unit}": int(at[bad[0]])})
    if not places:
        return []
    listed = "; ".join(
        f"{p['series']}: {p['count']} from {'epoch' if 'first_epoch' in p else 'step'} "
        f"{p.get('first_epoch', p.get('first_step'))}" for p in places)
    return [Finding(
        "nonfinite_values", "info",
        f"NaN/inf values ({listed}): kept in the log, left out of the plots and TensorBoard",
        {"series": places})]


RULES = (_gradcheck_findings, _kink_findings, _loss_findings, _accuracy_findings, _update_findings,
         _activation_findings, _gradient_findings, _filter_findings, _nonfinite_findings)


def _blowup_finding(findings: list[Finding], mon) -> Finding | None:
    """lr_too_high from huge first updates that collapsed to ~0 while the loss jumped."""
    steps, losses = mon.losses()
    for f in findings:
        ev = f.evidence
        if f.kind != "update_ratio_low" or (ev.get("max_ratio_before") or 0) < UPDATE_BLOWUP:
            continue
        during = (steps <= ev["low_since_step"]) & np.isfinite(losses)
        if losses.size == 0 or not during.any() or losses[0] <= 0:
            continue
        worst = int(np.argmax(np.where(during, losses, -np.inf)))
        if losses[worst] < LOSS_ROSE * losses[0]:
            continue
        return Finding(
            "lr_too_high", "error",
            f"segment {ev['segment']}: an update of {ev['max_ratio_before']:.2g}x the weights' "
            f"norm at step {ev['max_ratio_step']} (aim ~1e-3), the loss up from {losses[0]:.4g} "
            f"to {losses[worst]:.4g} at step {steps[worst]}, then updates ~0 since step "
            f"{ev['low_since_step']}: learning rate too high; lower it 3-10x (or warm it up), and "
            f"restart from a fresh initialization",
            {"segment": ev["segment"], "max_ratio": ev["max_ratio_before"],
             "max_ratio_step": ev["max_ratio_step"], "low_since_step": ev["low_since_step"],
             "initial_loss": _r(float(losses[0])), "worst_loss": _r(float(losses[worst])),
             "worst_loss_step": int(steps[worst])})
    return None


def _explained(findings: list[Finding], mon) -> list[Finding]:
    """Findings that follow from another say so, instead of contradicting it.

    With the learning rate too high (a loss spike, or a loss that rose) ReLUs die, and then the
    gradients and updates of the layers around them are ~0: the low update ratios are not a low
    learning rate, and the dead units are the high one's doing when they died after the spike.
    """
    high = next((f for f in findings if f.kind == "lr_too_high"), None)
    dead = [f for f in findings if f.kind == "dead_units" and f.severity == "error"]
    if high is None:
        high = _blowup_finding(findings, mon)
        if high is not None:
            findings = [high, *findings]
    spike_step = high.evidence.get("spike_step") if high is not None else None
    after_spike = ""
    if spike_step is not None:
        after_spike = f", after the loss spike at step {spike_step}"
    result = []
    for f in findings:
        if f.kind == "dead_units" and high is not None:
            ev = f.evidence
            if spike_step is None or ev["dead_since_epoch_last_step"] >= spike_step:
                f = Finding(f.kind, f.severity, (
                    f"layer {ev['layer']}: {100 * ev['dead_unit_fraction']:.0f}% of units output 0 "
                    f"for every sample of epoch {ev['epoch']}: dead ReLUs since epoch "
                    f"{ev['dead_since_epoch']} (steps {ev['dead_since_step']}-"
                    f"{ev['dead_since_epoch_last_step']}){after_spike}: a consequence of the "
                    f"too-high learning rate (see lr_too_high); lower it and re-initialize: dead "
                    f"units do not come back"), {**ev, "consequence_of": "lr_too_high"})
        elif f.kind == "update_ratio_low" and (high is not None or dead):
            ev = f.evidence
            since = ev.get("low_since_step")
            when = f" since step {since}" if since is not None else ""
            if (ev.get("max_ratio_before") or 0) > RATIO_HIGH:
                when += f" (before: up to {ev['max_ratio_before']:.2g}, far above the band)"
            if dead:
                layers = ", ".join(d.evidence["layer"] for d in dead)
                why = (f"the gradients are ~0 because the units of layer {layers} died"
                       f"{after_spike} (see dead_units)")
                cause = ["dead_units"] + (["lr_too_high"] if high is not None else [])
            else:
                why = f"a consequence of the too-high learning rate{after_spike} (see lr_too_high)"
                cause = ["lr_too_high"]
            f = Finding(f.kind, "info", (
                f"segment {ev['segment']}: updates are {ev['median_ratio']:.2g} of the weights' "
                f"norm{when}: {why}, not a learning rate that is low"),
                {**ev, "consequence_of": cause})
        elif f.kind == "vanishing_gradients" and dead:
            layers = ", ".join(d.evidence["layer"] for d in dead)
            f = Finding(f.kind, f.severity, f"{f.message}; here the units of layer {layers} are "
                        f"dead (see dead_units)", {**f.evidence, "consequence_of": "dead_units"})
        result.append(f)
    return result


def diagnose(mon) -> list[Finding]:
    """All findings for a monitor: a failed gradient check first, then errors, warnings, info.

    >>> from fastgrad.monitor import TrainingMonitor
    >>> diagnose(TrainingMonitor())
    []
    """
    findings = _explained([f for rule in RULES for f in rule(mon)], mon)
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (f.kind != "gradcheck_failed", rank[f.severity]))
