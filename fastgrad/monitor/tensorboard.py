"""TensorBoard event files of a monitored run, written through ``tensorboardX`` (an extra).

``TrainingMonitor(..., tensorboard=DIR)`` mirrors what it records into DIR, under these tags:

- ``loss``                          every ``log_loss`` (step = the loss's step)
- ``accuracy/train``, ``accuracy/val`` and ``metrics/NAME``   every ``log_epoch``
- ``update_ratio/SEGMENT``          every ``log_update``: ||update|| / ||weights||
- ``activations/LAYER``, ``gradients/LAYER``   one histogram per layer per epoch (at ``log_epoch``)
- ``filters/LAYER``                 the first-layer filter grid as an image (``log_filters``)
- ``gradcheck/max_rel_error``, ``gradcheck/passed``   every gradient check
- ``findings``                      the findings as text, at each ``save`` and at ``close``

The histograms are the monitor's own per-epoch bins (no raw values are kept or sent).

Non-finite numbers are never handed to tensorboardX (it would log "NaN or Inf found in input
tensor" without saying where): a NaN/inf scalar or histogram is left out, NaN/inf pixels of the
filter grid are drawn as 0, and ``skipped`` counts them per tag.  The monitor's history keeps the
values and ``diagnose`` reports them (``nonfinite_values``), with the step and the segment.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import InvalidType, InvalidValue

INSTALL_HINT = 'pip install "fastgrad[tensorboard]"'


def _summary_writer():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError(
            f"tensorboard=: writing TensorBoard event files needs tensorboardX: {INSTALL_HINT} "
            f"(or pip install tensorboardX)") from None
    return SummaryWriter


class TensorBoardWriter:
    """Writes a monitor's numbers as TensorBoard events into ``logdir`` (created).

    Parameters
    ----------
    logdir : str or os.PathLike
        The folder TensorBoard is pointed at (``tensorboard --logdir DIR``).

    Raises
    ------
    ImportError
        tensorboardX is not installed; the message says ``pip install "fastgrad[tensorboard]"``.
    TypeError
        ``logdir`` is not a path.

    Examples
    --------
    >>> writer = TensorBoardWriter("runs/digits")
    >>> writer.scalar("loss", 2.3, step=0); writer.close()
    """

    def __init__(self, logdir: str | os.PathLike) -> None:
        try:
            path = os.fspath(logdir)
        except TypeError:
            raise InvalidType(f"tensorboard: expected a folder path, got {logdir!r}") from None
        if not isinstance(path, str) or not path:
            raise InvalidType(f"tensorboard: expected a folder path, got {logdir!r}")
        if os.path.exists(path) and not os.path.isdir(path):
            raise InvalidValue(f"tensorboard: {path!r} exists and is not a folder")
        self.logdir = path
        self._writer = _summary_writer()(logdir=path)
        #: {tag: {"count": n, "first_step": step}} of the non-finite values left out
        self.skipped: dict[str, dict[str, int]] = {}

    def _skip(self, tag: str, step: int, count: int = 1) -> None:
        entry = self.skipped.setdefault(tag, {"count": 0, "first_step": int(step)})
        entry["count"] += int(count)

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        """One number (None is skipped: e.g. an accuracy that was not given; NaN/inf too)."""
        if value is None:
            return
        if not np.isfinite(value):
            self._skip(tag, step)
            return
        self._writer.add_scalar(tag, float(value), global_step=int(step))

    def histogram(self, tag: str, summary: dict, step: int) -> None:
        """A per-epoch histogram summary of the monitor (``HistogramAccumulator.summary``)."""
        n = summary["finite"]
        if not n:
            return  # nothing finite to draw
        counts = np.asarray(summary["counts"], dtype=np.float64)
        lo, hi = summary["range"]
        edges = np.linspace(lo, hi, counts.size + 1)
        mean, std = summary["mean"], summary["std"]
        stats = [summary["min"], summary["max"], mean, std]
        if any(v is None or not np.isfinite(v) for v in stats) or not np.all(np.isfinite(edges)):
            self._skip(tag, step)  # e.g. a mean that overflowed: no honest histogram to draw
            return
        self._writer.add_histogram_raw(
            tag, min=summary["min"], max=summary["max"], num=n, sum=mean * n,
            sum_squares=(std * std + mean * mean) * n, bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist(), global_step=int(step))

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        """A grid image in [0, 1]: (H, W) grey or (H, W, 3) colour."""
        formats = "HW" if grid.ndim == 2 else "HWC"
        pixels = np.asarray(grid, dtype=np.float32)
        bad = ~np.isfinite(pixels)
        if bad.any():
            self._skip(tag, step, int(bad.sum()))
            pixels = np.where(bad, np.float32(0.0), pixels)
        self._writer.add_image(tag, pixels, global_step=int(step), dataformats=formats)

    def text(self, tag: str, text: str, step: int) -> None:
        """Markdown text (TensorBoard's Text tab)."""
        self._writer.add_text(tag, text, global_step=int(step))

    def flush(self) -> None:
        """Write pending events to disk."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file (further writes open a new one)."""
        self._writer.close()
