"""A plain terminal progress bar: evaluations done, rate, ETA. No dependency."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

# with progress=None the bar appears only on a terminal, and only once a check has run this long
AUTO_DELAY_SECONDS = 2.0


class Progress:
    """A progress bar over a known number of loss evaluations; a context manager.

    Used by the evaluators behind ``fastgrad.check`` and ``fastgrad.audit`` (their ``progress=``
    option); thread-safe, so worker threads may report their evaluations.

    Parameters
    ----------
    total : int
        The number of evaluations expected.
    label : str, default "evaluations"
        The text in front of the bar.
    enabled : bool or None
        True/False force the bar on or off; None shows it only when ``stream`` is a terminal,
        and only once the check has run for ``AUTO_DELAY_SECONDS``.
    stream : file-like, optional
        Where to draw; default ``sys.stderr``.

    Examples
    --------
    >>> with Progress(total=10, label="check", enabled=True) as bar:
    ...     bar.update(10)
    """

    def __init__(self, total: int, label: str = "evaluations", enabled: bool | None = None,
                 stream: TextIO | None = None):
        self.total = int(total)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            self.enabled = bool(isatty and isatty())
            self.delay = AUTO_DELAY_SECONDS
        else:
            self.enabled = bool(enabled)
            self.delay = 0.0
        self.done = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._drawn = False
        self._width = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """Whether anyone may see the bar (the kernels then run in batches to move it)."""
        return self.enabled

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._drawn:
            self._draw(final=True)
            self.stream.write("\n")
            self.stream.flush()

    def update(self, n: int) -> None:
        """Count ``n`` more evaluations done and redraw (at most every 0.1 s).

        Parameters
        ----------
        n : int
            Evaluations finished since the last update.
        """
        with self._lock:
            self.done += n
            if not self.enabled:
                return
            now = time.perf_counter()
            if now - self.start < self.delay or now - self._last_draw < 0.1:
                return
            self._last_draw = now
            self._draw()

    def count_to(self, done: int) -> None:
        """Set the count of evaluations done (a caller that knows the true count: the audit,
        whose evaluations also run outside the backends that call ``update``).

        Parameters
        ----------
        done : int
            Evaluations finished so far.
        """
        with self._lock:
            self.done = int(done)
        self.update(0)

    def expect(self, remaining: int, label: str | None = None) -> None:
        """Re-estimate: ``remaining`` more evaluations from now (the total may shrink, as when
        an audit finds nothing to localize), and optionally a new label (the phase).

        Parameters
        ----------
        remaining : int
            Evaluations still expected after those done so far.
        label : str, optional
            The text in front of the bar from now on.
        """
        with self._lock:
            self.total = self.done + max(int(remaining), 0)
            if label is not None:
                self.label = label
        self.update(0)

    def _draw(self, final: bool = False) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        frac = self.done / self.total if self.total else 1.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        width = 28
        filled = int(round(width * min(frac, 1.0)))
        bar = "#" * filled + "-" * (width - filled)
        tail = f"{elapsed:5.1f}s" if final else f"ETA {eta:5.1f}s"
        line = f"{self.label} [{bar}] {self.done}/{self.total} evals  {rate:,.0f}/s  {tail}"
        # a shorter line (a shorter phase label) overwrites all of the previous one
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()
        self._drawn = True
