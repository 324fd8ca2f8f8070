"""fastgrad.monitor on real training runs: a numpy two-layer net on scikit-learn's 8x8 digits.

The good learning rate is ``demo.GOOD_LR`` (0.1, plain SGD, batch 32); "100x too high/low" are
10.0 and 0.001.  Each run takes well under a second; they are trained once per module.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", reason='the training runs need scikit-learn: pip install -e ".[test]"')

from monitor_support import run_without  # noqa: E402

from fastgrad.monitor import Finding, TrainingMonitor, filter_grid, filter_smoothness  # noqa: E402
from fastgrad.monitor.cli import main as monitor_main  # noqa: E402
from fastgrad.monitor.demo import GOOD_LR, digits_grad, digits_loss, train_digits  # noqa: E402

LR_KINDS = {"lr_too_high", "lr_too_low", "no_learning"}


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


def by_kind(findings: list[Finding], kind: str) -> Finding:
    matches = [f for f in findings if f.kind == kind]
    assert matches, f"no {kind} finding in {kinds(findings)}"
    return matches[0]


@pytest.fixture(scope="module")
def runs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in the diverging run
        return {
            "good": train_digits(lr=GOOD_LR, epochs=8),
            "high": train_digits(lr=100 * GOOD_LR, epochs=8),
            "low": train_digits(lr=GOOD_LR / 100, epochs=8),
            "tiny": train_digits(lr=GOOD_LR, train_size=50, batch_size=10, reg=0.0, epochs=100),
            "tanh_bad": train_digits(lr=GOOD_LR, activation="tanh", weight_scale=3.0, epochs=8),
            "tanh_ok": train_digits(lr=GOOD_LR, activation="tanh", epochs=8),
        }


# ---------------------------------------------------------------- findings on digits runs
def test_good_learning_rate_trains_and_gets_no_learning_rate_finding(runs):
    mon = runs["good"].monitor
    assert mon.epochs()[-1]["val_acc"] > 0.85  # it really learned
    findings = mon.diagnose()
    assert not LR_KINDS & set(kinds(findings)), findings
    assert "overfitting" not in kinds(findings)


def test_learning_rate_100x_too_high_is_reported(runs):
    findings = runs["high"].monitor.diagnose()
    finding = by_kind(findings, "lr_too_high")
    assert finding.severity == "error"
    assert finding.evidence["trend_end"] > finding.evidence["initial_loss"]
    assert "lr_too_low" not in kinds(findings)


def test_learning_rate_100x_too_low_is_reported(runs):
    findings = runs["low"].monitor.diagnose()
    finding = by_kind(findings, "lr_too_low")
    assert finding.evidence["linearity"] > 0.5  # a nearly straight, slow decrease
    assert 0 < finding.evidence["relative_drop"] < 0.5
    assert "lr_too_high" not in kinds(findings)
    assert "update_ratio_low" in kinds(findings)


def test_tiny_training_set_without_regularization_overfits(runs):
    findings = runs["tiny"].monitor.diagnose()
    finding = by_kind(findings, "overfitting")
    assert finding.evidence["train_acc"] > 0.95
    assert finding.evidence["gap"] >= 0.1
    assert finding.evidence["gap"] > finding.evidence["early_gap"]
    assert "overfitting" not in kinds(runs["good"].monitor.diagnose())


def test_badly_scaled_tanh_init_saturates(runs):
    finding = by_kind(runs["tanh_bad"].monitor.diagnose(), "saturated_units")
    assert finding.evidence["layer"] == "hidden"
    assert finding.evidence["saturated_fraction"] > 0.5
    assert "saturated_units" not in kinds(runs["tanh_ok"].monitor.diagnose())


def test_relu_layer_killed_by_huge_learning_rate_has_dead_units(runs):
    finding = by_kind(runs["high"].monitor.diagnose(), "dead_units")
    assert finding.evidence["dead_unit_fraction"] == 1.0
    assert "dead_units" not in kinds(runs["good"].monitor.diagnose())


def test_zero_learning_rate_is_no_learning():
    findings = train_digits(lr=0.0, epochs=3).monitor.diagnose()
    assert kinds(findings)[0] == "no_learning"
    assert "lr_too_low" not in kinds(findings)


def test_batch_of_one_is_reported_as_too_small(runs):
    findings = train_digits(lr=GOOD_LR, batch_size=1, epochs=1).monitor.diagnose()
    finding = by_kind(findings, "batch_too_small")
    assert finding.evidence["noise_ratio"] > 1.0
    assert "batch_too_small" not in kinds(runs["good"].monitor.diagnose())


def test_findings_are_json_serializable_and_ordered_by_severity(runs):
    findings = runs["high"].monitor.diagnose()
    json.dumps([f.to_dict() for f in findings])
    ranks = [("error", "warning", "info").index(f.severity) for f in findings]
    assert ranks == sorted(ranks)


# ---------------------------------------------------------------- filters
def test_filter_smoothness_tells_trained_digit_filters_from_noise(runs):
    W1 = runs["good"].params["W1"]  # (64, 32): one filter per column
    noise = np.random.default_rng(0).standard_normal(W1.shape) * W1.std()
    trained, random = filter_smoothness(W1, (8, 8)), filter_smoothness(noise, (8, 8))
    assert trained > 0.2 > 0.05 > abs(random)
    assert "noisy_filters" not in kinds(runs["good"].monitor.diagnose())
    mon = TrainingMonitor()
    mon.log_filters(noise, (8, 8))
    assert kinds(mon.diagnose()) == ["noisy_filters"]


def test_filter_grid_layouts_agree_and_leave_w_alone(runs):
    W1 = runs["good"].params["W1"].copy()
    W1.setflags(write=False)
    grid = filter_grid(W1, image_shape=(8, 8))
    assert grid.ndim == 2 and grid.shape == (6 * 8 + 7, 6 * 8 + 7)
    np.testing.assert_array_equal(grid, filter_grid(W1.T, (8, 8)))
    np.testing.assert_array_equal(grid, filter_grid(W1.T.reshape(32, 8, 8), (8, 8)))
    # the first filter is column 0 scaled to [0, 1], row-major 8x8
    first = W1[:, 0].reshape(8, 8)
    np.testing.assert_allclose(grid[1:9, 1:9], (first - first.min()) / np.ptp(first))
    np.testing.assert_array_equal(W1, runs["good"].params["W1"])


def test_filter_grid_color_and_bad_input():
    rgb = filter_grid(np.random.default_rng(1).standard_normal((5 * 5 * 3, 4)), (5, 5, 3))
    assert rgb.shape == (2 * 5 + 3, 2 * 5 + 3, 3)
    with pytest.raises(ValueError, match="W: shape"):
        filter_grid(np.zeros((63, 10)), (8, 8))
    with pytest.raises(ValueError, match="image_shape"):
        filter_grid(np.zeros((64, 10)), (8, 8, 2))
    with pytest.raises(TypeError, match="image_shape"):
        filter_grid(np.zeros((64, 10)), 8)


# ---------------------------------------------------------------- gradient checks
def test_gradcheck_waits_for_warm_up_then_records_the_report():
    X, y = train_digits(lr=GOOD_LR, epochs=1).data[:2]
    run = train_digits(lr=GOOD_LR, epochs=1)
    theta = run.theta.copy()
    fresh = TrainingMonitor(segments=run.segments)
    fresh.log_loss(0, 2.3)
    with pytest.warns(RuntimeWarning, match="warm-up"):
        assert fresh.gradcheck(digits_loss, theta, digits_grad, args=(X[:5], y[:5])) is None
    assert fresh.gradchecks() == []
    mon = run.monitor
    assert mon.warmed_up
    report = mon.gradcheck(digits_loss, theta, digits_grad, args=(X[:5], y[:5]))
    assert report.passed
    record = mon.gradchecks()[-1]
    assert record["passed"] and record["step"] == mon.losses()[0][-1]
    assert set(record["report"]["segments"]) == {"W1", "b1", "W2", "b2"}
    np.testing.assert_array_equal(theta, run.theta)  # the check left theta alone


def test_failed_gradcheck_is_the_first_finding(runs, tmp_path):
    run = train_digits(lr=100 * GOOD_LR, epochs=2)
    X, y = run.data[:2]
    mon = TrainingMonitor(segments=run.segments)
    for step, loss in enumerate(np.linspace(2.3, 1.0, 30)):
        mon.log_loss(step, loss)
    mon.log_loss(30, float("nan"))  # also an lr_too_high error: the failed check still comes first
    sizes = [int(np.prod(s)) for s in run.segments.values()]
    wrong_b1 = np.r_[np.ones(sizes[0]), 2 * np.ones(sizes[1]), np.ones(sizes[2] + sizes[3])]
    theta = train_digits(lr=GOOD_LR, epochs=1).theta
    report = mon.gradcheck(digits_loss, theta, lambda t, *a: digits_grad(t, *a) * wrong_b1,
                           args=(X[:5], y[:5]))
    assert not report.passed
    findings = mon.diagnose()
    assert kinds(findings)[:2] == ["gradcheck_failed", "lr_too_high"]
    assert findings[0].evidence["failed_segments"] == ["b1"]
    mon.save(tmp_path / "bad.jsonl")
    assert monitor_main([str(tmp_path / "bad.jsonl"), "--no-plots"]) == 1


# ---------------------------------------------------------------- log: save / load
def assert_same_run(a: TrainingMonitor, b: TrainingMonitor) -> None:
    np.testing.assert_array_equal(a.losses()[0], b.losses()[0])
    np.testing.assert_array_equal(a.losses()[1], b.losses()[1])
    assert a.epochs() == b.epochs()
    steps_a, ratios_a = a.update_ratios()
    steps_b, ratios_b = b.update_ratios()
    np.testing.assert_array_equal(steps_a, steps_b)
    assert ratios_a.keys() == ratios_b.keys()
    for name in ratios_a:
        np.testing.assert_array_equal(ratios_a[name], ratios_b[name])
    assert a.segment_shapes() == b.segment_shapes()
    assert a.layers == b.layers
    for kind in ("activations", "gradients"):
        strip = lambda hists: {k: [{**h, "partial": None} for h in v] for k, v in hists.items()}  # noqa: E731
        assert strip(a.histograms(kind)) == strip(b.histograms(kind))
    assert [f["smoothness"] for f in a.filters()] == [f["smoothness"] for f in b.filters()]
    assert a.gradchecks() == b.gradchecks()
    assert [f.to_dict() for f in a.diagnose()] == [f.to_dict() for f in b.diagnose()]


def test_save_load_round_trip(runs, tmp_path):
    for name in ("good", "high", "tanh_bad"):
        mon = runs[name].monitor
        path = tmp_path / f"{name}.jsonl"
        mon.save(path)
        for line in path.read_text().splitlines():
            json.loads(line, parse_constant=lambda name: pytest.fail(f"{name}: not strict JSON"))
        assert_same_run(mon, TrainingMonitor.load(path))


def test_save_appends_so_a_running_job_can_be_read(tmp_path):
    path = tmp_path / "run.jsonl"
    mon = TrainingMonitor(segments={"W": (4, 2), "b": (2,)})
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(10)
    lines_before, previous_text = 0, ""
    for epoch in range(3):
        for step in range(epoch * 5, epoch * 5 + 5):
            mon.log_loss(step, 2.0 / (step + 1))
            mon.log_update(theta, 1e-3 * rng.standard_normal(10))
            mon.log_activations("h", np.tanh(rng.standard_normal((8, 2))))
        mon.save(path)  # mid-epoch: the open histogram is saved as "partial"
        text = path.read_text()
        assert text.count("\n") > lines_before
        assert text.startswith(previous_text)  # appended, never rewritten
        previous_text, lines_before = text, text.count("\n")
        reader = TrainingMonitor.load(path)
        assert reader.losses()[1].size == 5 * (epoch + 1)
        assert [h["epoch"] for h in reader.histograms("activations")["h"]] == list(range(epoch + 1))
        mon.log_epoch(epoch, train_acc=0.5, val_acc=0.4)
    mon.save(path)
    assert_same_run(mon, TrainingMonitor.load(path))
    # a half-written last line (the writer is busy) is skipped, not an error
    with open(path, "a") as stream:
        stream.write('{"type": "loss", "step": [99')
    assert TrainingMonitor.load(path).losses()[1].size == 15


def test_load_rejects_what_is_not_a_monitor_log(tmp_path):
    with pytest.raises(FileNotFoundError):
        TrainingMonitor.load(tmp_path / "missing.jsonl")
    (tmp_path / "other.jsonl").write_text('{"type": "loss", "step": [], "loss": []}\n')
    with pytest.raises(ValueError, match="meta"):
        TrainingMonitor.load(tmp_path / "other.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"type": "meta", "format": "fastgrad.monitor"}\nxx\n{}\n')
    with pytest.raises(ValueError, match="line 2"):
        TrainingMonitor.load(tmp_path / "broken.jsonl")


# ---------------------------------------------------------------- command line
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOT_REASON = 'plots need matplotlib: pip install -e ".[test]" or ".[plot]"'


def test_cli_writes_pngs_that_open_as_images(runs, tmp_path, capsys):
    matplotlib_image = pytest.importorskip("matplotlib.image", reason=PLOT_REASON)
    log = tmp_path / "run.jsonl"
    runs["high"].monitor.save(log)
    outdir = tmp_path / "plots"
    assert monitor_main([str(log), "-o", str(outdir)]) == 0
    out = capsys.readouterr().out
    assert "lr_too_high" in out and "dead_units" in out
    names = sorted(os.listdir(outdir))
    assert names == sorted(["loss.png", "accuracy.png", "update_ratios.png", "activations.png",
                            "gradients.png", "filters.png"])
    for name in names:
        data = (outdir / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE
        width, height = struct.unpack(">II", data[16:24])
        image = matplotlib_image.imread(outdir / name)
        assert image.shape[:2] == (height, width) and width >= 640 and height >= 300, name
        assert np.ptp(image[..., :3]) > 0  # not a blank canvas


def test_cli_json_and_bad_input(runs, tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    runs["low"].monitor.save(log)
    assert monitor_main([str(log), "--json", "--no-plots"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert "lr_too_low" in [f["kind"] for f in listed]
    assert monitor_main([str(tmp_path / "missing.jsonl")]) == 2
    assert "no such log" in capsys.readouterr().err
    assert monitor_main([]) == 2
    assert monitor_main([str(log), "--bogus"]) == 2
    (tmp_path / "junk.jsonl").write_text("not json\nnot json\n")
    assert monitor_main([str(tmp_path / "junk.jsonl"), "--no-plots"]) == 2
    (tmp_path / "afile").write_text("")
    assert monitor_main([str(log), "-o", str(tmp_path / "afile")]) == 2


def test_plot_returns_paths(runs, tmp_path):
    pytest.importorskip("matplotlib", reason=PLOT_REASON)
    paths = runs["good"].monitor.plot(tmp_path / "out")
    assert [os.path.basename(p) for p in paths][:3] == ["loss.png", "accuracy.png",
                                                      "update_ratios.png"]
    assert all(open(p, "rb").read(8) == PNG_SIGNATURE for p in paths)


def test_import_without_matplotlib_and_a_clear_error_on_plot(tmp_path):
    out = run_without("matplotlib", f"""
