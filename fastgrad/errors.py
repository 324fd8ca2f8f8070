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

    The message names the coordinate (``W1[4, 0] (flat index 99)``) and the original
    exception, which is chained as ``__cause__``.

    Parameters
    ----------
    message : str
        What went wrong, and where.
    index : int or None
        The flat index of the coordinate being evaluated, when one was (``.index``).

    Examples
    --------
    >>> try:
    ...     fg.check(loss, theta, grad)
    ... except fg.LossError as error:
    ...     print(error.index, error)   # 99 f raised while evaluating W1[4, 0] (flat index 99): ...
    """

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class LossTimeout(LossError):
    """One evaluation of the loss took longer than ``timeout=`` seconds.

    The message names the coordinate (or direction) and the timeout; ``.index`` is the flat
    index of the coordinate when one was being evaluated.

    Parameters
    ----------
    message : str
        What took too long, and where.
    index : int or None
        The flat index of the coordinate, when one was evaluated.

    Examples
    --------
    >>> try:
    ...     fg.check(loss, theta, grad, timeout=2.0)
    ... except fg.LossTimeout as error:
    ...     print(error)   # f took more than 2.0 s at W1[4, 0] (flat index 99): ...
    """


class LossValueError(LossError, InvalidValue):
    """The loss at theta is unusable (None, not a scalar, not a number): bad input, not a crash."""


class NondeterminismError(InvalidValue):
    """The loss gave two different values at the same theta (dropout, augmentation, a seed).

    A ``ValueError``: the message gives both values, the likely causes and the fix (fix the
    seed inside f, or ``nondet_tol=`` for a known tiny level).

    Parameters
    ----------
    message : str
        The two values, the likely causes and the fix.

    Examples
    --------
    >>> rng = np.random.default_rng()
    >>> fg.check(lambda t: float(t @ t) + rng.normal(), theta, 2 * theta)
    Traceback (most recent call last):
    fastgrad.errors.NondeterminismError: f: two evaluations at the same theta gave ...
    """

    def __init__(self, message: str):
        super().__init__(message)


class GradcheckWarning(UserWarning):
    """A drop-in check passed by the caller's tolerance, with elements beyond fastgrad's band.

    ``fastgrad.torch.gradcheck``/``gradgradcheck`` and ``fastgrad.jax.check_grads`` judge by
    the caller's rule (torch: ``|a - n| <= atol + rtol |n|``; jax: its tolerances by dtype).
    Elements that rule accepts but whose relative error is beyond fastgrad's own band (1e-4 in
    float64) are named in this warning (pytest lists it); ``strict=True``, or
    ``FASTGRAD_STRICT=1`` in the environment (``pytest --fastgrad-strict``), makes them fail.

    Parameters
    ----------
    message : str
        The check and the elements, each with its relative error.
    elements : tuple of str
        The elements (``"input0[3] -> output0[2] (rel. error 9.0e-04)"``), as ``.elements``.

    Examples
    --------
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     fastgrad.torch.gradcheck(f, (x,))     # a gradient 9e-4 off: torch's rule holds
    >>> caught[0].category.__name__
    'GradcheckWarning'
    """

    def __init__(self, message: str, elements: tuple[str, ...] = ()):
        super().__init__(message)
        self.elements = tuple(elements)


class GradientCheckError(AssertionError):
    """Raised by ``assert_gradients`` when a check does not pass (failed or inconclusive).

    An ``AssertionError``, so a test suite reports it as a failed assertion. The message is
    the report's table; ``.report`` holds the Report (or AuditReport).

    Parameters
    ----------
    report : Report or AuditReport
        The check that did not pass.

    Examples
    --------
    >>> try:
    ...     fg.assert_gradients(loss, theta, grad, segments=segs)
    ... except fg.GradientCheckError as error:
    ...     print(error.report.status, [c.where for c in error.report.failures])
    """

    def __init__(self, report):
        super().__init__(str(report))
        self.report = report


class DropinCheckError(GradientCheckError):
    """What the drop-in checkers raise when a check fails: the base of
    ``fastgrad.torch.GradcheckError`` and ``fastgrad.jax.CheckGradsError``.

    The message names the failing sub-check, then the report's table; ``.report`` holds the
    report (None for a failure found before any Jacobian was judged).

    Parameters
    ----------
    message : str
        What failed.
    report : fastgrad.Report or fastgrad.AuditReport, optional
        The report of the failing check.

    Examples
    --------
    >>> try:
    ...     fastgrad.jax.check_grads(f, (x,), order=1)
    ... except fastgrad.errors.DropinCheckError as error:
    ...     print(error.report)
    """

    def __init__(self, message: str, report=None):
        AssertionError.__init__(self, message)
        self.report = report
