"""``fastgrad monitor LOG.jsonl -o DIR``: findings and plots from a monitor log.

Exit status: 0 done (findings are printed, not failures), 1 the log records a failed gradient
check, 2 bad usage or input (missing or malformed log, matplotlib missing for the plots).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``monitor`` arguments to ``parser`` (e.g. a sub-command parser of ``fastgrad``).

    >>> parser = configure_parser(argparse.ArgumentParser(prog="fastgrad monitor"))
    >>> parser.parse_args(["run.jsonl", "-o", "plots"]).outdir
    'plots'
    """
    parser.add_argument("log", metavar="LOG.jsonl", help="log written by TrainingMonitor.save")
    parser.add_argument("-o", "--outdir", metavar="DIR", default=None,
                        help="where to write the PNG plots (default: LOG's name + '-plots')")
    parser.add_argument("--no-plots", action="store_true", help="print the findings only")
    parser.add_argument("--json", action="store_true",
                        help="print the findings as a JSON list instead of text")
    parser.add_argument("--dpi", type=int, default=80, help="resolution of the PNGs (default 80)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``fastgrad monitor`` on parsed arguments; returns the exit status.

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
        return 2
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, IsADirectoryError) as error:
        print(f"fastgrad monitor: cannot read {args.log}: {error}", file=sys.stderr)
        return 2
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
    status = 1 if any(f.kind == "gradcheck_failed" for f in findings) else 0
    if not args.no_plots:
        if args.dpi < 10:
            print(f"fastgrad monitor: --dpi must be at least 10, got {args.dpi}", file=sys.stderr)
            return 2
        outdir = args.outdir
        if outdir is None:
            outdir = os.path.splitext(args.log)[0] + "-plots"
        try:
            paths = plot_all(mon, outdir, dpi=args.dpi)
        except (ImportError, ValueError, OSError) as error:
            print(f"fastgrad monitor: {error}", file=sys.stderr)
            return 2
        destination = sys.stderr if args.json else sys.stdout
        for path in paths:
            print(f"wrote {path}", file=destination)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``main(["run.jsonl", "-o", "plots"])``; never raises SystemExit.

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
        return 0 if exit_.code == 0 else 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
