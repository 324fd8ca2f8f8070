"""Noise the check cannot see through is "inconclusive", never a pass (issue 13, part 3), and
every summary number of a report accounts for the coordinates it leaves out (issue 11, §3)."""

import json
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import fastgrad as fg
from fastgrad.cli import main
from fastgrad.steps import coordinate_steps


def jitter(t, level):
    """Deterministic pseudo-noise of the bits of t (the same t always gives the same value):
    what a thread-unsafe loss, randomness inside f or an inner solver's tolerance look like from
    outside, with the nondeterminism check at theta passing."""
    bits = np.frombuffer(np.ascontiguousarray(t).tobytes(), dtype=np.uint64)
    h = np.bitwise_xor.reduce(bits * np.uint64(0x9E3779B97F4A7C15))
    return level * ((int(h) % 2_000_001) / 1_000_000.0 - 1.0)


SHAPES = {"W": (10, 10), "b": (20,)}


def noisy_loss(t, level):
    return float(np.sum(np.sin(t) + 0.5 * t * t)) + jitter(t, level)


def correct_grad(t):
    return np.cos(t) + t


@pytest.fixture
def theta():
    return np.random.default_rng(3).standard_normal(120)


def wrong_in_b(theta):
    grad = correct_grad(theta)
    grad[100:] *= 1.01  # every coordinate of "b" 1% off
    return grad


@pytest.mark.parametrize("grad_of", [correct_grad, wrong_in_b], ids=["correct", "wrong"])
def test_jitter_far_above_eps_is_inconclusive_never_passed(theta, grad_of):
    grad = grad_of(theta)
    before = theta.copy(), grad.copy()
    report = fg.check(noisy_loss, theta, grad, args=(1e-3,), segments=SHAPES, samples="all")
    assert report.status == "inconclusive" and not report.passed and not report
    assert report.inconclusive == report.checked == 120 and not report.failures
    assert {c.verdict for c in report.coords} == {"inconclusive"}
    assert all(not s.passed and s.verdict == "INCONCLUSIVE" for s in report.segments.values())
    # a noisy f is no kink: nothing is reported as a crossing
    assert report.kinks == 0
    table = str(report)
    assert table.startswith("fastgrad check INCONCLUSIVE: no coordinate judged of 120")
    assert f"sigma {report.noise_sigma:.1e}" in table and "x eps*|f|" in table
    for cause in ("thread-unsafe", "dropout", "inner solver"):
        assert cause in table
    assert "100 inconclusive" in table and "20 inconclusive" in table
    with pytest.raises(fg.GradientCheckError) as info:
        fg.assert_gradients(noisy_loss, theta, grad, args=(1e-3,), segments=SHAPES,
                            samples="all")
    assert info.value.report.status == "inconclusive" and "INCONCLUSIVE" in str(info.value)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["status"] == "inconclusive" and data["passed"] is False
    assert data["inconclusive"] == 120 and data["max_rel_error_all"] > 0.1
    assert theta.tobytes() == before[0].tobytes() and grad.tobytes() == before[1].tobytes()


def test_inner_solver_noise_of_1e10_still_gets_real_verdicts(theta):
    report = fg.check(noisy_loss, theta, correct_grad(theta), args=(1e-10,), segments=SHAPES,
                      samples="all")
    assert report.status == "passed" and report.passed, str(report)
    assert report.noise_sigma > 1e-11  # measured, and seen through at grown steps
    assert report.inconclusive == 0 and report.kinks == 0
    assert {c.verdict for c in report.coords} <= {"excellent", "ok"}
    wrong = fg.check(noisy_loss, theta, wrong_in_b(theta), args=(1e-10,), segments=SHAPES,
                     samples="all")
    assert wrong.status == "failed" and not wrong.passed
    assert {name for name, s in wrong.segments.items() if not s.passed} == {"b"}
    assert sorted(c.index for c in wrong.failures) == list(range(100, 120))
    assert wrong.inconclusive == 0 and wrong.kinks == 0


def cubic_roots(t, tol):
    """z with z^3 + z = t, by bisection to an absolute tolerance: an inner solver."""
    lo, hi = np.full(t.shape, -10.0), np.full(t.shape, 10.0)
    while np.max(hi - lo) > tol:
        mid = 0.5 * (lo + hi)
        above = mid ** 3 + mid > t
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    return 0.5 * (lo + hi)


def solver_loss(t):
    z = cubic_roots(t, 1e-10)
    return float(np.sum(z * z) + 0.5 * t @ t)


