import io

import numpy as np

import fastgrad as fg
from fastgrad.examples.problems import weighted_logcosh, weighted_logcosh_data, weighted_logcosh_grad
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


def test_audit_bar_names_each_phase_moves_within_a_batch_and_ends_full(monkeypatch):
    # a loss with a wrong row among 40 segments: every phase of the audit runs. Each update of
    # the bar is recorded (the drawing itself is throttled to 0.1 s)
    n = 40 * 500
    a, c, theta = weighted_logcosh_data(n, seed=3)
    grad = weighted_logcosh_grad(theta, a, c)
    grad[7 * 500 + 100:7 * 500 + 164] *= 1.01  # a contiguous run of 64 in segment s7
    segments = {f"s{j}": (500,) for j in range(40)}
    seen = []
    update = Progress.update

    def recording(self, n):
        update(self, n)
        if self.label.startswith("audit"):  # not the engine's own bars (off in an audit)
            seen.append((self.label, self.done, self.total))

    monkeypatch.setattr(Progress, "update", recording)
    report = fg.audit(lambda t: weighted_logcosh(t, a, c), theta, grad, segments=segments,
                      workers=2, jit=False, progress=True)
    assert [(b.segment, b.first, b.last) for b in report.blocks] == [("s7", (100,), (163,))]
    phases = list(dict.fromkeys(label for label, _, _ in seen))
    for earlier, later in [("audit noise", "audit global"), ("audit global", "audit segments"),
                           ("audit segments", "audit localize")]:
        assert earlier in phases and later in phases
        assert phases.index(earlier) < phases.index(later)
    # the 40 segments' directions are one batch: the bar moves during it, not only at its end
    assert sum(label == "audit segments" and done < 100 for label, done, _ in seen) > 2
    # the count is the audit's own, and the last total is the count: the bar ends full
    assert seen[-1][1] == seen[-1][2] == report.evaluations
    assert all(done <= total for _, done, total in seen)


def test_audit_bar_of_a_passing_audit_expects_no_localization(capsys):
    theta = np.linspace(-2, 2, 4000)
    report = fg.audit(lambda t: float(np.sum(t ** 3)), theta, 3 * theta ** 2,
                      segments={"a": (2000,), "b": (2000,)}, progress=True)
    assert report.passed
    err = capsys.readouterr().err
    assert "audit" in err and f"{report.evaluations}/{report.evaluations} evals" in err
