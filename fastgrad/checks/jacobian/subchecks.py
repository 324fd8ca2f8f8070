"""The drop-ins' named sub-checks: one error type for every failure found on the way, caught once
by the public function (which raises its framework's error or returns False), and the one
warning of a check that passed by the caller's tolerance only."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from ...errors import GradcheckWarning

__all__ = ["SubcheckFailed", "warn_tolerated"]


class SubcheckFailed(Exception):
    """A named sub-check failed (torch: "jacobian", "reentrant backward", "check_undefined_grad",
    ...; jax: "JVP of VJP (order 2, fwd mode)"): ``message`` says what, ``report`` is the report
    of a judged Jacobian (None when the failure came before one)."""

    def __init__(self, name: str, message: str, report: Any = None):
        super().__init__(message)
        self.name, self.message, self.report = name, message, report


def warn_tolerated(what: str, rule: str, elements: tuple[str, ...], count: int, *,
                   shown: Sequence[str] | None = None, sep: str = ", ",
                   stacklevel: int = 3) -> None:
    """One ``GradcheckWarning`` naming the elements the caller's tolerance (``rule``, e.g.
    " (atol=1e-05, rtol=0.001)") accepted beyond fastgrad's band: pytest lists it, and
    strict=True fails them instead. ``stacklevel`` 3 (called from the drop-in's public
    function) points the warning at the public function's caller."""
    shown = elements if shown is None else shown
    more = count - len(shown)
    warnings.warn(GradcheckWarning(
        f"fastgrad {what} passed by the caller's tolerance{rule}, but {count} element(s) are "
        f"beyond fastgrad's relative band: {sep.join(shown)}"
        + (f" and {more} more" if more > 0 else "")
        + "; strict=True (or pytest --fastgrad-strict) fails them", elements), stacklevel=stacklevel)
