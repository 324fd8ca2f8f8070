"""The numeric side of a Jacobian: a function of one flat real vector evaluated at many perturbed
points, in batched (vmap'd) calls where those give the one-by-one values, and the centered
columns the judge asks for, a chunk of coordinates per batched call.

A framework's drop-in supplies a ``FlatFunction`` with two methods: ``call_one(row)`` (one call
of the caller's function at a flat input, its flat real outputs) and ``call_batch(rows)`` (one
batched call, e.g. ``torch.func.vmap`` or ``jax.vmap``, raising when the transform cannot run the
function). ``many(rows)`` is the one algorithm both drop-ins use: the first batched call carries
one more row, the unperturbed input, compared with the one-by-one value there; a transform that
raises, or changes a value, sends every later evaluation one by one (said in the path line).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from ...tuning import DEFAULT_TUNING

__all__ = ["BATCH_VALUES", "VMAP_AGREEMENT", "ColumnEvaluator", "CoordinateColumns",
           "FlatFunction", "close", "first_words", "same_bits"]

# batched evaluation holds at most this many input values at once (chunks of perturbations)
BATCH_VALUES = 1 << 22
# two evaluations at the same point agree within this many units of roundoff of the outputs
VMAP_AGREEMENT = 64.0
# functions whose batched call raised, by their adapter's ``identity`` (a function's code, a
# module's classes), with the reason: a later check of the same function (a suite checks one
# loss class on many inputs) goes one by one at once instead of paying for a call that raises
# again. The values are the same either way; at most this many are kept, the oldest dropped.
REFUSED_KEPT = 256
_REFUSED: OrderedDict = OrderedDict()
_REFUSED_LOCK = threading.Lock()


def first_words(message: str, limit: int = 100) -> str:
    """The first line of a message, cut at a word before ``limit`` characters."""
    line = (message.splitlines() or [""])[0]
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0] + " ..."


def close(one: np.ndarray, other: np.ndarray, low: bool = False) -> np.ndarray:
    """Elements of two evaluations at the same point equal within VMAP_AGREEMENT units of
    roundoff (of float32 when ``low``, else float64)."""
    scale = VMAP_AGREEMENT * np.finfo(np.float32 if low else np.float64).eps
    with np.errstate(invalid="ignore"):
        return (one == other) | (np.abs(one - other) <= scale * (np.abs(one) + np.abs(other)))


def same_bits(one: np.ndarray, other: np.ndarray) -> bool:
    """Two evaluations at the same point are bitwise equal (NaN where both are NaN)."""
    return bool(np.array_equal(one, other, equal_nan=True))


class FlatFunction:
    """A function of the flat real vector ``x`` (its checked inputs) returning its outputs as one
    flat real vector, evaluated one by one or in batched calls.

    Subclasses give ``call_one`` and ``call_batch``, and may set ``vmap`` (the transform's
    name, for the path line), ``min_batch`` (fewer rows go one by one), ``agreement`` (the
    probe's rule: 0 asks for bitwise equal values, else agreement within that many units of
    float64 roundoff) and ``batch_call_seconds`` (what one batched call costs beyond its rows'
    work). ``at_x`` (the one-by-one outputs at x) is set before the first ``many``; the adapter
    may set ``call_seconds`` (one plain call, timed) to let rows that cost less one by one than
    a batched call's own overhead go one by one.
    """

    vmap = "vmap"
    min_batch = 2
    agreement = 0.0
    batch_call_seconds = 0.0

    def __init__(self, x: np.ndarray, *, batchable: bool, why_serial: str,
                 identity: object = None):
        self.x = x
        self.identity = identity  # the function, for the memory of batched calls that raised
        with _REFUSED_LOCK:
            refused = _REFUSED.get(identity) if batchable and identity is not None else None
        if refused is not None:
            batchable = False
            why_serial = f"{refused} (at an earlier check of this function: not tried again)"
        self.can_batch = batchable
        self.batchable = batchable  # batched calls are tried (False once one raised or differed)
        self.batched = batchable  # the last evaluation of rows was one batched call
        self.why_serial = why_serial  # why the evaluations go one by one
        self.verified = False  # a batched call ran (and was compared with at_x when it could)
        self.probed = False  # the batched value at x equalled at_x: a second evaluation there
        self.at_x: np.ndarray | None = None
        self.evaluations = 0
        self.call_seconds: float | None = None  # one plain call of the function, when timed

    def call_one(self, row: np.ndarray) -> np.ndarray:
        """The flat real outputs at one flat input (one call of the function)."""
        raise NotImplementedError

    def call_batch(self, rows: np.ndarray) -> np.ndarray:
        """The flat real outputs at each row, (rows, outputs), in one batched call."""
        raise NotImplementedError

    def one(self, row: np.ndarray) -> np.ndarray:
        """The outputs at one flat input, counted."""
        self.evaluations += 1
        return self.call_one(row)

    def many(self, rows: np.ndarray) -> np.ndarray:
        """The outputs at each row: batched calls when they give the one-by-one values (the
        first one probed at x), else one call per row."""
        count = rows.shape[0]
        if self.batchable and count >= self.min_batch and not self._cheaper_one_by_one(count):
            probe = not self.verified and self.at_x is not None
            try:
                out = self.call_batch(np.concatenate([rows, self.x[None]]) if probe else rows)
            except Exception as exc:  # the transform cannot run this function: say so
                self.batchable = False
                self.why_serial = (f"{self.vmap} raised {type(exc).__name__}: "
                                   f"{first_words(str(exc))}")
                if self.identity is not None:
                    with _REFUSED_LOCK:
                        _REFUSED[self.identity] = self.why_serial
                        while len(_REFUSED) > REFUSED_KEPT:
                            _REFUSED.popitem(last=False)
            else:
                self.verified = True
                if probe:
                    out, at_x = out[:-1], out[-1]
                    self.probed = self.agrees(self.at_x, at_x)
                    if not self.probed:
                        # random ops, in-place writes, a batching rule or a branch on
                        # requires_grad that changes a value: not trusted anywhere
                        self.batchable = False
                        self.why_serial = (f"{self.vmap} changed the values (the batched value "
                                           "at x differs from the one-by-one call's)")
                if self.batchable:
                    self.batched = True
                    self.evaluations += count
                    return out
        self.batched = False
        if not count:
            return np.zeros((0, self.at_x.size if self.at_x is not None else 0))
        return np.stack([self.one(r) for r in rows])

    def _cheaper_one_by_one(self, count: int) -> bool:
        """``count`` plain calls cost less than one batched call's overhead. The values are the
        same either way; the path line says why."""
        if self.call_seconds is None or not self.batch_call_seconds:
            return False
        if count * self.call_seconds >= self.batch_call_seconds:
            return False
        self.why_serial = (f"{count} calls of {self.call_seconds * 1e6:.0f} us cost less than "
                           f"one {self.vmap} call ({self.batch_call_seconds * 1e6:.0f} us)")
        return True

    def agrees(self, one: np.ndarray, batched: np.ndarray) -> bool:
        """The probe's rule: the batched value at x is the one-by-one value."""
        if not self.agreement:
            return same_bits(one, batched)
        scale = self.agreement * np.finfo(np.float64).eps
        with np.errstate(invalid="ignore"):
            ok = (one == batched) | (np.abs(one - batched) <= scale * (np.abs(one)
                                                                        + np.abs(batched)))
        return bool(np.all(ok | (np.isnan(one) & np.isnan(batched))))

    def retry_batching(self) -> None:
        """Batched calls may be tried again (another step: the transform may batch it)."""
        self.batchable = self.batched = self.can_batch
        self.verified = False


