"""PyTorch's operator database through torch's gradcheck and fastgrad.torch.gradcheck.

Every ``op_db`` entry that supports autograd in float64 on CPU, the first few sample inputs each,
checked the way PyTorch's own test_ops does (each sample's tensors that require grad are the
inputs; ``output_process_fn_grad`` applied; the op's ``gradcheck_nondet_tol``), by both tools in
full-Jacobian mode: ``gradcheck``, ``gradgradcheck`` where the op supports it, and
``gradcheck(check_forward_ad=True)`` where it supports forward AD. Prints a confusion table of
verdicts per mode, every disagreement with the evidence (both tools' messages, and a step sweep of
the disputed element: which one is right), and median and total times.

    pip install ".[bench]"          # expecttest: torch's op database imports it
    python benchmarks/opinfo.py --quick                 # a few ops
    python benchmarks/opinfo.py --samples 3 --time-limit 1800 --json opinfo.json

Not a timed test: a benchmark. Timings on a shared machine move by tens of percent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.autograd.gradcheck import GradcheckError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fastgrad.torch as ft  # noqa: E402

QUICK_OPS = ("sin", "tanh", "mul", "matmul", "softmax", "_safe_softmax", "sgn", "abs",
             "special.erfcx", "matrix_exp", "cumsum", "nn.functional.relu", "linalg.det",
             "max", "where", "cat", "complex", "fft.fft", "norm", "std")


def _ops(quick: bool, names=None):
    from torch.testing._internal.common_methods_invocations import op_db

    for op in op_db:
        if quick and op.name not in QUICK_OPS:
            continue
        if names and op.name not in names:
            continue
        if not op.supports_autograd or torch.float64 not in op.supported_dtypes("cpu"):
            continue
        yield op


def _gradcheck_inputs(op, sample):
    """(fn, inputs) as PyTorch's test_ops builds them for gradcheck."""
    is_list = isinstance(sample.input, (list, tuple))
    items = [list(sample.input) if is_list else sample.input, *sample.args]
    slots = []  # (item, position in list or None)
    tensors = []
    for i, item in enumerate(items):
        if isinstance(item, list):
            for j, t in enumerate(item):
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    slots.append((i, j))
                    tensors.append(t)
        elif isinstance(item, torch.Tensor) and item.requires_grad:
            slots.append((i, None))
            tensors.append(item)

    def fn(*inputs):
        rebuilt = [list(item) if isinstance(item, list) else item for item in items]
        for (i, j), value in zip(slots, inputs):
            if j is None:
                rebuilt[i] = value
            else:
                rebuilt[i][j] = value
        output = op.gradcheck_wrapper(op.get_op(), *rebuilt, **sample.kwargs)
        if sample.output_process_fn_grad is not None:
            return sample.output_process_fn_grad(output)
        return output

    return fn, tuple(tensors)


