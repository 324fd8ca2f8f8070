"""TrainingMonitor: record the numbers worth tracking during training, cheaply, as a JSONL log."""

from __future__ import annotations

import math
import numbers
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._numba_cache import cached_per_user
from ..errors import InvalidType, InvalidValue
from ..segments import SegmentMap
from .filters import filter_grid, filter_smoothness, filters_as_images
from .histograms import DEFAULT_BINS, HistogramAccumulator, as_rows
from .log import FORMAT_VERSION, append_records, as_floats, jsonable, read_float, read_records

KINDS = ("activations", "gradients")
#: The warm-up is over once the recent loss is this much (relative) below the first losses.
WARMUP_DROP = 0.05
#: ...and at least this many losses were logged.
WARMUP_MIN_STEPS = 5


@cached_per_user
def _segment_sumsq(theta, update, stops):  # pragma: no cover - compiled
    """Sums of squares of ``theta`` and ``update`` per contiguous segment, in one pass."""
    count = stops.shape[0]
    weights = np.zeros(count)
    updates = np.zeros(count)
    start = 0
    for k in range(count):
        w = 0.0
        u = 0.0
        for i in range(start, stops[k]):
            w += theta[i] * theta[i]
            u += update[i] * update[i]
        weights[k] = w
        updates[k] = u
        start = stops[k]
    return weights, updates


def _segment_table(segments) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """(name, start, stop, shape) per segment from a SegmentMap or a {name: shape} mapping."""
    if segments is None:
        return []
    table = []
    if isinstance(segments, Mapping):
        segments = SegmentMap.from_shapes(segments)  # refuses empty or negative shapes
    try:
        items = list(segments)
    except TypeError:
        raise InvalidType(
            f"segments: expected a fastgrad.SegmentMap or a {{name: shape}} dict, got "
            f"{type(segments).__name__}"
        ) from None
    for seg in items:
        if isinstance(seg, str):  # iteration over names: look the segments up
            seg = segments[seg]
        try:
            table.append((str(seg.name), int(seg.start), int(seg.stop), tuple(seg.shape)))
        except AttributeError:
            raise InvalidType(
                f"segments: expected segments with name/start/stop/shape, got {seg!r}"
            ) from None
    return table


