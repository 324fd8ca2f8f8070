"""Argument checks shared by every public entry point: one wording for one mistake."""

from __future__ import annotations

import os

import numpy as np

from .errors import InvalidType, InvalidValue


def positive_int(name: str, value, *, minimum: int = 1, meaning: str = "") -> int:
    """``value`` as an int >= minimum (bool refused), or InvalidValue naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        if minimum == 0:
            what = "a non-negative int"
        raise InvalidValue(f"{name}: expected {what}{meaning}, got {value!r}")
    return int(value)


def optional_positive_int(name: str, value, *, minimum: int = 1, meaning: str = "") -> int | None:
    """None, or ``positive_int(name, value)``."""
    if value is None:
        return None
    return positive_int(name, value, minimum=minimum, meaning=meaning + " or None")


def non_negative_float(name: str, value) -> float:
    """``value`` as a finite float >= 0, or InvalidValue naming ``name``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidType(f"{name}: expected a non-negative float, got {value!r}") from None
    if isinstance(value, bool) or not (np.isfinite(number) and number >= 0):
        raise InvalidValue(f"{name}: expected a non-negative float, got {value!r}")
    return number


STRICT_ENV = "FASTGRAD_STRICT"  # "1": drop-in checks fail where fastgrad's band fails


def strict_option(strict) -> bool:
    """The drop-ins' ``strict``: the caller's bool, or None for the suite's default, read at call
    time from ``$FASTGRAD_STRICT`` (``pytest --fastgrad-strict`` sets it for a session)."""
    if strict is None:
        return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no")
    if not isinstance(strict, (bool, np.bool_)):
        raise InvalidType(f"strict: expected True, False or None, got {strict!r}")
    return bool(strict)


def extra_args(value) -> tuple:
    """The ``args`` of f(theta, *args): a tuple."""
    if not isinstance(value, tuple):
        raise InvalidType(
            f"args: expected a tuple of extra arguments, got {type(value).__name__}")
    return value


def one_of(name: str, value, choices: tuple):
    """``value`` if it is one of ``choices`` (compared with ==, bool not taken for an int)."""
    for choice in choices:
        if type(value) is type(choice) and value == choice:
            return value
    raise InvalidValue(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
