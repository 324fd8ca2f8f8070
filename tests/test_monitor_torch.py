"""fastgrad.monitor on a real torch MLP: a too-high learning rate told as one story, no NaN, no noise.

``monitor_support.train_torch_mlp`` trains Linear(20, 32)-ReLU-Linear(32, 10) with plain SGD on a
seeded synthetic 10-class set (inputs in [0, 1], biases initialised to 0), 64 steps of 64 rows.
With lr=8 the loss spikes within the first steps, the hidden ReLUs die and the loss then sits at
the chance level log(10) = 2.3; lr=0.5 trains to ~100%; lr=0.01 falls slowly.  Each run takes
about a second; they are trained once per module.
"""

from __future__ import annotations

import logging
import math
import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training runs need torch")

from monitor_support import CLASSES, train_torch_mlp  # noqa: E402

from fastgrad.monitor import TrainingMonitor  # noqa: E402
from fastgrad.monitor.diagnose import SPIKE_FACTOR, loss_spike  # noqa: E402

TOO_HIGH, SANE, TOO_LOW = 8.0, 0.5, 0.01
SAYS_LOW = ("learning rate is low", "too low", "raise it")


@pytest.fixture(scope="module")
def runs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the monitor warns about nothing here
        return {lr: train_torch_mlp(lr) for lr in (TOO_HIGH, SANE, TOO_LOW)}


def by_kind(findings, kind):
    matches = [f for f in findings if f.kind == kind]
    assert matches, f"no {kind} finding in {[str(f) for f in findings]}"
    return matches[0]


def test_diverging_learning_rate_spike_then_plateau_is_a_too_high_learning_rate(runs):
    mon = runs[TOO_HIGH]
    steps, losses = mon.losses()
    # the dynamics the finding describes, measured independently of the monitor
    spike = int(np.argmax(losses > SPIKE_FACTOR * losses[0]))
    assert 0 < spike < 8 and losses[spike] > 20
    assert abs(np.median(losses[32:]) - math.log(CLASSES)) < 0.15  # the chance-level plateau
    assert mon.epochs()[-1]["train_acc"] < 0.3
    findings = mon.diagnose()
    high = by_kind(findings, "lr_too_high")
    assert high.severity == "error" and findings[0] is high
    assert "learning rate too high" in high.message
    assert f"loss spike at step {steps[spike]}" in high.message
    assert high.evidence["spike_step"] == steps[spike]
    assert high.evidence["jump"] > SPIKE_FACTOR
    assert f"to {losses[spike]:.4g}" in high.message  # the size of the jump, in words
    # nothing contradicts it: no finding says the learning rate is low
    assert "lr_too_low" not in [f.kind for f in findings]
    assert "no_learning" not in [f.kind for f in findings]
    for finding in findings:
        said = finding.message.replace("not a learning rate that is low", "")
        assert not any(words in said for words in SAYS_LOW), str(finding)
    dead = by_kind(findings, "dead_units")
    assert f"after the loss spike at step {steps[spike]}" in dead.message
    assert "consequence of the too-high learning rate" in dead.message
    assert dead.evidence["consequence_of"] == "lr_too_high"
    assert dead.evidence["dead_since_step"] <= 2 * 8  # died within the first two epochs
    for low in [f for f in findings if f.kind == "update_ratio_low"]:
        assert low.severity == "info"
        assert "dead_units" in low.evidence["consequence_of"]
        assert low.evidence["low_since_step"] < 16
        assert low.evidence["max_ratio_before"] > 1e-2  # the huge first updates


def test_sane_learning_rate_gets_no_too_high_finding(runs):
    mon = runs[SANE]
    assert mon.epochs()[-1]["train_acc"] > 0.9
    findings = mon.diagnose()
    kinds = [f.kind for f in findings]
    assert not {"lr_too_high", "dead_units", "lr_too_low", "no_learning"} & set(kinds), findings
    assert loss_spike(*mon.losses()) is None


def test_too_low_learning_rate_still_gets_the_low_finding(runs):
    findings = runs[TOO_LOW].diagnose()
    low = by_kind(findings, "lr_too_low")
    assert "too low" in low.message
    assert "lr_too_high" not in [f.kind for f in findings]
    # and a low update ratio without dead units or a too-high rate still says the rate is low
    mon = TrainingMonitor(segments={"W": (10, 10)})
    for _ in range(20):
        mon.log_update(np.ones(100), np.full(100, 1e-7))
    (finding,) = mon.diagnose()
    assert finding.kind == "update_ratio_low" and finding.severity == "warning"
    assert "the learning rate is low" in finding.message


