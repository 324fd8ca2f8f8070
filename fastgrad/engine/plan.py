"""The plan: which backend evaluates a check, with how many workers and BLAS threads, and why.

One immutable value, chosen by the planner (planner.py) and shown in the report's path line.
Plans are remembered per loss (weakly: a loss the user dropped takes its plans with it).
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Plan:
    """How a check's losses are evaluated.

    backend: "serial" | "threads" | "jit" (the Numba kernel) | "processes" | "forked" (batches
        shared with forked copies of this process) | "executor"; ``path`` in reports.
    workers: outer workers (threads, kernel threads, executor tasks at once).
    blas_threads: BLAS threads inside each evaluation (None: left as the caller has it).
    reason: one sentence for the report's path line.
    t_eval: the time of one evaluation the plan was measured at (seconds), when calibrated.
    """

    backend: str
    workers: int
    blas_threads: int | None
    reason: str
    t_eval: float | None = None

    @property
    def path(self) -> str:
        return self.backend

    def because(self, reason: str) -> Plan:
        return replace(self, reason=reason)


# f -> {problem key: Plan}. A multi-threaded BLAS call leaves OpenBLAS's workers spinning for
# ~0.1 s after it returns, holding a core the outer threads need: calibration times BLAS threads
# only after its outer-thread probe, and a check that knows its plan makes no such call at all.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def plan_key(theta: np.ndarray, args: tuple, workers: int, jit: bool) -> tuple:
    """What a plan depends on besides f: the sizes of everything f is evaluated on."""
    parts: list = [theta.size, theta.dtype.str, workers, jit]
    for a in args:
        if isinstance(a, np.ndarray):
            parts.append((a.shape, a.dtype.str))
        elif isinstance(a, (list, tuple)):
            parts.append((type(a).__name__, len(a)))
        else:
            parts.append(type(a).__name__)
    return tuple(parts)


def remembered_plan(f, theta, args, workers, jit) -> Plan | None:
    """The plan an earlier check of f on problems of these sizes calibrated, or None."""
    try:
        plans = _PLANS.get(f)
    except TypeError:  # not weakly referenceable (or unhashable)
        return None
    return None if plans is None else plans.get(plan_key(theta, args, workers, jit))


def remember(f, key: tuple, plan: Plan) -> None:
    with contextlib.suppress(TypeError):
        _PLANS.setdefault(f, {})[key] = plan


def forget_plan(f, key: tuple) -> None:
    """Forget the plan remembered for f on problems of ``key``'s sizes, if any."""
    with contextlib.suppress(TypeError, KeyError):
        del _PLANS[f][key]


def forget_plans() -> None:
    """Forget every remembered plan (tests; a program whose machine load changed)."""
    _PLANS.clear()


# losses whose values changed on threads (the thread-safety guard, evaluator.py): threads are
# refused for them for the rest of the process. Keyed weakly by the object that owns the state
# (a bound method's object: `model.loss` is a new method object at every attribute access).
_THREAD_UNSAFE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def loss_owner(f) -> tuple:
    """(the object a thread-unsafe verdict is kept on, the function within it)."""
    inner = getattr(f, "f", None)  # the loss part of a grad=True f (values.LossPart)
    if inner is not None and callable(inner) and not hasattr(f, "__code__"):
        f = inner
    owner = getattr(f, "__self__", None)
    if owner is not None and hasattr(f, "__func__"):
        return owner, f.__func__
    return f, None


def thread_unsafe(f) -> str | None:
    """Why threads were refused for f earlier in this process, or None."""
    owner, func = loss_owner(f)
    try:
        found = _THREAD_UNSAFE.get(owner)
    except TypeError:
        return None
    return None if found is None else found.get(func)


def refuse_threads(f, why: str) -> None:
    owner, func = loss_owner(f)
    with contextlib.suppress(TypeError):
        _THREAD_UNSAFE.setdefault(owner, {})[func] = why
