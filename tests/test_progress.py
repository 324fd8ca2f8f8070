import io

import numpy as np

import fastgrad as fg
from fastgrad.progress import Progress


class Terminal(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_bar_shows_counts_rate_and_eta_when_forced():
    stream = Terminal(tty=False)
    with Progress(total=10, label="check", enabled=True, stream=stream) as bar:
        for _ in range(5):
            bar.update(2)
    text = stream.getvalue()
    assert "check [" in text and "10/10 evals" in text and "/s" in text
    assert text.endswith("\n")


def test_bar_is_silent_off_a_terminal_and_when_disabled():
    for stream, enabled in ((Terminal(tty=False), None), (Terminal(tty=True), False)):
        with Progress(total=10, enabled=enabled, stream=stream) as bar:
            bar.update(10)
        assert stream.getvalue() == ""


def test_check_with_progress_true_still_gives_the_same_report(capsys):
    theta = np.linspace(-2, 2, 400)
    f = lambda t: float(np.sum(t ** 3))
    quiet = fg.check(f, theta, 3 * theta ** 2, samples="all", progress=False)
    loud = fg.check(f, theta, 3 * theta ** 2, samples="all", progress=True)
    assert [c.numeric for c in quiet.coords] == [c.numeric for c in loud.coords]
    assert "evals" in capsys.readouterr().err