import fastgrad.monitor
mon = fastgrad.monitor.TrainingMonitor()
mon.log_loss(0, 1.0)
try:
    mon.plot({str(tmp_path)!r})
except ImportError as error:
    print("ImportError:", error)
""")
    assert "pip install fastgrad[plot]" in out


def test_fastgrad_monitor_takes_the_monitors_own_arguments(runs, tmp_path, capsys):
    from fastgrad.cli import main as fastgrad_main

    log = tmp_path / "run.jsonl"
    runs["low"].monitor.save(log)
    assert fastgrad_main(["monitor", str(log), "--json", "--no-plots"]) == 0
    assert "lr_too_low" in [f["kind"] for f in json.loads(capsys.readouterr().out)]
    pytest.importorskip("matplotlib")
    # the same default folder as python -m fastgrad.monitor.cli: next to the log
    assert fastgrad_main(["monitor", str(log), "--dpi", "50"]) == 0
    assert (tmp_path / "run-plots" / "loss.png").exists()
    assert fastgrad_main(["monitor", str(log), "--no-plots", "--dpi", "x"]) == 2


def test_strict_fails_on_an_error_finding(runs, tmp_path, capsys):
    from fastgrad.cli import main as fastgrad_main

    high, good = tmp_path / "high.jsonl", tmp_path / "good.jsonl"
    runs["high"].monitor.save(high)  # lr_too_high and dead_units: severity "error"
    runs["good"].monitor.save(good)
    assert "error" in [f.severity for f in runs["high"].monitor.diagnose()]
    assert fastgrad_main(["monitor", str(high), "--no-plots"]) == 0
    assert fastgrad_main(["monitor", str(high), "--no-plots", "--strict"]) == 1
    assert monitor_main([str(high), "--no-plots", "--strict"]) == 1
    assert fastgrad_main(["monitor", str(good), "--no-plots", "--strict"]) == 0
    low = tmp_path / "low.jsonl"  # warnings and info only: not a failure, even with --strict
    runs["low"].monitor.save(low)
    assert "error" not in {f.severity for f in runs["low"].monitor.diagnose()}
    assert fastgrad_main(["monitor", str(low), "--no-plots", "--strict"]) == 0
    result = subprocess.run([sys.executable, "-m", "fastgrad.cli", "monitor", str(high),
                             "--no-plots", "--strict"], capture_output=True, text=True,
                            timeout=300, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 1, result.stderr
    assert "lr_too_high [error]" in result.stdout


def test_cli_on_a_saved_log_says_what_diagnose_said_in_process(tmp_path, capsys):
    mon = TrainingMonitor()
    for step, loss in enumerate([2.3, 2.0, 9.0, float("inf")]):
        mon.log_loss(step, loss)
    (live,) = mon.diagnose()
    assert "the loss became inf at step 3" in live.message
    mon.save(tmp_path / "run.jsonl")
    assert monitor_main([str(tmp_path / "run.jsonl"), "--json", "--no-plots"]) == 0
    (read,) = json.loads(capsys.readouterr().out)
    assert read == live.to_dict()


def test_a_gradcheck_crossing_many_kinks_suggests_fewer_data_points(tmp_path):
    from fastgrad.monitor.demo import init_params, load_digits_split

    # ReLU units right at their kink: a 1e-4 init puts every pre-activation near 0
    theta, segments = init_params(weight_scale=1e-4)
    X, y = load_digits_split()[:2]
    mon = TrainingMonitor(segments=segments)
    mon.log_loss(0, 2.3)
    report = mon.gradcheck(digits_loss, theta, digits_grad, args=(X[:256], y[:256]), force=True)
    crossed = sum(c.kink for c in report.coords)
    assert crossed > 0.1 * len(report.coords)  # the check itself says so
    finding = by_kind(mon.diagnose(), "many_kinks")
    assert finding.severity == "warning"
    assert "fewer data points" in finding.message and "kinks=" in finding.message
    assert (finding.evidence["kinks"], finding.evidence["checked"]) == (crossed, len(report.coords))
    assert finding.evidence["fraction"] == pytest.approx(crossed / len(report.coords), rel=1e-3)
    assert set(finding.evidence["kinks_per_segment"]) <= {"W1", "b1"}  # the ReLU layer's inputs
    mon.save(tmp_path / "kinks.jsonl")
    assert by_kind(TrainingMonitor.load(tmp_path / "kinks.jsonl").diagnose(),
                   "many_kinks").to_dict() == finding.to_dict()
    # the advice works: two data points, far fewer kinks, no finding
    report = mon.gradcheck(digits_loss, theta, digits_grad, args=(X[:2], y[:2]), force=True)
    assert sum(c.kink for c in report.coords) <= 0.1 * len(report.coords)
    assert "many_kinks" not in kinds(mon.diagnose())


def drawn(fig):
    """The figure rendered (Agg), so that text and legend positions are final."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    return fig


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_every_view_has_labelled_axes_and_legends_beside_the_data(runs):
    pytest.importorskip("matplotlib")
    from fastgrad.monitor.plots import VIEWS

    for run in ("good", "tanh_bad"):
        for name, draw in VIEWS:
            fig = drawn(draw(runs[run].monitor))
            assert fig.get_figwidth() * 100 >= 640, name  # at the default 100 dpi
            axes = [ax for ax in fig.axes if ax.axison]
            for ax in axes:
                assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
                assert min(t.get_fontsize() for t in ax.get_xticklabels()) >= 9, name
            legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + fig.legends
            assert legends or name == "filters.png", name
            for legend in legends:
                for ax in axes:
                    assert not overlaps(legend.get_window_extent(), ax.get_window_extent()), name


