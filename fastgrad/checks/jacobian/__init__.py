"""The Jacobian core both drop-ins stand on (``fastgrad.torch.gradcheck``/``gradgradcheck`` and
``fastgrad.jax.check_grads``): full Jacobians, every input coordinate against every output
element, judged as ``check`` judges a coordinate and by the caller's tolerance.

A framework supplies only what is its own:

- how to flatten: its inputs and outputs as ``Layout`` s of one flat real vector each (complex
  as real parts, then imaginary parts), and the point ``x``;
- how to call: a ``FlatFunction`` subclass with ``call_one(row)`` (one call of the caller's
  function) and ``call_batch(rows)`` (one vmap'd call); ``many`` (the batched evaluation with
  its probe at x and its fallback to one call per row) and ``CoordinateColumns`` (the centered
  columns, in chunks of ``BATCH_VALUES`` input values) are the core's;
- the analytic rows (vector-Jacobian products) or columns (Jacobian-vector products) as one
  array, outputs x inputs.

The core judges (``judge_jacobian``, ``screen_streamed`` for Jacobians too large to keep, the
``JacobianReport``), names failures (``SubcheckFailed``, caught once by the public function)
and warns about elements passed by the caller's tolerance only (``warn_tolerated``).

Modules: ``layout``, ``columns`` (the numeric side), ``judge`` (verdicts and report),
``subchecks`` (the failure type and the warning).
"""

from .columns import (
    BATCH_VALUES,
    VMAP_AGREEMENT,
    ColumnEvaluator,
    CoordinateColumns,
    FlatFunction,
    close,
    first_words,
    same_bits,
)
from .judge import Judged, judge_jacobian, merged, screen_streamed
from .layout import Layout
from .subchecks import SubcheckFailed, warn_tolerated

__all__ = ["BATCH_VALUES", "VMAP_AGREEMENT", "ColumnEvaluator", "CoordinateColumns",
           "FlatFunction", "Judged", "Layout", "SubcheckFailed", "close", "first_words",
           "judge_jacobian", "merged", "same_bits", "screen_streamed", "warn_tolerated"]