def _check_name(value, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidType(f"{name}: expected a non-empty str, got {value!r}")
    return value


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidType(f"{name}: expected an int, got {value!r}")
    return int(value)


def _check_real(value, name: str) -> float:
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidType(f"{name}: expected a real number, got {value!r}")
    return float(value)


def _check_fraction(value, name: str) -> float | None:
    if value is None:
        return None
    value = _check_real(value, name)
    if not 0.0 <= value <= 1.0:
        raise InvalidValue(f"{name}: expected an accuracy in [0, 1], got {value!r}")
    return value


def _update_ratio(weights_norm: float, update_norm: float) -> float:
    """||update|| / ||weights||, also defined when the weights are all 0.

    A block whose weights are all 0 before the update (a zero-initialised bias at step 0) is
    measured against its norm after the update, which is then the update's own: 1 when the
    update moves it, 0 when it stays 0.  NaN only when the weights or the update are not finite.
    """
    if not (math.isfinite(weights_norm) and math.isfinite(update_norm)):
        return math.nan  # diverged parameters: kept as NaN, reported by diagnose
    if weights_norm == 0.0:
        return 1.0 if update_norm > 0.0 else 0.0
    return update_norm / weights_norm


def _scaled_norm(values: np.ndarray) -> float:
    """The 2-norm without overflow in the squares (huge but finite values); inf/NaN propagate."""
    largest = float(np.max(np.abs(values))) if values.size else 0.0
    if largest == 0.0 or not math.isfinite(largest):
        return largest
    return largest * float(np.linalg.norm(values / largest))


def _flat_view(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype.kind not in "fiu":
        raise InvalidType(f"{name}: expected a numeric array, got dtype {array.dtype}")
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    return array.reshape(-1)  # a view when contiguous


class TrainingMonitor:
    """Tracks loss, accuracies, update/weight ratios, activation and gradient histograms.

    Everything is kept as small summaries (per-step scalars, per-layer per-epoch histograms),
    never as copies of parameters or activations.  ``save`` appends to a JSON Lines log that can
    be read with ``load`` (or ``fastgrad monitor LOG``) while training goes on; ``diagnose``
    turns the numbers into findings and ``plot`` into PNGs.

    Parameters
    ----------
    segments : SegmentMap or dict of {str: tuple of int}, optional
        The layout of the flat parameter vector (e.g. ``{"W1": (64, 32), "b1": (32,)}``), for
        per-segment update ratios and gradient checks.  Without it ``log_update`` reports one
        ratio, "theta".
    bins : int
        Histogram bins per layer and epoch, a positive multiple of 4 (default 48).
    tensorboard : str or os.PathLike, optional
        Also write TensorBoard event files into this folder (loss, accuracies, update ratios,
        histograms, the filter grid, the findings); needs ``pip install "fastgrad[tensorboard]"``.
        Closed by ``close()`` or at the end of a ``with`` block; a monitor left open has its
        event file closed when it is garbage-collected or the program ends.

    Raises
    ------
    ValueError
        ``bins`` is not a positive multiple of 4, a segment has no elements, or ``tensorboard``
        is a file.
    TypeError
        ``segments`` is neither a SegmentMap nor a dict, or ``tensorboard`` is not a path.
    ImportError
        ``tensorboard`` is given and tensorboardX is not installed.

    Examples
    --------
    >>> mon = TrainingMonitor(segments={"W1": (64, 32), "b1": (32,)})
    >>> mon.log_loss(0, 2.30); mon.log_epoch(0, train_acc=0.12, val_acc=0.11)
    >>> mon.diagnose()
    []
    """

    def __init__(self, segments: Any = None, *, bins: int = DEFAULT_BINS,
                 tensorboard: str | os.PathLike | None = None) -> None:
        if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 4 or bins % 4:
            raise InvalidValue(f"bins: expected a positive multiple of 4, got {bins!r}")
        self._tb = None
        if tensorboard is not None:
            from .tensorboard import TensorBoardWriter

            self._tb = TensorBoardWriter(tensorboard)
        self.segments = segments
        self.bins = int(bins)
        self._segments = _segment_table(segments)
        self._steps: list[int] = []
        self._losses: list[float] = []
        self._epochs: list[dict] = []
        self._update_steps: list[int] = []
        self._ratios: dict[str, list[float]] = {}
        self._shapes: dict[str, list[int] | None] = {n: list(s) for n, _, _, s in self._segments}
        self._hists: dict[tuple[str, str], list[dict]] = {}  # finalized, per (kind, layer)
        self._open: dict[tuple[str, str], HistogramAccumulator] = {}
        self._layers: list[str] = []
        self._gradchecks: list[dict] = []
        self._filters: list[dict] = []
        self._save_path: str | None = None
        self._saved: dict[str, int] = {}

    # ------------------------------------------------------------------ logging
    def log_loss(self, step: int, loss: float) -> None:
        """Record the training loss of one iteration (NaN/inf are kept: they mean divergence).

        Parameters
        ----------
        step : int
            The iteration number (the x axis of the loss plot).
        loss : float
            The training loss of that iteration's batch (a size-1 array is accepted).

        Raises
        ------
        TypeError
            ``step`` is not an int or ``loss`` is not a real number.

        Examples
        --------
        >>> mon = TrainingMonitor()
        >>> for step, loss in enumerate([2.3, 2.1, 1.9]):
        ...     mon.log_loss(step, loss)
        """
        self._steps.append(_check_int(step, "step"))
        self._losses.append(_check_real(loss, "loss"))
        if self._tb is not None:
            self._tb.scalar("loss", self._losses[-1], self._steps[-1])

    def log_epoch(self, epoch: int, train_acc: float | None = None, val_acc: float | None = None,
                  **metrics: float) -> None:
        """Close an epoch: record accuracies (fractions in [0, 1]) and any other metrics.

        Histograms logged since the previous ``log_epoch`` are filed under ``epoch``; filters and
        gradient checks logged right after this call (before the next loss) are labelled
        ``epoch`` too: they show the state at its end.

        Parameters
        ----------
        epoch : int
            The epoch just finished (0 for the first, if you count from 0).
        train_acc, val_acc : float, optional
            Training and validation accuracy as fractions in [0, 1].
        **metrics : float
            Any other per-epoch numbers (e.g. ``val_loss=0.35``); kept in the log and plotted
            in TensorBoard as ``metrics/NAME``.

        Raises
        ------
        TypeError
            ``epoch`` is not an int, or an accuracy or metric is not a real number.
        ValueError
            An accuracy is outside [0, 1] (percentages?), or a metric reuses a reserved name
            (epoch, step, train_acc, val_acc).

        Examples
        --------
        >>> mon = TrainingMonitor()
        >>> mon.log_loss(0, 2.3)
        >>> mon.log_epoch(0, train_acc=0.91, val_acc=0.88, val_loss=0.35)
        """
        record = {
            "epoch": _check_int(epoch, "epoch"),
            "step": self._steps[-1] if self._steps else None,
            "train_acc": _check_fraction(train_acc, "train_acc"),
            "val_acc": _check_fraction(val_acc, "val_acc"),
        }
        for key, value in metrics.items():
            if key in record:
                raise InvalidValue(f"{key}: reserved name, cannot be passed as an extra metric")
            record[key] = _check_real(value, key)
        self._epochs.append(record)
        closed = [{"kind": kind, "layer": layer, "epoch": record["epoch"], **acc.summary()}
                  for (kind, layer), acc in self._open.items()]
        for summary in closed:
            self._hists.setdefault((summary["kind"], summary["layer"]), []).append(summary)
        self._open.clear()
        if self._tb is not None:
            step = record["epoch"] if record["step"] is None else record["step"]
            self._tb.scalar("accuracy/train", record["train_acc"], step)
            self._tb.scalar("accuracy/val", record["val_acc"], step)
            for key in metrics:
                self._tb.scalar(f"metrics/{key}", record[key], step)
            for summary in closed:
                self._tb.histogram(f"{summary['kind']}/{summary['layer']}", summary, step)

    def log_update(self, theta: np.ndarray | Mapping, update: np.ndarray | Mapping) -> None:
        """Record ``||update|| / ||weights||`` per segment (aim: about 1e-3).

        The weights' norm is the one before the update.  A segment whose weights are all 0 (a
        zero-initialised bias at the first step) is measured against its norm after the update,
        which is then the update's own: its ratio is 1 (0 if the update leaves it at 0), never
        0/0.  Only non-finite weights or updates give a non-finite ratio; it is kept in the
        history, left out of the plots and TensorBoard, and reported by ``diagnose``.

        Parameters
        ----------
        theta : numpy.ndarray or dict of {str: numpy.ndarray}
            The parameters the update is applied to: a flat vector laid out by ``segments`` (one
            segment "theta" when the monitor has none), or a dict of arrays.  Not copied, not
            modified.
        update : numpy.ndarray or dict of {str: numpy.ndarray}
            The step actually applied (for SGD ``-lr * grad``), in the same form as ``theta``.

        Raises
        ------
        TypeError
            One is a dict and the other an array, or an array is not numeric.
        ValueError
            The sizes differ, the dict keys differ, or ``theta``'s size does not match the
            segment map.

        Examples
        --------
        >>> mon = TrainingMonitor(segments={"W": (3,), "b": (1,)})
        >>> theta = np.array([1.0, 2.0, 2.0, 0.5]); update = -0.01 * np.ones(4)
        >>> mon.log_update(theta, update)
        """
        if isinstance(theta, Mapping) or isinstance(update, Mapping):
            if not (isinstance(theta, Mapping) and isinstance(update, Mapping)):
                raise InvalidType("update: theta and update must both be arrays or both dicts, got "
                                f"{type(theta).__name__} and {type(update).__name__}")
            if set(theta) != set(update):
                raise InvalidValue(f"update: keys {sorted(update)} differ from theta's {sorted(theta)}")
            ratios = {}
            for name in theta:
                w = _flat_view(theta[name], f"theta[{name!r}]")
                u = _flat_view(update[name], f"update[{name!r}]")
                if w.size != u.size:
                    raise InvalidValue(f"update[{name!r}]: size {u.size} != theta's {w.size}")
                sums = _segment_sumsq(w, u, np.array([w.size], dtype=np.int64))
                self._shapes[str(name)] = list(np.shape(theta[name]))
                ratios[str(name)] = (sums[0][0], sums[1][0], w, u)
        else:
            w = _flat_view(theta, "theta")
            u = _flat_view(update, "update")
            if w.size != u.size:
                raise InvalidValue(f"update: size {u.size} does not match theta's size {w.size}")
            table = self._segments or [("theta", 0, w.size, (w.size,))]
            self._shapes.setdefault(table[0][0], None if not self._segments else table[0][3])
            if table[-1][2] != w.size:
                raise InvalidValue(
                    f"theta: size {w.size} does not match the segment map (size {table[-1][2]})")
            stops = np.array([stop for _, _, stop, _ in table], dtype=np.int64)
            weights, updates = _segment_sumsq(w, u, stops)
            ratios = {name: (weights[k], updates[k], w[start:stop], u[start:stop])
                      for k, (name, start, stop, _shape) in enumerate(table)}
        step = self._steps[-1] if self._steps else len(self._update_steps)
        count = len(self._update_steps)
        for name, (w2, u2, w_part, u_part) in ratios.items():
            if math.isfinite(w2) and math.isfinite(u2):
                ratio = _update_ratio(math.sqrt(w2), math.sqrt(u2))
            else:  # the squares overflowed, or values are inf/NaN
                ratio = _update_ratio(_scaled_norm(w_part), _scaled_norm(u_part))
            series = self._ratios.setdefault(name, [math.nan] * count)
            series.append(ratio)
        self._update_steps.append(step)
        for series in self._ratios.values():  # a segment missing from this update
            if len(series) < count + 1:
                series.append(math.nan)
        if self._tb is not None:
            for name in ratios:
                self._tb.scalar(f"update_ratio/{name}", self._ratios[name][-1], step)

    def log_activations(self, layer: str, values: np.ndarray) -> None:
        """Add a batch of a layer's outputs (last axis = units) to this epoch's histogram.

        Parameters
        ----------
        layer : str
            The layer's name; log layers in forward order (input side first).
        values : numpy.ndarray
            Its outputs for one batch, e.g. (batch, units); only summarized, never kept.

        Raises
        ------
        TypeError
            ``layer`` is not a non-empty str or ``values`` is not numeric.
        ValueError
            ``values`` is empty, or its number of units differs from earlier in the epoch.

        Examples
        --------
        >>> mon = TrainingMonitor()
        >>> hidden = np.tanh(np.random.randn(32, 64))        # (batch, units)
        >>> mon.log_activations("hidden1", hidden)
        """
        self._log_values("activations", layer, values)

    def log_gradients(self, layer: str, values: np.ndarray) -> None:
        """Add a batch of gradients of a layer (of its output or its weights) to the histogram.

        Log layers in forward order (input side first) the first time, or log activations
        first: the order of first appearance is what "vanishing towards the input" refers to.

        Parameters
        ----------
        layer : str
            The layer's name (the same as for its activations).
        values : numpy.ndarray
            The gradients for one batch, e.g. (batch, units); only summarized, never kept.

        Raises
        ------
        TypeError
            ``layer`` is not a non-empty str or ``values`` is not numeric.
        ValueError
            ``values`` is empty, or its number of units differs from earlier in the epoch.

        Examples
        --------
        >>> mon = TrainingMonitor()
        >>> mon.log_gradients("hidden1", 1e-3 * np.random.randn(32, 64))
        >>> mon.histograms("gradients")["hidden1"][-1]["count"]
        2048
        """
        self._log_values("gradients", layer, values)

    def _log_values(self, kind: str, layer: str, values: np.ndarray) -> None:
        layer = _check_name(layer, "layer")
        key = (kind, layer)
        acc = self._open.get(key)
        if acc is None:
            rows = as_rows(values, "values")
            acc = HistogramAccumulator(rows.shape[1], self.bins,
                                       log_magnitudes=(kind == "gradients"))
            acc.add(rows)
            self._open[key] = acc  # only once the values were accepted
            if layer not in self._layers:
                self._layers.append(layer)
        else:
            acc.add(values, name="values")

    def log_filters(self, W: np.ndarray, image_shape: Sequence[int], layer: str = "W1") -> float:
        """Record the first layer's weights as images and return their smoothness score.

        Meant for once an epoch; ``diagnose`` reports ``noisy_filters`` from the latest score and
        ``plot`` draws the latest weights as a grid.

        Parameters
        ----------
        W : numpy.ndarray
            First-layer weights: ``(D, F)`` one filter per column, ``(F, D)`` or
            ``(F, *image_shape)`` (see ``filter_grid``).  Copied as rounded images; not modified.
        image_shape : sequence of int
            ``(h, w)`` or ``(h, w, c)`` of one input image.
        layer : str
            The name shown on the plot (default "W1").

        Returns
        -------
        float
            The filters' smoothness (``filter_smoothness``): ~1 smooth, ~0 noise.

        Raises
        ------
        TypeError
            ``layer`` is not a non-empty str, ``W`` is not numeric or ``image_shape`` is not a
            sequence of ints.
        ValueError
            ``W``'s shape does not fit ``image_shape``.

        Examples
        --------
        >>> mon = TrainingMonitor()
        >>> score = mon.log_filters(np.random.randn(64, 16), image_shape=(8, 8))
        >>> score < 0.2
        True
        """
        layer = _check_name(layer, "layer")
        images = filters_as_images(W, image_shape)
        score = filter_smoothness(W, image_shape)
        self._filters.append({
            "layer": layer,
            "epoch": self._record_epoch(),
            "step": self._steps[-1] if self._steps else None,
            "image_shape": list(int(s) for s in image_shape),
            "smoothness": score,
            "weights": np.round(images.reshape(len(images), -1), 6),
        })
        if self._tb is not None:
            record = self._filters[-1]
            self._tb.image(f"filters/{layer}", filter_grid(W, image_shape),
                           record["epoch"] if record["step"] is None else record["step"])
        return score

    # ------------------------------------------------------------------ gradient checks
    @property
    def warmed_up(self) -> bool:
        """Whether the loss has started to fall: the moment to check gradients.

        >>> mon = TrainingMonitor()
        >>> mon.warmed_up
        False
        """
        losses = np.asarray(self._losses, dtype=np.float64)
        losses = losses[np.isfinite(losses)]
        if losses.size < WARMUP_MIN_STEPS:
            return False
        k = max(1, min(10, losses.size // 4))
        first = float(np.median(losses[:k]))
        recent = float(np.median(losses[-k:]))
        return recent < first - WARMUP_DROP * abs(first)

    def gradcheck(self, f: Callable[..., float], theta: np.ndarray, grad: Any, *,
                  force: bool = False, **check_options: Any):
        """Run ``fastgrad.check`` once the warm-up is over and record its summary in the log.

        Before the loss has started to fall (see ``warmed_up``) nothing is run: a
        ``RuntimeWarning`` says so and None is returned.  The record (step, epoch, passed, max
        relative error, per-segment checked and kink counts, the table and the report) is what
        ``diagnose`` reads: ``gradcheck_failed`` and ``many_kinks``.

        Parameters
        ----------
        f : callable
            The loss, ``f(theta, *args) -> float``.
        theta : numpy.ndarray
            Flat parameters to check at; not modified.
        grad : callable or numpy.ndarray
            The analytic gradient, ``grad(theta, *args)``, or its value at ``theta``.
        force : bool
            Check even before the warm-up is over.
        **check_options
            Passed to ``fastgrad.check`` (``args=``, ``samples=``, ``kinks=``, ...); the
            monitor's ``segments`` unless ``segments=`` is given.  Use a few data points in
            ``args``: fewer data points, fewer kinks.

        Returns
        -------
        fastgrad.Report or None
            The check's report, or None when it was skipped.

        Raises
        ------
        TypeError, ValueError
            As ``fastgrad.check`` for bad ``f``, ``theta``, ``grad`` or options.

        Warns
        -----
        RuntimeWarning
            The check was skipped: the loss has not started to fall yet.

        Examples
        --------
        >>> mon.log_loss(step, loss)        # in the loop; once an epoch:
        >>> report = mon.gradcheck(loss_fn, theta, grad_fn, args=(X[:4], y[:4]))
        >>> report is None or report.passed
        """
        step = self._steps[-1] if self._steps else None
        if not force and not self.warmed_up:
            warnings.warn(
                f"fastgrad.monitor: gradcheck skipped at step {step}: the warm-up is not over "
                f"(the loss has not started to fall yet); checks at the initial parameters can "
                f"mislead",
                RuntimeWarning, stacklevel=2)
            return None
        import fastgrad

        if self.segments is not None and "segments" not in check_options:
            check_options["segments"] = self.segments
        report = fastgrad.check(f, theta, grad, **check_options)
        record = {
            "step": step,
            "epoch": self._record_epoch(),
            "passed": bool(report.passed),
            "max_rel_error": float(report.max_rel_error),
            # read from the report (it counts them): what the many_kinks finding rests on
            "checked": {name: int(seg.checked) for name, seg in report.segments.items()},
            "kinks": {name: int(seg.kinks) for name, seg in report.segments.items()},
            "table": str(report),
        }
        try:
            record["report"] = jsonable(report.to_dict())
        except Exception as error:  # the summary above is what diagnose needs
            record["report"] = {"error": f"to_dict failed: {error}"}
        self._gradchecks.append(record)
        if self._tb is not None:
            at = 0 if step is None else step
            self._tb.scalar("gradcheck/max_rel_error", record["max_rel_error"], at)
            self._tb.scalar("gradcheck/passed", float(record["passed"]), at)
        return report

    # ------------------------------------------------------------------ reading back
    def _open_epoch(self) -> int:
        """The epoch being logged now: the one after the last ``log_epoch``."""
        return self._epochs[-1]["epoch"] + 1 if self._epochs else 0

    def _record_epoch(self) -> int:
        """The epoch a gradient check or filter record describes.

        Right after ``log_epoch(k)`` (no loss logged since) it is ``k``: the state at the end of
        epoch k; once the next epoch's losses arrive it is that epoch.
        """
        if not self._epochs:
            return 0
        last = self._epochs[-1]
        if self._steps and self._steps[-1] != last["step"]:
            return last["epoch"] + 1
        return last["epoch"]

    @property
    def layers(self) -> list[str]:
        """Layer names in order of first appearance (forward order if logged that way)."""
        return list(self._layers)

    def losses(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, losses) as arrays, in logging order.

        >>> mon = TrainingMonitor(); mon.log_loss(0, 2.3)
        >>> mon.losses()[1]
        array([2.3])
        """
        return np.asarray(self._steps, dtype=np.int64), np.asarray(self._losses, dtype=np.float64)

    def epochs(self) -> list[dict]:
        """One dict per ``log_epoch`` call: epoch, step, train_acc, val_acc and extra metrics.

        >>> mon = TrainingMonitor(); mon.log_epoch(0, train_acc=0.5)
        >>> mon.epochs()[0]["train_acc"]
        0.5
        """
        return [dict(e) for e in self._epochs]

    def update_ratios(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(steps, {segment: ratios}) of every ``log_update`` call; NaN where undefined.

        >>> mon = TrainingMonitor(); mon.log_update(np.ones(4), np.full(4, 1e-3))
        >>> mon.update_ratios()[1]["theta"]
        array([0.001])
        """
        return (np.asarray(self._update_steps, dtype=np.int64),
                {name: np.asarray(r, dtype=np.float64) for name, r in self._ratios.items()})

    def segment_shapes(self) -> dict[str, list[int] | None]:
        """{segment: shape} of the update ratios (None: one flat "theta", shape unknown).

        >>> TrainingMonitor(segments={"W1": (64, 32)}).segment_shapes()
        {'W1': [64, 32]}
        """
        return {name: (None if shape is None else list(shape))
                for name, shape in self._shapes.items()}

    def histograms(self, kind: str) -> dict[str, list[dict]]:
        """{layer: per-epoch summaries} for kind "activations" or "gradients".

        The last entry of a layer may be the epoch still open (``"partial": True``).

        >>> mon = TrainingMonitor(); mon.log_activations("h", np.zeros((4, 3)))
        >>> mon.histograms("activations")["h"][-1]["dead_unit_fraction"]
        1.0
        """
        if kind not in KINDS:
            raise InvalidValue(f"kind: expected one of {KINDS}, got {kind!r}")
        result: dict[str, list[dict]] = {}
        for layer in self._layers:
            entries = [dict(h, partial=False) for h in self._hists.get((kind, layer), [])]
            acc = self._open.get((kind, layer))
            if acc is not None:
                entries.append({"kind": kind, "layer": layer, "epoch": self._open_epoch(),
                                "partial": True, **acc.summary()})
            if entries:
                result[layer] = entries
        return result

    def gradchecks(self) -> list[dict]:
        """The recorded gradient-check summaries, oldest first.

        >>> TrainingMonitor().gradchecks()
        []
        """
        return [dict(g) for g in self._gradchecks]

    def filters(self) -> list[dict]:
        """The recorded first-layer filter records (layer, epoch, image_shape, smoothness, weights).

        >>> TrainingMonitor().filters()
        []
        """
        return [dict(f) for f in self._filters]

    # ------------------------------------------------------------------ diagnosis and plots
    def diagnose(self) -> list:
        """Findings about the run so far, a failed gradient check first, then by severity.

        Returns
        -------
        list of Finding
            Each with ``kind`` (e.g. ``lr_too_high``, ``many_kinks``), ``severity`` ("error",
            "warning" or "info"), ``message`` and ``evidence`` (the numbers it rests on).  The
            same findings come from the saved log (``load(...).diagnose()``).

        Examples
        --------
        >>> mon = TrainingMonitor(); mon.log_loss(0, 2.3); mon.log_loss(1, float("inf"))
        >>> print(mon.diagnose()[0])
        lr_too_high [error]: the loss became inf at step 1: training diverged; ...
        """
        from .diagnose import diagnose

        return diagnose(self)

    def plot(self, outdir: str | os.PathLike) -> list[str]:
        """Write PNG plots of the run into ``outdir`` (created); needs matplotlib.

        Parameters
        ----------
        outdir : str or os.PathLike
            Folder for ``loss.png``, ``accuracy.png``, ``update_ratios.png``,
            ``activations.png``, ``gradients.png`` and ``filters.png`` (views without data are
            skipped).  The PNGs are 700-900 px wide.

        Returns
        -------
        list of str
            The paths written.

        Raises
        ------
        ImportError
            matplotlib is not installed (``pip install "fastgrad[plot]"``).
        ValueError
            ``outdir`` exists and is not a folder.

        Examples
        --------
        >>> mon = TrainingMonitor(); mon.log_loss(0, 2.3); mon.log_epoch(0, train_acc=0.2)
        >>> [os.path.basename(p) for p in mon.plot("out/")]
        ['loss.png', 'accuracy.png']
        """
        from .plots import plot_all

        return plot_all(self, outdir)

    # ------------------------------------------------------------------ persistence
    def _records(self, since: dict[str, int]) -> tuple[list[dict], dict[str, int]]:
        records: list[dict] = []
        if since.get("meta", 0) == 0:
            records.append({
                "type": "meta", "format": "fastgrad.monitor", "version": FORMAT_VERSION,
                "bins": self.bins, "layers": list(self._layers),
                "segments": [[n, a, b, list(s)] for n, a, b, s in self._segments] or None,
            })
        n = since.get("loss", 0)
        if len(self._steps) > n:
            records.append({"type": "loss", "step": self._steps[n:], "loss": self._losses[n:]})
        n = since.get("update", 0)
        if len(self._update_steps) > n:
            records.append({"type": "update", "step": self._update_steps[n:],
                            "shapes": {k: self._shapes.get(k) for k in self._ratios},
                            "ratios": {k: v[n:] for k, v in self._ratios.items()}})
        n = since.get("epoch", 0)
        records.extend({"type": "epoch", **e} for e in self._epochs[n:])
        written_hists = {}
        for key, entries in self._hists.items():
            n = since.get(f"hist:{key[0]}:{key[1]}", 0)
            records.extend({"type": "hist", **h, "partial": False} for h in entries[n:])
            written_hists[f"hist:{key[0]}:{key[1]}"] = len(entries)
        for (kind, layer), acc in self._open.items():
            records.append({"type": "hist", "kind": kind, "layer": layer,
                            "epoch": self._open_epoch(), "partial": True, **acc.summary()})
        n = since.get("gradcheck", 0)
        records.extend({"type": "gradcheck", **g} for g in self._gradchecks[n:])
        n = since.get("filters", 0)
        records.extend({"type": "filters", **f} for f in self._filters[n:])
        cursor = {"meta": 1, "loss": len(self._steps), "update": len(self._update_steps),
                  "epoch": len(self._epochs), "gradcheck": len(self._gradchecks),
                  "filters": len(self._filters), **written_hists}
        return records, cursor

    def save(self, path: str | os.PathLike) -> str:
        """Write the log as JSON Lines; saving again to the same path appends only what is new.

        Non-finite numbers are written as "inf", "-inf" and "nan" (strict JSON), so the loaded
        log gives the same findings.  With ``tensorboard=`` the findings are also written there
        and the event file is flushed.

        Parameters
        ----------
        path : str or os.PathLike
            The log file; another path than the last one starts a new file.

        Returns
        -------
        str
            ``path`` as a str.

        Raises
        ------
        TypeError
            ``path`` is not a file path.
        OSError
            The file cannot be written.

        Examples
        --------
        >>> mon = TrainingMonitor(); mon.log_loss(0, 2.3); mon.log_epoch(0, train_acc=0.2)
        >>> mon.save("run.jsonl")        # call it every epoch: readers see the run grow
        'run.jsonl'
        >>> TrainingMonitor.load("run.jsonl").epochs() == mon.epochs()
        True
        """
        target = os.fspath(path)
        if not isinstance(target, str) or not target:
            raise InvalidType(f"path: expected a file path, got {path!r}")
        same = (self._save_path is not None and os.path.exists(target)
                and os.path.samefile(self._save_path, target))
        records, cursor = self._records(self._saved if same else {})
        append_records(target, records, fresh=not same)
        self._save_path, self._saved = target, cursor
        self._write_findings()
        if self._tb is not None:
            self._tb.flush()
        return target

    # ------------------------------------------------------------------ TensorBoard
    def _write_findings(self) -> None:
        if self._tb is None:
            return
        findings = self.diagnose()
        text = "\n".join(f"- **{f.kind}** [{f.severity}]: {f.message}" for f in findings)
        self._tb.text("findings", text or "no findings: nothing looks wrong",
                      self._steps[-1] if self._steps else 0)

    def close(self) -> None:
        """Write the findings to TensorBoard and close its event file (no-op without one).

        The log file needs no closing: ``save`` writes it completely each time.  Called at the
        end of ``with TrainingMonitor(...) as mon:``; logging after ``close`` opens a new event
        file.  Without ``close`` the events are still flushed when the monitor is
        garbage-collected or the program ends, but the findings are not written.

        Examples
        --------
        >>> mon = TrainingMonitor(tensorboard="runs/digits")
        >>> mon.log_loss(0, 2.3)
        >>> mon.close()                  # TensorBoard now shows the loss and the findings
        """
        if self._tb is not None:
            self._write_findings()
            self._tb.close()

    def __enter__(self) -> TrainingMonitor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingMonitor:
        """Read a log written by ``save`` (possibly still being written by a running job).

        Needs neither matplotlib nor tensorboardX; the monitor returned writes no TensorBoard
        events.

        Parameters
        ----------
        path : str or os.PathLike
            A log written by ``save``; a torn last line (a writer still busy) is skipped.

        Returns
        -------
        TrainingMonitor
            A monitor holding the logged run (``diagnose``, ``plot``, ``save`` work on it).

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        ValueError
            ``path`` is empty, not JSON Lines, not a fastgrad monitor log, or written by a newer
            fastgrad.

        Examples
        --------
        >>> mon = TrainingMonitor.load("run.jsonl")   # e.g. written by the example of save
        >>> mon.epochs()[0]["train_acc"]
        0.2
        """
        records = list(read_records(path))
        meta = records[0]
        if meta.get("format") != "fastgrad.monitor":
            raise InvalidValue(f"path: {os.fspath(path)!r} is not a fastgrad monitor log")
        if meta.get("version", 0) > FORMAT_VERSION:
            raise InvalidValue(f"path: {os.fspath(path)!r} has log version {meta['version']}, newer "
                             f"than this fastgrad reads ({FORMAT_VERSION})")
        segments = None
        if meta.get("segments"):
            segments = {name: tuple(shape) for name, _, _, shape in meta["segments"]}
        mon = cls(segments=segments, bins=meta.get("bins", DEFAULT_BINS))
        mon._layers = list(meta.get("layers") or [])
        # a "partial" histogram is superseded by any later record of the same kind and layer
        last_index = {}
        for i, r in enumerate(records):
            if r["type"] == "hist":
                last_index[(r["kind"], r["layer"])] = i
        partial_tail: dict[tuple[str, str], dict] = {}
        for i, r in enumerate(records):
            kind = r.pop("type")
            if kind == "loss":
                mon._steps.extend(int(s) for s in r["step"])
                mon._losses.extend(as_floats(r["loss"]).tolist())
            elif kind == "update":
                count = len(mon._update_steps)
                for name, values in r["ratios"].items():
                    series = mon._ratios.setdefault(name, [math.nan] * count)
                    series.extend(as_floats(values).tolist())
                mon._update_steps.extend(int(s) for s in r["step"])
                mon._shapes.update(r.get("shapes") or {})
                for series in mon._ratios.values():
                    series.extend([math.nan] * (len(mon._update_steps) - len(series)))
            elif kind == "epoch":
                # metrics spelled "inf"/"nan" are numbers; None is an accuracy not given
                mon._epochs.append({k: v if v is None else read_float(v) for k, v in r.items()})
            elif kind == "hist":
                key = (r["kind"], r["layer"])
                if key[1] not in mon._layers:
                    mon._layers.append(key[1])
                if r.pop("partial", False):
                    if last_index[key] == i:
                        partial_tail[key] = r
                else:
                    mon._hists.setdefault(key, []).append(r)
            elif kind == "gradcheck":
                r["max_rel_error"] = read_float(r["max_rel_error"])
                mon._gradchecks.append(r)
            elif kind == "filters":
                r["smoothness"] = read_float(r["smoothness"])
                mon._filters.append(r)
        # the epoch still open when the log was written: kept as a finished summary
        for key, r in partial_tail.items():
            mon._hists.setdefault(key, []).append(r)
        mon._save_path = os.fspath(path)
        mon._saved = {"meta": 1, "loss": len(mon._steps), "update": len(mon._update_steps),
                      "epoch": len(mon._epochs), "gradcheck": len(mon._gradchecks),
                      "filters": len(mon._filters),
                      **{f"hist:{k[0]}:{k[1]}": len(v) - (k in partial_tail)
                         for k, v in mon._hists.items()}}
        return mon
