"""PNG plots of a monitored run (matplotlib, imported only here, through the object API).

One file per view: ``loss.png``, ``accuracy.png``, ``update_ratios.png``, ``activations.png``,
``gradients.png`` and ``filters.png``; a view without data is skipped.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .diagnose import RATIO_HIGH, RATIO_LOW
from .filters import filter_grid

#: Histograms drawn per layer: the first, the last and evenly spaced epochs in between.
MAX_EPOCH_CURVES = 4


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "fastgrad.monitor plots need matplotlib: pip install fastgrad[plot] "
            "(or pip install matplotlib)") from None
    del matplotlib
    return Figure


def smooth(values: np.ndarray, window: int | None = None) -> np.ndarray:
    """Centered moving average (same length; shorter windows at the ends), NaN-aware.

    >>> smooth(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), window=3)
    array([1.5, 2. , 3. , 4. , 4.5])
    """
    values = np.asarray(values, dtype=np.float64)
    if window is None:
        window = max(1, values.size // 25)
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    kernel = np.ones(2 * (window // 2) + 1)
    total = np.convolve(filled, kernel, mode="same")
    count = np.convolve(finite.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _epoch_axis(mon, steps: np.ndarray) -> tuple[np.ndarray, str]:
    """Steps converted to (fractional) epochs when epoch ends are known, else steps."""
    ends = [e["step"] for e in mon.epochs() if e.get("step") is not None]
    if steps.size == 0 or not ends or len(set(ends)) != len(ends):
        return steps.astype(np.float64), "step"
    knots = np.array([steps[0] - 1] + ends, dtype=np.float64)
    if np.any(np.diff(knots) <= 0):
        return steps.astype(np.float64), "step"
    epochs = np.arange(len(knots), dtype=np.float64)
    x = np.interp(steps, knots, epochs)
    beyond = steps > knots[-1]  # the epoch still running: extrapolate at the last epoch's pace
    pace = knots[-1] - knots[-2]
    x[beyond] = epochs[-1] + (steps[beyond] - knots[-1]) / pace
    return x, "epoch"


def _save(fig, outdir: str, name: str, dpi: int) -> str:
    path = os.path.join(outdir, name)
    fig.savefig(path, dpi=dpi)
    return path


def plot_loss(mon, outdir: str, dpi: int = 80) -> str | None:
    """``loss.png``: the per-step loss and its smoothed trend, against epochs."""
    steps, losses = mon.losses()
    if losses.size == 0:
        return None
    Figure = _matplotlib()
    x, unit = _epoch_axis(mon, steps)
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    ax.plot(x, losses, color="tab:blue", alpha=0.35, linewidth=0.8, label="loss per step")
    ax.plot(x, smooth(losses), color="tab:blue", linewidth=2.0, label="smoothed trend")
    finite = losses[np.isfinite(losses)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 30:
        ax.set_yscale("log")
    bad = ~np.isfinite(losses)
    if bad.any():
        ax.axvline(x[np.argmax(bad)], color="tab:red", linestyle="--", label="loss not finite")
    ax.set_xlabel(unit)
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _save(fig, outdir, "loss.png", dpi)


def plot_accuracy(mon, outdir: str, dpi: int = 80) -> str | None:
    """``accuracy.png``: train and validation accuracy per epoch."""
    rows = mon.epochs()
    series = {key: [(e["epoch"], e[key]) for e in rows if e.get(key) is not None]
              for key in ("train_acc", "val_acc")}
    if not any(series.values()):
        return None
    Figure = _matplotlib()
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for key, label, color in (("train_acc", "train", "tab:blue"),
                              ("val_acc", "validation", "tab:orange")):
        if series[key]:
            epochs, values = zip(*series[key], strict=True)
            ax.plot(epochs, values, marker="o", markersize=3, color=color, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title("Train / validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, outdir, "accuracy.png", dpi)


def plot_update_ratios(mon, outdir: str, dpi: int = 80) -> str | None:
    """``update_ratios.png``: ||update|| / ||weights|| per segment, log scale, with the 1e-3 band."""
    steps, ratios = mon.update_ratios()
    shown = {name: r for name, r in ratios.items() if np.any(np.isfinite(r) & (r > 0))}
    if not shown:
        return None
    Figure = _matplotlib()
    x, unit = _epoch_axis(mon, steps)
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    ax.axhspan(RATIO_LOW, RATIO_HIGH, color="tab:green", alpha=0.08, label="1e-4 .. 1e-2")
    ax.axhline(1e-3, color="tab:green", linestyle="--", linewidth=1.0, label="1e-3")
    for name, r in shown.items():
        r = np.where(r > 0, r, np.nan)
        line, = ax.plot(x, r, alpha=0.25, linewidth=0.7)
        ax.plot(x, np.exp(smooth(np.log(r))), color=line.get_color(), linewidth=1.8, label=name)
    ax.set_yscale("log")
    ax.set_xlabel(unit)
    ax.set_ylabel("||update|| / ||weights||")
    ax.set_title("Update / weight ratio per segment")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, outdir, "update_ratios.png", dpi)


def _pick_epochs(entries: list[dict]) -> list[dict]:
    entries = [e for e in entries if e.get("finite")]
    if len(entries) <= MAX_EPOCH_CURVES:
        return entries
    index = np.unique(np.linspace(0, len(entries) - 1, MAX_EPOCH_CURVES).round().astype(int))
    return [entries[i] for i in index]


def plot_histograms(mon, kind: str, outdir: str, dpi: int = 80) -> str | None:
    """``activations.png`` / ``gradients.png``: per-layer histograms for a few epochs."""
    layers = {layer: _pick_epochs(entries) for layer, entries in mon.histograms(kind).items()}
    layers = {layer: entries for layer, entries in layers.items() if entries}
    if not layers:
        return None
    Figure = _matplotlib()
    count = len(layers)
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    fig = Figure(figsize=(3.4 * columns, 2.7 * rows))
    for k, (layer, entries) in enumerate(layers.items()):
        ax = fig.add_subplot(rows, columns, k + 1)
        colors = [f"C{i}" for i in range(len(entries))]
        magnitudes = kind == "gradients" and "log10_counts" in entries[-1]
        for entry, color in zip(entries, colors, strict=True):
            if magnitudes:
                counts = np.asarray(entry["log10_counts"], dtype=np.float64)
                lo, hi = entry["log10_range"]
            else:
                counts = np.asarray(entry["counts"], dtype=np.float64)
                lo, hi = entry["range"]
            edges = np.linspace(lo, hi, counts.size + 1)
            share = counts / max(entry["finite"], 1)
            label = f"epoch {entry['epoch']}" + (" (so far)" if entry.get("partial") else "")
            ax.stairs(share, edges, color=color, label=label, linewidth=1.2)
        last = entries[-1]
        notes = [f"mean {last['mean']:.2g}  std {last['std']:.2g}"]
        if magnitudes:
            notes = [f"rms {last['rms']:.2g}; zero {100 * (last['zero_fraction'] or 0):.0f}%"]
            ax.set_xlabel("log10 |gradient|", fontsize=7)
            shown = np.flatnonzero(np.sum([e["log10_counts"] for e in entries], axis=0))
            if shown.size:
                width = (hi - lo) / counts.size
                ax.set_xlim(lo + width * (shown[0] - 1), lo + width * (shown[-1] + 2))
        if kind == "activations":
            notes.append(f"zero {100 * (last['zero_fraction'] or 0):.0f}%")
            if last["min"] >= -1.0 and last["max"] <= 1.0:  # tanh/sigmoid-like: saturation
                notes.append(f"|v|>=.99 {100 * (last['saturated_fraction'] or 0):.0f}%")
        if last["count"] > last["finite"]:
            notes.append(f"{last['count'] - last['finite']} NaN/inf")
        ax.set_title(f"{layer}\n" + "; ".join(notes), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("share", fontsize=7)
        ax.legend(fontsize=6, loc="upper right")
    fig.suptitle("Activations per layer" if kind == "activations" else "Gradients per layer",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, outdir, f"{kind}.png", dpi)


def plot_filters(mon, outdir: str, dpi: int = 80) -> str | None:
    """``filters.png``: the latest recorded first-layer weights as a grid of images."""
    records = mon.filters()
    if not records:
        return None
    Figure = _matplotlib()
    latest = records[-1]
    shape = tuple(latest["image_shape"])
    grid = filter_grid(np.asarray(latest["weights"], dtype=np.float64), shape)
    fig = Figure(figsize=(4, 4.3))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
    ax.set_axis_off()
    score = latest["smoothness"]
    score_text = f"{score:.2f}" if score is not None else "n/a"
    ax.set_title(f"{latest['layer']} filters, epoch {latest['epoch']}\n"
                 f"smoothness {score_text} (noise ~0, smooth ~1)", fontsize=9)
    fig.tight_layout()
    return _save(fig, outdir, "filters.png", dpi)


def plot_all(mon, outdir: str | os.PathLike, dpi: int = 80) -> list[str]:
    """Write every view that has data into ``outdir`` (created); returns the PNG paths.

    >>> mon = TrainingMonitor(); mon.log_loss(0, 2.3)
    >>> plot_all(mon, "out")
    ['out/loss.png']
    """
    _matplotlib()
    outdir = os.fspath(outdir)
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise ValueError(f"outdir: {outdir!r} exists and is not a directory")
    os.makedirs(outdir, exist_ok=True)
    paths = [plot_loss(mon, outdir, dpi), plot_accuracy(mon, outdir, dpi),
             plot_update_ratios(mon, outdir, dpi),
             plot_histograms(mon, "activations", outdir, dpi),
             plot_histograms(mon, "gradients", outdir, dpi), plot_filters(mon, outdir, dpi)]
    return [p for p in paths if p is not None]
