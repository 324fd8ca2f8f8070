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

    def _draw(self, final: bool = False) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        frac = self.done / self.total if self.total else 1.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        width = 28
        filled = int(round(width * min(frac, 1.0)))
        bar = "#" * filled + "-" * (width - filled)
        tail = f"{elapsed:5.1f}s" if final else f"ETA {eta:5.1f}s"
        self.stream.write(
            f"\r{self.label} [{bar}] {self.done}/{self.total} evals  {rate:,.0f}/s  {tail}"
        )
        self.stream.flush()
        self._drawn = True
