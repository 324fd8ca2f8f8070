"""fastgrad: is this analytic gradient right? Fast, truthful numerical gradient checks.

>>> theta, segs = fastgrad.flatten({"W1": W1, "b1": b1})
>>> report = fastgrad.check(loss, theta, grad, segments=segs)
>>> print(report)
"""

# first, before anything imports numba: fastgrad's kernels are cached in a per-user folder,
# never in the installed package
from . import _numba_cache  # noqa: F401
from .checks.coordinates import Problem, assert_gradients, check
from .checks.directions import audit
from .errors import GradcheckWarning, GradientCheckError, LossError, NondeterminismError
from .models import check_layer, check_model
from .results.audit_report import AuditReport
from .results.report import CoordRecord, Report, SegmentReport
from .segments import Segment, SegmentMap, flatten, unflatten

__version__ = "0.1.0"

__all__ = [
    "AuditReport",
    "CoordRecord",
    "GradcheckWarning",
    "GradientCheckError",
    "LossError",
    "NondeterminismError",
    "Problem",
    "Report",
    "Segment",
    "SegmentMap",
    "SegmentReport",
    "assert_gradients",
    "audit",
    "check",
    "check_layer",
    "check_model",
    "flatten",
    "unflatten",
]
