"""Who is right on the one call where the two checkers disagree: kornia's HardNet test_gradcheck.

    python benchmarks/downstream/hardnet_evidence.py [--seeds 20] [--skip-full]

kornia 0.8.3's ``tests/feature/test_hardnet.py::TestHardNet::test_gradcheck`` checks HardNet on
2x1x32x32 float64 patches in fast mode (``eps=1e-4, atol=1e-4, nondet_tol=1e-8``). torch's fast
mode passes it; ``fastgrad.torch.gradcheck`` fails it. HardNet's ``_normalize_input`` divides by
the batch's standard deviation after ``.detach()`` (on purpose, for training stability, as its
comment says), so the gradient autograd returns is not the derivative of the function: a
gradient check *should* fail. This script prints the evidence, on the test's own inputs:

1. torch's full-mode gradcheck (every Jacobian entry) on the same call: False, and its time;
2. torch's fast mode over ``--seeds`` random inputs: how many of them it fails (it samples one
   random direction, along which the detached mean cancels);
3. fastgrad's fast mode, its verdict and time, and the wrong block it names;
4. the same three with the detach removed (the normalisation differentiated as computed):
   fastgrad's fast mode passes, so its failure above is the detach. torch's full mode still
   fails there (one run: False in 310 s, against 1,379 s as released): its every-entry check at
   eps=1e-4 says nothing either way on this network, which we did not investigate further (a
   1e-4 step on a ReLU network of this size crosses kinks).

Needs kornia (``pip install -c pin.txt kornia==0.8.3``; see benchmarks/downstream/run.py).
"""

from __future__ import annotations

import argparse
import time

import torch


def _undetached(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    sp, mp = torch.std_mean(x, dim=(-3, -2, -1), keepdim=True)
    return (x - mp) / (sp + eps)


def _timed(check, *args, **kwargs):
    start = time.perf_counter()
    try:
        verdict = check(*args, **kwargs)
    except Exception as error:  # a failing check raises: its first line is the verdict
        verdict = f"fails: {str(error).splitlines()[0][:150]}"
    return verdict, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--skip-full", action="store_true",
                        help="leave out torch's full mode (2048 columns: minutes)")
    opts = parser.parse_args(argv)
    from kornia.feature import HardNet

    import fastgrad.torch as ft

    options = dict(eps=1e-4, atol=1e-4, nondet_tol=1e-8)
    for label in ("as released (detached mean/std)", "detach removed"):
        if label == "detach removed":
            HardNet._normalize_input = staticmethod(_undetached)
        torch.manual_seed(0)
        patches = torch.rand(2, 1, 32, 32, dtype=torch.float64, requires_grad=True)
        net = HardNet().to(torch.float64)
        print(f"\n## HardNet, {label}")
        if not opts.skip_full:
            verdict, seconds = _timed(torch.autograd.gradcheck, net, (patches,),
                                      raise_exception=False, **options)
            print(f"torch full mode: {verdict} ({seconds:.1f} s)")
        failures = 0
        for seed in range(opts.seeds):
            torch.manual_seed(seed)
            x = torch.rand(2, 1, 32, 32, dtype=torch.float64, requires_grad=True)
            failures += not torch.autograd.gradcheck(net, (x,), fast_mode=True,
                                                     raise_exception=False, **options)
        print(f"torch fast mode: fails {failures} of {opts.seeds} random inputs")
        verdict, seconds = _timed(torch.autograd.gradcheck, net, (patches,), fast_mode=True,
                                  raise_exception=False, **options)
        print(f"torch fast mode on the test's call: {verdict} ({seconds:.1f} s)")
        verdict, seconds = _timed(ft.gradcheck, net, (patches,), fast_mode=True, **options)
        print(f"fastgrad fast mode: {verdict} ({seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
