"""The ``fastgrad`` command: demo, check MODULE:FACTORY, monitor LOG.jsonl.

Exit status: 0 passed, 1 a gradient check failed, 2 bad usage or input (an argument, any
``fastgrad.errors.InputError``, the loss raising or returning something unusable, FACTORY raising
in the user's code), 3 inconclusive (the measured noise of f left coordinates
or directions unjudgeable), 70 an internal error of fastgrad (a traceback to report).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from .errors import InputError, InvalidType, InvalidValue, LossError

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: not "the gradient is wrong", not the user's input
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE, as a shell reports a writer whose reader left (| head)


class UsageError(Exception):
    """Bad usage or input: exit status 2."""


class FactoryError(UsageError):
    """FACTORY() raised in the user's code (not in fastgrad's): exit status 2, with the
    traceback, the way a loss that raises is the user's input and not fastgrad's bug."""


_PACKAGE = Path(__file__).resolve().parent


def _raised_in_fastgrad(exc: BaseException) -> bool:
    """Whether the innermost frame of exc's traceback is fastgrad's own code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def _samples(value: str):
    if value == "all":
        return "all"
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int or 'all', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {n}")
    return n


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastgrad",
        description="Is this analytic gradient right? Fast, truthful numerical gradient checks.",
        epilog=("exit status: 0 passed, 1 a gradient check failed, 2 bad usage or input, "
                "3 inconclusive"),
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="check a built-in two-layer network, and one with a bug")
    demo.add_argument("--samples", type=_samples, default=16, help="coordinates per segment")
    demo.add_argument("--seed", type=int, default=0)

    chk = sub.add_parser("check", help="check the Problem that MODULE:FACTORY() returns")
    chk.add_argument("target", help="MODULE:FACTORY; FACTORY() returns fastgrad.Problem(...)")
    chk.add_argument("--samples", type=_samples, default=None,
                     help="coordinates per segment (an int or 'all'; default: the Problem's, or 16)")
    chk.add_argument("--seed", type=int, default=None,
                     help="which coordinates are sampled (default: the Problem's, or 0)")
    chk.add_argument("--depth", type=int, default=None, help="network depth (tolerance grows)")
    chk.add_argument("--tol", type=float, default=None, help="explicit failure threshold")
    chk.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    chk.add_argument("--json", metavar="FILE", default=None,
                     help="also write the report as JSON to FILE ('-' for stdout)")
    chk.add_argument("--audit", action="store_true",
                     help="audit with directional checks + localization instead of sampling")
    chk.add_argument("--budget", type=int, default=None, help="max loss evaluations (--audit)")
    chk.add_argument("--timeout", type=float, default=None, metavar="S",
                     help="seconds one loss evaluation may take; one past it fails the check")

    from .monitor.cli import configure_parser as configure_monitor  # the monitor owns its arguments

    configure_monitor(sub.add_parser(
        "monitor", help="training diagnostics from a log: plots + findings",
        description="Training diagnostics from a monitor log: findings in words and PNG plots."))
    return parser


