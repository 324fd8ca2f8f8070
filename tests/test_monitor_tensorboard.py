"""TrainingMonitor(tensorboard=DIR): a digits run read back from the event files it wrote.

The event files are TFRecord files (u64 length, u32 crc, an ``Event`` protobuf, u32 crc); they are
decoded with the protobuf classes tensorboardX ships, so the test needs no ``tensorboard``.
"""

from __future__ import annotations

import os
import struct
from collections import defaultdict

import numpy as np
import pytest

tensorboardX = pytest.importorskip("tensorboardX", reason="TensorBoard output needs tensorboardX")
pytest.importorskip("sklearn")

from monitor_support import run_without  # noqa: E402
from tensorboardX.proto.event_pb2 import Event  # noqa: E402

from fastgrad.monitor import TrainingMonitor  # noqa: E402
from fastgrad.monitor.demo import GOOD_LR, train_digits  # noqa: E402


def read_events(logdir) -> list[Event]:
    events = []
    for name in sorted(os.listdir(logdir)):
        if "tfevents" not in name:
            continue
        data = open(os.path.join(logdir, name), "rb").read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            payload = data[offset + 12:offset + 12 + length]
            assert len(payload) == length, f"{name}: torn record at byte {offset}"
            events.append(Event.FromString(payload))
            offset += 12 + length + 4
    return events


def by_tag(events: list[Event]) -> dict[str, list]:
    """{tag: [(step, value)]} where value is a float, a HistogramProto, an Image or text."""
    tags = defaultdict(list)
    for event in events:
        for value in event.summary.value:
            kind = value.WhichOneof("value")
            if kind == "simple_value":
                tags[value.tag].append((event.step, value.simple_value))
            elif kind == "histo":
                tags[value.tag].append((event.step, value.histo))
            elif kind == "image":
                tags[value.tag].append((event.step, value.image))
            elif kind == "tensor":  # text: a string tensor for the text plugin
                texts = [s.decode() for s in value.tensor.string_val]
                tags[value.tag].append((event.step, "\n".join(texts)))
    return dict(tags)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("tb") / "digits"
    with TrainingMonitor(segments={"W1": (64, 32), "b1": (32,), "W2": (32, 10), "b2": (10,)},
                         tensorboard=logdir) as mon:
        run = train_digits(lr=GOOD_LR, epochs=3, gradcheck=True, monitor=mon)
    return run, by_tag(read_events(logdir))


def test_scalars_loss_accuracies_and_update_ratios(digits_run):
    run, tags = digits_run
    steps, losses = run.monitor.losses()
    assert [s for s, _ in tags["loss"]] == steps.tolist()
    np.testing.assert_allclose([v for _, v in tags["loss"]], losses, rtol=1e-6)  # float32
    epochs = run.monitor.epochs()
    for tag, key in (("accuracy/train", "train_acc"), ("accuracy/val", "val_acc")):
        assert [s for s, _ in tags[tag]] == [e["step"] for e in epochs]
        np.testing.assert_allclose([v for _, v in tags[tag]], [e[key] for e in epochs], rtol=1e-6)
    update_steps, ratios = run.monitor.update_ratios()
    for segment in ("W1", "b1", "W2", "b2"):
        logged = tags[f"update_ratio/{segment}"]
        assert len(logged) == update_steps.size
        np.testing.assert_allclose([v for _, v in logged], ratios[segment], rtol=1e-6)
    assert [v for _, v in tags["gradcheck/passed"]] == [1.0] * len(run.monitor.gradchecks())


def test_histograms_per_layer_and_epoch(digits_run):
    run, tags = digits_run
    for kind in ("activations", "gradients"):
        for layer, entries in run.monitor.histograms(kind).items():
            logged = tags[f"{kind}/{layer}"]
            assert len(logged) == len(entries) == 3  # one per epoch
            for (step, histo), entry, epoch in zip(logged, entries, run.monitor.epochs(),
                                                   strict=True):
                assert step == epoch["step"]
                assert histo.num == entry["finite"]
                assert sum(histo.bucket) == entry["finite"]
                assert histo.min == pytest.approx(entry["min"])
                assert histo.max == pytest.approx(entry["max"])
                assert histo.sum == pytest.approx(entry["mean"] * entry["finite"], rel=1e-9,
                                                  abs=1e-9)


def test_first_layer_filters_as_an_image(digits_run):
    run, tags = digits_run
    images = tags["filters/W1"]
    assert len(images) == 3
    step, image = images[-1]
    assert step == run.monitor.epochs()[-1]["step"]
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    assert (image.height, image.width) == (6 * 8 + 7, 6 * 8 + 7)  # 32 filters of 8x8, 6 columns


def test_findings_as_text(digits_run, tmp_path):
    run, tags = digits_run
    (text_tag,) = [tag for tag in tags if tag.startswith("findings")]
    assert tags[text_tag][-1][1] == "\n".join(
        f"- **{f.kind}** [{f.severity}]: {f.message}" for f in run.monitor.diagnose())
    logdir = tmp_path / "high"
    with TrainingMonitor(tensorboard=logdir) as mon:
        train_digits(lr=100 * GOOD_LR, epochs=2, monitor=mon)
        mon.save(tmp_path / "high.jsonl")  # findings so far, flushed
        findings = mon.diagnose()
    texts = [text for tag, values in by_tag(read_events(logdir)).items()
             if tag.startswith("findings") for _, text in values]
    assert len(texts) == 2  # at save and at close
    for finding in findings:
        assert f"**{finding.kind}** [{finding.severity}]: {finding.message}" in texts[-1]
    assert "lr_too_high" in texts[-1]
    # reading the log back needs no TensorBoard
    assert TrainingMonitor.load(tmp_path / "high.jsonl").diagnose() == findings


def test_without_tensorboardx_a_clear_import_error(tmp_path):
    out = run_without("tensorboardX", f"""
import fastgrad, fastgrad.monitor
mon = fastgrad.monitor.TrainingMonitor()
mon.log_loss(0, 1.0)
try:
    fastgrad.monitor.TrainingMonitor(tensorboard={str(tmp_path / "tb")!r})
except ImportError as error:
    print("ImportError:", error)
""")
    assert 'pip install "fastgrad[tensorboard]"' in out
    with pytest.raises(TypeError, match="tensorboard"):
        TrainingMonitor(tensorboard=3)
