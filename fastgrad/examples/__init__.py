"""Problems shipped with fastgrad: the demo network and the hard cases of its tests and benchmarks.

- ``fastgrad.examples`` (``two_layer``): a two-layer ReLU/softmax network (CS231n style) with
  optional planted bugs, used by ``fastgrad demo``, the benchmarks and the tests;
- ``fastgrad.examples.problems``: losses with kinks within one step of the point, a separable
  loss, and a way to plant errors in a gradient.

>>> from fastgrad.examples import two_layer_problem
>>> problem = two_layer_problem(bug="bias")          # b1's gradient dropped

From the command line: ``fastgrad check fastgrad.examples:buggy_two_layer_problem``.
"""

from .two_layer import (
    BUGS,
    buggy_two_layer_problem,
    two_layer_data,
    two_layer_grad,
    two_layer_loss,
    two_layer_loss_jit,
    two_layer_problem,
)

__all__ = [
    "BUGS",
    "buggy_two_layer_problem",
    "two_layer_data",
    "two_layer_grad",
    "two_layer_loss",
    "two_layer_loss_jit",
    "two_layer_problem",
]
