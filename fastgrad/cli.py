"""The ``fastgrad`` command: demo, check MODULE:FACTORY, monitor LOG.jsonl.

Exit status: 0 passed, 1 a gradient check failed, 2 bad usage or input (an argument, the loss
raising or returning something unusable), 3 inconclusive (the measured noise of f left coordinates
or directions unjudgeable), 70 an internal error of fastgrad (a traceback to report).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

from .errors import InputError, LossError

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_INCONCLUSIVE = 0, 1, 2, 3
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE: not "the gradient is wrong", not the user's input


class UsageError(Exception):
    """Bad usage or input: exit status 2."""


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
    chk.add_argument("--seed", type=int, default=0, help="which coordinates are sampled")
    chk.add_argument("--depth", type=int, default=None, help="network depth (tolerance grows)")
    chk.add_argument("--tol", type=float, default=None, help="explicit failure threshold")
    chk.add_argument("--workers", type=int, default=None, help="threads (default: all cores)")
    chk.add_argument("--json", metavar="FILE", default=None,
                     help="also write the report as JSON to FILE ('-' for stdout)")
    chk.add_argument("--audit", action="store_true",
                     help="audit with directional checks + localization instead of sampling")
    chk.add_argument("--budget", type=int, default=None, help="max loss evaluations (--audit)")

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
    problem = factory() if callable(factory) and not isinstance(factory, Problem) else factory
    if not isinstance(problem, Problem):
        raise UsageError(
            f"target: {target}() returned {type(problem).__name__}, expected fastgrad.Problem"
        )
    return problem


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
    problem = _load_problem(args.target)
    options = dict(problem.options)
    for key in ("depth", "tol", "workers"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.audit:
        import inspect

        from .checks.directions import audit

        # a Problem's options are check() options; keep the ones audit() takes too
        accepted = inspect.signature(audit).parameters
        options = {k: v for k, v in options.items() if k in accepted}
        if args.budget is not None:
            options["budget"] = args.budget
        report = audit(problem.f, problem.theta, problem.grad, segments=problem.segments,
                       args=tuple(problem.args), seed=args.seed, **options)
    else:
        from .checks.coordinates import check

        if args.samples is not None:
            options["samples"] = args.samples
        options.setdefault("samples", 16)
        report = check(problem.f, problem.theta, problem.grad, segments=problem.segments,
                       args=tuple(problem.args), seed=args.seed, **options)
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
        print(f"fastgrad: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except InputError as exc:
        print(f"fastgrad: bad input: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LossError as exc:
        print(f"fastgrad: the loss failed: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:  # a bug in fastgrad (or in a library under it): not the user's input
        traceback.print_exc()
        print("fastgrad: internal error (the traceback above is worth an issue)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
