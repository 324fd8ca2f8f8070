"""fastgrad/tuning.py: the method's numbers are one frozen, documented value a check (or an
audit) is given, passed down explicitly (no module global), so concurrent checks with different
tunings never see each other's numbers."""

from __future__ import annotations

import dataclasses
import inspect
import re
import threading

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.engine import evaluator as engine_evaluator
from fastgrad.engine.planner import resolve_workers
from fastgrad.errors import InvalidType, InvalidValue
from fastgrad.examples.problems import (
    plant,
    weighted_logcosh,
    weighted_logcosh_data,
    weighted_logcosh_grad,
)
from fastgrad.tuning import DEFAULT_TUNING, Tuning


@pytest.fixture(autouse=True)
def measuring_planner(monkeypatch):
    """These tests are about the planner that measures (where forking is not safe: macOS,
    Windows, torch or jax loaded, another thread running): no forked batches here
    (tests/test_forked.py has them)."""
    monkeypatch.setattr(engine_evaluator, "fork_join_possible", lambda: False)

TWO_CORES = resolve_workers(None) >= 2


def tiny_loss(x):
    return float(np.sum(x * x))


def tiny_grad(x):
    return 2.0 * x


X = np.linspace(-1.0, 1.0, 20)


def test_a_tuning_is_frozen_hashable_and_public():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_TUNING.gil_bound_seconds = 1.0
    assert fg.Tuning is Tuning
    assert DEFAULT_TUNING == Tuning() and hash(DEFAULT_TUNING) == hash(Tuning())
    changed = dataclasses.replace(DEFAULT_TUNING, gil_bound_seconds=1.0)
    assert changed.gil_bound_seconds == 1.0 and DEFAULT_TUNING.gil_bound_seconds == 100e-6
    assert DEFAULT_TUNING.noise_probe_evaluations == 2 * 6 * 2


def test_every_field_is_documented():
    """Each field has an entry in the Attributes section of help(Tuning), in field order, with
    a description (what it is, unit, why this value) and its default."""
    doc = inspect.getdoc(Tuning)
    section = doc.split("Attributes\n----------\n")[1].split("\n\n")[0]
    entries = re.findall(r"^(\w+) : [^\n]+\n((?:    [^\n]*\n?)+)", section, flags=re.M)
    assert [name for name, _ in entries] == [f.name for f in dataclasses.fields(Tuning)]
    for name, text in entries:
        assert len(text.split()) >= 8 and "Default: ``" in " ".join(text.split()), name


def test_bad_tuning_is_refused_naming_it():
    with pytest.raises(InvalidType, match="tuning: expected a fastgrad.Tuning"):
        fg.check(tiny_loss, X, tiny_grad(X), tuning={"gil_bound_seconds": 1.0})
    with pytest.raises(InvalidType, match="tuning"):
        fg.check(tiny_loss, X, tiny_grad(X), tuning=None)
    with pytest.raises(InvalidValue, match=r"tuning\.guard_seconds"):
        dataclasses.replace(DEFAULT_TUNING, guard_seconds=-1.0)
    with pytest.raises(InvalidValue, match=r"tuning\.noise_sigmas"):
        dataclasses.replace(DEFAULT_TUNING, noise_sigmas=float("nan"))
    with pytest.raises(InvalidType, match=r"tuning\.leaf_size"):
        dataclasses.replace(DEFAULT_TUNING, leaf_size=2.5)
    with pytest.raises(InvalidType, match=r"tuning\.kink_shrink"):
        dataclasses.replace(DEFAULT_TUNING, kink_shrink=())


def _plan_of(gil_bound_seconds: float) -> fg.Report:
    return fg.check(tiny_loss, X, tiny_grad(X), samples="all",
                    tuning=dataclasses.replace(DEFAULT_TUNING,
                                               gil_bound_seconds=gil_bound_seconds))


@pytest.mark.skipif(not TWO_CORES, reason="needs 2 cores for threads")
def test_a_short_check_of_a_python_loss_runs_serially_and_says_why():
    """A check too short to calibrate runs a Python loss serially (the plain loop's speed,
    never slower): under the GIL bound because threads would contend for the GIL, above it
    because the whole check is too short for threads to win back their guard (0 s and 10 s
    bounds: no timing decides the test)."""
    gil_bound = _plan_of(10.0)
    assert gil_bound.path == "serial" and "contend for the GIL" in gil_bound.path_reason
    short = _plan_of(0.0)
    assert short.path == "serial" and short.passed
    assert "too short for threads" in short.path_reason


def test_the_tuning_reaches_the_judge_and_the_tolerance():
    """The noise probe's size and the tolerance's growth with depth come from the tuning."""
    wrong = tiny_grad(X)
    wrong[3] *= 1.5  # a failure: the noise of f is measured
    short = dataclasses.replace(DEFAULT_TUNING, noise_probe_points=3)
    reports = [fg.check(tiny_loss, X, wrong, samples="all", workers=1, tuning=tuning)
               for tuning in (DEFAULT_TUNING, short)]
    assert not reports[0].passed and not reports[1].passed
    assert reports[0].evaluations - reports[1].evaluations == \
        DEFAULT_TUNING.noise_probe_evaluations - short.noise_probe_evaluations
    linear = dataclasses.replace(DEFAULT_TUNING, depth_exponent=1.0)
    report = fg.check(tiny_loss, X, tiny_grad(X), depth=10, tuning=linear)
    assert report.tol == pytest.approx(1e-3)
    assert fg.check(tiny_loss, X, tiny_grad(X), depth=10).tol == \
        pytest.approx(1e-4 * 10 ** DEFAULT_TUNING.depth_exponent)


