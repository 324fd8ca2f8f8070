"""Drop-in ``jax.test_util.check_grads``: full Jacobians of every order judged by fastgrad.

``check_grads(f, args, order)`` checks forward mode (Jacobian-vector products, as columns) and
reverse mode (vector-Jacobian products, as rows) against the numeric Jacobian of centered
differences, element by element, with fastgrad's verdicts, kink and noise re-checks. Order 2 and
above check the derivative functions themselves, as jax does: ``x -> jvp(f, x, t)`` and
``x -> vjp(f, x)(c)`` for a fixed random tangent ``t`` and cotangent ``c``. The perturbed inputs
are evaluated in one ``jax.vmap`` call (one call per perturbation when vmap cannot run ``f``).
Everything runs in 64-bit mode (``jax.enable_x64``, thread-local), on float64/complex128 copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

try:
    import jax
    import jax.numpy as jnp
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastgrad.jax needs JAX, which is not installed: pip install fastgrad[jax]"
    ) from exc

from .arguments import non_negative_float, positive_int
from .checks.jacobian import ColumnEvaluator, Judged, Layout, judge_jacobian
from .errors import GradientCheckError, InvalidType, InvalidValue
from .jax_pytrees import key_name, x64
from .steps import coordinate_steps, noise_eps, tolerance

__all__ = ["CheckGradsError", "check_grads"]

# an element within this absolute difference never fails (jax's float64 gradient tolerance)
DEFAULT_ATOL = 1e-5
BATCH_VALUES = 1 << 22
VMAP_AGREEMENT = 64.0


class CheckGradsError(GradientCheckError):
    """Raised by ``fastgrad.jax.check_grads`` when a derivative does not match.

    An ``AssertionError`` (as jax's ``check_grads`` raises) whose message names the sub-check
    (order and mode) and holds the report's table; ``.report`` holds the report.

    Parameters
    ----------
    message : str
        Which sub-check failed, then the table.
    report : fastgrad.Report
        The failing sub-check's report.

    Examples
    --------
    >>> import fastgrad.jax
    >>> issubclass(fastgrad.jax.CheckGradsError, AssertionError)
    True
    """

    def __init__(self, message: str, report: Any = None):
        AssertionError.__init__(self, message)
        self.report = report


def _real_flat(leaves: Sequence[Any]) -> np.ndarray:
    parts = []
    for v in leaves:
        v = np.asarray(v)
        if np.iscomplexobj(v):
            parts += [v.real.ravel(), v.imag.ravel()]
        else:
            parts.append(v.ravel())
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


class _Flat:
    """``f`` as a map between flat real vectors (complex leaves: real parts, then imaginary)."""

    def __init__(self, f: Callable, in_layout: Layout, out_layout: Layout | None,
                 rebuild: Callable):
        self.f, self.layout, self.out_layout, self.rebuild = f, in_layout, out_layout, rebuild
        self.batched, self.verified, self.why_serial = True, False, ""
        self.at: np.ndarray | None = None  # the unperturbed point and f there (the vmap probe)
        self.at_value: np.ndarray | None = None
        self.evaluations = 0

    def unflatten_in(self, x):
        """Flat real (jax array) -> the leaves of the checked arguments."""
        leaves, starts = [], self.layout.starts
        for p, (shape, cplx) in enumerate(zip(self.layout.shapes, self.layout.complex)):
            part = x[starts[p]:starts[p + 1]]
            if cplx:
                n = part.shape[0] // 2
                part = part[:n] + 1j * part[n:]
            leaves.append(part.reshape(shape))
        return leaves

    def __call__(self, x):
        """jax-traceable: flat real in, flat real out."""
        out_leaves = jax.tree_util.tree_leaves(self.f(*self.rebuild(self.unflatten_in(x))))
        parts = []
        for o in out_leaves:
            o = jnp.asarray(o)
            if jnp.iscomplexobj(o):
                parts += [jnp.real(o).ravel(), jnp.imag(o).ravel()]
            else:
                parts.append(o.ravel().astype(jnp.float64))
        return jnp.concatenate(parts) if parts else jnp.zeros(0)

    def one(self, x: np.ndarray) -> np.ndarray:
        self.evaluations += 1
        return np.asarray(self(jnp.asarray(x)), dtype=np.float64)

    def many(self, rows: np.ndarray) -> np.ndarray:
        """Flat real outputs at each row: one vmap call, or one call per row. The first vmap'd
        batch carries the unperturbed point too (``at``), compared with the plain value there
        (``at_value``): a batching that changes the values sends every row one by one."""
        count = rows.shape[0]
        if self.batched and count > 1:
            probe = not self.verified and self.at is not None
            batch = np.concatenate([rows, self.at[None]]) if probe else rows
            # batch sizes rounded up to a power of two: eager jax compiles every primitive once
            # per shape, and the re-checks would otherwise bring new sizes
            padded = 1 << (batch.shape[0] - 1).bit_length()
            batch = np.concatenate([batch, np.repeat(batch[-1:], padded - batch.shape[0],
                                                     axis=0)])
            try:
                out = np.asarray(jax.vmap(self)(jnp.asarray(batch)), dtype=np.float64)
            except Exception as exc:  # vmap cannot run f (Python control flow on values...)
                self.batched = False
                line = (str(exc).splitlines() or [""])[0][:100]
                self.why_serial = f"jax.vmap raised {type(exc).__name__}: {line}"
            else:
                self.verified = True
                if probe:
                    one, got = self.at_value, out[count]
                    eps = VMAP_AGREEMENT * np.finfo(np.float64).eps
                    ok = (one == got) | (np.abs(one - got) <= eps * (np.abs(one) + np.abs(got)))
                    if not np.all(ok | (np.isnan(one) & np.isnan(got))):
                        self.batched, self.why_serial = False, "jax.vmap changed the values"
                if self.batched:
                    self.evaluations += count
                    return out[:count]
        return np.stack([self.one(r) for r in rows[:count]])


class _Evaluator(ColumnEvaluator):
    vmap = "jax.vmap"

    def __init__(self, fn: _Flat, x: np.ndarray):
        super().__init__(fn)
        self.x = x

    def _pairs(self, index, step):
        x, k = self.x, index.size
        n_out = self.fn.out_layout.size
        f_plus, f_minus = np.empty((k, n_out)), np.empty((k, n_out))
        chunk = max(1, BATCH_VALUES // max(1, 2 * x.size))
        for a in range(0, k, chunk):
            b = min(k, a + chunk)
            lanes = np.arange(b - a)
            rows = np.repeat(x[None, :], 2 * (b - a), axis=0)
            rows[lanes, index[a:b]] += step[a:b]
            rows[lanes + (b - a), index[a:b]] -= step[a:b]
            out = self.fn.many(rows)
            f_plus[a:b], f_minus[a:b] = out[: b - a], out[b - a:]
        return f_plus, f_minus


def _out_layout(value, prefix: str) -> Layout:
    leaves, _ = jax.tree_util.tree_flatten_with_path(value)
    names, shapes, cplx = [], [], []
    for j, (path, leaf) in enumerate(leaves):
        leaf = np.asarray(leaf)
        suffix = "/".join(key_name(e) for e in path)
        names.append(f"{prefix}{j}" if len(leaves) > 1 or suffix else prefix + "0")
        shapes.append(tuple(leaf.shape))
        cplx.append(bool(np.iscomplexobj(leaf)))
    return Layout(tuple(names), tuple(shapes), tuple(cplx))


def _judge(fn: _Flat, ev: _Evaluator, f0: np.ndarray, x: np.ndarray, mode: str, *, tol,
           tol_reason, atol, rtol, eps, seed, what: str) -> Judged:
    xj = jnp.asarray(x)
    n_in, n_out = x.size, f0.size
    if mode == "rev":
        def rows(x, basis):
            _, vjp_fun = jax.vjp(fn, x)
            return jax.vmap(lambda c: vjp_fun(c)[0])(basis)

        jac = np.asarray(rows(xj, jnp.eye(n_out)), dtype=np.float64)
        if jac.shape != (n_out, n_in):
            jac = jac.reshape(n_out, n_in)
        label = ""
    else:
        def columns(x, basis):
            return jax.vmap(lambda t: jax.jvp(fn, (x,), (t,))[1])(basis)

        jac = np.asarray(columns(xj, jnp.eye(n_in)), dtype=np.float64).reshape(n_in, n_out).T
        label = " (fwd)"
    index = np.flatnonzero(np.isfinite(x))
    step = coordinate_steps(x[index], "auto" if eps is None else eps, np.float64)
    return judge_jacobian(
        ev, x, f0, np.ascontiguousarray(jac), index, step, tol=tol,
        tol_reason=tol_reason, noise_eps=noise_eps(np.float64), atol=atol, rtol=rtol,
        inputs=fn.layout, outputs=fn.out_layout, seed=seed,
        skipped=tuple(fn.layout.where(int(i)) for i in np.flatnonzero(~np.isfinite(x))),
        notes=(f"sub-check: {what}, {mode} mode",), mode=label, lazy=True)


def _check(fn: _Flat, x: np.ndarray, order: int, modes: tuple, what: str, **judging) -> None:
    ev, f0 = _Evaluator(fn, x), fn.one(x)
    fn.at, fn.at_value = x, f0
    for mode in modes:
        judged = _judge(fn, ev, f0, x, mode, what=what, **judging)
        if not judged.passed:
            report = judged.report
            raise CheckGradsError(f"check_grads: {what}, {mode} mode: the derivative does not "
                                  f"match centered differences\n{report}", report)
    if order <= 1:
        return
    rng = np.random.default_rng([judging["seed"], order])
    for mode in modes:
        if mode == "fwd":
            tangent = jnp.asarray(rng.standard_normal(x.size))

            def derived(z, fn=fn, tangent=tangent):
                return jax.jvp(fn, (z,), (tangent,))[1]

            out_layout = Layout(("jvp",), ((fn.out_layout.size,),), (False,))
        else:
            cotangent = jnp.asarray(rng.standard_normal(fn.out_layout.size))

            def derived(z, fn=fn, cotangent=cotangent):
                return jax.vjp(fn, z)[1](cotangent)[0]

            out_layout = Layout(("vjp",), ((x.size,),), (False,))
        flat = _FlatDerived(derived, fn.layout, out_layout)
        _check(flat, x, order - 1, modes, f"order {order}: derivative of the {mode} map "
               f"({what})", **judging)


class _FlatDerived(_Flat):
    """A derivative map that is already flat real -> flat real.

    Evaluated eagerly, like every map here: jax caches each primitive's compiled form for the
    process, while a jit of a new closure would compile again in every check.
    """

    def __init__(self, g: Callable, in_layout: Layout, out_layout: Layout):
        self.g = g
        super().__init__(g, in_layout, out_layout, lambda leaves: leaves)

    def __call__(self, x):
        return self.g(x)


def check_grads(
    f: Callable[..., Any],
    args: Sequence[Any],
    order: int,
    modes: Sequence[str] = ("fwd", "rev"),
    atol: float | None = None,
    rtol: float | None = None,
    eps: float | None = None,
) -> None:
    """Check ``f``'s derivatives up to ``order`` in forward and/or reverse mode, like jax's.

    ``jax.test_util.check_grads`` tests one random direction per derivative; this checks the
    full Jacobian: every input coordinate of every argument against every output element,
    judged element by element like ``fastgrad.check`` judges a coordinate (relative error
    against 1e-4, roundoff floor, kink re-checks). For order >= 2 the derivative maps
    ``x -> jvp(f, x, t)`` ("fwd") and ``x -> vjp(f, x)(c)`` ("rev"), with fixed random ``t``
    and ``c``, are checked in turn, recursively.

    How jax's numbers map: ``eps`` (None: fastgrad's automatic per-coordinate steps) is the
    first step; an element never fails when ``|a - n| <= atol`` (None: 1e-5, jax's float64
    tolerance); with ``rtol`` given, the tolerance on the relative error is at most ``rtol``
    and an element also fails when ``|a - n| > atol + rtol |n|`` (jax's rule) unless the
    disagreement is roundoff noise or an excused kink.

    Parameters
    ----------
    f : callable
        ``f(*args)`` returning an array or a pytree of arrays; traceable by jax.
    args : tuple
        The point; each argument an array, a number or a pytree of them. Floating and complex
        leaves are checked (as real and imaginary parts); other leaves are held constant.
    order : int
        The highest derivative order checked (1, 2, ...).
    modes : sequence of str
        ``"fwd"`` and/or ``"rev"``.
    atol : float, optional
        Absolute slack (see above).
    rtol : float, optional
        Relative tolerance (see above).
    eps : float, optional
        First finite-difference step; None: automatic.

    Returns
    -------
    None
        When every derivative matches.

    Raises
    ------
    fastgrad.jax.CheckGradsError
        An ``AssertionError`` naming the order and mode that failed, with ``.report``.
    ValueError
        When ``order`` is not a positive int, ``modes`` holds something else than "fwd" and
        "rev", a tolerance is negative, or no argument has a floating leaf.
    TypeError
        When ``f`` is not callable or ``args`` is not a tuple or list.

    Examples
    --------
    >>> import jax.numpy as jnp, fastgrad.jax
    >>> fastgrad.jax.check_grads(lambda x, y: jnp.sin(x) * y, (jnp.ones(3), 2.0), order=2)
    """
    if not callable(f):
        raise InvalidType(f"f: expected a callable, got {f!r}")
    if not isinstance(args, (tuple, list)):
        raise InvalidType(f"args: expected a tuple of arguments, got {type(args).__name__}")
    order = positive_int("order", order)
    modes = tuple(modes) if not isinstance(modes, str) else (modes,)
    for mode in modes:
        if mode not in ("fwd", "rev"):
            raise InvalidValue(f"modes: expected 'fwd' and/or 'rev', got {mode!r}")
    atol = DEFAULT_ATOL if atol is None else non_negative_float("atol", atol)
    rtol = None if rtol is None else non_negative_float("rtol", rtol)
    if eps is not None and not non_negative_float("eps", eps) > 0:
        raise InvalidValue(f"eps: expected a positive step, got {eps!r}")
    tol, tol_reason = tolerance(np.float64)
    if rtol is not None and 0 < rtol < tol:
        tol, tol_reason = rtol, f"rtol={rtol:.0e} given by the caller"
    with x64():
        leaves, treedef = jax.tree_util.tree_flatten_with_path(tuple(args))
        values = [np.asarray(leaf) for _, leaf in leaves]
        checked = [p for p, v in enumerate(values)
                   if np.issubdtype(v.dtype, np.floating) or np.iscomplexobj(v)]
        if not checked:
            raise InvalidValue("args: no floating-point argument to differentiate")
        names = []
        for p in checked:
            path = leaves[p][0]
            keys = [key_name(e) for e in path]
            names.append(f"arg{keys[0]}" + "".join(f"/{k}" for k in keys[1:]))
        layout = Layout(tuple(names), tuple(values[p].shape for p in checked),
                        tuple(bool(np.iscomplexobj(values[p])) for p in checked))
        x = _real_flat([values[p] for p in checked])

        def rebuild(checked_leaves):
            full = list(values)
            for p, leaf in zip(checked, checked_leaves):
                full[p] = leaf
            return jax.tree_util.tree_unflatten(treedef, full)

        outputs = f(*rebuild([jnp.asarray(values[p]) for p in checked]))
        fn = _Flat(f, layout, _out_layout(outputs, "output"), rebuild)
        _check(fn, x, order, modes, "order 1", tol=tol, tol_reason=tol_reason, atol=atol,
               rtol=rtol, eps=eps, seed=0)
