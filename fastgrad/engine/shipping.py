"""The worker side of the executor backend: a problem sent once per worker, then cached.

A problem that arrived pickled (another process, a cluster worker) is kept for the last few
checks; one handed over in this process (an in-process executor such as a ThreadPoolExecutor) is
only weakly referenced, so nothing here outlives the check that sent it. Each worker thread's
working copy of theta lives on the problem and goes with it.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections import OrderedDict

import numpy as np

from .loops import fill_directions, fill_pairs


class ShippedProblem:
    """What a worker needs to evaluate perturbations: f, theta, args, terms."""

    __slots__ = ("token", "f", "theta", "args", "terms", "remote", "copies", "__weakref__")

    def __init__(self, f, theta, args, terms):
        self.token = uuid.uuid4().hex
        self.f, self.theta, self.args, self.terms = f, theta, args, terms
        self.remote = False
        self.copies: dict[int, np.ndarray] = {}  # worker thread id -> its working copy

    def __getstate__(self):
        return (self.token, self.f, self.theta, self.args, self.terms)

    def __setstate__(self, state):
        self.token, self.f, self.theta, self.args, self.terms = state
        self.remote = True  # unpickled: this worker owns the only reference
        self.copies = {}

    def working_copy(self) -> np.ndarray:
        ident = threading.get_ident()
        work = self.copies.get(ident)
        if work is None:
            work = self.copies[ident] = np.array(self.theta, copy=True)
        return work


_LOCK = threading.Lock()
_REMOTE: OrderedDict[str, ShippedProblem] = OrderedDict()  # the last few, kept
_REMOTE_KEEP = 2
_LOCAL: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # alive while the check is


def _problem(token: str, bundle: ShippedProblem | None) -> ShippedProblem | None:
    with _LOCK:
        problem = _REMOTE.get(token) or _LOCAL.get(token)
        if problem is None and bundle is not None:
            problem = bundle
            if bundle.remote:
                _REMOTE[token] = bundle
                while len(_REMOTE) > _REMOTE_KEEP:
                    _REMOTE.popitem(last=False)
            else:
                _LOCAL[token] = bundle
        return problem


def run_shipped(token, bundle, kind, payload):
    """One chunk on a worker: (f_plus, f_minus, failure), or None when the problem is missing;
    failure is (position, "Type: message")."""
    problem = _problem(token, bundle)
    if problem is None:
        return None
    work = problem.working_copy()
    m = 1 if problem.terms is None else len(problem.terms)
    if kind == "pairs":
        index, step = payload
        f_plus, f_minus = np.empty((index.size, m)), np.empty((index.size, m))
        failure = fill_pairs(problem.f, work, index, step, problem.args, problem.terms,
                             f_plus, f_minus)
    else:
        key, lo, hi, step = payload
        f_plus, f_minus = np.empty((key.size, m)), np.empty((key.size, m))
        failure = fill_directions(problem.f, work, problem.theta, key, lo, hi, step,
                                  problem.args, problem.terms, f_plus, f_minus)
    if failure is not None:  # the exception itself may not pickle: its text does
        i, exc = failure
        failure = (i, f"{type(exc).__name__}: {exc}")
    return f_plus, f_minus, failure
