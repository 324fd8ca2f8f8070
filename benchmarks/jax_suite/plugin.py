"""pytest plugin for run.py: puts one checker behind every name JAX's tests call and logs each call.

Loaded with ``-p plugin`` before the test modules are imported, so ``from jax.test_util import
check_grads`` in a test module binds the wrapper. ``$JAX_SUITE_CHECKER`` is "jax" or "fastgrad";
``$JAX_SUITE_LOG`` is the JSON-lines file written: one record per check_grads call (test,
index in the test, verdict, seconds inside the checker, the process's CPU seconds, the seconds
of it jax spent lowering jaxprs to MLIR and compiling them with XLA, the executables compiled,
message) and one per test outcome.

Eager jax compiles every primitive once per shape and dtype, so most of a check's time is XLA
compiling the executables of the function's own primitives and of their derivatives; which
checker meets a primitive first pays for it. The compile seconds are measured by wrapping jax's
``compiler.backend_compile_and_load`` and ``pxla._cached_lowering_to_hlo`` (jax 0.10: the names
are looked up when called), so the report can tell that floor from the checker's own work.
"""

from __future__ import annotations

import json
import os
import time
import warnings

import jax.test_util
from jax._src import compiler, public_test_util
from jax._src import test_util as jtu
from jax._src.interpreters import pxla

CHECKER = os.environ.get("JAX_SUITE_CHECKER", "jax")
LOG = os.environ["JAX_SUITE_LOG"]
_original = public_test_util.check_grads
_state = {"test": "", "calls": 0}
_jax_time = {"compile": 0.0, "lower": 0.0, "executables": 0}


def _timed(name: str, fun):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fun(*args, **kwargs)
        finally:
            _jax_time[name] += time.perf_counter() - start
            if name == "compile":
                _jax_time["executables"] += 1

    return wrapper


compiler.backend_compile_and_load = _timed("compile", compiler.backend_compile_and_load)
pxla._cached_lowering_to_hlo = _timed("lower", pxla._cached_lowering_to_hlo)


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
    before = dict(_jax_time)
    start, cpu = time.perf_counter(), time.process_time()
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
            record["cpu_seconds"] = time.process_time() - cpu
            record["compile_seconds"] = (_jax_time["compile"] - before["compile"]
                                         + _jax_time["lower"] - before["lower"])
            record["executables"] = _jax_time["executables"] - before["executables"]
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
