"""Faults injected and bad inputs tried, with what fastgrad did about each: one table, one run.

    python benchmarks/faults_table.py            # every row (about a minute; Dask and torch rows
                                                 # when those are installed)
    python benchmarks/faults_table.py --no-dask  # without the Dask cluster row

Each row runs a real scenario through the public API and prints what came back: the report's
status and path line, the evaluations reported against the loss's own count of its calls, or the
exception's class and message. Nothing is asserted here (tests/test_faults.py,
tests/test_bad_input.py, tests/test_torch_hooks.py and tests/test_error_vocabulary.py assert
it); this is the table a reader checks by eye.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

import fastgrad as fg

_rng = np.random.default_rng(11)
A = _rng.standard_normal((40, 60))
THETA = _rng.standard_normal(60) * 0.05
GRAD = A.T @ (1 - np.tanh(A @ THETA) ** 2)
WRONG = GRAD.copy()
WRONG[17] *= 1.01  # one wrong coordinate: W[2, 2]
SEGMENTS = {"W": (6, 5), "b": (30,)}


def tanh_loss(theta):
    return float(np.sum(np.tanh(A @ theta)))


def killing_loss(theta, A, calls, flag, after, parent):
    """tanh_loss that appends one byte per call to ``calls``; in a worker process, the call after
    ``after`` calls in all removes ``flag`` and kills its own process with SIGKILL (once)."""
    fd = os.open(calls, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"x")
    os.close(fd)
    if os.getpid() != parent and os.path.getsize(calls) > after:
        try:
            os.remove(flag)
        except FileNotFoundError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.001)
    return float(np.sum(np.tanh(A @ theta)))


def hanging_loss(theta, A, index, seconds):
    """Sleeps ``seconds`` at theta + h e_index only."""
    if theta[index] > THETA[index] + 1e-9:
        time.sleep(seconds)
    return float(np.sum(np.tanh(A @ theta)))


def slow_loss(theta, A, seconds):
    time.sleep(seconds)
    return float(np.sum(np.tanh(A @ theta)))


def _short(text: str, width: int = 150) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[: width - 3] + "..."


def _outcome(run) -> str:
    """What a scenario produced: the report's status, path and counts, or the error raised."""
    start = time.perf_counter()
    try:
        result = run()
    except BaseException as error:  # KeyboardInterrupt included: it is a row too
        return (f"raised {type(error).__name__} after {time.perf_counter() - start:.1f} s: "
                f"{_short(error)}")
    return _short(result, 400) if isinstance(result, str) else _describe(result)


def _describe(report) -> str:
    failing = [name for name, s in report.segments.items() if not s.passed]
    where = f", wrong in {', '.join(failing)}" if failing else ""
    return _short(f"{report.status}{where}; {report.path}: {report.path_reason}", 300)