def test_concurrent_checks_with_different_tunings_each_get_their_own():
    """Two threads check at once, each with its own tuning, many times: each report shows its
    own tolerance (and, with two cores, its own plan's reason: the GIL bound of its tuning)."""
    tunings = {
        "contend for the GIL": dataclasses.replace(DEFAULT_TUNING, gil_bound_seconds=10.0,
                                                   depth_exponent=1.0),
        "too short for threads": dataclasses.replace(DEFAULT_TUNING, gil_bound_seconds=0.0,
                                                         depth_exponent=2.0),
    }
    expected_tol = {"contend for the GIL": 3e-4, "too short for threads": 9e-4}
    barrier = threading.Barrier(2)
    seen: dict[str, list] = {name: [] for name in tunings}
    errors: list[BaseException] = []

    def run(name):
        try:
            for _ in range(8):
                barrier.wait(timeout=60)
                report = fg.check(tiny_loss, X, tiny_grad(X), samples="all", depth=3,
                                  tuning=tunings[name])
                seen[name].append((report.path_reason, report.tol, report.passed))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(name,)) for name in tunings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    for name, rows in seen.items():
        assert len(rows) == 8
        assert all(passed and tol == pytest.approx(expected_tol[name]) for _, tol, passed in rows)
        if TWO_CORES:
            assert all(name in reason for reason, _, _ in rows)


# -- the audit: its directions and localization read the same tuning -----------------------------
AUDIT_N = 4096
AUDIT_A, AUDIT_C, AUDIT_THETA = weighted_logcosh_data(AUDIT_N, seed=1)
AUDIT_GRAD = weighted_logcosh_grad(AUDIT_THETA, AUDIT_A, AUDIT_C)
AUDIT_WRONG, AUDIT_INDEX = plant(AUDIT_GRAD, 1, seed=3,
                                 scale=float(np.sqrt(np.mean(AUDIT_GRAD ** 2))))
WIDE_LEAVES = dataclasses.replace(DEFAULT_TUNING, leaf_size=32)


def _audit(tuning: Tuning) -> fg.AuditReport:
    return fg.audit(weighted_logcosh, AUDIT_THETA, AUDIT_WRONG, args=(AUDIT_A, AUDIT_C),
                    workers=1, tuning=tuning)


def _localization(report: fg.AuditReport) -> tuple:
    return (report.status, report.evaluations, report.phases, report.suspects.tolist())


def test_bad_audit_tuning_is_refused_naming_it():
    with pytest.raises(InvalidType, match="tuning: expected a fastgrad.Tuning"):
        fg.audit(tiny_loss, X, tiny_grad(X), tuning={"leaf_size": 8})
    with pytest.raises(InvalidType, match="tuning"):
        fg.audit(tiny_loss, X, tiny_grad(X), tuning=None)
    for name in ("leaf_size", "directions_per_test"):  # the audit would not stop, or not test
        with pytest.raises(InvalidValue, match=rf"tuning\.{name}: expected at least 1"):
            dataclasses.replace(DEFAULT_TUNING, **{name: 0})


def test_the_leaf_size_changes_the_localization_not_its_verdict():
    """Larger leaves: fewer halving levels, more coordinates confirmed one by one; the same
    verdict and the same wrong coordinate."""
    default, wide = _audit(DEFAULT_TUNING), _audit(WIDE_LEAVES)
    assert default.status == wide.status == "failed"
    assert default.suspects.tolist() == wide.suspects.tolist() == AUDIT_INDEX.tolist()
    assert wide.phases["localize"] < default.phases["localize"]
    # a leaf is confirmed coordinate by coordinate: 2 evaluations each, re-checks besides
    assert 2 * DEFAULT_TUNING.leaf_size <= default.phases["confirm"] < 2 * WIDE_LEAVES.leaf_size
    assert 2 * WIDE_LEAVES.leaf_size <= wide.phases["confirm"]


def test_concurrent_audits_with_different_tunings_each_get_their_own():
    """Two threads audit at once, each with its own tuning, several times: each report is the
    one its tuning gives alone."""
    tunings = {"default": DEFAULT_TUNING, "wide": WIDE_LEAVES}
    alone = {name: _localization(_audit(t)) for name, t in tunings.items()}
    assert alone["default"] != alone["wide"]
    barrier = threading.Barrier(2)
    seen: dict[str, list] = {name: [] for name in tunings}
    errors: list[BaseException] = []

    def run(name):
        try:
            for _ in range(4):
                barrier.wait(timeout=60)
                seen[name].append(_localization(_audit(tunings[name])))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(name,)) for name in tunings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    assert seen == {name: [alone[name]] * 4 for name in tunings}
