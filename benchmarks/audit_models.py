"""Audits of real architectures with one planted backward bug: fastgrad.torch.audit_module.

    python benchmarks/audit_models.py --table resnet18           # 4 cases, each in a fresh process
    python benchmarks/audit_models.py --table resnet18 gpt2      # + the 124M-parameter decoder
    python benchmarks/audit_models.py --model resnet18 --runner dask --bug   # one case, JSON
    (runners: threads, processes (backend="processes"), dask (a LocalCluster of processes))

Models (built from torch.nn layers):

- ``gpt2``: a GPT-2-small-shaped decoder (12 blocks, d=768, 12 heads, vocabulary 50257, tied
  head, ~124M parameters); the output projection of block 3's attention is a custom
  ``autograd.Function`` (``blocks.3.attn.proj``).
- ``resnet18``: a torchvision-style ResNet-18 (BasicBlocks [2, 2, 2, 2], 1000 classes, ~11.7M
  parameters, BatchNorm in eval mode); ``layer3.0.conv1`` is a custom ``autograd.Function``
  convolution.

With ``--bug`` the custom layer's backward scales one row of its weight gradient (one output
unit / filter: a contiguous block of the flat parameters) by 1.01. A case reports evaluations,
wall time, peak resident memory (the audit's process, plus the peak of one worker process: Dask's
or ``backend="processes"``'s), the activations autograd saves in one float64 forward pass, whether
exactly the planted row's really wrong coordinates were found (and nothing else: the row's
taps whose gradient is exactly 0 stay 0 when scaled, and are right), the evaluations per
phase of the audit, the target 40 k log2(n) evaluations (k = 1), the memory bound
(workers + 2) float64 copies plus activations, and the cost of a full coordinate sweep
(2 n evaluations at the measured time of one forward pass, spread over the workers).
Each case runs in a fresh process so that peak memory is the case's own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fastgrad  # noqa: E402
import fastgrad.torch  # noqa: E402

FACTOR = 1.01


# -- the custom layers with a hand-written backward ----------------------------------------------
class LinearFn(torch.autograd.Function):
    """x @ w.T + b; backward scales row ``row`` of dW by ``factor`` (row None: correct)."""

    @staticmethod
    def forward(ctx, x, w, b, row, factor):
        ctx.save_for_backward(x, w)
        ctx.row, ctx.factor = row, factor
        return x @ w.T + b

    @staticmethod
    def backward(ctx, d_out):
        x, w = ctx.saved_tensors
        flat_x, flat_d = x.reshape(-1, x.shape[-1]), d_out.reshape(-1, d_out.shape[-1])
        d_w = flat_d.T @ flat_x
        if ctx.row is not None:
            d_w[ctx.row] *= ctx.factor
        return d_out @ w, d_w, flat_d.sum(0), None, None


class CustomLinear(nn.Linear):
    def __init__(self, n_in, n_out, row=None):
        super().__init__(n_in, n_out)
        self.row = row

    def forward(self, x):
        return LinearFn.apply(x, self.weight, self.bias, self.row, FACTOR)


class Conv2dFn(torch.autograd.Function):
    """conv2d without bias; backward scales filter ``row`` of dW by ``factor``."""

    @staticmethod
    def forward(ctx, x, w, stride, padding, row, factor):
        ctx.save_for_backward(x, w)
        ctx.stride, ctx.padding, ctx.row, ctx.factor = stride, padding, row, factor
        return F.conv2d(x, w, None, stride, padding)

    @staticmethod
    def backward(ctx, d_out):
        x, w = ctx.saved_tensors
        d_x = torch.nn.grad.conv2d_input(x.shape, w, d_out, ctx.stride, ctx.padding)
        d_w = torch.nn.grad.conv2d_weight(x, w.shape, d_out, ctx.stride, ctx.padding)
        if ctx.row is not None:
            d_w[ctx.row] *= ctx.factor
        return d_x, d_w, None, None, None, None


class CustomConv2d(nn.Conv2d):
    def __init__(self, n_in, n_out, stride, row=None):
        super().__init__(n_in, n_out, 3, stride=stride, padding=1, bias=False)
        self.row = row

    def forward(self, x):
        return Conv2dFn.apply(x, self.weight, self.stride, self.padding, self.row, FACTOR)


# -- GPT-2 small -----------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, d, heads, custom_row=None, custom=False):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = CustomLinear(d, d, custom_row) if custom else nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d, heads, custom_row=None, custom=False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads, custom_row, custom)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab=50257, context=1024, d=768, layers=12, heads=12, bug_row=None,
                 custom_block=3):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(context, d)
        self.blocks = nn.ModuleList(
            Block(d, heads, bug_row, custom=(i == custom_block)) for i in range(layers))
        self.ln_f = nn.LayerNorm(d)
        for p in self.parameters():  # GPT-2's initialization scale
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, tokens):
        t = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(t))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # the head is tied to the embedding


def next_token_loss(logits, tokens):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           tokens[:, 1:].reshape(-1))


# -- ResNet-18 -----------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, n_in, n_out, stride, custom_row=None, custom=False):
        super().__init__()
        self.conv1 = (CustomConv2d(n_in, n_out, stride, custom_row) if custom
                      else nn.Conv2d(n_in, n_out, 3, stride, 1, bias=False))
        self.bn1 = nn.BatchNorm2d(n_out)
        self.conv2 = nn.Conv2d(n_out, n_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(n_out)
        self.downsample = None
        if stride != 1 or n_in != n_out:
            self.downsample = nn.Sequential(nn.Conv2d(n_in, n_out, 1, stride, bias=False),
                                            nn.BatchNorm2d(n_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, classes=1000, bug_row=None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, n_in = [64, 128, 256, 512], 64
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            custom = i == 2  # layer3.0.conv1
            setattr(self, f"layer{i + 1}", nn.Sequential(
                BasicBlock(n_in, w, stride, bug_row, custom), BasicBlock(w, w, 1)))
            n_in = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(self.avgpool(x).flatten(1))


# -- one case ----------------------------------------------------------------------------------
def build(model: str, bug: bool, seq: int, batch: int, image: int):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if model == "gpt2":
        net = GPT(bug_row=5 if bug else None)
        tokens = torch.randint(0, 50257, (batch, seq), generator=g)
        return net, next_token_loss, (tokens,), tokens, "blocks.3.attn.proj.weight", 5
    net = ResNet18(bug_row=7 if bug else None).eval()
    x = torch.randn(batch, 3, image, image, generator=g)
    y = torch.randint(0, 1000, (batch,), generator=g)
    return net, nn.CrossEntropyLoss(), (x,), y, "layer3.0.conv1.weight", 7


def planted_range(net, name, row):
    start = 0
    for n, p in net.named_parameters():
        if n == name:
            width = p[0].numel()
            return start + row * width, start + (row + 1) * width
        start += p.numel()
    raise KeyError(name)


def current_rss_gb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


def peak_rss_gb() -> float:
    """The peak resident memory since the last reset_peak_rss() (VmHWM), else since start."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def children_peak_rss_gb() -> float:
    """The largest peak resident memory (VmHWM) of this process's child processes (the worker
    processes of ``backend="processes"``); 0 when there is none."""
    peak = 0.0
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) / 2 ** 20)
            except OSError:  # exited meanwhile
                pass
    return peak


