"""``fastgrad monitor LOG.jsonl -o DIR``: findings and plots from a monitor log.

Exit status: 0 done (findings are printed, not failures), 1 the log records a failed gradient
check (with ``--strict``: or any finding of severity "error"), 2 bad usage or input (missing or
malformed log, matplotlib missing for the plots).

This module owns the command's arguments: ``fastgrad monitor`` (``fastgrad.cli``) and
``python -m fastgrad.monitor.cli`` build the same parser with :func:`configure_parser`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EPILOG = ("exit status: 0 done, 1 a failed gradient check in the log (with --strict also any "
          "finding of severity 'error'), 2 bad usage or input")


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``monitor`` arguments to ``parser`` (e.g. a sub-command parser of ``fastgrad``).

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The parser to extend, e.g. ``fastgrad``'s ``monitor`` sub-parser.

    Returns
    -------
    argparse.ArgumentParser
        ``parser`` itself, with the arguments ``LOG.jsonl``, ``-o/--outdir``, ``--no-plots``,
        ``--json``, ``--dpi`` and ``--strict``.

    Examples
    --------
    >>> parser = configure_parser(argparse.ArgumentParser(prog="fastgrad monitor"))
    >>> parser.parse_args(["run.jsonl", "-o", "plots"]).outdir
    'plots'
    """
    if parser.epilog is None:
        parser.epilog = EPILOG
    parser.add_argument("log", metavar="LOG.jsonl", help="log written by TrainingMonitor.save")
    parser.add_argument("-o", "--outdir", metavar="DIR", default=None,
                        help="where to write the PNG plots (default: LOG's name + '-plots')")
    parser.add_argument("--no-plots", action="store_true", help="print the findings only")
    parser.add_argument("--json", action="store_true",
                        help="print the findings as a JSON list instead of text")
    parser.add_argument("--dpi", type=int, default=100,
                        help="resolution of the PNGs (default 100: 8-inch-wide plots are 800 px)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when any finding has severity 'error' (e.g. in CI)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``fastgrad monitor`` on parsed arguments: print the findings, write the plots.

    Parameters
    ----------
    args : argparse.Namespace
        Arguments parsed by a parser built with :func:`configure_parser`.

    Returns
    -------
    int
        The exit status: 0 done, 1 the log records a failed gradient check (with
        ``args.strict``: or any finding of severity "error"), 2 bad input (the log is missing or
        not a monitor log, ``--dpi`` below 10, the output folder is a file, no matplotlib).
        Problems are printed to stderr; nothing is raised for bad input.

    Examples
    --------
    >>> args = configure_parser(argparse.ArgumentParser()).parse_args(["run.jsonl"])
    >>> run(args)
    0
    """
    from .monitor import TrainingMonitor
    from .plots import plot_all

    try:
        mon = TrainingMonitor.load(args.log)
    except FileNotFoundError:
        print(f"fastgrad monitor: no such log file: {args.log}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, IsADirectoryError) as error:
        print(f"fastgrad monitor: cannot read {args.log}: {error}", file=sys.stderr)
        return EXIT_USAGE
    findings = mon.diagnose()
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        steps, _ = mon.losses()
        print(f"{args.log}: {steps.size} steps, {len(mon.epochs())} epochs, "
              f"{len(mon.layers)} layers, {len(mon.gradchecks())} gradient checks")
        if not findings:
            print("no findings: nothing looks wrong")
        for finding in findings:
            print(f"- {finding}")
    failed = any(f.kind == "gradcheck_failed" for f in findings)
    if args.strict:
        failed = failed or any(f.severity == "error" for f in findings)
    status = EXIT_FAILED if failed else EXIT_OK
    if not args.no_plots:
        if args.dpi < 10:
            print(f"fastgrad monitor: --dpi must be at least 10, got {args.dpi}", file=sys.stderr)
            return EXIT_USAGE
        outdir = args.outdir
        if outdir is None:
            outdir = os.path.splitext(args.log)[0] + "-plots"
        try:
            paths = plot_all(mon, outdir, dpi=args.dpi)
        except (ImportError, ValueError, OSError) as error:
            print(f"fastgrad monitor: {error}", file=sys.stderr)
            return EXIT_USAGE
        destination = sys.stderr if args.json else sys.stdout
        for path in paths:
            print(f"wrote {path}", file=destination)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fastgrad.monitor.cli`` (the same as ``fastgrad monitor``).

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments (default: ``sys.argv[1:]``): ``LOG.jsonl [-o DIR] [--no-plots] [--json]
        [--dpi N] [--strict]``.

    Returns
    -------
    int
        The exit status (see :func:`run`); 2 on bad usage, 0 after ``--help``.  Never raises
        ``SystemExit``.

    Examples
    --------
    >>> main(["run.jsonl", "-o", "plots"])
    0
    >>> main(["missing.jsonl"])
    2
    """
    parser = configure_parser(argparse.ArgumentParser(
        prog="fastgrad monitor", description="Training diagnostics from a monitor log: "
        "findings in words and PNG plots."))
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:  # argparse: --help (0) or bad usage (2)
        return EXIT_OK if exit_.code == 0 else EXIT_USAGE
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
