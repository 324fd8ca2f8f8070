"""TrainingMonitor(tensorboard=DIR): a digits run read back from the event files it wrote.

The event files are TFRecord files (u64 length, u32 crc, an ``Event`` protobuf, u32 crc); they are
decoded with the protobuf classes tensorboardX ships, so the test needs no ``tensorboard``.
"""

from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
import textwrap
import threading
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


def losses_in(logdir) -> list[tuple[int, float]]:
    return by_tag(read_events(logdir)).get("loss", [])


def test_closing_monitors_leaves_no_exit_handler_behind(tmp_path):
    import atexit

    with TrainingMonitor(tensorboard=tmp_path / "first") as mon:  # weakref's own hook, once
        mon.log_loss(0, 1.0)
    registered = atexit._ncallbacks()
    for run in range(50):
        with TrainingMonitor(tensorboard=tmp_path / f"run{run}") as mon:
            mon.log_loss(0, float(run))
    assert atexit._ncallbacks() == registered
    assert losses_in(tmp_path / "run49") == [(0, 49.0)]


def test_events_reach_the_file_before_close(tmp_path):
    from fastgrad.monitor.tensorboard import TensorBoardWriter

    mon = TrainingMonitor(tensorboard=tmp_path / "tb")
    mon.log_loss(0, 2.5)
    assert losses_in(tmp_path / "tb") == [(0, 2.5)]  # the first event is flushed at once
    mon.log_loss(1, 2.0)
    mon.save(tmp_path / "run.jsonl")  # flushes
    assert losses_in(tmp_path / "tb") == [(0, 2.5), (1, 2.0)]
    mon.log_loss(2, 1.5)
    mon.close()
    assert losses_in(tmp_path / "tb") == [(0, 2.5), (1, 2.0), (2, 1.5)]
    # later events reach the disk within flush_seconds without any call
    writer = TensorBoardWriter(tmp_path / "timed", flush_seconds=0.05)
    writer.scalar("loss", 1.0, step=0)
    writer.scalar("loss", 0.5, step=1)
    for _ in range(400):
        if len(losses_in(tmp_path / "timed")) == 2:
            break
        threading.Event().wait(0.05)
    assert losses_in(tmp_path / "timed") == [(0, 1.0), (1, 0.5)]
    writer.close()
    with pytest.raises(ValueError, match="flush_seconds"):
        TensorBoardWriter(tmp_path / "bad", flush_seconds=0)


def test_a_monitor_left_open_is_flushed_when_collected_and_at_exit(tmp_path):
    mon = TrainingMonitor(tensorboard=tmp_path / "collected")
    for step in range(3):
        mon.log_loss(step, 1.0 / (step + 1))
    del mon
    gc.collect()
    assert [s for s, _ in losses_in(tmp_path / "collected")] == [0, 1, 2]
    code = textwrap.dedent(f"""
        from fastgrad.monitor import TrainingMonitor
        mon = TrainingMonitor(tensorboard={str(tmp_path / "exit")!r})
        for step in range(3):
            mon.log_loss(step, 1.0)
    """)  # no close: the program ends with the monitor alive
    import fastgrad

    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(fastgrad.__file__))}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env=env)
    assert [s for s, _ in losses_in(tmp_path / "exit")] == [0, 1, 2]


def test_a_second_run_in_the_same_second_keeps_the_first_runs_file(tmp_path, monkeypatch):
    import tensorboardX.event_file_writer as event_file_writer

    # both event files are named after the same second
    monkeypatch.setattr(event_file_writer.time, "time", lambda: 1_700_000_000.25)
    for run in range(2):
        with TrainingMonitor(tensorboard=tmp_path) as mon:
            for step in range(3):
                mon.log_loss(step, float(run))
    assert len([name for name in os.listdir(tmp_path) if "tfevents" in name]) == 2
    assert sorted(losses_in(tmp_path)) == sorted((step, float(run)) for run in range(2)
                                                 for step in range(3))
