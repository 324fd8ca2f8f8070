"""Every exception fastgrad raises on purpose, in one place.

``InputError`` marks bad input (a wrong argument, an unusable loss value): the command line turns
exactly these into exit status 2, and anything else stays a crash with its traceback.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input: the message names the argument, segment or index and what was wrong."""


class InvalidValue(InputError, ValueError):
    """An argument has the right type but a wrong value."""


class InvalidType(InputError, TypeError):
    """An argument has the wrong type."""


class LossError(RuntimeError):
    """The loss raised (or returned something unusable) at a perturbed point.

    ``index`` is the flat index of the coordinate being evaluated, when one was.
    """

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class LossValueError(LossError, InvalidValue):
    """The loss at theta is unusable (None, not a scalar, not a number): bad input, not a crash."""


class NondeterminismError(InvalidValue):
    """The loss gave two different values at the same theta (dropout, augmentation, a seed)."""


class GradientCheckError(AssertionError):
    """Raised by ``assert_gradients`` when a check does not pass.

    The message is the report's table; ``.report`` holds the Report.
    """

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report
