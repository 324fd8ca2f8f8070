"""What f returned, as numbers: one float64 per loss term."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import InvalidValue, LossError


def loss_terms(value) -> tuple[str, ...] | None:
    """Names of the loss terms when f returns a mapping of them, else None."""
    if isinstance(value, Mapping):
        if not value:
            raise InvalidValue("f: returned an empty mapping of loss terms")
        return tuple(str(k) for k in value)
    return None


def as_loss(value, terms: tuple[str, ...] | None, where: str) -> np.ndarray:
    """A loss value as a float64 array of one entry per term (one entry for a plain loss)."""
    if terms is not None:
        if not isinstance(value, Mapping) or set(map(str, value)) != set(terms):
            raise LossError(f"f: {where} returned {value!r}; expected the terms {list(terms)}")
        return np.array([scalar(value[t], f"{where}, term {t!r}") for t in terms])
    return np.array([scalar(value, where)])


def plain_loss(value, terms, where):
    """as_loss for a plain loss, without an array per evaluation when it is already a float."""
    if isinstance(value, float):  # Python float and np.float64
        return value
    return as_loss(value, terms, where)


def scalar(value, where: str) -> float:
    """One loss value as a float; None, tuples and arrays get a message that says so."""
    if value is None:
        raise LossError(f"f: {where} returned None; the loss must return a number "
                        f"(a missing `return`?)")
    if isinstance(value, tuple):
        raise LossError(
            f"f: {where} returned a tuple of {len(value)} values; the loss must be a scalar. "
            f"If f returns (loss, gradient), pass grad=True")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise LossError(f"f: {where} returned {value!r}, which is not a number") from None
    if arr.size != 1:
        raise LossError(
            f"f: {where} returned an array of shape {arr.shape}; the loss must be a scalar"
        )
    return float(arr.reshape(()))


class LossPart:
    """f for a function that returns (loss, gradient): the loss part only (grad=True)."""

    __slots__ = ("f",)

    def __init__(self, f):
        self.f = f

    def __call__(self, theta, *args):
        value = self.f(theta, *args)
        if not isinstance(value, tuple) or len(value) != 2:
            raise LossError(f"f: returned {type(value).__name__} where grad=True expects a "
                            f"(loss, gradient) pair")
        return value[0]

    def __getstate__(self):
        return self.f

    def __setstate__(self, f):
        self.f = f
