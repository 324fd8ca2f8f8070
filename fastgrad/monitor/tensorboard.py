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

Events are written in the calling thread to an event file of this writer's own (a unique name:
two writers opened on one folder in the same second never truncate each other's file), flushed
at the first event, then at least every ``flush_seconds`` (120 s), at ``flush()`` and at ``close()``.
tensorboardX's ``SummaryWriter`` is not used: it registers an ``atexit`` handler per writer that
is never removed.  An open file is closed by ``close()``, or by a ``weakref.finalize`` when the
writer is garbage-collected or the program ends (finalizers are dropped when closed).

Non-finite numbers are never handed to tensorboardX (it would log "NaN or Inf found in input
tensor" without saying where): a NaN/inf scalar or histogram is left out, NaN/inf pixels of the
filter grid are drawn as 0, and ``skipped`` counts them per tag.  The monitor's history keeps the
values and ``diagnose`` reports them (``nonfinite_values``), with the step and the segment.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
import time
import uuid
import weakref

import numpy as np

from ..errors import InvalidType, InvalidValue

INSTALL_HINT = 'pip install "fastgrad[tensorboard]"'
#: Pending events reach the disk at most this many seconds after they were written (default).
FLUSH_SECONDS = 120.0


def _tensorboardx():
    """tensorboardX's summary builders, event file writer and Event protobuf."""
    try:
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
    except ImportError:
        raise ImportError(
            f"tensorboard=: writing TensorBoard event files needs tensorboardX: {INSTALL_HINT} "
            f"(or pip install tensorboardX)") from None
    return summary, EventsWriter, Event


class _EventFile:
    """One open event file: writes in the caller's thread; flushed at the first event, then by a
    timer at most ``flush_seconds`` after any later one."""

    def __init__(self, logdir: str, flush_seconds: float) -> None:
        _, events_writer, self._event = _tensorboardx()
        # tensorboardX names the file by the second it was opened and the host: a suffix of its
        # own keeps a second writer opened in the same second from truncating this one
        self._events = events_writer(os.path.join(logdir, "events"),
                                     filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:12]}")
        self._flush_seconds = flush_seconds
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._flushed_once = False
        self._closed = False

    def write(self, summary, step: int) -> None:
        event = self._event(summary=summary, step=int(step), wall_time=time.time())
        with self._lock:
            self._events.write_event(event)
            if not self._flushed_once:
                self._flush_locked()
            elif self._timer is None:
                self._timer = threading.Timer(self._flush_seconds, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def _flush_locked(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._events.flush()
        self._flushed_once = True

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._flush_locked()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._flush_locked()
                self._events.close()
                self._closed = True


class TensorBoardWriter:
    """Writes a monitor's numbers as TensorBoard events into ``logdir`` (created).

    The event file is opened at the first event and closed by ``close()`` (or when the writer is
    garbage-collected, or at program exit); an event after ``close()`` opens a new one.

    Parameters
    ----------
    logdir : str or os.PathLike
        The folder TensorBoard is pointed at (``tensorboard --logdir DIR``).
    flush_seconds : float
        Events reach the disk at most this long after they were written (the first at once).

    Raises
    ------
    ImportError
        tensorboardX is not installed; the message says ``pip install "fastgrad[tensorboard]"``.
    TypeError
        ``logdir`` is not a path, or ``flush_seconds`` is not a number.
    ValueError
        ``logdir`` is a file, or ``flush_seconds`` is not a positive number.

    Examples
    --------
    >>> writer = TensorBoardWriter("runs/digits")
    >>> writer.scalar("loss", 2.3, step=0); writer.close()
    """

    def __init__(self, logdir: str | os.PathLike, flush_seconds: float = FLUSH_SECONDS) -> None:
        try:
            path = os.fspath(logdir)
        except TypeError:
            raise InvalidType(f"tensorboard: expected a folder path, got {logdir!r}") from None
        if not isinstance(path, str) or not path:
            raise InvalidType(f"tensorboard: expected a folder path, got {logdir!r}")
        if os.path.exists(path) and not os.path.isdir(path):
            raise InvalidValue(f"tensorboard: {path!r} exists and is not a folder")
        if isinstance(flush_seconds, bool) or not isinstance(flush_seconds, numbers.Real):
            raise InvalidType(f"flush_seconds: expected a number of seconds, got {flush_seconds!r}")
        if not 0.0 < flush_seconds < math.inf:
            raise InvalidValue(f"flush_seconds: expected a positive number of seconds, got "
                               f"{flush_seconds!r}")
        self.logdir = path
        self.flush_seconds = float(flush_seconds)
        self._summary, _, _ = _tensorboardx()
        os.makedirs(path, exist_ok=True)
        self._file: _EventFile | None = None
        self._close_file = None  # the weakref.finalize of the open file
        #: {tag: {"count": n, "first_step": step}} of the non-finite values left out
        self.skipped: dict[str, dict[str, int]] = {}

    def _write(self, summary, step: int) -> None:
        if self._file is None:  # the first event, or the first after close(): a new file
            self._file = _EventFile(self.logdir, self.flush_seconds)
            self._close_file = weakref.finalize(self, self._file.close)
        self._file.write(summary, step)

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
        self._write(self._summary.scalar(tag, float(value)), step)

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
        self._write(self._summary.histogram_raw(
            tag, min=summary["min"], max=summary["max"], num=n, sum=mean * n,
            sum_squares=(std * std + mean * mean) * n, bucket_limits=edges[1:].tolist(),
            bucket_counts=counts.tolist()), step)

    def image(self, tag: str, grid: np.ndarray, step: int) -> None:
        """A grid image in [0, 1]: (H, W) grey or (H, W, 3) colour."""
        formats = "HW" if grid.ndim == 2 else "HWC"
        pixels = np.asarray(grid, dtype=np.float32)
        bad = ~np.isfinite(pixels)
        if bad.any():
            self._skip(tag, step, int(bad.sum()))
            pixels = np.where(bad, np.float32(0.0), pixels)
        self._write(self._summary.image(tag, pixels, dataformats=formats), step)

    def text(self, tag: str, text: str, step: int) -> None:
        """Markdown text (TensorBoard's Text tab)."""
        self._write(self._summary.text(tag, text), step)

    def flush(self) -> None:
        """Write pending events to disk."""
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Flush and close the event file (further writes open a new one)."""
        if self._file is not None:
            self._close_file()  # closes the file and drops the finalizer
            self._file = self._close_file = None