def test_a_real_inner_solver_at_1e10_gets_real_verdicts():
    theta = 2.0 * np.random.default_rng(0).standard_normal(120)
    z = cubic_roots(theta, 1e-14)
    grad = 2 * z / (3 * z * z + 1) + theta  # dz/dt = 1 / (3 z^2 + 1)
    report = fg.check(solver_loss, theta, grad, segments=SHAPES, samples="all")
    assert report.status == "passed" and report.judged == 120, str(report)
    grad[100:] *= 1.01
    wrong = fg.check(solver_loss, theta, grad, segments=SHAPES, samples="all")
    assert wrong.status == "failed" and wrong.inconclusive == 0
    assert sorted(c.index for c in wrong.failures) == list(range(100, 120))


def test_noisy_smooth_loss_reports_no_kink_crossings(theta):
    # a smooth loss with a wrong gradient: the kink re-check runs on every coordinate, and the
    # noise at its smaller steps must not read as changes of slope
    grad = 1.05 * correct_grad(theta)
    for level in (1e-9, 1e-7, 1e-6):
        report = fg.check(noisy_loss, theta, grad, args=(level,), samples="all", workers=1)
        assert report.status == "failed" and report.kinks == 0, (level, str(report))
    # a real kink is still seen: |t - c| with c at 0.3 h from every x_i
    report = fg.check(abs_with_kinks_near(theta), theta, -np.ones_like(theta), samples="all")
    assert report.passed and report.kinks == theta.size


def abs_with_kinks_near(theta):
    """sum |t - c| with a kink at 0.3 automatic steps above every x_i: each step crosses one."""
    c = theta + 0.3 * coordinate_steps(theta)
    return lambda t: float(np.sum(np.abs(t - c)))


