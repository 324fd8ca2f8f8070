"""jax's recursion of sub-checks: per order and mode the direction (or the full Jacobian when
cheap or asked), localized by the full Jacobian when the direction disagrees."""

from __future__ import annotations

import numpy as np

from ...checks.jacobian import SubcheckFailed
from .analytic import analytic_along
from .directional import direction, judge_directional
from .flatten import Level, derived, rows_of, rule_groups
from .full import full_is_cheap, judge_full
from .tolerances import Options, jax_close


def _sub_check(level: Level, mode: str) -> str:
    """jax's name of a sub-check ("JVP of VJP"), with the order and the mode."""
    label = {"fwd": "JVP", "rev": "VJP", "lin": "LIN"}[mode]
    return f"{label}{f' of {level.what}' if level.what else ''} (order {level.order}, {mode} mode)"


def _fail(level: Level, mode: str, headline: str, evidence: list[str], report) -> None:
    sub = _sub_check(level, mode)
    lines = [f"check_grads: {sub}: {headline}"] + [f"  {e}" for e in evidence]
    raise SubcheckFailed(sub, "\n".join(lines) + (f"\n{report}" if report is not None else ""),
                         report)


def _check_mode(level: Level, mode: str, opts: Options, shared: dict) -> None:
    """One sub-check: the direction (or the full Jacobian when cheap or asked), localized by
    the full Jacobian when the direction disagrees."""
    if opts.full or shared["full"]:
        judged = judge_full(level, mode, opts)
        if not judged.passed:
            _fail(level, mode, "the derivative does not match centered differences", [],
                  judged.report)
        if judged.tolerated:
            opts.tolerated.append((_sub_check(level, mode), judged.tolerated))
        return
    if "line" not in shared:
        shared["line"] = direction(level, opts)
    line, t_eff = shared["line"]
    rng = np.random.default_rng([opts.seed, level.order, 0x6374])
    analytic, ct, primal = analytic_along(level, mode, t_eff, rng)
    # jax's primal check: the output of jvp/vjp/linearize is f's
    for (atol, rtol), leaves in rule_groups(level, opts, scaled=True).items():
        rows = rows_of(level, leaves)
        bad = rows[~jax_close(primal[rows], level.f0[rows], atol, rtol)]
        if bad.size:
            _fail(level, mode, "the primal output differs from f's", [
                f"{level.out_layout.where(int(r))}: {primal[r]:.6g} vs f {level.f0[r]:.6g}"
                for r in bad[:5]], None)
    passed, tolerated, evidence = judge_directional(level, mode, line, t_eff, analytic, opts,
                                                     cotangent=ct)
    if passed:
        if tolerated:
            opts.tolerated.append((f"{_sub_check(level, mode)}, along a random tangent",
                                   tuple(tolerated)))
        return
    # localize: the full Jacobian of this sub-check names the elements
    judged = judge_full(level, mode, opts)
    if not judged.passed:
        _fail(level, mode, "the derivative along a random tangent does not match centered "
              "differences; the full Jacobian names the elements", evidence, judged.report)
    if judged.tolerated:
        opts.tolerated.append((_sub_check(level, mode), judged.tolerated))


def check_level(level: Level, order: int, modes: tuple, opts: Options) -> None:
    shared = {"full": full_is_cheap(level, modes)}
    for mode in modes:
        _check_mode(level, mode, opts, shared)
        if order > 1:
            check_level(derived(level, mode), order - 1, modes, opts)

