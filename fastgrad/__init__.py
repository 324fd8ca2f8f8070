"""fastgrad: is this analytic gradient right? Fast, truthful numerical gradient checks.

>>> theta, segs = fastgrad.flatten({"W1": W1, "b1": b1})
>>> report = fastgrad.check(loss, theta, grad, segments=segs)
>>> print(report)
"""

from .errors import (
    GradcheckWarning,
    GradientCheckError,
    LossError,
    LossTimeout,
    NondeterminismError,
)
from .results.report import CoordRecord, Report, SegmentReport
from .segments import Segment, SegmentMap, flatten, unflatten
from .tuning import Tuning

# the checks and their engine load on first use: ``import fastgrad.torch`` for a drop-in
# gradcheck (a test suite's first call) does not pay for the planner, the process pool and the
# audit it does not run
_LAZY = {
    "Problem": "checks.coordinates",
    "assert_gradients": "checks.coordinates",
    "check": "checks.coordinates",
    "audit": "checks.audit",
    "check_layer": "numpy_models",
    "check_model": "numpy_models",
    "AuditReport": "results.audit_report",
}


def __getattr__(name: str):
    """The public names of ``_LAZY``, imported on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastgrad' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"

__all__ = [
    "AuditReport",
    "CoordRecord",
    "GradcheckWarning",
    "GradientCheckError",
    "LossError",
    "LossTimeout",
    "NondeterminismError",
    "Problem",
    "Report",
    "Segment",
    "SegmentMap",
    "SegmentReport",
    "Tuning",
    "assert_gradients",
    "audit",
    "check",
    "check_layer",
    "check_model",
    "flatten",
    "unflatten",
]