def test_a_spike_the_run_recovers_from_is_not_a_too_high_learning_rate():
    rng = np.random.default_rng(0)
    losses = np.r_[np.linspace(2.3, 0.2, 40), 3.0, np.linspace(1.0, 0.1, 40)]
    losses = losses * np.exp(0.05 * rng.standard_normal(losses.size))
    assert loss_spike(np.arange(losses.size), losses) is None
    mon = TrainingMonitor()
    for step, loss in enumerate(losses):
        mon.log_loss(step, loss)
    assert "lr_too_high" not in [f.kind for f in mon.diagnose()]


def test_zero_initialised_biases_have_finite_update_ratios(runs):
    steps, ratios = runs[SANE].update_ratios()
    for name, series in ratios.items():
        assert np.all(np.isfinite(series)), name
    # a block whose weights are all 0 is measured against its norm after the update: its own
    assert ratios["0.bias"][0] == ratios["2.bias"][0] == 1.0
    mon = TrainingMonitor(segments={"W": (2,), "b": (2,)})
    mon.log_update(np.array([3.0, 4.0, 0.0, 0.0]), np.array([0.03, 0.04, 0.0, 0.0]))
    assert mon.update_ratios()[1]["b"].tolist() == [0.0]  # 0 moved by 0: no update, not 0/0
    assert mon.update_ratios()[1]["W"][0] == pytest.approx(0.01)
    huge = np.array([3e200, 4e200, 1.0, 0.0])  # squares overflow: still the exact ratio
    mon.log_update(huge, 1e-3 * huge)
    assert mon.update_ratios()[1]["W"][1] == pytest.approx(1e-3)


def test_tensorboard_writer_prints_nothing_and_gets_no_nan(tmp_path, capfd, caplog):
    from test_monitor_tensorboard import by_tag, read_events

    logdir = tmp_path / "tb"
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings():
        warnings.simplefilter("error")
        mon = train_torch_mlp(SANE, steps=16, tensorboard=logdir)
        # and the monitor's own NaN/inf: a diverged update, a metric, a filter grid
        mon.log_loss(16, math.inf)
        mon.log_update({"0.weight": np.full((32, 20), np.nan)}, {"0.weight": np.ones((32, 20))})
        mon.log_epoch(2, train_acc=0.1, val_loss=math.nan)
        mon.log_filters(np.full((20, 4), np.nan), image_shape=(4, 5), layer="0.weight")
        mon.close()
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert not [r for r in caplog.records if "NaN or Inf" in r.getMessage()]
    skipped = mon._tb.skipped
    assert skipped["loss"] == {"count": 1, "first_step": 16}
    assert skipped["update_ratio/0.weight"] == {"count": 1, "first_step": 16}
    assert skipped["metrics/val_loss"]["count"] == 1
    assert skipped["filters/0.weight"]["count"] > 0
    tags = by_tag(read_events(logdir))
    values = [v for tag, logged in tags.items() for _, v in logged if isinstance(v, float)]
    assert values and all(math.isfinite(v) for v in values)
    assert [v for _, v in tags["update_ratio/0.bias"]][0] == 1.0  # step 0: zero-initialised
    # the fact is in the findings instead, with the block and the step
    finding = by_kind(mon.diagnose(), "nonfinite_values")
    assert {"series": "update ratio of 0.weight", "count": 1, "first_step": 16} in \
        finding.evidence["series"]
    assert "update ratio of 0.weight: 1 from step 16" in finding.message
    assert any("nonfinite_values" in text for _, text in
               next(v for tag, v in tags.items() if tag.startswith("findings")))
    assert os.listdir(logdir)


def test_gradcheck_skip_warning_names_the_monitor_and_the_step():
    mon = TrainingMonitor()
    mon.log_loss(3, 2.3)
    with pytest.warns(RuntimeWarning, match=r"^fastgrad.monitor: gradcheck skipped at step 3"):
        assert mon.gradcheck(lambda t: float(t @ t), np.ones(2), lambda t: 2 * t) is None


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_other_seeds_too_high_is_found_and_sane_is_not(seed):
    # seed 2's loss only triples (2.3 -> 6.4): the finding rests on its 2.2x-the-weights update
    high = train_torch_mlp(TOO_HIGH, seed=seed).diagnose()
    assert high[0].kind == "lr_too_high" and "learning rate too high" in high[0].message
    assert not any(words in f.message.replace("not a learning rate that is low", "")
                   for f in high for words in SAYS_LOW)
    sane = [f.kind for f in train_torch_mlp(SANE, seed=seed).diagnose()]
    assert not {"lr_too_high", "dead_units"} & set(sane), sane