def test_cli_exits_3_when_inconclusive(tmp_path, monkeypatch, capsys):
    (tmp_path / "noisyproblems.py").write_text(textwrap.dedent("""
        import numpy as np
        import fastgrad as fg
        from test_inconclusive import correct_grad, noisy_loss

        def noisy():
            theta = np.random.default_rng(3).standard_normal(38)
            return fg.Problem(noisy_loss, theta, correct_grad(theta), args=(1e-3,),
                              segments={"W": (6, 5), "b": (8,)}, options={"samples": 4})
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["check", "noisyproblems:noisy", "--json", "out.json"]) == 3
    assert "INCONCLUSIVE" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["status"] == "inconclusive"


def test_audit_of_a_loss_too_noisy_to_judge_does_not_pass():
    x = np.random.default_rng(5).standard_normal(2000)
    report = fg.audit(noisy_loss, x, correct_grad(x), args=(1e-3,), segments={"W": (40, 40),
                                                                              "b": (400,)})
    assert report.status == "inconclusive" and not report.passed, str(report)
    assert {s.status for s in report.segments.values()} == {"inconclusive"}
    assert "INCONCLUSIVE" in str(report) and "thread-unsafe" in str(report)
    assert json.loads(json.dumps(report.to_dict()))["status"] == "inconclusive"
    quiet = fg.audit(noisy_loss, x, correct_grad(x), args=(1e-10,),
                     segments={"W": (40, 40), "b": (400,)})
    assert quiet.status == "passed" and quiet.passed, str(quiet)


# -- every summary number accounts for nan, noise and inconclusive coordinates -------------------


def nan_at_one_point(t):
    """Finite at theta; not finite once t[5] passes 1.0 (theta[5] sits just below it)."""
    return float(np.sum(t * t)) if t[5] <= 1.0 else float("nan")


def test_nan_at_one_perturbed_point_shows_in_every_summary_number():
    theta = np.linspace(-0.9, 0.9, 12)
    theta[5] = 1.0 - 1e-9
    report = fg.check(nan_at_one_point, theta, 2 * theta, segments={"W": (3, 2), "b": (6,)},
                      samples="all")
    assert report.status == "failed" and [c.index for c in report.failures] == [5]
    assert report.nan == 1 and report.segments["W"].nan == 1 and report.segments["b"].nan == 0
    assert np.isnan(report.max_rel_error_all) and np.isfinite(report.max_rel_error)
    assert np.isnan(report.segments["W"].max_rel_error_all)
    header, *rest = str(report).splitlines()
    assert "over 11 judged of 12 coordinates (nan over all: 1 nan)" in header
    row = next(line for line in rest if line.split()[:1] == ["W"])
    assert "1 nan" in row and "nan" in row.split() and "FAILED" in row
    data = json.loads(json.dumps(report.to_dict()))
    assert data["max_rel_error_all"] is None and data["nan"] == 1


def test_worst_coordinates_counts_the_ones_not_shown():
    theta = np.linspace(-1.0, 1.0, 16)
    report = fg.check(lambda t: float(t @ t), theta, 3 * theta, samples="all")
    assert len(report.failures) == 16
    assert "  ... and 8 more (8 failed)" in report.table(worst=8).splitlines()
    assert "... and" not in report.table(worst=16)


def test_measured_noise_is_mentioned_only_when_it_changed_a_verdict():
    rng = np.random.default_rng(7)
    A, b = rng.standard_normal((50, 40)), rng.standard_normal(50)
    theta = rng.standard_normal(40)
    grad = A.T @ (A @ theta - b)
    grad[3] *= 1.5
    report = fg.check(lambda t: float(0.5 * np.sum((A @ t - b) ** 2)), theta, grad,
                      samples="all")
    assert [c.index for c in report.failures] == [3]
    assert report.noise_sigma is not None  # measured: a coordinate failed ...
    assert report.noise_note == "" and "noisier" not in str(report)  # ... and it changed nothing
    noisy = fg.check(noisy_loss, theta, correct_grad(theta), args=(1e-9,), samples="all")
    assert noisy.passed and "noisier than assumed" in str(noisy)


def test_many_kink_crossings_suggest_fewer_data_points():
    rng = np.random.default_rng(11)
    theta = rng.standard_normal(20)
    report = fg.check(abs_with_kinks_near(theta), theta, -np.ones(20), samples="all")
    assert report.passed and report.kink_fraction == 1.0
    assert "cross kinks" in str(report) and "fewer data points" in str(report)
    assert "kinks=" in str(report)
    smooth = fg.check(lambda t: float(t @ t), theta, 2 * theta, samples="all")
    assert smooth.kink_fraction == 0.0 and "cross kinks" not in str(smooth)


def terms_loss(t):
    return {"data": float(np.sum(np.sin(t))), "reg": float(0.1 * t @ t)}


def test_every_kind_of_report_is_json_serializable():
    theta = np.linspace(-1.0, 1.0, 10)
    terms = fg.check(terms_loss, theta, {"data": np.cos(theta), "reg": 0.2 * theta},
                     samples="all")
    kinks = fg.check(abs_with_kinks_near(theta), theta, -np.ones(10), samples="all")
    theta_nan = theta.copy()
    theta_nan[5] = 1.0 - 1e-9
    nan = fg.check(nan_at_one_point, theta_nan, 2 * theta_nan, samples="all")
    with ThreadPoolExecutor(2) as pool:
        executor = fg.check(lambda t: float(t @ t), theta, 2 * theta, executor=pool)
    inconclusive = fg.check(noisy_loss, theta, correct_grad(theta), args=(1e-3,),
                            samples="all")
    audit = fg.audit(lambda t: float(t @ t), theta, 2 * theta)
    expected = {"terms": "passed", "kinks": "passed", "nan": "failed", "executor": "passed",
                "inconclusive": "inconclusive", "audit": "passed"}
    for name, report in [("terms", terms), ("kinks", kinks), ("nan", nan),
                         ("executor", executor), ("inconclusive", inconclusive),
                         ("audit", audit)]:
        data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
        assert data["status"] == expected[name], (name, str(report))


def test_the_counts_of_every_row_add_up():
    """judged + noise + nan + inconclusive + kink verdicts = checked, in every row and header."""
    theta = np.linspace(-0.9, 0.9, 12)
    theta[5] = 1.0 - 1e-9
    on_kink = np.array([1.0, 1.0, 0.3])
    reports = [
        fg.check(nan_at_one_point, theta, 2 * theta, samples="all"),
        fg.check(noisy_loss, theta, correct_grad(theta), args=(1e-3,), samples="all"),
        fg.check(lambda t: max(t[0], t[1]) + t[2] ** 2, on_kink, np.array([1.0, 0.0, 0.6]),
                 samples="all"),
        fg.check(terms_loss, theta[:10], {"data": np.cos(theta[:10]), "reg": 0.2 * theta[:10]},
                 samples="all"),
    ]
    for report in reports:
        rows = [s for rows in report.terms.values() for s in rows.values()] or \
            list(report.segments.values())
        for s in rows:
            assert s.judged + s.noise + s.nan + s.inconclusive + s.on_kink == s.checked, s
        assert report.judged == sum(c.verdict in ("excellent", "ok", "suspect", "wrong")
                                    for c in report.coords)
    assert reports[2].segments["theta"].on_kink == 2 and reports[2].judged == 1
    # a segment whose every coordinate was excused is "not judged", not "excellent" at 0.0
    segs = {"big": (2,), "tiny": (2,)}
    loss = lambda t: float(1e12 * (t[0] ** 2 + t[1] ** 2) + 1e-9 * (t[2] + t[3]))  # noqa: E731
    theta = np.array([1.0, 2.0, 0.5, 0.5])
    report = fg.check(loss, theta, np.array([2e12, 4e12, 1e-9, 1e-9]), segments=segs,
                      samples="all")
    tiny = report.segments["tiny"]
    assert tiny.judged == 0 and tiny.noise == 2 and tiny.verdict == "not judged", str(report)
    assert "over 1 judged of 3 coordinates (" in str(reports[2]) and "2 kink)" in str(reports[2])