def activations_gb(net, loss_fn, inputs, target) -> float:
    """The activations of one float64 forward pass that autograd saves for backward (the memory a
    pass holds beside the parameters): every tensor saved for backward that is not a parameter,
    counted once per storage."""
    import copy

    model = copy.deepcopy(net).double()
    args = [x.double() if torch.is_floating_point(x) else x for x in inputs]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(*args)
        loss_fn(out) if target is None else loss_fn(out, target)
    return sum(saved.values()) / 2 ** 30


def reset_peak_rss() -> None:
    """Start the peak (VmHWM) afresh: the set-up's own peak (the reference model and gradient
    built above to know which coordinates are wrong) is not the audit's."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def run_case(args) -> dict:
    net, loss_fn, inputs, target, name, row = build(args.model, args.bug, args.seq, args.batch,
                                                    args.image)
    n = sum(p.numel() for p in net.parameters())
    # one forward pass in float64 on a copy, as the audit evaluates it
    probe = fastgrad.torch.module_problem(net, loss_fn, *inputs, target=target)
    work = probe.theta.copy()
    start = time.perf_counter()
    for _ in range(2):
        probe.f(work)
    t_eval = (time.perf_counter() - start) / 2
    del work
    # the coordinates the planted bug really changes (a filter tap over zero padding, or a unit
    # that is never active, has gradient 0, and 1.01 * 0 is still right)
    wrong = np.zeros(0, dtype=np.int64)
    if args.bug:
        correct, *_ = build(args.model, False, args.seq, args.batch, args.image)
        reference = fastgrad.torch.module_problem(correct, loss_fn, *inputs, target=target)
        wrong = np.flatnonzero(reference.grad != probe.grad)
        del correct, reference
    zero_gradient = probe.grad == 0  # one byte per parameter, not a float64 copy
    del probe
    # fastgrad's fixed memory (numba and its compiled kernels, ~0.1 GB, whatever the model's
    # size) is loaded by a tiny audit first: "added" is then what this model's audit costs
    tiny = np.linspace(-1.0, 1.0, 64)
    fastgrad.audit(lambda t: float(np.sum(t ** 3)), tiny, 3 * tiny ** 2, workers=1)
    rss_before = current_rss_gb()
    reset_peak_rss()
    client = cluster = None
    options = {"workers": args.workers, "progress": False}
    if args.runner == "dask":
        import distributed

        cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                           processes=True, dashboard_address=":0",
                                           memory_limit=0)
        client = distributed.Client(cluster)
        client.run(torch.set_num_threads, 1)
        options["executor"] = client
    elif args.runner == "processes":
        options["backend"] = "processes"
    start = time.perf_counter()
    report = fastgrad.torch.audit_module(net, loss_fn, *inputs, target=target, **options)
    wall = time.perf_counter() - start
    worker_rss = children_peak_rss_gb() if args.runner == "processes" else 0.0
    if client is not None:
        worker_rss = max(client.run(peak_rss_gb).values())
        client.close()
        cluster.close()
    peak = peak_rss_gb()
    # after the audit, so that its own peak and the RSS before it are not the measurement's
    activations = activations_gb(net, loss_fn, inputs, target)
    lo, hi = planted_range(net, name, row)
    found = bool(np.array_equal(report.suspects, wrong)) if args.bug else None
    outside = int(np.count_nonzero((report.suspects < lo) | (report.suspects >= hi)))
    return {
        "model": args.model, "parameters": n, "runner": f"{args.runner} x{args.workers}",
        "backward": "bug: 1 row 1% off" if args.bug else "correct",
        "evaluations": report.evaluations, "target": int(40 * math.log2(n)),
        "wall_s": round(wall, 1), "t_eval_s": round(t_eval, 3),
        "peak_rss_gb": round(peak, 2), "worker_peak_rss_gb": round(worker_rss, 2),
        "bound_gb": round((args.workers + 2) * 8 * n / 2 ** 30, 2),
        # the memory bound adds the activations: one forward per worker, the gradient's backward
        "activations_gb": round(activations, 3),
        "found_exactly": found, "suspects": int(report.suspects.size),
        "really_wrong": int(wrong.size), "row_size": hi - lo, "suspects_outside_row": outside,
        "rss_before_audit_gb": round(rss_before, 2),
        "blocks": [(b.segment, b.first, b.last) for b in report.blocks],
        "passed": report.passed, "phases": dict(report.phases),
        # per block: its size, the coordinates counted wrong, the zero-gradient ones found right
        "block_counts": [(b.size, b.counted, b.cleared) for b in report.blocks],
        # suspects whose analytic gradient is 0 (a scaled row keeps its zeros: none should be)
        "zero_gradient_suspects": int(np.count_nonzero(zero_gradient[report.suspects])),
        "sweep_estimate_h": round(2 * n * t_eval / args.workers / 3600, 1),
    }


def table(models: list[str], argv_extra: list[str]) -> None:
    rows = []
    for model in models:
        for runner in ("threads", "processes", "dask"):
            for bug in (True, False):
                cmd = [sys.executable, __file__, "--model", model, "--runner", runner,
                       *(["--bug"] if bug else []), *argv_extra]
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    continue
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| model | params | runner | backward | evaluations (target 40 log2 n) | wall "
          "| RSS before -> audit's peak, added (worker process peak) "
          "| (workers+2) float64 copies + activations "
          "| found exactly | suspects (really wrong; outside the row) | blocks "
          "| full sweep (est.) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        found = "-" if r["found_exactly"] is None else ("yes" if r["found_exactly"] else "NO")
        print(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['runner']} | {r['backward']} "
              f"| {r['evaluations']} ({r['target']}) | {r['wall_s']} s "
              f"| {r['rss_before_audit_gb']} -> {r['peak_rss_gb']} GB, "
              f"+{r['peak_rss_gb'] - r['rss_before_audit_gb']:.2f} GB "
              f"({r['worker_peak_rss_gb']} GB) | {r['bound_gb']} + {r['activations_gb']} GB "
              f"| {found} | {r['suspects']} ({r['really_wrong']}; {r['suspects_outside_row']}) "
              f"| {_blocks(r)} | {r['sweep_estimate_h']} h |")


def _blocks(row: dict) -> str:
    """The blocks cell: how many, and how many of their coordinates are counted wrong."""
    counts = row["block_counts"]
    if not counts:
        return "0"
    size, counted = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return f"{len(counts)} ({counted} of {size} counted wrong)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["gpt2", "resnet18"], default="resnet18")
    parser.add_argument("--runner", choices=["threads", "processes", "dask"], default="threads")
    parser.add_argument("--bug", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=16, help="gpt2: tokens per sequence")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image", type=int, default=64, help="resnet18: image side")
    parser.add_argument("--table", nargs="+", choices=["gpt2", "resnet18"])
    args = parser.parse_args()
    if args.table:
        extra = ["--workers", str(args.workers), "--seq", str(args.seq), "--batch",
                 str(args.batch), "--image", str(args.image)]
        table(args.table, extra)
        return
    torch.set_num_threads(1)  # the audit's workers are the parallelism
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(json.dumps(run_case(args)))


if __name__ == "__main__":
    main()