def _load_problem(target: str):
    from .checks.coordinates import Problem

    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"target: expected MODULE:FACTORY, got {target!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"target: cannot import module {module_name!r}: {exc}") from exc
    finally:
        sys.path.pop(0)
    factory = getattr(module, attr, None)
    if factory is None:
        raise UsageError(f"target: module {module_name!r} has no attribute {attr!r}")
    try:
        problem = factory() if callable(factory) and not isinstance(factory, Problem) else factory
    except (InputError, LossError):
        raise  # exit 2 with its message, like the same error raised by the check
    except Exception as exc:
        if _raised_in_fastgrad(exc):
            raise  # a bug of fastgrad's (exit 70), even when the factory called it
        raise FactoryError(f"target: {target}() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(problem, Problem):
        raise UsageError(
            f"target: {target}() returned {type(problem).__name__}, expected fastgrad.Problem"
        )
    return problem


def _problem_options(problem, accepted) -> dict:
    """The Problem's options, refused by name when check()/audit() takes no such option."""
    if not isinstance(problem.options, Mapping):
        raise InvalidType(f"Problem.options: expected a dict of check() options, got "
                          f"{type(problem.options).__name__}")
    unknown = sorted(str(k) for k in problem.options if k not in accepted)
    if unknown:
        raise InvalidValue(f"Problem.options: {unknown} are not options of fastgrad.check or "
                           f"fastgrad.audit; they take {sorted(accepted)}")
    return dict(problem.options)


def _problem_args(problem) -> tuple:
    """A list or tuple of extra arguments as a tuple; anything else is refused by check()."""
    return tuple(problem.args) if isinstance(problem.args, (list, tuple)) else problem.args


def _write_json(report, destination: str | None) -> None:
    if destination is None:
        return
    text = json.dumps(report.to_dict(), indent=2)
    if destination == "-":
        print(text)
    else:
        Path(destination).write_text(text + "\n")


def _demo(args) -> int:
    from .checks.coordinates import check
    from .examples import two_layer_problem

    for title, bug in (("correct gradient", None), ("planted bug: b1 gradient missing", "bias")):
        p = two_layer_problem(bug=bug)
        report = check(p.f, p.theta, p.grad, segments=p.segments, args=p.args,
                       samples=args.samples, seed=args.seed)
        print(f"== two-layer ReLU/softmax network (N=16, D=64, H=64, C=10), {title}")
        print(report)
        print()
        expected = bug is None
        if report.passed != expected:
            print(f"demo: the {title} case did not come out as expected", file=sys.stderr)
            return EXIT_FAILED
    print("demo: the correct gradient passed and the planted bug was caught in 'b1'.")
    return EXIT_PASSED


def _check(args) -> int:
    import inspect

    from .checks.audit import audit
    from .checks.coordinates import check

    problem = _load_problem(args.target)
    options = _problem_options(problem, {
        name for run in (check, audit) for name in inspect.signature(run).parameters
        if name not in ("f", "theta", "grad", "args", "segments")})
    seed = options.pop("seed", 0) if args.seed is None else args.seed
    options.pop("seed", None)
    for key in ("depth", "tol", "workers", "timeout"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.audit:
        # a Problem's options are check() options; keep the ones audit() takes too
        accepted = inspect.signature(audit).parameters
        options = {k: v for k, v in options.items() if k in accepted}
        if args.budget is not None:
            options["budget"] = args.budget
        report = audit(problem.f, problem.theta, problem.grad, segments=problem.segments,
                       args=_problem_args(problem), seed=seed, **options)
    else:
        options = {k: v for k, v in options.items()
                   if k in inspect.signature(check).parameters}  # audit's budget, say
        if args.samples is not None:
            options["samples"] = args.samples
        options.setdefault("samples", 16)
        report = check(problem.f, problem.theta, problem.grad, segments=problem.segments,
                       args=_problem_args(problem), seed=seed, **options)
    if args.json != "-":
        print(report)
    _write_json(report, args.json)
    return {"passed": EXIT_PASSED, "inconclusive": EXIT_INCONCLUSIVE}.get(report.status,
                                                                         EXIT_FAILED)


def _monitor(args) -> int:
    from .monitor.cli import run as monitor_run

    return monitor_run(args)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    handlers = {"demo": _demo, "check": _check, "monitor": _monitor}
    try:
        return handlers[args.command](args)
    except UsageError as exc:
        if isinstance(exc, FactoryError):  # the user's code raised: show where
            traceback.print_exception(exc.__cause__)
        print(f"fastgrad: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InputError as exc:
        print(f"fastgrad: bad input: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LossError as exc:
        print(f"fastgrad: the loss failed: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader stopped reading (fastgrad check ... | head): not a bug
        # the interpreter flushes stdout again at exit: point it at devnull so that it is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE_CLOSED
    except Exception:  # a bug in fastgrad (or in a library under it): not the user's input
        traceback.print_exc()
        print("fastgrad: internal error (the traceback above is worth an issue)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