def test_saturation_share_is_said_in_words(runs):
    pytest.importorskip("matplotlib")
    from fastgrad.monitor.plots import histogram_figure

    mon = runs["tanh_bad"].monitor
    hidden = mon.histograms("activations")["hidden"][-1]
    title = histogram_figure(mon, "activations").axes[0].get_title()
    assert title.startswith("layer hidden\n")
    share = f"{100 * hidden['saturated_fraction']:.0f}%"
    assert f"saturated (|value| >= 0.99): {share}" in title
    assert f"epoch {hidden['epoch']}:" in title


def test_a_failed_gradient_check_is_marked_on_the_loss_curve_at_its_step():
    pytest.importorskip("matplotlib")
    from fastgrad.monitor.plots import loss_figure

    mon = TrainingMonitor()
    theta = np.linspace(-1.0, 1.0, 6)
    for step in range(40):
        mon.log_loss(step, 2.0 / (1 + step))
        if step in (9, 19, 29, 39):
            mon.log_epoch(step // 10)
        if step == 19:
            mon.gradcheck(lambda t: 0.5 * float(t @ t), theta, lambda t: t.copy())
        if step == 29:  # a wrong gradient: twice the true one
            mon.gradcheck(lambda t: 0.5 * float(t @ t), theta, lambda t: 2 * t)
    assert [g["passed"] for g in mon.gradchecks()] == [True, False]
    ax = loss_figure(mon).axes[0]
    marks = {c.get_label(): c.get_offsets() for c in ax.collections}
    # epoch 2 ends at step 29: 3 epochs trained
    np.testing.assert_allclose(marks["gradient check FAILED"], [[3.0, 2.0 / 30]])
    np.testing.assert_allclose(marks["gradient check passed"], [[2.0, 2.0 / 20]])
    assert any(np.allclose(line.get_xdata(), 3.0) for line in ax.get_lines())  # the step's line
