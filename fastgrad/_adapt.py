"""Shared plumbing of the framework adapters (torch, jax, numpy models).

An adapter turns a framework's model into the three things the core wants: a loss of the flat
float64 vector, the analytic gradient at it, and a segment map. The loss is called by the core
from a thread pool, so anything mutable (a module copy, a model copy, working buffers) lives in
per-thread state; randomness (dropout) is pinned by re-seeding the framework's RNG on every
evaluation, under a lock, with the caller's RNG state restored afterwards.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import InvalidType, InvalidValue


def core_check(f, theta, grad, **check_options):
    """``fastgrad.check``, imported when called so that adapters import before the core does."""
    import fastgrad

    return fastgrad.check(f, theta, grad, **check_options)


def serial_by_default(check_options: dict) -> dict:
    """The check options with ``workers=1`` unless the caller chose: measured on 2 cores, small
    framework and numpy ops hold the GIL and large ones already run on the framework's or BLAS's
    own threads, so one worker beats a thread pool; workers=k > 1 still works (a copy per
    thread)."""
    return {"workers": 1, **check_options}


def check_seed(check_options: dict) -> int:
    """The check's seed, also used for the adapters' random cotangents and RNG pinning."""
    seed = check_options.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidValue(f"seed: expected a non-negative int, got {seed!r}")
    return int(seed)


def cotangent_rng(seed: int) -> np.random.Generator:
    """The generator of the fixed random cotangents (upstream gradients) for a check seed."""
    # A fixed offset keeps the cotangent stream apart from the core's coordinate sampling.
    return np.random.default_rng([int(seed), 0x6661_7374])


def same_value(a: float, b: float, nondet_tol: float = 0.0) -> bool:
    """Equal, both NaN, or apart by at most ``nondet_tol * max(1, |a|)`` (check's ``nondet_tol``)."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return True
    return abs(a - b) <= nondet_tol * max(1.0, abs(a))


class ThreadLocalLoss:
    """``f(theta) -> float`` over per-thread state, with randomness pinned when the loss has any.

    Subclasses implement ``make_state()`` (called once per thread that evaluates) and
    ``evaluate(state, theta)`` (one loss, as something ``float()`` accepts), plus
    ``rng_context()`` when the framework's global RNG can be pinned.
    """

    framework = "the loss"

    def __init__(self, seed: int):
        self.seed = seed
        self.seeded = False  # set by pin_randomness when the loss turned out to be random
        self._local = threading.local()
        self._lock = threading.Lock()  # guards make_state's reads of shared objects and the RNG

    def make_state(self) -> Any:
        raise NotImplementedError

    def evaluate(self, state: Any, theta: np.ndarray) -> Any:
        raise NotImplementedError

    def rng_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def state(self) -> Any:
        state = getattr(self._local, "state", None)
        if state is None:
            with self._lock:
                state = self.make_state()
            self._local.state = state
        return state

    @contextlib.contextmanager
    def pinned(self) -> Iterator[None]:
        """The RNG context of one evaluation: seeded and serialized when the loss is random."""
        if not self.seeded:
            yield
            return
        with self._lock, self.rng_context():
            yield

    def __call__(self, theta: np.ndarray) -> float:
        state = self.state()
        with self.pinned():
            return float(self.evaluate(state, theta))

    def pin_randomness(self, theta: np.ndarray, check_options: dict) -> None:
        """Evaluate twice at theta; if the values differ, pin the RNG per evaluation.

        Raises ``fastgrad.NondeterminismError`` (a ``ValueError``) when the values still differ
        with the RNG pinned, by more than the check's ``nondet_tol``: the randomness is not the
        framework's global RNG.
        """
        first, second = self(theta), self(theta)
        if same_value(first, second):
            return
        self.seeded = True
        first, second = self(theta), self(theta)
        nondet_tol = check_options.get("nondet_tol", 0.0)
        if isinstance(nondet_tol, bool) or not isinstance(nondet_tol, (int, float, np.floating)):
            nondet_tol = 0.0  # fastgrad.check refuses it by name, if it gets that far
        if not same_value(first, second, max(float(nondet_tol), 0.0)):
            import fastgrad  # not at import time: the adapters import before the core does

            raise fastgrad.NondeterminismError(
                f"{self.framework} returns different values for the same parameters "
                f"({first!r} then {second!r}) even with the random seed fixed before each "
                "evaluation: switch off the randomness (dropout, augmentation, sampling) or "
                "seed it yourself inside the loss"
            )

    # The core may ship the loss to an Executor: drop the thread-local state and the lock.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_local"], state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()
        self._lock = threading.Lock()


@contextlib.contextmanager
def numpy_seeded(seed: int) -> Iterator[None]:
    """Seed numpy's global (legacy) RNG for one evaluation and restore the caller's state."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def float64_copy(name: str, value: Any) -> np.ndarray:
    """A float64 copy of a real numeric array, refusing complex and non-finite values by name."""
    arr = np.asarray(value)
    if np.iscomplexobj(arr):
        raise InvalidType(f"{name}: complex values are not supported (dtype {arr.dtype})")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidType(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return np.array(arr, dtype=np.float64, copy=True)
