"""Training diagnostics: track the numbers worth watching, get findings in words, and plots.

>>> from fastgrad.monitor import TrainingMonitor
>>> mon = TrainingMonitor(segments={"W1": (64, 32), "b1": (32,)})
>>> mon.log_loss(0, 2.3); findings = mon.diagnose()

``import fastgrad.monitor`` needs neither matplotlib, scikit-learn nor tensorboardX; ``plot``
needs the plot extra (``pip install fastgrad[plot]``), ``TrainingMonitor(tensorboard=DIR)`` the
tensorboard extra (``pip install "fastgrad[tensorboard]"``).
"""

from .diagnose import Finding
from .filters import filter_grid, filter_smoothness, filter_smoothness_scores
from .monitor import TrainingMonitor

__all__ = ["TrainingMonitor", "Finding", "filter_grid", "filter_smoothness",
           "filter_smoothness_scores"]