class _Calls:
    """A file the loss appends to once per call (works across worker processes)."""

    def __init__(self, folder: Path, name: str):
        self.path = folder / f"{name}.calls"
        self.flag = folder / f"{name}.flag"
        self.flag.touch()

    def args(self, after: int):
        return (A, str(self.path), str(self.flag), after, os.getpid())

    @property
    def count(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


def fault_rows(folder: Path, dask: bool) -> list[tuple[str, str]]:
    rows = []
    serial = fg.check(tanh_loss, THETA, WRONG, segments=SEGMENTS, samples="all",
                      backend="serial")
    rows.append(("reference: the same check, serial, no fault", _describe(serial)))

    calls = _Calls(folder, "kill")

    def killed():
        report = fg.check(killing_loss, THETA, WRONG, args=calls.args(40), segments=SEGMENTS,
                          samples="all", backend="processes", workers=2)
        same = [(c.index, c.verdict) for c in report.coords] == \
            [(c.index, c.verdict) for c in serial.coords]
        return (f"{_describe(report)} | same verdicts as serial: {same}; "
                f"evaluations {report.evaluations}, the loss's own count {calls.count}")

    rows.append(("a worker process killed (SIGKILL) mid-check, backend='processes'",
                 _outcome(killed)))
    rows.append(("the next check after that, backend='processes'",
                 _outcome(lambda: fg.check(tanh_loss, THETA, WRONG, segments=SEGMENTS,
                                           samples="all", backend="processes", workers=2))))

    audit_calls = _Calls(folder, "kill_audit")
    serial_audit = fg.audit(tanh_loss, THETA, WRONG, segments=SEGMENTS, backend="serial")

    def killed_audit():
        report = fg.audit(killing_loss, THETA, WRONG, args=audit_calls.args(50),
                          segments=SEGMENTS, backend="processes", workers=2)
        return (f"{_describe(report)} | suspects {report.suspects.tolist()} (serial: "
                f"{serial_audit.suspects.tolist()}); evaluations {report.evaluations}, the "
                f"loss's own count {audit_calls.count}")

    rows.append(("a worker process killed mid-audit", _outcome(killed_audit)))
    rows += forked_rows(folder, serial)  # before any row leaves a thread running

    if dask:
        rows.append(("a Dask worker killed mid-audit (LocalCluster, 2 processes)",
                     _outcome(lambda: _dask_kill(folder, serial_audit))))

    for backend in ("serial", "threads", "processes"):
        rows.append((f"a loss that sleeps 30 s at one point, timeout=0.5, backend={backend!r}",
                     _outcome(lambda b=backend: fg.check(
                         hanging_loss, THETA, GRAD, args=(A, 37, 30.0), segments=SEGMENTS,
                         samples="all", backend=b, workers=2, timeout=0.5))))
    rows.append(("an audit whose loss sleeps 30 s, timeout=0.3",
                 _outcome(lambda: fg.audit(hanging_loss, THETA, GRAD, args=(A, 0, 30.0),
                                           segments=SEGMENTS, backend="serial", timeout=0.3))))

    def interrupted(backend):
        timer = threading.Timer(0.7, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        try:
            return fg.check(slow_loss, THETA, GRAD, args=(A, 0.05), segments=SEGMENTS,
                            samples="all", backend=backend, workers=2)
        finally:
            timer.cancel()

    for backend in ("threads", "processes"):
        rows.append((f"Ctrl-C (SIGINT) 0.7 s into a check, backend={backend!r}",
                     _outcome(lambda b=backend: interrupted(b))))
        rows.append((f"the next check after Ctrl-C, backend={backend!r}",
                     _outcome(lambda b=backend: fg.check(tanh_loss, THETA, GRAD,
                                                         segments=SEGMENTS, samples="all",
                                                         backend=b, workers=2))))

    for backend in ("serial", "threads", "processes"):
        counter = _Calls(folder, f"count_{backend}")

        def counted(b=backend, c=counter):
            report = fg.check(killing_loss, THETA, WRONG, args=c.args(10**9), segments=SEGMENTS,
                              samples="all", backend=b, workers=2)
            return f"report.evaluations {report.evaluations}, the loss's own count {c.count}"

        rows.append((f"every call counted, backend={backend!r}", _outcome(counted)))
    return rows


def stalling_in_a_copy(theta, A, parent):
    """tanh_loss, except that in a forked copy of the process it sleeps 30 s at every call."""
    if os.getpid() != parent:
        time.sleep(30.0)
    return slow_loss(theta, A, 0.001)


def forked_rows(folder: Path, serial) -> list[tuple[str, str]]:
    """The faults of forked batches (backend='forked', the default for a Python loss on Linux):
    a copy killed, a copy that stalls, Ctrl-C (a timer signal: a timer thread would stop the
    fork), every call counted."""
    rows = []
    same = lambda report: [(c.index, c.verdict) for c in report.coords] == \
        [(c.index, c.verdict) for c in serial.coords]  # noqa: E731
    calls = _Calls(folder, "kill_forked")

    def killed():
        report = fg.check(killing_loss, THETA, WRONG, args=calls.args(40), segments=SEGMENTS,
                          samples="all", backend="forked", workers=2)
        return (f"{_describe(report)} | same verdicts as serial: {same(report)}; "
                f"evaluations {report.evaluations}, the loss's own count {calls.count}")

    rows.append(("a forked copy killed (SIGKILL) mid-batch, backend='forked'", _outcome(killed)))

    def stalled():
        start = time.monotonic()
        report = fg.check(stalling_in_a_copy, THETA, WRONG, args=(A, os.getpid()),
                          segments=SEGMENTS, samples="all", backend="forked", workers=2)
        return (f"{_describe(report)} | same verdicts as serial: {same(report)}; "
                f"{time.monotonic() - start:.1f} s")

    rows.append(("a forked copy that sleeps 30 s at every call (a lock copied held), "
                 "backend='forked'", _outcome(stalled)))

    def interrupted():
        def interrupt(signum, frame):
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 0.7)
        try:
            return fg.check(slow_loss, THETA, GRAD, args=(A, 0.05), segments=SEGMENTS,
                            samples="all", backend="forked", workers=2)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    rows.append(("Ctrl-C (a KeyboardInterrupt) 0.7 s into a check, backend='forked'",
                 _outcome(interrupted)))
    rows.append(("the next check after Ctrl-C, backend='forked'",
                 _outcome(lambda: fg.check(slow_loss, THETA, GRAD, args=(A, 0.001),
                                           segments=SEGMENTS, samples="all", backend="forked",
                                           workers=2))))
    counter = _Calls(folder, "count_forked")

    def counted():
        report = fg.check(killing_loss, THETA, WRONG, args=counter.args(10**9),
                          segments=SEGMENTS, samples="all", backend="forked", workers=2)
        return (f"report.evaluations {report.evaluations}, the loss's own count "
                f"{counter.count} ({report.path})")

    rows.append(("every call counted, backend='forked'", _outcome(counted)))
    return rows


def _dask_kill(folder: Path, serial_audit) -> str:
    import distributed

    calls = _Calls(folder, "kill_dask")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        report = fg.audit(killing_loss, THETA, WRONG, args=calls.args(50), segments=SEGMENTS,
                          executor=client)
    killed = not calls.flag.exists()
    return (f"worker killed: {killed}; {_describe(report)} | suspects "
            f"{report.suspects.tolist()} (serial: {serial_audit.suspects.tolist()})")


def hook_rows() -> list[tuple[str, str]]:
    try:
        import torch
    except ImportError:
        return [("torch hooks", "skipped: torch is not installed")]
    import fastgrad.torch as ft

    def mlp(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)
    loss = torch.nn.CrossEntropyLoss()

    def audited(net):
        state = {n: p.detach().clone() for n, p in net.named_parameters()}
        report = ft.audit_module(net, loss, x, target=y)
        unchanged = all(torch.equal(p, state[n]) for n, p in net.named_parameters())
        return f"{_describe(report)} | caller's parameters bitwise unchanged: {unchanged}"

    rows = []
    net = mlp(0)
    net[2].weight.register_hook(lambda g: g * 1.01)
    rows.append(("a parameter hook scaling 2.weight's gradient by 1.01 (audit_module)",
                 _outcome(lambda: audited(net))))
    net = mlp(2)

    def scale_grad(p):  # a post-accumulate-grad hook returns None
        p.grad.mul_(1.02)

    net[0].bias.register_post_accumulate_grad_hook(scale_grad)
    rows.append(("a post-accumulate-grad hook scaling 0.bias's .grad by 1.02",
                 _outcome(lambda: audited(net))))
    net = mlp(4)

    def scale_upstream(module, args, out):  # returns None: the output is unchanged
        out.register_hook(lambda g: g * 1.01)

    net[0].register_forward_hook(scale_upstream)
    rows.append(("a forward hook on layer 0 registering a tensor hook that scales by 1.01",
                 _outcome(lambda: audited(net))))
    net = mlp(6)
    torch.nn.utils.parametrizations.weight_norm(net[0])
    rows.append(("weight norm on layer 0 (correct)", _outcome(lambda: audited(net))))

    class BuggyNorm(torch.autograd.Function):
        """Rows scaled to unit norm, whose backward drops the projection term: wrong."""

        @staticmethod
        def forward(ctx, v):
            norm = v.norm(dim=1, keepdim=True)
            ctx.save_for_backward(norm)
            return v / norm

        @staticmethod
        def backward(ctx, g):
            (norm,) = ctx.saved_tensors
            return g / norm  # misses - w (w . g)

    class RowNormalized(torch.nn.Module):
        def forward(self, v):
            return BuggyNorm.apply(v)

    net = mlp(10)
    torch.nn.utils.parametrize.register_parametrization(net[2], "weight", RowNormalized())
    rows.append(("a weight parametrization on layer 2 whose backward drops a term",
                 _outcome(lambda: audited(net))))
    return rows


def bad_input_rows(folder: Path) -> list[tuple[str, str]]:
    theta = np.linspace(-1.0, 1.0, 25)

    def f(t):
        return float(np.sum(np.sin(t)))

    g = np.cos(theta)
    cases = [
        ("theta as a Python list", lambda: fg.check(f, theta.tolist(), g)),
        ("theta of shape (5, 5)", lambda: fg.check(f, theta.reshape(5, 5), g)),
        ("theta with a NaN at index 3",
         lambda: fg.check(f, np.where(np.arange(25) == 3, np.nan, theta), g)),
        ("grad of shape (25, 1)", lambda: fg.check(f, theta, g[:, None])),
        ("grad of 24 values", lambda: fg.check(f, theta, g[:24])),
        ("a loss returning shape (1,)", lambda: fg.check(lambda t: np.array([f(t)]), theta, g)),
        ("a loss returning shape (1, 1)",
         lambda: fg.check(lambda t: np.array([[f(t)]]), theta, g)),
        ("a loss returning shape (3,)", lambda: fg.check(lambda t: np.sin(t[:3]), theta, g)),
        ("a loss that writes into theta",
         lambda: fg.check(lambda t: (t.__setitem__(0, 0.0), f(t))[1], theta, g)),
        ("segments that cover 20 of 25 values", lambda: fg.check(f, theta, g, segments={"W": (20,)})),
        ("h=0", lambda: fg.check(f, theta, g, h=0.0)),
        ("tol=2", lambda: fg.check(f, theta, g, tol=2.0)),
        ("samples=0", lambda: fg.check(f, theta, g, samples=0)),
        ("workers=0", lambda: fg.check(f, theta, g, workers=0)),
        ("timeout=-1", lambda: fg.check(f, theta, g, timeout=-1)),
        ("timeout='2'", lambda: fg.check(f, theta, g, timeout="2")),
        ("fastgrad.testing.assert_passed of a failing audit",
         lambda: _assert_passed_failing_audit()),
    ]
    rows = []
    for what, run in cases:
        before = theta.copy()
        out = _outcome(run)
        if before.tobytes() != theta.tobytes():
            out += " (theta CHANGED)"
        rows.append((what, out))
    rows.append(("the CLI, a factory that builds a Problem with grad of the wrong size",
                 _cli_factory(folder)))
    return rows


def _assert_passed_failing_audit():
    from fastgrad.testing import assert_passed

    assert_passed(fg.audit(tanh_loss, THETA, WRONG, segments=SEGMENTS))


def _cli_factory(folder: Path) -> str:
    (folder / "bad_factory.py").write_text(textwrap.dedent("""
        import numpy as np
        import fastgrad as fg

        def problem():
            return fg.Problem(lambda t: float(t @ t), np.zeros(4), np.zeros(3))
    """))
    from fastgrad.cli import main

    sys.path.insert(0, str(folder))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["check", "bad_factory:problem"])
    finally:
        sys.path.remove(str(folder))
    return _short(f"exit {code}: {err.getvalue().strip()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-dask", action="store_true", help="leave out the Dask row")
    opts = parser.parse_args(argv)
    try:
        import distributed  # noqa: F401
        dask = not opts.no_dask
    except ImportError:
        dask = False
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sections = [("Faults", fault_rows(folder, dask)), ("Hooks autograd applies", hook_rows()),
                    ("Bad input", bad_input_rows(folder))]
    for title, rows in sections:
        print(f"\n### {title}\n\n| injected / tried | what fastgrad produced |\n|---|---|")
        for what, out in rows:
            print(f"| {what} | {out} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
