"""The directional sub-check, as jax's checker runs it: one random tangent, judged with
fastgrad's method and the caller's tolerance."""

from __future__ import annotations

import math

import numpy as np

from ...checks.jacobian import Layout, judge_jacobian
from .flatten import Level, Line, Projected, layout_of, rows_of, rule_groups
from .tolerances import Options, caller_rule, coarsest, jax_close

# an automatic step leaving f's domain shrinks by this factor, at most this many times, never
# below jax's own step
DOMAIN_SHRINK, DOMAIN_SHRINKS, JAX_EPS = 1 / 16, 3, 1e-4


# the roundoff floor of a contracted output grows by at most this cancellation factor
CANCELLATION_CAP = 1e6


def direction(level: Level, opts: Options) -> tuple[Line, np.ndarray]:
    """jax's random tangent (standard normal, in each leaf's dtype) and the first step; the
    tangent returned is the one the cast points really differ along."""
    rng = np.random.default_rng([opts.seed, level.order])
    t = np.concatenate([rng.standard_normal(p.size).astype(p.dtype).astype(np.float64)
                        for p in level.parts]) if level.parts else np.zeros(0)
    finite = np.isfinite(level.x)
    if opts.eps is not None:
        h = float(opts.eps)
    else:
        precision = coarsest([p.dtype for p in level.parts])
        scale = float(np.max(np.abs(level.x[finite]), initial=1.0))
        h = 2.0 ** round(math.log2(precision.step_scale * max(1.0, scale)))
    line = Line(level, t)
    line.first_step = np.array([h])
    if opts.eps is None:
        # an automatic step that leaves f's domain (finite at x, not at x +- h t) shrinks
        # towards jax's own step (1e-4) before anything is judged
        ok = np.isfinite(level.f0)
        for _ in range(DOMAIN_SHRINKS):
            f_plus, f_minus = line.pairs(np.array([0]), line.first_step)
            if np.all(np.isfinite(f_plus[0][ok]) & np.isfinite(f_minus[0][ok])):
                break
            h = max(h * DOMAIN_SHRINK, JAX_EPS)
            line.first_step = np.array([h])
    plus, minus = line.point(h), line.point(-h)
    t_eff = t.copy()
    t_eff[finite] = (plus[finite] - minus[finite]) / (2 * h)
    return line, t_eff


