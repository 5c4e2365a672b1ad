"""Metrics: tensorboard event files that tensorboard's format reader reads back, rates, flattening."""

import numpy as np

from experiments.plot_run import read_scalars
from hiors_jax.train import metrics


def test_scalars_round_trip_through_tensorboard_files(tmp_path):
    writer = metrics.MetricsWriter(tmp_path / "tb", progress_total=10)
    for step in range(1, 4):
        writer.log(step, {"loss": np.float32(1.0 / step), "lr": 1e-4, "skip": np.ones(3)}, prefix="training")
        writer.log(step, {"environment": {"succeed": step % 2 == 1}})
        writer.progress(step, {"loss": 1.0 / step})
    writer.close()
    scalars = read_scalars(tmp_path / "tb")
    assert set(scalars) == {"training/loss", "training/lr", "environment/succeed"}
    np.testing.assert_array_equal(scalars["training/loss"].steps, [1, 2, 3])
    np.testing.assert_allclose(scalars["training/loss"].values, [1.0, 0.5, 1 / 3], rtol=1e-6)
    np.testing.assert_array_equal(scalars["environment/succeed"].values, [1.0, 0.0, 1.0])


def test_flatten_drops_non_scalars_and_non_finite():
    flat = metrics.flatten({"a": {"b": 2, "c": float("nan"), "d": np.zeros(2)}, "e": np.int32(3)})
    assert flat == {"a/b": 2.0, "e": 3.0}


def test_step_timer_splits_wait_and_compute():
    now = [0.0]
    timer = metrics.StepTimer(clock=lambda: now[0])
    for _ in range(4):
        timer.add(wait_s=0.25, compute_s=0.75, samples=8)
        now[0] += 1.0
    rates = timer.rates()
    assert rates["steps_per_s"] == 1.0 and rates["samples_per_s"] == 8.0
    assert rates["wait_fraction"] == 0.25 and rates["compute_s"] == 0.75
    assert metrics.StepTimer(clock=lambda: 1.0).rates()["steps_per_s"] == 0.0