def _run(check, fn, inputs, **options):
    """(verdict, seconds, message): verdict 'pass' | 'fail' | 'error'."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ok = check(fn, inputs, **options)
        verdict, message = ("pass" if ok else "fail"), ""
    except GradcheckError as exc:
        verdict, message = "fail", str(exc)
    except Exception as exc:  # a crash or a refusal: recorded, never hidden
        verdict, message = "error", f"{type(exc).__name__}: {exc}"
    return verdict, time.perf_counter() - start, message


def _message(check, fn, inputs, **options) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check(fn, inputs, raise_exception=True, **options)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def _step_sweep(fn, inputs, report) -> str:
    """For fastgrad's worst failing element (real inputs): centered differences at steps
    1e-2 .. 1e-8 next to the analytic value; a converging sweep says who is right."""
    failures = getattr(report, "failures", None)
    if not failures:
        return ""
    worst = max(failures, key=lambda c: abs(c.analytic - c.numeric))
    where_in, where_out = worst.input_where, worst.output_where
    if ".imag" in where_in or ".real" in where_in or not where_in.startswith("input"):
        return ""
    k = int(where_in[5:where_in.index("[")])
    local = worst.local
    rows = []
    for h in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8):
        values = []
        for sign in (1, -1):
            xs = [t.detach().clone() for t in inputs]
            xs[k][local] += sign * h
            with torch.no_grad():
                out = fn(*xs)
            out = out if isinstance(out, (tuple, list)) else (out,)
            o = int(where_out[6:where_out.index("[")].split(".")[0]) if where_out.startswith(
                "output") else 0
            idx = tuple(int(i) for i in where_out[where_out.index("[") + 1:-1].split(",")
                        if i.strip())
            value = out[o].detach()
            value = value.real if ".real" in where_out else value.imag if ".imag" in where_out \
                else value
            values.append(float(value[idx]))
        rows.append(f"h={h:.0e}: {(values[0] - values[1]) / (2 * h): .9e}")
    return (f"step sweep of {worst.where} (analytic {worst.analytic: .9e}): "
            + "; ".join(rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few ops only")
    parser.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    parser.add_argument("--samples", type=int, default=3, help="sample inputs per op")
    parser.add_argument("--time-limit", type=float, default=3600.0, help="seconds")
    parser.add_argument("--max-elements", type=int, default=4096,
                        help="skip samples whose inputs have more elements (both tools)")
    parser.add_argument("--modes", default="gradcheck,gradgradcheck,forward_ad")
    parser.add_argument("--json", default=None, help="write every row to this file")
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    began = time.perf_counter()
    rows = []
    skipped = 0
    for op in _ops(args.quick, set(filter(None, args.ops.split(","))) or None):
        if time.perf_counter() - began > args.time_limit:
            print(f"time limit reached after {len(rows)} checks", file=sys.stderr)
            break
        try:
            samples = list(op.sample_inputs("cpu", torch.float64, requires_grad=True))
        except Exception as exc:
            print(f"{op.name}: sample_inputs raised {exc!r}", file=sys.stderr)
            continue
        for s_i, sample in enumerate(samples[: args.samples]):
            fn, inputs = _gradcheck_inputs(op, sample)
            if not inputs:
                continue
            if sum(t.numel() for t in inputs) > args.max_elements:
                skipped += 1
                continue
            common = {"nondet_tol": op.gradcheck_nondet_tol, "raise_exception": False}
            plan = []
            if "gradcheck" in modes:
                plan.append(("gradcheck", torch.autograd.gradcheck, ft.gradcheck, common))
            if "gradgradcheck" in modes and op.supports_gradgrad:
                plan.append(("gradgradcheck", torch.autograd.gradgradcheck, ft.gradgradcheck,
                             common))
            if "forward_ad" in modes and op.supports_forward_ad:
                plan.append(("forward_ad", torch.autograd.gradcheck, ft.gradcheck,
                             {**common, "check_forward_ad": True}))
            for mode, theirs, ours, options in plan:
                t_v, t_s, t_m = _run(theirs, fn, inputs, **options)
                f_v, f_s, f_m = _run(ours, fn, inputs, **options)
                row = {"op": op.name, "sample": s_i, "mode": mode, "torch": t_v,
                       "fastgrad": f_v, "torch_s": t_s, "fastgrad_s": f_s,
                       "torch_msg": t_m[:600], "fastgrad_msg": f_m[:600]}
                if t_v != f_v:
                    strict = {k: v for k, v in options.items() if k != "raise_exception"}
                    if t_v == "fail" and not t_m:
                        row["torch_msg"] = _message(theirs, fn, inputs, **strict)[:1500]
                    if f_v == "fail":
                        try:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                ours(fn, inputs, **strict)
                        except ft.GradcheckError as exc:
                            row["fastgrad_msg"] = str(exc)[:1500]
                            row["evidence"] = _step_sweep(fn, inputs, exc.report)
                        except Exception as exc:
                            row["fastgrad_msg"] = f"{type(exc).__name__}: {exc}"[:1500]
                rows.append(row)
    _print(rows, modes, skipped, time.perf_counter() - began)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def _print(rows, modes, skipped, seconds) -> None:
    print(f"{len(rows)} checks ({skipped} samples over --max-elements skipped), "
          f"{seconds:.0f} s wall\n")
    print("| mode | checks | both pass | both fail | torch fails only | fastgrad fails only "
          "| torch error | fastgrad error | torch median / total s | fastgrad median / total s "
          "| ratio of totals |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        if not mine:
            continue

        def count(t, f, mine=mine):
            return sum(1 for r in mine if r["torch"] == t and r["fastgrad"] == f)

        t_s = [r["torch_s"] for r in mine]
        f_s = [r["fastgrad_s"] for r in mine]
        print(f"| {mode} | {len(mine)} | {count('pass', 'pass')} | {count('fail', 'fail')} | "
              f"{count('fail', 'pass')} | {count('pass', 'fail')} | "
              f"{sum(r['torch'] == 'error' for r in mine)} | "
              f"{sum(r['fastgrad'] == 'error' for r in mine)} | "
              f"{statistics.median(t_s) * 1e3:.1f} ms / {sum(t_s):.1f} | "
              f"{statistics.median(f_s) * 1e3:.1f} ms / {sum(f_s):.1f} | "
              f"{sum(f_s) / max(sum(t_s), 1e-12):.2f} |")
    print("\ndisagreements:")
    for r in rows:
        if r["torch"] != r["fastgrad"]:
            print(f"- {r['op']} sample {r['sample']} {r['mode']}: torch {r['torch']}, "
                  f"fastgrad {r['fastgrad']}")
            for key in ("torch_msg", "fastgrad_msg", "evidence"):
                text = r.get(key) or ""
                if text:
                    lines = [ln for ln in text.splitlines() if ln.strip()][:14]
                    print("    " + key + ": " + "\n      ".join(lines))
    slow = sorted(rows, key=lambda r: -r["fastgrad_s"])[:5]
    print("\nslowest fastgrad checks: " + ", ".join(
        f"{r['op']}#{r['sample']} {r['mode']} {r['fastgrad_s']:.2f}s (torch {r['torch_s']:.2f}s)"
        for r in slow))


if __name__ == "__main__":
    raise SystemExit(main())
