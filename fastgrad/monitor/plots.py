"""PNG plots of a monitored run (matplotlib, imported only here, through the object API).

One file per view: ``loss.png``, ``accuracy.png``, ``update_ratios.png``, ``activations.png``,
``gradients.png`` and ``filters.png``; a view without data is skipped.  Each view is drawn by a
``*_figure(mon)`` function (see ``VIEWS``) that returns a matplotlib Figure, or None when the run
has no data for it; ``plot_all`` saves them.  At the default 100 dpi the PNGs are 700-900 px wide,
fonts are 10-13 pt, and legends sit beside the axes, never over the data.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..errors import InvalidValue
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
    return x, "epochs trained"


#: Figure width in inches; at the default 100 dpi every PNG is 800 px wide.
WIDTH = 8.0
DEFAULT_DPI = 100
#: Font sizes (points): readable at the PNG's own size, no zooming needed.
FONT, SMALL = 12, 10


def _figure(height: float, width: float = WIDTH):
    """A Figure with constrained layout (legends placed outside the axes get room)."""
    Figure = _matplotlib()
    return Figure(figsize=(width, height), layout="constrained")


def _style(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.set_title(title, fontsize=FONT + 1)
    ax.tick_params(labelsize=SMALL)
    ax.grid(alpha=0.3)


def _legend_outside(ax) -> None:
    """The legend to the right of the axes: it never covers a curve."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=SMALL,
              frameon=False)


def _save(fig, outdir: str, name: str, dpi: int) -> str:
    path = os.path.join(outdir, name)
    fig.savefig(path, dpi=dpi)
    return path


def _checks_on_curve(mon, steps: np.ndarray, x: np.ndarray, losses: np.ndarray):
    """(x, loss, passed) of each recorded gradient check, placed on the loss curve at its step."""
    marks = []
    for check in mon.gradchecks():
        if check.get("step") is None or steps.size == 0:
            continue
        where = np.flatnonzero(steps == check["step"])
        k = int(where[-1]) if where.size else int(np.argmin(np.abs(steps - check["step"])))
        marks.append((x[k], losses[k], bool(check["passed"])))
    return marks


