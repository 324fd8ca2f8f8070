"""Processes vs threads vs serial on the numpy losses, first check in a fresh process included.

    python benchmarks/backends.py                 # the table, the references, the scaling table
    python benchmarks/backends.py --quick         # tiny sizes (a smoke run)
    python benchmarks/backends.py --repeats 5     # medians of 5 interleaved runs of each row
    python benchmarks/backends.py --problems net34k --baseline ../old --repeats 10
        # the default of another checkout of fastgrad (a commit before a change) interleaved with
        # this one's, same problem, same loop: an A/B that one noisy run cannot give

Every row runs in a fresh interpreter, so the first check pays for everything a user's first check
pays for (the planner's calibration, the worker processes' start-up). Per problem: fastgrad with
its default options (first check, then a second check of the same loss in the same process),
forced ``backend="serial" | "threads" | "processes"``, the CS231n loop over the same coordinates,
and two references that check nothing: the same evaluations on bare worker processes (loky, one
copy of theta each, started before the clock), and their start-up alone. ``compare.py
--backends`` prints the same tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import problems as P  # noqa: E402

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
# (problem, K): the nets of 4.8k, 34k and 134k parameters and the separable loss of 10^6
CASES = [("small", 1000), ("net34k", 1000), ("medium", 1000), ("separable", 100)]
QUICK_CASES = [("small", 50), ("net34k", 50), ("separable", 10)]
CONFIGS = ["default", "serial", "threads", "processes", "cs231n", "bare processes"]


def build(name: str, quick: bool) -> P.Problem:
    if name == "net34k":  # the 32 x 256 x 128 x 10 two-layer net
        return P.two_layer("net34k", (4, 16, 16, 3) if quick else (32, 256, 128, 10))
    return P.build(name, quick)


def bare_processes(p: P.Problem, index: np.ndarray, workers: int, h: float = 1e-5):
    """(start-up seconds, evaluation seconds): the same evaluations on ``workers`` bare worker
    processes started the way fastgrad starts its own (forked on Linux), theta and the loss sent
    with each of 4 chunks per worker, nothing checked, BLAS on one thread."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from threadpoolctl import threadpool_limits

    from benchmarks.compare import evaluate_pairs

    start = time.perf_counter()
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with threadpool_limits(1), ProcessPoolExecutor(workers, mp_context=context) as pool:
        pool.submit(int).result()
        startup = time.perf_counter() - start
        parts = [index[c::4 * workers] for c in range(4 * workers)]
        start = time.perf_counter()
        list(pool.map(evaluate_pairs, [p.loss] * len(parts), [p.theta] * len(parts),
                      [p.args] * len(parts), parts, [h] * len(parts)))
        return startup, time.perf_counter() - start


def run_one(name: str, k: int, config: str, quick: bool, workers: int | None) -> dict:
    """One row, in this (fresh) process."""
    import fastgrad as fg
    from benchmarks.compare import grad_check_sparse

    p = build(name, quick)
    samples = P.samples_for(p.segments, k)
    index = P.sampled_index(p.segments, k)
    out = {"problem": name, "n": p.theta.size, "coords": int(index.size), "config": config}
    if config == "cs231n":  # BLAS as the user has it, then on one thread: the faster counts
        from threadpoolctl import threadpool_limits

        times = []
        for blas in (None, 1):
            x = p.theta.copy()
            with threadpool_limits(blas):
                start = time.perf_counter()
                grad_check_sparse(lambda t: p.loss(t, *p.args), x, p.grad, index)
                times.append(time.perf_counter() - start)
        out["seconds"], out["path"] = min(times), (f"BLAS default {times[0]:.3g} s, "
                                                   f"1 thread {times[1]:.3g} s")
        return out
    if config == "bare processes":
        out["startup"], out["seconds"] = bare_processes(p, index, workers or CORES)
        return out
    backend = None if config == "default" else config
    times, path = [], ""
    for _ in range(2):  # the first check in this process, then a second one
        start = time.perf_counter()
        report = fg.check(p.loss, p.theta, p.grad, args=p.args, segments=p.segments,
                          samples=samples, progress=False, backend=backend, workers=workers)
        times.append(time.perf_counter() - start)
        path = f"{report.path}: {report.path_reason}"
        assert report.passed, report
    out.update(seconds=times[0], second=times[1], path=path)
    return out


BASELINE = "baseline"  # the configuration name of --baseline's default


