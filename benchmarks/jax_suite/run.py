"""JAX's own autodiff tests, run with jax's check_grads and then with fastgrad's swapped in.

    python benchmarks/jax_suite/run.py --tests /path/to/jax/tests [--files a_test.py b_test.py]
    python benchmarks/jax_suite/run.py --tests /path/to/jax/tests --rounds 2   # jax, fg, fg, jax

Fetches nothing: ``--tests`` is a checkout of JAX's ``tests/`` folder (its test files are not in
the wheel; JAX's tests need ``absl-py``). Three pytest runs: discovery (jax's checker, the whole
files: which tests call check_grads; ``--discovery LOG`` reuses one), then those tests with jax's
checker and with fastgrad's (the other tests do not depend on the checker, and nn_test.py alone
takes 13 minutes). Each run is a pytest process with JAX_ENABLE_X64=1 and plugin.py, which puts
the checker behind ``jax.test_util.check_grads``,
``jax._src.public_test_util.check_grads`` and ``jax._src.test_util.check_grads`` (the names the
test modules import) and times every call. Prints the tests' outcomes, the check_grads calls and
verdicts of each checker, crashes, the calls on which the verdicts differ (with fastgrad's
message), and the time inside each checker on the calls both passed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ("lax_autodiff_test.py", "nn_test.py")


def run(checker: str, tests: Path, files, log: Path, extra: list[str]) -> float:
    """One pytest process; ``files`` are paths or node ids relative to ``tests``."""
    env = dict(os.environ, JAX_ENABLE_X64="1", JAX_SUITE_CHECKER=checker, JAX_SUITE_LOG=str(log),
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "plugin", "-p", "no:cacheprovider",
               "--rootdir", str(tests), "-o", "addopts=", *extra,
               *files]
    shown = command if len(files) <= 4 else [*command[:-len(files)], *files[:2],
                                              f"... ({len(files)} test ids)"]
    print(f"[{checker}] {' '.join(shown)}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=tests, capture_output=True, text=True)
    wall = time.perf_counter() - start
    tail = done.stdout.strip().splitlines()[-1:] or [done.stderr.strip()[-500:]]
    print(f"[{checker}] {tail[0]} ({wall:.0f} s)", flush=True)
    return wall


def read(log: Path):
    calls, tests = {}, {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "call":
            calls[(record["test"], record["call"])] = record
        else:
            tests[record["test"]] = record["outcome"]
    return calls, tests


def first_lines(text: str, count: int = 4) -> str:
    return "\n      ".join(text.splitlines()[:count])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=Path, required=True, help="JAX's tests/ folder")
    parser.add_argument("--files", nargs="+", default=list(FILES))
    parser.add_argument("--pytest", nargs=argparse.REMAINDER, default=[],
                        help="extra pytest arguments (e.g. -k softplus)")
    parser.add_argument("--keep", type=Path, help="folder for the JSON-lines logs")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("JAX_LOG", "FASTGRAD_LOG"),
                        help="only print the table of two logs of earlier runs")
    parser.add_argument("--discovery", type=Path,
                        help="a discovery log of an earlier run (skips the discovery run)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each checker, in the order jax, fastgrad, fastgrad, jax, "
                             "jax, ... (a drift of the machine's speed over the runs then "
                             "falls on both); times are the means over the rounds")
    options = parser.parse_args(argv)
    tests = options.tests.resolve()
    folder = options.keep or Path(tempfile.mkdtemp(prefix="jax_suite_"))
    folder.mkdir(parents=True, exist_ok=True)
    if options.compare:
        report({"jax": read(options.compare[0]), "fastgrad": read(options.compare[1])},
               {"jax": float("nan"), "fastgrad": float("nan")}, folder)
        return 0
    discovery = options.discovery
    if discovery is None:
        discovery = folder / "discovery.jsonl"
        discovery.unlink(missing_ok=True)
        run("jax", tests, options.files, discovery, options.pytest)
    calling = sorted({c["test"] for c in read(discovery)[0].values()})
    print(f"{len(calling)} tests call check_grads", flush=True)
    if options.rounds < 1:
        parser.error(f"--rounds: expected at least 1, got {options.rounds}")
    rounds: dict[str, list] = {"jax": [], "fastgrad": []}
    walls: dict[str, list[float]] = {"jax": [], "fastgrad": []}
    for checker in abba(options.rounds):
        r = len(rounds[checker])
        log = folder / (f"{checker}.jsonl" if options.rounds == 1 else f"{checker}-{r + 1}.jsonl")
        log.unlink(missing_ok=True)
        walls[checker].append(run(checker, tests, calling, log, options.pytest))
        rounds[checker].append(read(log))
    if options.rounds > 1:
        for r in range(options.rounds):
            print(f"round {r + 1}: ", end="")
            ratio_line(rounds["jax"][r][0], rounds["fastgrad"][r][0])
    results = {c: merged(rounds[c]) for c in rounds}
    report(results, {c: sum(w) / len(w) for c, w in walls.items()}, folder)
    return 0


def abba(rounds: int) -> list[str]:
    """The order of the runs: jax, fastgrad, then fastgrad, jax, and so on."""
    order = []
    for r in range(rounds):
        order += ["jax", "fastgrad"] if r % 2 == 0 else ["fastgrad", "jax"]
    return order


MEASURES = ("seconds", "cpu_seconds", "compile_seconds", "executables")


def merged(logs: list) -> tuple[dict, dict]:
    """One checker's rounds as one log: each call's measures the means over the rounds, its
    verdict the first round's, unless a later round's differs: then 'varies: a/b'."""
    calls, tests = {}, dict(logs[0][1])
    for key, first in logs[0][0].items():
        seen = [log[0][key] for log in logs if key in log[0]]
        record = dict(first, **{m: sum(c[m] for c in seen) / len(seen) for m in MEASURES
                                if all(m in c for c in seen)})
        verdicts = list(dict.fromkeys(c["verdict"] for c in seen))
        if len(verdicts) > 1:
            record["verdict"] = "varies: " + "/".join(verdicts)
        calls[key] = record
    return calls, tests


def ratio_line(jax_calls: dict, fg_calls: dict) -> None:
    """Time inside each checker on the calls both passed, for one round."""
    both = [k for k in jax_calls if k in fg_calls and jax_calls[k]["verdict"] == "pass"
            and fg_calls[k]["verdict"] == "pass"]
    def total(calls, measure):
        return sum(calls[k].get(measure, float("nan")) for k in both)

    t_jax, t_fg = total(jax_calls, "seconds"), total(fg_calls, "seconds")
    print(f"time inside the checker on the {len(both)} calls both passed: jax {t_jax:.2f} s, "
          f"fastgrad {t_fg:.2f} s ({t_fg / max(t_jax, 1e-12):.2f}x)")
    c_jax, c_fg = total(jax_calls, "cpu_seconds"), total(fg_calls, "cpu_seconds")
    x_jax, x_fg = total(jax_calls, "compile_seconds"), total(fg_calls, "compile_seconds")
    if not math.isnan(c_jax):  # logs of runs that measured them
        print(f"  CPU time of the process: jax {c_jax:.2f} s, fastgrad {c_fg:.2f} s "
              f"({c_fg / max(c_jax, 1e-12):.2f}x)")
        print(f"  of the time inside, jax lowering and XLA compiling: jax {x_jax:.2f} s "
              f"({total(jax_calls, 'executables'):.0f} executables), fastgrad {x_fg:.2f} s "
              f"({total(fg_calls, 'executables'):.0f}); the rest: jax {t_jax - x_jax:.2f} s, "
              f"fastgrad {t_fg - x_fg:.2f} s "
              f"({(t_fg - x_fg) / max(t_jax - x_jax, 1e-12):.2f}x)")


def report(results: dict, walls: dict, folder: Path) -> None:
    """The table, the time inside each checker, the calls whose verdicts differ."""
    (jax_calls, jax_tests), (fg_calls, fg_tests) = results["jax"], results["fastgrad"]
    calling = {k[0] for k in jax_calls} | {k[0] for k in fg_calls}
    jax_tests = {t: o for t, o in jax_tests.items() if t in calling}
    fg_tests = {t: o for t, o in fg_tests.items() if t in calling}
    print(f"\nlogs: {folder}; tests: those that call check_grads")
    print(f"\n{'':32}{'jax':>10}{'fastgrad':>10}")
    for name, j, g in [
        ("tests passed", Counter(jax_tests.values())["passed"],
         Counter(fg_tests.values())["passed"]),
        ("tests failed", Counter(jax_tests.values())["failed"],
         Counter(fg_tests.values())["failed"]),
        ("tests skipped", Counter(jax_tests.values())["skipped"],
         Counter(fg_tests.values())["skipped"]),
        ("check_grads calls", len(jax_calls), len(fg_calls)),
        ("  passed", sum(c["verdict"] == "pass" for c in jax_calls.values()),
         sum(c["verdict"] == "pass" for c in fg_calls.values())),
        ("  failed", sum(c["verdict"] == "fail" for c in jax_calls.values()),
         sum(c["verdict"] == "fail" for c in fg_calls.values())),
        ("  crashed", sum(c["verdict"] == "crash" for c in jax_calls.values()),
         sum(c["verdict"] == "crash" for c in fg_calls.values())),
        ("  with a GradcheckWarning", 0, sum(bool(c["warnings"]) for c in fg_calls.values())),
        ("wall time of the run (s)", f"{walls['jax']:.0f}", f"{walls['fastgrad']:.0f}"),
    ]:
        print(f"{name:32}{j:>10}{g:>10}")
    print()
    ratio_line(jax_calls, fg_calls)
    differ = sorted(k for k in set(jax_calls) | set(fg_calls)
                    if jax_calls.get(k, {}).get("verdict") != fg_calls.get(k, {}).get("verdict"))
    print(f"\ncalls whose verdicts differ: {len(differ)}")
    for k in differ:
        j, g = jax_calls.get(k, {}), fg_calls.get(k, {})
        print(f"  {k[0]} call {k[1]}: jax {j.get('verdict', '-')}, fastgrad "
              f"{g.get('verdict', '-')}")
        for side in (j, g):
            if side.get("message"):
                print(f"      {first_lines(side['message'])}")
    warned = [k for k, c in fg_calls.items() if c["warnings"]]
    print(f"\ncalls passed with a GradcheckWarning: {len(warned)}")
    for k in warned[:20]:
        print(f"  {k[0]} call {k[1]}: {fg_calls[k]['warnings'][0][:300]}")


if __name__ == "__main__":
    sys.exit(main())
