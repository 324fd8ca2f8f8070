"""pytest plugin for run.py: puts one checker behind every name JAX's tests call and logs each call.

Loaded with ``-p plugin`` before the test modules are imported, so ``from jax.test_util import
check_grads`` in a test module binds the wrapper. ``$JAX_SUITE_CHECKER`` is "jax" or "fastgrad";
``$JAX_SUITE_LOG`` is the JSON-lines file written: one record per check_grads call (test,
index in the test, verdict, seconds inside the checker, message) and one per test outcome.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import jax.test_util
from jax._src import public_test_util
from jax._src import test_util as jtu

CHECKER = os.environ.get("JAX_SUITE_CHECKER", "jax")
LOG = os.environ["JAX_SUITE_LOG"]
_original = public_test_util.check_grads
_state = {"test": "", "calls": 0}


def _write(record: dict) -> None:
    with open(LOG, "a") as out:
        out.write(json.dumps(record) + "\n")


def _checker():
    if CHECKER == "fastgrad":
        from fastgrad.jax import check_grads

        return check_grads
    return _original


def timed_check_grads(f, args, order, modes=("fwd", "rev"), atol=None, rtol=None, eps=None):
    """The chosen checker, timed; its verdict logged, its exception re-raised."""
    checker = _checker()
    _state["calls"] += 1
    record = {"kind": "call", "test": _state["test"], "call": _state["calls"],
              "order": order, "modes": list(modes)}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            checker(f, args, order, modes, atol, rtol, eps)
        except AssertionError as exc:
            record.update(verdict="fail", message=str(exc)[:2000])
            raise
        except Exception as exc:
            record.update(verdict="crash", message=f"{type(exc).__name__}: {exc}"[:2000])
            raise
        else:
            record.update(verdict="pass")
        finally:
            record["seconds"] = time.perf_counter() - start
            record["warnings"] = [str(w.message)[:500] for w in caught
                                  if type(w.message).__name__ == "GradcheckWarning"]
            _write(record)


for module in (jax.test_util, public_test_util, jtu):
    if hasattr(module, "check_grads"):
        module.check_grads = timed_check_grads


def pytest_runtest_setup(item):
    _state["test"], _state["calls"] = item.nodeid, 0


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        _write({"kind": "test", "test": report.nodeid, "outcome": report.outcome,
                "when": report.when})
