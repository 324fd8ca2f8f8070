"""The JSON Lines log of a training run: one record per line, appended as the run goes on.

Record types (field ``"type"``):

- ``meta``       first line: format version and the segment map (names, start, stop, shape)
- ``loss``       a chunk of per-step losses: ``step``, ``loss`` (lists of equal length)
- ``epoch``      ``epoch``, ``step`` (last loss step seen), ``train_acc``, ``val_acc``, extra metrics
- ``update``     a chunk of update/weight ratios: ``step`` and ``ratios`` {segment: list}
- ``hist``       ``kind`` (activations|gradients), ``layer``, ``epoch``, ``partial``, statistics
                 and histogram (see ``histograms.HistogramAccumulator.summary``); a later record of
                 the same kind and layer supersedes a ``partial`` one
- ``gradcheck``  ``step``, ``epoch``, ``passed``, ``max_rel_error``, ``checked`` and ``kinks``
                 ({segment: count}, from the report), ``table``, ``report``
- ``filters``    ``layer``, ``epoch``, ``image_shape``, ``smoothness``, ``weights`` (F x D)

Non-finite floats are written as the strings ``"nan"``, ``"inf"`` and ``"-inf"`` (strict JSON has
no such numbers) and decoded on load, so a loaded log says what the running monitor said;
``null`` (older logs, or "no value") reads back as NaN where a number is expected.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator

import numpy as np

from ..errors import InvalidValue

#: 2: non-finite numbers spelled "nan"/"inf"/"-inf" (1 wrote null); version 1 logs still load.
FORMAT_VERSION = 2

#: How non-finite floats are spelled in the log (strict JSON has no NaN or Infinity).
NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def spell_float(value: float) -> float | str:
    """``value`` if finite, else its spelling in the log: "nan", "inf" or "-inf".

    >>> spell_float(float("-inf")), spell_float(0.5)
    ('-inf', 0.5)
    """
    if math.isfinite(value):
        return value
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def read_float(value):
    """The float a log value spells ("nan"/"inf"/"-inf" decoded, null as NaN); others unchanged.

    >>> read_float("inf"), read_float(None), read_float(2)
    (inf, nan, 2)
    """
    if value is None:
        return math.nan
    if isinstance(value, str):
        return NONFINITE.get(value, value)
    return value


def jsonable(value):
    """``value`` with numpy scalars/arrays turned into Python ones and non-finite floats spelled.

    >>> jsonable({"loss": np.float32(np.inf), "steps": np.arange(2)})
    {'loss': 'inf', 'steps': [0, 1]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return spell_float(float(value))
    if value is None or isinstance(value, str):
        return value
    return str(value)


def as_floats(values) -> np.ndarray:
    """A float64 array from a JSON list of numbers, spelled non-finite values and nulls (NaN).

    >>> as_floats([1.0, "inf", None])
    array([ 1., inf, nan])
    """
    return np.array([read_float(v) for v in values], dtype=np.float64)


def append_records(path: str | os.PathLike, records: list[dict], *, fresh: bool) -> None:
    """Write ``records`` as lines (``fresh``: replace the file), flushed so readers see them."""
    lines = "".join(json.dumps(jsonable(r), separators=(",", ":")) + "\n" for r in records)
    with open(path, "w" if fresh else "a", encoding="utf-8") as stream:
        stream.write(lines)
        stream.flush()


def read_records(path: str | os.PathLike) -> Iterator[dict]:
    """The records of a log; a torn last line (a writer still busy) is skipped."""
    with open(path, encoding="utf-8") as stream:
        lines = stream.readlines()
    if not lines:
        raise InvalidValue(f"path: {os.fspath(path)!r} is empty, not a fastgrad monitor log")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines) and not line.endswith("\n"):
                return  # being written right now
            raise InvalidValue(
                f"path: {os.fspath(path)!r} line {number} is not JSON ({error.msg})"
            ) from None
        if not isinstance(record, dict) or "type" not in record:
            raise InvalidValue(
                f"path: {os.fspath(path)!r} line {number} is not a monitor record: {line[:80]!r}"
            )
        if number == 1 and record["type"] != "meta":
            raise InvalidValue(
                f"path: {os.fspath(path)!r} does not start with a fastgrad monitor 'meta' record"
            )
        yield record