def in_fresh_process(name, k, config, quick, workers=None, baseline: Path | None = None) -> dict:
    """One row in a fresh interpreter; config ``BASELINE``: the default of the fastgrad checkout
    at ``baseline`` (its own benchmarks/backends.py, which puts that checkout first on the
    path)."""
    script = Path(__file__).resolve()
    if config == BASELINE:
        script, config = baseline / "benchmarks" / "backends.py", "default"
    cmd = [sys.executable, str(script), "--one", f"{name}:{k}:{config}"]
    cmd += (["--quick"] if quick else []) + (["--workers", str(workers)] if workers else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def median_runs(runs: list[dict]) -> dict:
    """One row from ``runs`` of the same configuration: the median of each time, the path of
    the run whose first check was the median one."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    for key in ("second", "startup"):
        if key in row:
            row[key] = float(np.median([r[key] for r in runs]))
    return row


def backends_table(quick: bool, repeats: int = 1, problems: list[str] | None = None,
                   baseline: Path | None = None) -> str:
    """One row per configuration; with ``repeats`` > 1 every configuration runs that many times,
    the configurations interleaved (round-robin, so all see the same load), medians shown.
    ``problems``: only these; ``baseline``: a row more, the default of that checkout."""
    rows = ["| problem | n | coords | run | first check (s) | second check (s) | CS231n / first | "
            "path of the first check |", "|---|---:|---:|---|---:|---:|---:|---|"]
    summary = []
    configs = CONFIGS + ([BASELINE] if baseline is not None else [])
    cases = [(name, k) for name, k in (QUICK_CASES if quick else CASES)
             if problems is None or name in problems]
    for name, k in cases:
        runs: dict[str, list] = {c: [] for c in configs}
        for _ in range(repeats):
            for c in configs:
                runs[c].append(in_fresh_process(name, k, c, quick, baseline=baseline))
        results = {c: median_runs(runs[c]) for c in configs}
        forced = min(results[c]["seconds"] for c in ("serial", "threads", "processes"))
        summary.append(f"| {name} | {results['default']['seconds'] / forced:.2f} |")
        cs = results["cs231n"]["seconds"]
        for config in configs:
            r = results[config]
            if config == "bare processes":
                second, first = "", (f"{r['seconds']:.4g} (+ {r['startup']:.3g} start-up)")
                ratio = f"{cs / (r['seconds'] + r['startup']):.2f}"
            else:
                first, second = f"{r['seconds']:.4g}", (f"{r['second']:.4g}" if "second" in r
                                                        else "")
                ratio = f"{cs / r['seconds']:.2f}"
            path = r.get("path", "")
            label = f"default of {baseline}" if config == BASELINE else config
            rows.append(f"| {name} | {r['n']} | {r['coords']} | {label} | {first} | {second} | "
                        f"{ratio} | {path[:140]} |")
        print(f"# {name}: done", file=sys.stderr, flush=True)
    header = (["", f"Default first check / best forced backend's first check (medians of "
               f"{repeats} runs each):" if repeats > 1 else
               "Default first check / best forced backend's first check:", "",
               "| problem | default / best forced |", "|---|---:|"])
    return "\n".join(rows + header + summary)


def scaling_table(quick: bool) -> str:
    """The 34k net on 1, 2, ... worker processes (second check: the pool is running) and
    serially: parallel efficiency = t_serial / (workers x t_workers)."""
    name, k = ("net34k", 50) if quick else ("net34k", 1000)
    serial = in_fresh_process(name, k, "serial", quick)["second"]
    rows = ["| problem | coords | workers | backend | seconds (second check) | "
            "parallel efficiency |", "|---|---:|---:|---|---:|---:|",
            f"| {name} | {k} | 1 | serial | {serial:.4g} | 1.00 |"]
    for workers in sorted({1, 2, CORES}):
        for config in ("threads", "processes", "forked"):
            r = in_fresh_process(name, k, config, quick, workers)
            rows.append(f"| {name} | {r['coords']} | {workers} | {config} | {r['second']:.4g} | "
                        f"{serial / (workers * r['second']):.2f} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every configuration this many times, interleaved, and show "
                             "medians (single runs on a shared machine vary by 10-20%%)")
    parser.add_argument("--problems", help="comma-separated: only these problems (small, "
                                           "net34k, medium, separable)")
    parser.add_argument("--baseline", type=Path,
                        help="another checkout of fastgrad: its default runs as one more row, "
                             "interleaved with the others (an A/B of two commits)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # PROBLEM:K:CONFIG, in a fresh process
    parser.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.one:
        name, k, config = opts.one.split(":")
        print(json.dumps(run_one(name, int(k), config, opts.quick, opts.workers)))
        return 0
    print(f"# {CORES} cores; every row in a fresh process (first check included)")
    problems = opts.problems.split(",") if opts.problems else None
    known = {name for name, _ in (QUICK_CASES if opts.quick else CASES)}
    if problems is not None and not set(problems) <= known:
        parser.error(f"--problems: expected some of {sorted(known)}, got {opts.problems!r}")
    if opts.baseline is not None and not (opts.baseline / "benchmarks" / "backends.py").is_file():
        parser.error(f"--baseline: {opts.baseline} holds no benchmarks/backends.py (expected a "
                     f"checkout of fastgrad)")
    print(backends_table(opts.quick, opts.repeats, problems,
                         None if opts.baseline is None else opts.baseline.resolve()))
    if problems is None:  # the scaling table: the full run only
        print()
        print(scaling_table(opts.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
