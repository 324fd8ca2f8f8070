"""Verdicts per coordinate and per segment, computed by the C accumulator (csrc/accumulate.c).

The thin wrapper: numpy arrays in, numpy arrays out. The verdict codes and the histogram layout
are read from csrc/accumulate.h through cffi; the numbers of the method come from steps.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._accumulate import ffi, lib
from ..steps import BAND_OK, BAND_SUSPECT, BAND_WRONG
from ..tuning import DEFAULT_TUNING

HIST_BINS = int(lib.FG_HIST_BINS)
# lower edge of each histogram bin, as a power of ten (bin 0 holds everything below 1e-16)
HIST_EDGES = tuple(range(1 - HIST_BINS, 1))

EXCELLENT, OK, SUSPECT, WRONG = (lib.FG_VERDICT_EXCELLENT, lib.FG_VERDICT_OK,
                                 lib.FG_VERDICT_SUSPECT, lib.FG_VERDICT_WRONG)
NOISE, NAN, KINK = lib.FG_VERDICT_NOISE, lib.FG_VERDICT_NAN, lib.FG_VERDICT_KINK
# set by the judge (rechecks.Judge.mark_inconclusive), never by fg_coords
INCONCLUSIVE = lib.FG_VERDICT_INCONCLUSIVE
_NAMES = {EXCELLENT: "excellent", OK: "ok", SUSPECT: "suspect", WRONG: "wrong", NOISE: "noise",
          NAN: "nan", KINK: "kink", INCONCLUSIVE: "inconclusive"}
# the verdicts of a relative error's band: the coordinates a max relative error is taken over
BANDS = (EXCELLENT, OK, SUSPECT, WRONG)
# VERDICTS[code] is the verdict's name
VERDICTS = tuple(_NAMES[code] for code in range(len(_NAMES)))


@dataclass
class CoordStats:
    numeric: np.ndarray
    rel_error: np.ndarray
    noise: np.ndarray
    kink_score: np.ndarray
    verdict: np.ndarray  # int8 codes, see VERDICTS
    failed: np.ndarray  # bool
    kink: np.ndarray  # bool: a kink crossing was detected

    def copy(self) -> CoordStats:
        return CoordStats(*(getattr(self, name).copy() for name in _STAT_FIELDS))

    def take(self, where, other: CoordStats, rows) -> None:
        """self[where] = other[rows] for every field but kink (the record of a crossing)."""
        for name in _STAT_FIELDS[:-1]:
            getattr(self, name)[where] = getattr(other, name)[rows]


_STAT_FIELDS = ("numeric", "rel_error", "noise", "kink_score", "verdict", "failed", "kink")


@dataclass
class SegmentStats:
    checked: np.ndarray
    failed: np.ndarray
    kinks: np.ndarray
    max_rel: np.ndarray
    argmax: np.ndarray  # position in the coordinate arrays, -1 when no eligible coordinate
    hist: np.ndarray  # (n_segments, HIST_BINS)


def _in(a, dtype):
    a = np.ascontiguousarray(a, dtype=dtype)
    return a, ffi.from_buffer(_CTYPE[np.dtype(dtype)], a)


def _out(n, dtype):
    a = np.empty(n, dtype=dtype)
    return a, ffi.from_buffer(_CTYPE[np.dtype(dtype)], a, require_writable=True)


_CTYPE = {
    np.dtype(np.float64): "double[]",
    np.dtype(np.int64): "int64_t[]",
    np.dtype(np.int8): "int8_t[]",
    np.dtype(np.uint8): "uint8_t[]",
}


def coordinate_stats(analytic, f_plus, f_minus, f0: float, step, tol: float,
                     noise_eps: float, noise_abs: float = 0.0,
                     kink_explains: float = DEFAULT_TUNING.kink_explains) -> CoordStats:
    """Numeric gradient, relative error, noise floor, kink score and verdict per coordinate
    (``kink_explains``: the check's ``Tuning.kink_explains``)."""
    analytic, p_a = _in(analytic, np.float64)
    n = analytic.size
    f_plus, p_fp = _in(f_plus, np.float64)
    f_minus, p_fm = _in(f_minus, np.float64)
    step, p_h = _in(step, np.float64)
    if not (f_plus.size == f_minus.size == step.size == n):
        # fastgrad's own arrays, never the user's: a mismatch is a bug (exit 70), not bad input
        raise RuntimeError("coordinate_stats: analytic, f_plus, f_minus and step differ in size")
    method = ffi.new("fg_method *", {
        "tol": float(tol), "noise_eps": float(noise_eps), "band_wrong": BAND_WRONG,
        "band_suspect": BAND_SUSPECT, "band_ok": BAND_OK, "kink_explains": float(kink_explains)})
    numeric, p_num = _out(n, np.float64)
    rel, p_rel = _out(n, np.float64)
    noise, p_noise = _out(n, np.float64)
    score, p_score = _out(n, np.float64)
    verdict, p_verdict = _out(n, np.int8)
    failed, p_failed = _out(n, np.uint8)
    kink, p_kink = _out(n, np.uint8)
    lib.fg_coords(n, p_a, p_fp, p_fm, float(f0), p_h, method, float(noise_abs),
                  p_num, p_rel, p_noise, p_score, p_verdict, p_failed, p_kink)
    return CoordStats(numeric, rel, noise, score, verdict, failed.view(bool), kink.view(bool))


def segment_stats(segment, rel_error, verdict, failed, kink, n_segments: int) -> SegmentStats:
    """Checked/failed/kink counts, max relative error and its position, log10 histogram."""
    segment, p_seg = _in(segment, np.int64)
    n = segment.size
    rel_error, p_rel = _in(rel_error, np.float64)
    verdict, p_verdict = _in(verdict, np.int8)
    failed, p_failed = _in(np.asarray(failed).view(np.uint8) if np.asarray(failed).dtype == bool
                           else failed, np.uint8)
    kink, p_kink = _in(np.asarray(kink).view(np.uint8) if np.asarray(kink).dtype == bool
                       else kink, np.uint8)
    if not (rel_error.size == verdict.size == failed.size == kink.size == n):
        raise RuntimeError("segment_stats: the coordinate arrays differ in size")
    checked, p_checked = _out(n_segments, np.int64)
    n_failed, p_n_failed = _out(n_segments, np.int64)
    kinks, p_kinks = _out(n_segments, np.int64)
    max_rel, p_max = _out(n_segments, np.float64)
    argmax, p_argmax = _out(n_segments, np.int64)
    hist, p_hist = _out(n_segments * HIST_BINS, np.int64)
    status = lib.fg_segments(n, p_seg, p_rel, p_verdict, p_failed, p_kink, n_segments,
                             p_checked, p_n_failed, p_kinks, p_max, p_argmax, p_hist)
    if status != 0:
        raise RuntimeError(f"segment_stats: a segment id is outside 0..{n_segments - 1}")
    return SegmentStats(checked, n_failed, kinks, max_rel, argmax,
                        hist.reshape(n_segments, HIST_BINS))