def judge_directional(level: Level, mode: str, line: Line, t_eff: np.ndarray,
                       analytic_out: np.ndarray, opts: Options, cotangent=None):
    """fastgrad's verdict on one direction: (passed, tolerated names, evidence lines).

    fwd/lin: each element of J t (the caller's rule per output leaf, scaled by its size as
    jax's check_close); rev: <c, J t> against <vjp(c), t> (one number, jax's rule of its dtype).
    Elements that are not finite at x or x +- h t are judged as jax judges them (its
    inf - inf = 0): equal values pass."""
    precision = coarsest([p.dtype for p in level.parts] + [p.dtype for p in level.out_parts])
    f_plus, f_minus = line.pairs(np.array([0]), line.first_step)
    f_plus, f_minus = f_plus[0], f_minus[0]
    h = float(line.first_step[0])
    finite = np.isfinite(level.f0) & np.isfinite(f_plus) & np.isfinite(f_minus)
    with np.errstate(invalid="ignore", over="ignore"):
        jax_numeric = np.where(f_plus == f_minus, 0.0, (f_plus - f_minus) / (2 * h))
    evidence: list[str] = []
    tolerated: list[str] = []
    passed = True
    common = dict(tol=precision.base_tol, tol_reason=f"{precision.name} band "
                  f"{precision.base_tol:.0e}", noise_eps=precision.eps * precision.noise_factor,
                  inputs=Layout(("t",), ((),), (False,)), seed=opts.seed, lazy=True,
                  strict=opts.strict, notes=(f"sub-check: {level.what}, {mode} mode, along a "
                                             "random tangent",))
    if mode == "rev":
        ct = cotangent
        dtype = np.result_type(*[p.dtype for p in level.out_parts]) if level.out_parts \
            else np.float64
        atol, rtol = caller_rule(dtype, 1, opts)
        if not finite.all() and not np.isfinite(jax_numeric @ ct if ct.size else 0.0):
            numeric = float(jax_numeric @ ct)
            ok = bool(jax_close(np.array(analytic_out), np.array(numeric), atol, rtol))
            if not ok:
                evidence.append(f"<vjp(c), t> = {analytic_out:.6g}, <c, numeric jvp(t)> = "
                                f"{numeric:.6g} (not finite)")
            return ok, [], evidence
        # rows not finite along the line count 0, as jax's inf - inf
        weights = np.where(finite, ct, 0.0)[:, None]
        ev = Projected(line, weights=weights)
        with np.errstate(invalid="ignore", over="ignore"):
            numeric = float(np.where(finite, f_plus - f_minus, 0.0) @ ct) / (2 * h)
        if abs(analytic_out - numeric) <= atol:
            return True, [], []  # never fails nor is tolerated (the judge's atol slack)
        # the roundoff of a contraction is that of its terms, not of their (cancelling) sum
        f0 = np.where(finite, level.f0, 0.0)
        terms = float(np.abs(weights[:, 0]) @ np.abs(f0))
        cancel = min(CANCELLATION_CAP, terms / max(abs(float(weights[:, 0] @ f0)), 1e-300))
        common["noise_eps"] *= max(1.0, cancel)
        judged = judge_jacobian(
            ev, np.zeros(1), np.array([float(np.where(finite, level.f0, 0.0) @ ct)]),
            np.array([[analytic_out]]), np.array([0]), line.first_step, atol=atol, rtol=rtol,
            outputs=Layout(("<c, output>",), ((),), (False,)), mode=" (rev)", **common)
        judges = [(judged, "")]
    else:
        judges = []
        for (atol, rtol), leaves in rule_groups(level, opts, scaled=True).items():
            rows = rows_of(level, leaves)
            odd = rows[~finite[rows]]
            if odd.size:
                ok = jax_close(analytic_out[odd], jax_numeric[odd], atol, rtol)
                for r in odd[~ok]:
                    passed = False
                    evidence.append(f"{level.out_layout.where(int(r))}: analytic "
                                    f"{analytic_out[r]:.6g}, numeric {jax_numeric[r]:.6g} "
                                    "(not finite along the tangent)")
            complete = bool(finite[rows].all())
            rows = rows[finite[rows]]
            if not rows.size:
                continue
            numeric = (f_plus[rows] - f_minus[rows]) / (2 * h)
            if np.all(np.abs(analytic_out[rows] - numeric) <= atol):
                continue  # never fails nor is tolerated (the judge's atol slack)
            # the group's leaves as they are laid out, or (rows left out) one name per row
            outputs = (layout_of([level.out_parts[j] for j in leaves]) if complete else
                       Layout(tuple(level.out_layout.where(int(r)) for r in rows),
                              tuple(() for _ in rows), tuple(False for _ in rows)))
            judged = judge_jacobian(
                Projected(line, rows=rows), np.zeros(1), level.f0[rows],
                analytic_out[rows][:, None], np.array([0]), line.first_step, atol=atol,
                rtol=rtol, outputs=outputs, mode=f" ({mode})", **common)
            judges.append((judged, ""))
    for judged, _ in judges:
        if not judged.passed:
            passed = False
            for c in judged.report.failures[:5]:
                evidence.append(f"{c.where.replace('t[] -> ', '').replace('[]', '')}: analytic "
                                f"{c.analytic:.6g}, numeric {c.numeric:.6g} (rel. error "
                                f"{c.rel_error:.1e})")
        else:
            tolerated += [name.replace("t[] -> ", "").replace("[]", "")
                          for name in judged.tolerated]
    return passed, tolerated, evidence