def loss_figure(mon):
    """``loss.png``: the per-step loss, its smoothed trend and the gradient checks on it.

    8 inches wide; None when no loss was logged.
    """
    steps, losses = mon.losses()
    if losses.size == 0:
        return None
    x, unit = _epoch_axis(mon, steps)
    fig = _figure(4.5)
    ax = fig.add_subplot()
    ax.plot(x, losses, color="tab:blue", alpha=0.35, linewidth=0.8, label="loss per step")
    ax.plot(x, smooth(losses), color="tab:blue", linewidth=2.0, label="smoothed trend")
    finite = losses[np.isfinite(losses)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 30:
        ax.set_yscale("log")
    bad = ~np.isfinite(losses)
    if bad.any():
        ax.axvline(x[np.argmax(bad)], color="tab:red", linestyle="--",
                   label=f"loss {losses[np.argmax(bad)]} (step {steps[np.argmax(bad)]})")
    marks = _checks_on_curve(mon, steps, x, losses)
    passed = [(mx, my) for mx, my, ok in marks if ok]
    failed = [(mx, my) for mx, my, ok in marks if not ok]
    if passed:
        ax.scatter(*zip(*passed, strict=True), marker="o", s=36, facecolors="none",
                   edgecolors="tab:green", linewidths=1.5, zorder=3, label="gradient check passed")
    for mx, _ in failed:  # the loss at a failed check may be NaN: the line marks the step anyway
        ax.axvline(mx, color="tab:red", linewidth=1.5, alpha=0.8)
    if failed:
        ax.scatter(*zip(*failed, strict=True), marker="X", s=90, color="tab:red", zorder=4,
                   label="gradient check FAILED")
        ax.plot([], [], color="tab:red", linewidth=1.5, label="step of the failed check")
    _style(ax, unit, "loss", "Training loss")
    _legend_outside(ax)
    return fig


def accuracy_figure(mon):
    """``accuracy.png``: train and validation accuracy per epoch.

    8 inches wide; None when no accuracy was logged.
    """
    rows = mon.epochs()
    series = {key: [(e["epoch"], e[key]) for e in rows if e.get(key) is not None]
              for key in ("train_acc", "val_acc")}
    if not any(series.values()):
        return None
    fig = _figure(4.5)
    ax = fig.add_subplot()
    for key, label, color in (("train_acc", "train", "tab:blue"),
                              ("val_acc", "validation", "tab:orange")):
        if series[key]:
            epochs, values = zip(*series[key], strict=True)
            ax.plot(epochs, values, marker="o", markersize=4, color=color, label=label)
    _style(ax, "epoch", "accuracy (fraction correct)", "Train / validation accuracy")
    _legend_outside(ax)
    return fig


def update_ratio_figure(mon):
    """``update_ratios.png``: ||update|| / ||weights|| per segment with the 1e-3 band.

    8 inches wide; None when no positive ratio was logged.
    """
    steps, ratios = mon.update_ratios()
    shown = {name: r for name, r in ratios.items() if np.any(np.isfinite(r) & (r > 0))}
    if not shown:
        return None
    x, unit = _epoch_axis(mon, steps)
    fig = _figure(4.5)
    ax = fig.add_subplot()
    ax.axhspan(RATIO_LOW, RATIO_HIGH, color="tab:green", alpha=0.08,
               label="healthy band 1e-4 .. 1e-2")
    ax.axhline(1e-3, color="tab:green", linestyle="--", linewidth=1.0, label="target 1e-3")
    for name, r in shown.items():
        r = np.where(r > 0, r, np.nan)
        line, = ax.plot(x, r, alpha=0.25, linewidth=0.7)
        ax.plot(x, np.exp(smooth(np.log(r))), color=line.get_color(), linewidth=1.8, label=name)
    ax.set_yscale("log")
    _style(ax, unit, "||update|| / ||weights||", "Update / weight ratio per segment")
    ax.grid(alpha=0.3, which="both")
    _legend_outside(ax)
    return fig


def _pick_epochs(entries: list[dict]) -> list[dict]:
    entries = [e for e in entries if e.get("finite")]
    if len(entries) <= MAX_EPOCH_CURVES:
        return entries
    index = np.unique(np.linspace(0, len(entries) - 1, MAX_EPOCH_CURVES).round().astype(int))
    return [entries[i] for i in index]


def _percent(share: float | None) -> str:
    return f"{100 * (share or 0):.0f}%"


def _layer_notes(kind: str, last: dict, magnitudes: bool) -> list[str]:
    """The numbers under a layer's title, in words."""
    if magnitudes:
        notes = [f"epoch {last['epoch']}: rms {last['rms']:.2g}",
                 f"exactly 0: {_percent(last['zero_fraction'])}"]
    else:
        notes = [f"epoch {last['epoch']}: mean {last['mean']:.2g}, std {last['std']:.2g}"]
    if kind == "activations":
        notes.append(f"exactly 0: {_percent(last['zero_fraction'])}")
        if last["min"] >= -1.0 and last["max"] <= 1.0:  # tanh/sigmoid-like: saturation
            notes.append(f"saturated (|value| >= 0.99): {_percent(last['saturated_fraction'])}")
    if last["count"] > last["finite"]:
        notes.append(f"{last['count'] - last['finite']} NaN/inf")
    return notes


def histogram_figure(mon, kind: str):
    """``activations.png`` / ``gradients.png``: per-layer histograms for a few epochs.

    At least 9 inches wide with two layers (two per row); None when nothing of ``kind`` was logged.
    ``kind`` is "activations" or "gradients".
    """
    layers = {layer: _pick_epochs(entries) for layer, entries in mon.histograms(kind).items()}
    layers = {layer: entries for layer, entries in layers.items() if entries}
    if not layers:
        return None
    count = len(layers)
    columns = min(count, 2)
    rows = math.ceil(count / columns)
    fig = _figure(3.4 * rows + 1.0, width=max(WIDTH, 3.8 * columns + 1.4))
    # one color per epoch label across layers, explained once in a legend beside the panels
    labels: dict[str, str] = {}
    for entries in layers.values():
        for entry in entries:
            label = f"epoch {entry['epoch']}" + (" (so far)" if entry.get("partial") else "")
            labels.setdefault(label, f"C{len(labels)}")
    handles = {}
    for k, (layer, entries) in enumerate(layers.items()):
        ax = fig.add_subplot(rows, columns, k + 1)
        magnitudes = kind == "gradients" and "log10_counts" in entries[-1]
        for entry in entries:
            if magnitudes:
                counts = np.asarray(entry["log10_counts"], dtype=np.float64)
                lo, hi = entry["log10_range"]
            else:
                counts = np.asarray(entry["counts"], dtype=np.float64)
                lo, hi = entry["range"]
            edges = np.linspace(lo, hi, counts.size + 1)
            share = counts / max(entry["finite"], 1)
            label = f"epoch {entry['epoch']}" + (" (so far)" if entry.get("partial") else "")
            handles[label] = ax.stairs(share, edges, color=labels[label], linewidth=1.5)
        if magnitudes:
            shown = np.flatnonzero(np.sum([e["log10_counts"] for e in entries], axis=0))
            if shown.size:
                width = (hi - lo) / counts.size
                ax.set_xlim(lo + width * (shown[0] - 1), lo + width * (shown[-1] + 2))
        xlabel = "log10 |gradient|" if magnitudes else (
            "activation value" if kind == "activations" else "gradient value")
        notes = _layer_notes(kind, entries[-1], magnitudes)
        _style(ax, xlabel, "share of values", "")
        # the numbers go in the title, above the axes: nothing is drawn over the bars
        ax.set_title(f"layer {layer}\n" + "\n".join(notes), fontsize=SMALL + 1)
    ordered = [label for label in labels if label in handles]
    # beside the first row's last panel (the legend's "outside" placement needs matplotlib 3.7)
    fig.axes[min(columns, count) - 1].legend(
        [handles[label] for label in ordered], ordered, loc="upper left",
        bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=SMALL, frameon=False)
    fig.suptitle("Activations per layer" if kind == "activations" else "Gradients per layer",
                 fontsize=FONT + 2)
    return fig


def filter_figure(mon):
    """``filters.png``: the latest recorded first-layer weights as a grid of images.

    7 inches wide; None when no filters were logged.
    """
    records = mon.filters()
    if not records:
        return None
    latest = records[-1]
    shape = tuple(latest["image_shape"])
    grid = filter_grid(np.asarray(latest["weights"], dtype=np.float64), shape)
    fig = _figure(7.4, width=7.0)
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest")
    ax.set_axis_off()
    score = latest["smoothness"]
    score_text = f"{score:.2f}" if score is not None else "n/a"
    count = len(latest["weights"])
    ax.set_title(f"{latest['layer']}: {count} filters of {shape[0]}x{shape[1]} pixels, "
                 f"epoch {latest['epoch']}\nsmoothness {score_text} (noise ~0, smooth ~1)",
                 fontsize=FONT + 1)
    return fig


#: The views, in order: file name and the function drawing it (None: no data for it).
VIEWS = (
    ("loss.png", loss_figure),
    ("accuracy.png", accuracy_figure),
    ("update_ratios.png", update_ratio_figure),
    ("activations.png", lambda mon: histogram_figure(mon, "activations")),
    ("gradients.png", lambda mon: histogram_figure(mon, "gradients")),
    ("filters.png", filter_figure),
)


def plot_all(mon, outdir: str | os.PathLike, dpi: int = DEFAULT_DPI) -> list[str]:
    """Write every view that has data into ``outdir`` (created); returns the PNG paths.

    Parameters
    ----------
    mon : TrainingMonitor
        The run to draw.
    outdir : str or os.PathLike
        Folder for the PNGs; created if missing.
    dpi : int
        Resolution: at the default 100 every PNG is 700-900 px wide.

    Returns
    -------
    list of str
        Paths of the PNGs written, in the order of ``VIEWS``.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    ValueError
        ``outdir`` exists and is not a folder.

    Examples
    --------
    >>> mon = TrainingMonitor(); mon.log_loss(0, 2.3)
    >>> plot_all(mon, "out")
    ['out/loss.png']
    """
    _matplotlib()
    outdir = os.fspath(outdir)
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise InvalidValue(f"outdir: {outdir!r} exists and is not a directory")
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for name, draw in VIEWS:
        fig = draw(mon)
        if fig is not None:
            paths.append(_save(fig, outdir, name, dpi))
    return paths