class ColumnEvaluator:
    """What the Judge calls for a Jacobian: ``pairs(index, step)`` -> the whole outputs at
    x +- h e_i, as a framework adapter evaluates them (``fn`` says whether vmap batched them and,
    if not, why). Subclasses give ``_pairs``; the backward and forward judges ask for the same
    first columns, so the last pair of batches is kept and handed out again (read-only: a
    Jacobian's columns can be large, and no judge writes into them)."""

    tuning = DEFAULT_TUNING  # the Judge's re-check numbers: the drop-ins take no tuning=

    def __init__(self, fn: FlatFunction):
        self.fn = fn
        self._last: tuple | None = None

    @property
    def evaluations(self) -> int:
        return self.fn.evaluations

    @property
    def path(self) -> str:
        return "vmap" if self.fn.batched else "per-call"

    @property
    def path_reason(self) -> str:
        if self.fn.batched:
            return f"the perturbed inputs evaluated in batched {self.fn.vmap} calls"
        return f"{self.fn.why_serial}; one call per perturbed input"

    def pairs(self, index, step, label: str | None = None):
        key = (index.tobytes(), np.asarray(step).tobytes())
        if self._last is None or self._last[0] != key:
            f_plus, f_minus = self._pairs(index, step)
            f_plus.flags.writeable = f_minus.flags.writeable = False
            self._last = (key, f_plus, f_minus)
        return self._last[1], self._last[2]

    def keep(self, index, step, f_plus: np.ndarray, f_minus: np.ndarray) -> None:
        """Hand ``f_plus``, ``f_minus`` out at the next ``pairs(index, step)``: columns the
        caller evaluated in parts (``pairs`` of each) and joined."""
        f_plus.flags.writeable = f_minus.flags.writeable = False
        self._last = ((index.tobytes(), np.asarray(step).tobytes()), f_plus, f_minus)

    def chunks(self, index, step):
        """(a, f_plus, f_minus) for coordinates a:a+len(f_plus), chunk by chunk, nothing kept:
        screen_streamed's columns. Subclasses that evaluate in chunks give their own."""
        f_plus, f_minus = self._pairs(index, step)
        yield 0, f_plus, f_minus

    def _pairs(self, index, step):
        raise NotImplementedError


class CoordinateColumns(ColumnEvaluator):
    """The full check's columns: the outputs at x +- h e_i, a chunk of coordinates (at most
    BATCH_VALUES input values) per ``fn.many`` call."""

    def _pairs(self, index, step):
        k, n_out = index.size, self.fn.at_x.size
        f_plus, f_minus = np.empty((k, n_out)), np.empty((k, n_out))
        for a, fp, fm in self.chunks(index, step):
            f_plus[a:a + fp.shape[0]], f_minus[a:a + fp.shape[0]] = fp, fm
        return f_plus, f_minus

    def chunks(self, index, step):
        """(a, f_plus, f_minus) of coordinates a:a+len(f_plus), a batched chunk at a time. The
        arrays may share memory with the next chunk's inputs (a function that returns its
        input): read them before asking for the next chunk."""
        x = self.fn.x
        k = index.size
        chunk = max(1, BATCH_VALUES // max(1, 2 * x.size))
        # one buffer of perturbed inputs for every chunk: fresh pages per chunk would cost
        # their first touch each time (a large Jacobian's chunks add up to gigabytes)
        buffer = np.empty((2 * min(chunk, k), x.size))
        for a in range(0, k, chunk):
            b = min(k, a + chunk)
            idx, h = index[a:b], np.asarray(step[a:b], dtype=np.float64)
            rows = buffer[:2 * (b - a)]
            rows[:] = x
            lanes = np.arange(b - a)
            rows[lanes, idx] += h
            rows[lanes + (b - a), idx] -= h
            out = self.fn.many(rows)
            yield a, out[: b - a], out[b - a:]
