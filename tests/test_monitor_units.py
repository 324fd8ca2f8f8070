"""fastgrad.monitor building blocks against plain numpy references, and input checking."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastgrad.monitor import TrainingMonitor
from fastgrad.monitor.diagnose import loss_trend
from fastgrad.monitor.filters import filter_smoothness_scores
from fastgrad.monitor.histograms import HistogramAccumulator

from naive import naive_summary

BINS = 48


magnitudes = st.floats(min_value=-6, max_value=6)
# no subnormal results: numpy's reference cannot bin them (tested apart, below)
tiny_as_zero = st.floats(-1, 1).map(lambda x: 0.0 if abs(x) < 1e-200 else x)


@st.composite
def batch_lists(draw):
    units = draw(st.integers(1, 6))
    batches = []
    for _ in range(draw(st.integers(1, 4))):
        shape = (draw(st.integers(1, 12)), units)
        batch = draw(hnp.arrays(np.float64, shape, elements=tiny_as_zero))
        batch = batch * 10.0 ** draw(magnitudes)
        if draw(st.booleans()):  # exact powers of two: values on bin edges
            batch = np.round(batch * 4) / 4
        if draw(st.booleans()):
            batch = np.abs(batch)
        if draw(st.booleans()):
            batch[:, 0] = 0.0  # a dead unit
        batches.append(batch)
    return batches


@settings(max_examples=150, deadline=None)
@given(batch_lists())
def test_one_pass_histogram_matches_numpy(batches):
    acc = HistogramAccumulator(units=batches[0].shape[1], bins=BINS)
    originals = [b.copy() for b in batches]
    for batch in batches:
        acc.add(batch)
    summary = acc.summary()
    for batch, original in zip(batches, originals, strict=True):
        np.testing.assert_array_equal(batch, original)  # read, never written
    lo, hi = summary["range"]
    ref = naive_summary(batches, lo, hi, BINS)
    assert summary["count"] == ref["count"] and summary["finite"] == ref["finite"]
    assert sum(summary["counts"]) == ref["finite"]
    assert summary["min"] == ref["min"] and summary["max"] == ref["max"]
    if ref["max"] > 0 or ref["min"] < 0:
        top = max(abs(ref["min"]), abs(ref["max"]))
        assert hi == 2.0 ** round(math.log2(hi))  # a power of two...
        assert lo <= ref["min"] and ref["max"] < hi <= 2 * top  # ...about the smallest that covers
        assert np.array_equal(summary["counts"], ref["counts"])  # bins are exact
    scale = max(abs(ref["min"]), abs(ref["max"]), 1e-300)
    assert summary["mean"] == pytest.approx(ref["mean"], rel=1e-9, abs=1e-12 * scale)
    assert summary["std"] == pytest.approx(ref["std"], rel=1e-6, abs=1e-7 * scale)
    assert summary["zero_fraction"] == pytest.approx(ref["zero_fraction"])
    assert summary["saturated_fraction"] == pytest.approx(ref["saturated_fraction"])
    assert summary["dead_unit_fraction"] == pytest.approx(ref["dead_unit_fraction"])


@pytest.mark.parametrize("scale", [2.97738398e-161, 1e-300, 1.0, 1e200, 1e300])
def test_std_and_rms_keep_their_digits_at_extreme_magnitudes(scale):
    """The std of [x, 0, 0] is x sqrt(2) / 3 and its rms x / sqrt(3) at any magnitude: the squares
    of deviations near 1e-161 fall among the subnormals (hypothesis found a std 1.3% off, numpy's
    np.std as well) and above 1e154 overflow, unless counted in a unit near the values."""
    acc = HistogramAccumulator(units=1)
    acc.add(np.array([[scale], [0.0]]))
    acc.add(np.array([[0.0]]))  # a second batch: the sums of two batches combined
    s = acc.summary()
    assert s["mean"] == pytest.approx(scale / 3, rel=1e-12, abs=0)
    assert s["std"] == pytest.approx(scale * math.sqrt(2) / 3, rel=1e-12, abs=0)
    assert s["rms"] == pytest.approx(scale / math.sqrt(3), rel=1e-12, abs=0)


def test_batches_of_very_different_magnitudes_combine():
    acc = HistogramAccumulator(units=2)
    acc.add(np.array([[1e-200, -3e-200]]))
    acc.add(np.array([[1e100, 3e100]]))
    s = acc.summary()
    values = np.array([1e100, 3e100]) / 1e100  # the tiny ones do not count next to these
    assert s["mean"] == pytest.approx(values.sum() / 4 * 1e100, rel=1e-12, abs=0)
    assert s["std"] == pytest.approx(np.std([0, 0, 1.0, 3.0]) * 1e100, rel=1e-12, abs=0)


@pytest.mark.parametrize("first", [5e-324, 1.2e-313, -1e-300, 1e300, 1.7e308])
def test_histogram_range_from_extreme_first_values(first):
    acc = HistogramAccumulator(units=2)
    acc.add(np.array([[0.0, first], [-3e-6, 2.0]]))  # subnormal start, then a wide jump
    s = acc.summary()
    lo, hi = s["range"]
    assert sum(s["counts"]) == 4 and 0 < hi <= 2.0**1023 and lo == -hi
    assert hi >= min(abs(first), 2.0**1023) and hi >= 2.0


def test_histogram_counts_nan_and_inf_apart():
    acc = HistogramAccumulator(units=3)
    acc.add(np.array([[np.nan, 1.0, -np.inf], [0.5, 0.0, 2.0]], dtype=np.float32))
    s = acc.summary()
    assert (s["count"], s["finite"], s["max"]) == (6, 4, 2.0)
    assert s["nonfinite_fraction"] == pytest.approx(2 / 6)


def test_gradient_histograms_also_bin_log_magnitudes():
    mon = TrainingMonitor()
    mon.log_gradients("h", np.array([[1e-6, -1e-3, 0.0, 10.0]]))
    entry = mon.histograms("gradients")["h"][-1]
    lo, hi = entry["log10_range"]
    edges = np.linspace(lo, hi, len(entry["log10_counts"]) + 1)
    expected, _ = np.histogram(np.log10([1e-6, 1e-3, 10.0]), bins=edges)
    np.testing.assert_array_equal(entry["log10_counts"], expected)


def test_update_ratio_per_segment_without_touching_theta():
    segs = {"W": (2, 3), "b": (3,)}
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(9)
    update = 1e-3 * rng.standard_normal(9)
    theta.setflags(write=False)
    update.setflags(write=False)
    mon = TrainingMonitor(segments=segs)
    mon.log_loss(7, 1.0)
    mon.log_update(theta, update)
    steps, ratios = mon.update_ratios()
    assert steps.tolist() == [7]
    for name, part in (("W", slice(0, 6)), ("b", slice(6, 9))):
        expected = np.linalg.norm(update[part]) / np.linalg.norm(theta[part])
        assert ratios[name][0] == pytest.approx(expected, rel=1e-12)
    # the same with dicts of arrays, and with a fastgrad.SegmentMap
    mon2 = TrainingMonitor()
    mon2.log_update({"W": theta[:6].reshape(2, 3), "b": theta[6:]},
                    {"W": update[:6].reshape(2, 3), "b": update[6:]})
    for name in ratios:
        assert mon2.update_ratios()[1][name][0] == pytest.approx(ratios[name][0], rel=1e-12)
    assert mon2.segment_shapes() == {"W": [2, 3], "b": [3]}
    fastgrad = pytest.importorskip("fastgrad")
    if hasattr(fastgrad, "SegmentMap"):
        mon3 = TrainingMonitor(segments=fastgrad.SegmentMap.from_shapes(segs))
        mon3.log_update(theta, update)
        assert mon3.update_ratios()[1]["b"][0] == pytest.approx(ratios["b"][0], rel=1e-12)


def test_update_ratio_findings_name_the_segment():
    mon = TrainingMonitor(segments={"W1": (10, 10), "W2": (10, 10), "b": (10,)})
    theta = np.ones(210)
    for _ in range(20):
        update = np.r_[np.full(100, 0.1), np.full(100, 1e-6), np.full(10, 0.5)]
        mon.log_update(theta, update)
    found = {(f.kind, f.evidence["segment"]) for f in mon.diagnose()}
    assert found == {("update_ratio_high", "W1"), ("update_ratio_low", "W2")}  # b: bias, not judged


def test_dead_saturated_vanishing_and_exploding_on_synthetic_layers():
    rng = np.random.default_rng(0)
    mon = TrainingMonitor()
    relu = np.maximum(rng.standard_normal((64, 10)), 0)
    relu[:, :5] = 0.0  # 5 of 10 units never fire
    mon.log_activations("relu1", relu)
    mon.log_activations("tanh2", np.tanh(5 * rng.standard_normal((64, 10))))
    mon.log_gradients("relu1", 1e-7 * rng.standard_normal((64, 10)))
    mon.log_gradients("tanh2", rng.standard_normal((64, 10)))
    found = {f.kind: f for f in mon.diagnose()}
    assert found["dead_units"].evidence["dead_unit_fraction"] == pytest.approx(0.5)
    assert found["dead_units"].evidence["layer"] == "relu1"
    assert found["saturated_units"].evidence["layer"] == "tanh2"
    assert found["vanishing_gradients"].evidence["input_side"] == "relu1"
    assert "exploding_gradients" not in found
    mon2 = TrainingMonitor()
    mon2.log_gradients("first", 1e3 * rng.standard_normal((8, 4)))
    mon2.log_gradients("last", rng.standard_normal((8, 4)))
    assert [f.kind for f in mon2.diagnose()] == ["exploding_gradients"]
    mon3 = TrainingMonitor()
    mon3.log_gradients("first", np.array([[np.inf, 1.0]]))
    assert mon3.diagnose()[0].kind == "exploding_gradients"


def test_nan_loss_is_divergence():
    mon = TrainingMonitor()
    for step, loss in enumerate([2.3, 2.0, 5.0, 80.0, float("inf")]):
        mon.log_loss(step, loss)
    (finding,) = mon.diagnose()
    assert (finding.kind, finding.evidence["step"], finding.evidence["last_finite_loss"]) == (
        "lr_too_high", 4, 80.0)


def test_histograms_are_filed_per_epoch():
    mon = TrainingMonitor()
    for epoch in range(3):
        for _ in range(2):
            mon.log_activations("h", np.full((4, 2), epoch + 1.0))
        mon.log_epoch(epoch + 10)
    mon.log_activations("h", np.zeros((4, 2)))
    entries = mon.histograms("activations")["h"]
    assert [(e["epoch"], e["partial"], e["count"], e["mean"]) for e in entries] == [
        (10, False, 16, 1.0), (11, False, 16, 2.0), (12, False, 16, 3.0), (13, True, 8, 0.0)]


def test_warm_up_means_the_loss_started_to_fall():
    mon = TrainingMonitor()
    for step in range(10):
        mon.log_loss(step, 2.3)
    assert not mon.warmed_up
    for step in range(10, 20):
        mon.log_loss(step, 2.3 - 0.05 * (step - 9))
    assert mon.warmed_up


def test_filter_smoothness_scale_free_and_constant_filters_left_out():
    yy, xx = np.mgrid[0:8, 0:8]
    smooth = np.stack([np.sin(xx / 3.0 + k) + np.cos(yy / 4.0) for k in range(5)], axis=-1)
    W = smooth.reshape(64, 5)
    scores = filter_smoothness_scores(W, (8, 8))
    assert np.all(scores > 0.8)
    np.testing.assert_allclose(filter_smoothness_scores(1e-6 * W + 3, (8, 8)), scores)
    checker = ((xx + yy) % 2).reshape(64, 1) * 2.0 - 1
    assert filter_smoothness_scores(checker, (8, 8))[0] < -0.9
    assert np.isnan(filter_smoothness_scores(np.ones((64, 1)), (8, 8))[0])


def test_loss_trend_is_chunk_means():
    np.testing.assert_allclose(loss_trend(np.arange(6), np.arange(6.0), chunks=3), [0.5, 2.5, 4.5])


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda m: m.log_loss("3", 1.0), TypeError, "step"),
    (lambda m: m.log_loss(1, "x"), TypeError, "loss"),
    (lambda m: m.log_epoch(1, train_acc=91.0), ValueError, "train_acc"),
    (lambda m: m.log_epoch(1.5), TypeError, "epoch"),
    (lambda m: m.log_update(np.ones(5), np.ones(4)), ValueError, "size 4"),
    (lambda m: m.log_update(np.ones(5), np.ones(5)), ValueError, "segment map"),
    (lambda m: m.log_update({"a": np.ones(2)}, np.ones(2)), TypeError, "both"),
    (lambda m: m.log_activations("", np.ones(3)), TypeError, "layer"),
    (lambda m: m.log_activations("h", np.array([])), ValueError, "non-empty"),
    (lambda m: m.log_activations("h", np.array(["a"])), TypeError, "numeric"),
    (lambda m: m.log_filters(np.ones((10, 3)), (8, 8)), ValueError, "W: shape"),
    (lambda m: m.histograms("weights"), ValueError, "kind"),
])
def test_bad_input_names_the_argument(call, error, words):
    mon = TrainingMonitor(segments={"W": (2, 2)})
    with pytest.raises(error, match=words):
        call(mon)


def test_unit_count_must_stay_the_same_within_an_epoch():
    mon = TrainingMonitor()
    mon.log_activations("h", np.ones((4, 3)))
    with pytest.raises(ValueError, match="3 units"):
        mon.log_activations("h", np.ones((4, 5)))
    mon.log_epoch(0)
    mon.log_activations("h", np.ones((4, 5)))  # a new epoch may change it
    with pytest.raises(ValueError, match="bins"):
        TrainingMonitor(bins=10)


def test_logging_a_step_copies_nothing():
    """The monitor keeps summaries, not arrays: logging allocates a tiny share of the input."""
    import tracemalloc

    rng = np.random.default_rng(0)
    values = rng.standard_normal((256, 1024))
    theta = rng.standard_normal(1_000_000)
    update = 1e-3 * theta
    mon = TrainingMonitor(segments={"W": (1000, 990), "b": (10_000,)})
    mon.log_activations("h", values)  # compile / load the kernels
    mon.log_gradients("h", values)
    mon.log_update(theta, update)
    tracemalloc.start()
    try:
        for _ in range(5):
            mon.log_activations("h", values)
            mon.log_gradients("h", values)
            mon.log_update(theta, update)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.05 * min(values.nbytes, theta.nbytes), peak  # 2 MB and 8 MB inputs


def quadratic(theta):
    return 0.5 * float(theta @ theta)


def test_records_made_after_log_epoch_belong_to_that_epoch():
    mon = TrainingMonitor()
    W = np.random.default_rng(0).standard_normal((64, 4))
    theta = np.linspace(-1.0, 1.0, 6)
    for epoch in range(3):
        for step in range(epoch * 4, epoch * 4 + 4):
            mon.log_loss(step, 2.0 / (step + 1))
        if epoch == 2:  # mid-epoch: the epoch being run
            mon.log_filters(W, (8, 8))
            mon.gradcheck(quadratic, theta, lambda t: t.copy(), force=True)
        mon.log_epoch(epoch, train_acc=0.5)
        mon.log_filters(W, (8, 8))  # after log_epoch(epoch): the state at its end
        mon.gradcheck(quadratic, theta, lambda t: t.copy(), force=True)
    assert [f["epoch"] for f in mon.filters()] == [0, 1, 2, 2]
    assert [g["epoch"] for g in mon.gradchecks()] == [0, 1, 2, 2]
    mon.log_loss(12, 0.1)
    mon.log_filters(W, (8, 8))
    assert mon.filters()[-1]["epoch"] == 3


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_non_finite_values_read_back_as_they_were_logged(bad, tmp_path):
    mon = TrainingMonitor(segments={"W": (2, 2)})
    for step, loss in enumerate([2.3, 2.0, 1.5, bad]):
        mon.log_loss(step, loss)
    mon.log_update(np.ones(4), np.full(4, bad))
    mon.log_epoch(0, train_acc=0.5, val_loss=bad)
    mon.save(tmp_path / "run.jsonl")
    for line in (tmp_path / "run.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} is not strict JSON"))
    loaded = TrainingMonitor.load(tmp_path / "run.jsonl")
    np.testing.assert_array_equal(loaded.losses()[1], mon.losses()[1])  # inf stays inf
    np.testing.assert_array_equal(loaded.update_ratios()[1]["W"], mon.update_ratios()[1]["W"])
    assert str(loaded.epochs()[0]["val_loss"]) == str(bad)
    assert loaded.epochs()[0]["val_acc"] is None  # not given: still None
    live, read = mon.diagnose(), loaded.diagnose()
    assert [f.to_dict() for f in live] == [f.to_dict() for f in read]
    assert [f.kind for f in read] == ["lr_too_high", "nonfinite_values"]
    assert f"the loss became {bad} at step 3" in read[0].message
    # the other series' NaN/inf are reported once, by name and step, not printed anywhere
    assert read[1].evidence["series"] == [
        {"series": "update ratio of W", "count": 1, "first_step": 3},
        {"series": "val_loss", "count": 1, "first_epoch": 0}]


def _public_monitor_api():
    from fastgrad.monitor import cli, filter_grid, filter_smoothness

    methods = ["log_loss", "log_epoch", "log_update", "log_activations", "log_gradients",
               "log_filters", "gradcheck", "diagnose", "save", "load", "plot", "close"]
    return ([TrainingMonitor] + [getattr(TrainingMonitor, name) for name in methods]
            + [filter_grid, filter_smoothness, cli.main, cli.run, cli.configure_parser])


@pytest.mark.parametrize("obj", _public_monitor_api(), ids=lambda obj: obj.__qualname__)
def test_public_monitor_api_has_numpy_style_docstrings(obj):
    import inspect

    doc = inspect.getdoc(obj)
    target = obj.__init__ if inspect.isclass(obj) else obj
    signature = inspect.signature(target)
    params = [name for name in signature.parameters if name not in ("self", "cls")]
    sections = {line for line in doc.splitlines() if line and set(line) == {"-"}}
    assert sections, f"{obj.__qualname__}: no numpy-style sections"
    if params:
        assert "Parameters\n----------" in doc, obj.__qualname__
        for name in params:
            assert name in doc.split("Parameters\n----------")[1], (obj.__qualname__, name)
    returns = signature.return_annotation
    if not inspect.isclass(obj) and returns not in ("None", None, inspect.Signature.empty):
        assert "Returns\n-------" in doc, obj.__qualname__
    assert "Examples\n--------" in doc, obj.__qualname__


def test_version_1_logs_with_null_for_non_finite_still_load(tmp_path):
    path = tmp_path / "v1.jsonl"
    path.write_text('{"type":"meta","format":"fastgrad.monitor","version":1,"bins":48,'
                    '"layers":[],"segments":null}\n'
                    '{"type":"loss","step":[0,1,2],"loss":[2.3,2.0,null]}\n')
    mon = TrainingMonitor.load(path)
    np.testing.assert_array_equal(mon.losses()[1], [2.3, 2.0, math.nan])
    assert "the loss became nan at step 2" in mon.diagnose()[0].message
    path.write_text('{"type":"meta","format":"fastgrad.monitor","version":99}\n')
    with pytest.raises(ValueError, match="version 99"):
        TrainingMonitor.load(path)
