"""fastgrad side by side with the other gradient checkers, measured in one run.

    python benchmarks/compare.py                 # the reference problems (a few minutes)
    python benchmarks/compare.py --quick         # tiny sizes: a CI smoke run (seconds)
    python benchmarks/compare.py --problems small --repeats 7

Every tool checks the same coordinates of the same function (built here for numpy, Numba, torch
and jax). Each time is the median of ``--repeats`` runs after one warm-up run. Every problem and K
runs in a fresh process (fastgrad first, then the bare-thread references, then the peers), so no
tool is timed while another tool's idle threads still spin. The *reference* rows run the same
evaluations on bare threads with nothing checked: what the cores give for that loss. The limit of a
check of K coordinates is ``2 K t_eval / cores``: t_eval is the fastest single evaluation of the
loss over its numpy and Numba versions (BLAS on 1 thread or on all of them). Tools that work on a
whole vector (scipy, numdifftools, torch, jax) get the K coordinates as their input vector
(``theta[index] = z``), the way one checks a subset with them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# the repository root: ``benchmarks.problems`` is one module name for asv and this script (Numba's
# on-disk cache of its kernels records the module they came from)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from threadpoolctl import threadpool_limits  # noqa: E402

import fastgrad as fg  # noqa: E402
from benchmarks import problems as P  # noqa: E402

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
SLOW_SECONDS = 5.0  # a tool whose warm-up run takes longer is timed once more, not --repeats times


@dataclass
class Row:
    problem: str
    tool: str
    checks: str
    coords: int
    seconds: float | None
    runs: int
    note: str = ""


def median_time(run, repeats: int) -> tuple[float, int]:
    """Median wall time of ``repeats`` runs after one warm-up run (compilation, caches)."""
    start = time.perf_counter()
    run()
    warm = time.perf_counter() - start
    return _repeat(run, repeats, warm)


def peer_time(run, repeats: int, verdicts: list) -> tuple[float, int]:
    """median_time for a peer that may report a mismatch: a failed check is timed as well (it
    did the same work) and its first line goes to ``verdicts``."""
    def checked():
        try:
            run()
        except (AssertionError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if not verdicts:
                verdicts.append(f"{type(exc).__name__}: {first[:60]}")

    return median_time(checked, repeats)


def _repeat(run, repeats: int, warm: float) -> tuple[float, int]:
    if warm > SLOW_SECONDS:
        repeats = 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), repeats


def t_eval_of(p: P.Problem, repeats: int = 20) -> float:
    """Fastest single evaluation over the numpy and Numba losses, BLAS on 1 or all threads."""
    best = np.inf
    x = p.theta.copy()
    n = repeats if p.theta.size < 10**6 else max(3, repeats // 4)
    for blas in (None, 1):
        with threadpool_limits(blas):
            for f in (p.loss, p.loss_jit):
                f(x, *p.args)
                for _ in range(n):
                    start = time.perf_counter()
                    f(x, *p.args)
                    best = min(best, time.perf_counter() - start)
    return best


# -- the CS231n loop (cs231n/gradient_check.py, grad_check_sparse), without its prints --------
def grad_check_sparse(f, x, analytic_grad, index, h=1e-5):
    """The CS231n loop over the given coordinates; returns the relative errors."""
    rel = np.empty(len(index))
    for j, ix in enumerate(index):
        oldval = x[ix]
        x[ix] = oldval + h
        fxph = f(x)
        x[ix] = oldval - h
        fxmh = f(x)
        x[ix] = oldval
        grad_numerical = (fxph - fxmh) / (2 * h)
        grad_analytic = analytic_grad[ix]
        rel[j] = abs(grad_numerical - grad_analytic) / (abs(grad_numerical) + abs(grad_analytic))
    return rel


# -- the hardware's reference: the same evaluations on bare threads, nothing checked ------------
def evaluate_pairs(f, theta, args, index, h) -> None:
    """f at theta +- h e_i for every i in index, on one copy of theta: the bare evaluations."""
    x = theta.copy()
    for i in index:
        v = x[i]
        x[i] = v + h
        f(x, *args)
        x[i] = v - h
        f(x, *args)
        x[i] = v


def bare_threads(p: P.Problem, index: np.ndarray, h: float = 1e-5) -> None:
    """The numpy loss at theta +- h e_i for every index, on CORES plain threads with one copy
    of theta each and BLAS on one thread: what two cores give for this loss, with no step
    choice, verdicts, re-checks or report."""
    import threading

    with threadpool_limits(1):
        threads = [threading.Thread(target=evaluate_pairs, args=(p.loss, p.theta, p.args,
                                                                 index[c::CORES], h))
                   for c in range(CORES)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def _bare_prange_kernel():
    from numba import njit, prange

    @njit(parallel=True)
    def kernel(f, theta, index, h, args, n_chunks):
        for c in prange(n_chunks):
            x = theta.copy()
            for j in range(c, index.size, n_chunks):
                i = index[j]
                v = x[i]
                x[i] = v + h
                f(x, *args)
                x[i] = v - h
                f(x, *args)
                x[i] = v

    return kernel


_BARE_PRANGE = None


def bare_prange(p: P.Problem, index: np.ndarray, h: float = 1e-5) -> None:
    """The same with the Numba loss in a plain prange loop (one copy per thread, BLAS on one)."""
    global _BARE_PRANGE
    if _BARE_PRANGE is None:
        _BARE_PRANGE = _bare_prange_kernel()
    with threadpool_limits(1):
        _BARE_PRANGE(p.loss_jit, p.theta, index, h, p.args, CORES)


def subset(p: P.Problem, index: np.ndarray):
    """f restricted to theta[index] (the others fixed): how whole-vector tools check K coords."""
    base = p.theta.copy()

    def g(z):
        x = base.copy()
        x[index] = z
        return p.loss(x, *p.args)

    return g


# -- torch / jax versions of the same losses ---------------------------------------------------
def torch_loss(p: P.Problem):
    import torch

    if p.kind == "separable":
        return lambda x: (torch.log(torch.cosh(x)) + 0.1 * x * x).sum()
    X, y, reg, D, H, C = p.args
    Xt, yt = torch.tensor(X), torch.tensor(y)

    def loss(theta):
        W1 = theta[: D * H].reshape(D, H)
        b1 = theta[D * H : D * H + H]
        W2 = theta[D * H + H : D * H + H + H * C].reshape(H, C)
        b2 = theta[D * H + H + H * C :]
        scores = torch.relu(Xt @ W1 + b1) @ W2 + b2
        data = torch.nn.functional.cross_entropy(scores, yt)
        return data + reg * ((W1 * W1).sum() + (W2 * W2).sum())

    return loss


def jax_loss(p: P.Problem):
    import jax.numpy as jnp

    if p.kind == "separable":
        return lambda x: jnp.sum(jnp.log(jnp.cosh(x)) + 0.1 * x * x)
    X, y, reg, D, H, C = p.args
    Xj, yj = jnp.asarray(X), jnp.asarray(y)

    def loss(theta):
        W1 = theta[: D * H].reshape(D, H)
        b1 = theta[D * H : D * H + H]
        W2 = theta[D * H + H : D * H + H + H * C].reshape(H, C)
        b2 = theta[D * H + H + H * C :]
        scores = jnp.maximum(Xj @ W1 + b1, 0.0) @ W2 + b2
        logp = scores - jnp.log(jnp.sum(jnp.exp(scores - scores.max(1, keepdims=True)), 1,
                                        keepdims=True)) - scores.max(1, keepdims=True)
        data = -jnp.mean(logp[jnp.arange(X.shape[0]), yj])
        return data + reg * (jnp.sum(W1 * W1) + jnp.sum(W2 * W2))

    return loss


def peers(p: P.Problem, index: np.ndarray, full: bool, repeats: int, skipped: set) -> list[Row]:
    """Every other tool on the same coordinates (the whole vector when ``full``)."""
    rows = []
    k = index.size
    what = "all" if full else f"{k}"
    g = p.loss if full else subset(p, index)
    z0 = p.theta.copy() if full else p.theta[index].copy()
    grad_z = p.grad if full else p.grad[index]
    x_work = p.theta.copy()
    f_np = lambda x: p.loss(x, *p.args)

    for label, bare in (("numpy loss", bare_threads), ("Numba loss", bare_prange)):
        t, r = median_time(lambda bare=bare: bare(p, index), repeats)
        rows.append(Row(p.name, f"reference: bare {CORES} threads ({label})",
                        f"{what} coords, the evaluations only, nothing checked", k, t, r,
                        "the hardware's rate for these evaluations: one copy of theta per "
                        "thread, BLAS on one thread"))
    t, r = median_time(lambda: grad_check_sparse(f_np, x_work, p.grad, index), repeats)
    rows.append(Row(p.name, "CS231n grad_check_sparse", f"{what} coords, centered diff",
                    k, t, r, "numpy loss"))
    from scipy.optimize import approx_fprime, check_grad

    gz = (lambda z: g(z, *p.args)) if full else g
    t, r = median_time(lambda: approx_fprime(z0, gz, 1.5e-8), repeats)
    rows.append(Row(p.name, "scipy approx_fprime", f"{what} coords, forward diff (gradient)",
                    k, t, r))
    t, r = median_time(lambda: check_grad(gz, lambda z: grad_z, z0), repeats)
    rows.append(Row(p.name, "scipy check_grad", f"{what} coords, forward diff, one norm",
                    k, t, r))
    try:
        import numdifftools as nd
    except ImportError:
        skipped.add("numdifftools (pip install numdifftools)")
    else:
        t, r = median_time(lambda: nd.Gradient(gz)(z0), repeats)
        rows.append(Row(p.name, "numdifftools.Gradient", f"{what} coords, Richardson central",
                        k, t, r, "defaults"))
    try:
        import torch
    except ImportError:
        skipped.add("torch (pip install torch)")
    else:
        loss = torch_loss(p)
        base = torch.tensor(p.theta)
        idx = torch.tensor(index)
        z = torch.tensor(z0, requires_grad=True)
        if full:
            fn = loss
        else:
            def fn(zz):
                return loss(base.index_put((idx,), zz))
        for mode, fast in (("slow", False), ("fast", True)):
            checks = (f"{what} coords: full numeric Jacobian vs autograd" if not fast
                      else "one random projection u^T J v")
            failed: list = []
            t, r = peer_time(lambda fast=fast: torch.autograd.gradcheck(
                fn, (z,), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=fast), repeats, failed)
            rows.append(Row(p.name, f"torch gradcheck {mode}", checks, k, t, r,
                            "; ".join(failed)))
    try:
        import jax
        from jax.test_util import check_grads
    except ImportError:
        skipped.add("jax (pip install jax)")
    else:
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        loss = jax.jit(jax_loss(p))
        base = jnp.asarray(p.theta)
        jidx = jnp.asarray(index)
        fn = loss if full else jax.jit(lambda zz: loss(base.at[jidx].set(zz)))
        zj = jnp.asarray(z0)
        failed = []
        t, r = peer_time(lambda: check_grads(fn, (zj,), order=1, modes=("rev",)), repeats,
                         failed)
        rows.append(Row(p.name, "jax check_grads", "random directions (order 1, rev)", k, t, r,
                        "; ".join(["jit loss"] + failed)))
    return rows


def fastgrad_rows(p: P.Problem, k: int | str, repeats: int) -> list[Row]:
    samples = "all" if k == "all" else P.samples_for(p.segments, k)
    rows = []
    for label, f in (("Numba loss", p.loss_jit), ("numpy loss", p.loss)):
        report = None

        def run(f=f):
            nonlocal report
            report = fg.check(f, p.theta, p.grad, args=p.args, segments=p.segments,
                              samples=samples, progress=False)

        t, r = median_time(run, repeats)
        what = "all" if k == "all" else f"{len(report.coords)}"
        rows.append(Row(p.name, f"fastgrad check ({label})",
                        f"{what} coords, centered diff, verdicts", len(report.coords), t, r,
                        f"{report.path}: {report.path_reason}"))
    return rows


def table(rows: list[Row], t_eval: dict[str, float], best: dict[tuple, float]) -> str:
    head = ("| problem | tool | what it checks | coords | seconds | coords/s | ratio to limit "
            "| fastgrad speedup |")
    out = [head, "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        limit = 2 * row.coords * t_eval[row.problem] / CORES
        fastest = best[(row.problem, row.coords)]
        if row.seconds is None:
            out.append(f"| {row.problem} | {row.tool} | {row.checks} | {row.coords} | - | - | - "
                       f"| - |")
            continue
        speed = ("" if row.tool.startswith(("fastgrad", "reference")) else
                 f"{row.seconds / fastest:.1f}x")
        runs = "" if row.runs > 1 else " (1 run)"
        out.append(f"| {row.problem} | {row.tool} | {row.checks} | {row.coords} | "
                   f"{row.seconds:.4g}{runs} | {row.coords / row.seconds:.3g} | "
                   f"{row.seconds / limit:.2f} | {speed} |")
    return "\n".join(out)


def scaling(quick: bool, repeats: int) -> str:
    """Time against K (medium net, Numba loss) and against n (separable, numpy loss), on 1 and 2
    threads: cost is linear in K; parallel efficiency = t(1) / (2 t(2))."""
    out = ["| problem | n | K | t 1 thread (s) | t 2 threads (s) | parallel efficiency | "
           "us per coord (2 threads) |", "|---|---:|---:|---:|---:|---:|---:|"]
    medium = P.build("medium", quick)
    cases = [(medium, medium.loss_jit, k) for k in ((10, 100) if quick else (100, 1000, 10000))]
    for n in ((500, 2000) if quick else (10**4, 10**5, 10**6)):
        sep = P.separable("separable", n)
        cases.append((sep, sep.loss, 20 if quick else 100))
    for p, f, k in cases:
        samples = P.samples_for(p.segments, k)
        times = []
        for workers in (1, 2):
            t, _ = median_time(lambda p=p, f=f, s=samples, w=workers: fg.check(
                f, p.theta, p.grad, args=p.args, segments=p.segments, samples=s, workers=w,
                progress=False), max(1, repeats // 2))
            times.append(t)
        coords = len(P.sampled_index(p.segments, k))
        out.append(f"| {p.name} | {p.theta.size} | {coords} | {times[0]:.4g} | {times[1]:.4g} | "
                   f"{times[0] / (2 * times[1]):.2f} | {times[1] / coords * 1e6:.1f} |")
    return "\n".join(out)


def _block(name: str, k, quick: bool, repeats: int) -> tuple[list[Row], float, set[str]]:
    """One problem and K: t_eval first, then fastgrad, the references and every peer."""
    p = P.build(name, quick)
    t = t_eval_of(p)
    index = np.arange(p.theta.size) if k == "all" else P.sampled_index(p.segments, k)
    skipped: set[str] = set()
    block = fastgrad_rows(p, k, repeats)
    block += peers(p, index, k == "all", repeats, skipped)
    return block, t, skipped


def _block_in_subprocess(name: str, k, quick: bool, repeats: int):
    """_block in a fresh interpreter: the thread pools a tool leaves behind (OpenBLAS workers
    spin ~0.1 s after a call, torch's and XLA's pools too) never slow down the next tool."""
    import json
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), "--block", f"{name}:{k}",
           "--repeats", str(repeats)] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    return [Row(**r) for r in data["rows"]], data["t_eval"], set(data["skipped"])


def _run_block(opts) -> int:
    import json
    from dataclasses import asdict

    name, k = opts.block.split(":")
    block, t, skipped = _block(name, k if k == "all" else int(k), opts.quick, opts.repeats)
    print(json.dumps({"rows": [asdict(r) for r in block], "t_eval": t,
                      "skipped": sorted(skipped)}))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a CI smoke run")
    parser.add_argument("--problems", default="small,medium,separable",
                        help="comma-separated: small, medium, separable")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs after the warm-up")
    parser.add_argument("--no-scaling", action="store_true", help="skip the scaling table")
    parser.add_argument("--backends", action="store_true",
                        help="processes vs threads vs serial on the numpy losses, each first "
                             "check in a fresh process, with bare-process references and the "
                             "scaling by worker count (benchmarks/backends.py), then exit")
    parser.add_argument("--same-process", action="store_true",
                        help="time every block in this process (default: a fresh process per "
                             "problem and K, so no tool runs after another tool's threads)")
    parser.add_argument("--block", help=argparse.SUPPRESS)  # PROBLEM:K, for the subprocess
    opts = parser.parse_args(argv)
    if opts.block:
        return _run_block(opts)
    if opts.backends:
        from benchmarks import backends

        return backends.main(["--quick"] if opts.quick else [])
    names = [s.strip() for s in opts.problems.split(",") if s.strip()]
    repeats = 1 if opts.quick and opts.repeats == 5 else opts.repeats
    plan = {"small": [1000, "all"], "medium": [1000], "separable": [100]}
    if opts.quick:
        plan = {"small": [20, "all"], "medium": [20], "separable": [10]}
    print(f"# fastgrad {fg.__version__ if hasattr(fg, '__version__') else ''} on "
          f"{platform.processor() or platform.machine()}, {CORES} cores, "
          f"python {platform.python_version()}, numpy {np.__version__}; median of {repeats} "
          f"after a warm-up")
    rows: list[Row] = []
    t_eval: dict[str, float] = {}
    skipped: set[str] = set()
    for name in names:
        for k in plan[name]:
            if opts.same_process:
                block, t, missing = _block(name, k, opts.quick, repeats)
            else:
                block, t, missing = _block_in_subprocess(name, k, opts.quick, repeats)
            t_eval[name] = min(t_eval.get(name, np.inf), t)
            skipped |= missing
            rows += block
            print(f"# {name}, K = {k}: t_eval = {t * 1e6:.1f} us, {len(block)} tools timed",
                  flush=True)
    best: dict[tuple, float] = {}
    for row in rows:
        if row.tool.startswith("fastgrad") and row.seconds is not None:
            key = (row.problem, row.coords)
            best[key] = min(best.get(key, np.inf), row.seconds)
    print()
    print(table(rows, t_eval, best))
    print("\nratio to limit = seconds / (2 K t_eval / cores); fastgrad speedup = the tool's "
          "seconds / the faster fastgrad row of the same problem and K.")
    notes = [f"- {row.problem}, K={row.coords}, {row.tool}: {row.note}" for row in rows
             if row.note]
    if notes:
        print("\nnotes (fastgrad: the path that ran and why; peers: options, reported mismatches):")
        print("\n".join(notes))
    for line in sorted(skipped):
        print(f"skipped: {line} is not installed")
    # the issue-2 benchmark: the JIT path on 1000 coordinates of the small net vs CS231n
    for row in rows:
        if row.problem == "small" and row.tool == "fastgrad check (Numba loss)" and \
                row.coords == max(r.coords for r in rows if r.problem == "small" and
                                  r.tool.startswith("CS231n") and r.coords < 4000):
            cs = next(r for r in rows if r.problem == "small" and r.coords == row.coords
                      and r.tool.startswith("CS231n"))
            print(f"\nissue 2: JIT path, @njit loss, {row.coords} coordinates of the small net: "
                  f"{row.seconds:.4g} s vs CS231n loop over the numpy loss {cs.seconds:.4g} s: "
                  f"{cs.seconds / row.seconds:.1f}x")
    if "separable" in names:
        k = plan["separable"][0]
        for loss in ("numpy", "numba"):
            copies = P.peak_extra_copies("separable", loss, k, opts.quick)
            print(f"peak extra memory of one check (separable, {loss} loss, K={k}): "
                  f"{copies:.2f} copies of theta (target <= threads + 3 = {CORES + 3})")
    if not opts.no_scaling:
        print("\n" + scaling(opts.quick, repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
