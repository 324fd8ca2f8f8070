"""The full sub-check: every input coordinate against every output element, each output leaf
by the caller's rule of its dtype."""

from __future__ import annotations

import numpy as np

from ...checks.jacobian import CoordinateColumns, Judged, Layout, judge_jacobian
from .analytic import jacobian_of
from .flatten import Level, Projected, layout_of, rows_of, rule_groups
from .tolerances import Options, coarsest, dtype_steps

# jax's checker spends this many evaluations of f per mode of a sub-check (the one inside
# jvp/vjp, f itself, two along the tangent): the full Jacobian is checked from the start when
# its own count (1 + 2n evaluations, n JVPs, m VJPs) is no larger
JAX_EVALUATIONS_PER_MODE = 4


def judge_full(level: Level, mode: str, opts: Options) -> Judged:
    """Every input coordinate against every output element; each output leaf by the caller's
    rule of its dtype (not scaled: an element is judged alone)."""
    analytic = jacobian_of(level, mode)
    x = level.x
    index = np.flatnonzero(np.isfinite(x))
    steps = np.zeros(x.size)
    for p, part in enumerate(level.parts):
        a, b = level.bounds[p], level.bounds[p + 1]
        dtype = part.dtype if part.scalar is None else np.dtype(np.float64)
        steps[a:b] = dtype_steps(np.where(np.isfinite(x[a:b]), x[a:b], 0.0),
                            "auto" if opts.eps is None else opts.eps, dtype)
    precision = coarsest([p.dtype for p in level.parts] + [p.dtype for p in level.out_parts])
    ev = CoordinateColumns(level)
    label = {"fwd": " (fwd)", "rev": "", "lin": " (lin)"}[mode]
    worst = None
    tolerated: list[str] = []
    for (atol, rtol), leaves in rule_groups(level, opts, scaled=False).items():
        rows = rows_of(level, leaves)
        outputs = layout_of([level.out_parts[j] for j in leaves])
        if not np.isfinite(level.f0[rows]).all():
            # outputs not finite at x are judged as jax judges them, by the directional check
            rows = rows[np.isfinite(level.f0[rows])]
            outputs = Layout(tuple(level.out_layout.where(int(r)) for r in rows),
                             tuple(() for _ in rows), tuple(False for _ in rows))
            if not rows.size:
                continue
        judged = judge_jacobian(
            Projected(ev, rows=rows) if rows.size != level.f0.size else ev, x, level.f0[rows],
            np.ascontiguousarray(analytic[rows]), index, steps[index], tol=precision.base_tol,
            tol_reason=f"{precision.name} band {precision.base_tol:.0e}",
            noise_eps=precision.eps * precision.noise_factor, atol=atol, rtol=rtol,
            inputs=level.layout, outputs=outputs, seed=opts.seed,
            skipped=tuple(level.layout.where(int(i)) for i in np.flatnonzero(~np.isfinite(x))),
            notes=(f"sub-check: {level.what}, {mode} mode, full Jacobian",), mode=label,
            lazy=True, strict=opts.strict)
        if not judged.passed and worst is None:
            worst = judged
        tolerated += list(judged.tolerated)
    if worst is not None:
        return worst
    judged = Judged(True, lambda: None)
    judged.tolerated = tuple(tolerated)
    return judged


def full_is_cheap(level: Level, modes: tuple) -> bool:
    """The full check costs no more evaluations than jax's directional one."""
    n_in, n_out = level.x.size, level.f0.size
    full = 1 + 2 * n_in + sum(n_out if m == "rev" else n_in for m in modes)
    return (full <= JAX_EVALUATIONS_PER_MODE * len(modes) and bool(np.isfinite(level.x).all())
            and bool(np.isfinite(level.f0).all()))

