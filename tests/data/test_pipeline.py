"""Windows -> model batches: exact transforms, source ratios, next observations, sharding, norm stats."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hiors_jax.data.pipeline import (
    Batch,
    BatchLoader,
    PipelineConfig,
    RunningStats,
    color_jitter,
    crop_rotate,
    finish_batch,
    floor_spread,
    norm_stats_from_windows,
    source_counts,
)
from hiors_jax.data.replay import SOURCES, FrameWindow
from hiors_jax.models import pi0
from hiors_jax.models.config import tiny_config
from hiors_jax.models.preprocessing import normalize, resize_with_pad

from .replay_helpers import CAMERAS, PROMPT, tiny_tokenizer

H = 50


def fill(window: FrameWindow, rng, episodes: int, length: int, weight: float, state_offset: float = 0.0):
    raw = []
    for e in range(episodes):
        images = {c: rng.integers(0, 256, (length, 30, 40, 3), dtype=np.uint8) for c in CAMERAS}
        state = (rng.standard_normal((length, 14)) + state_offset).astype(np.float32)
        state[:, 0] = e
        state[:, 1] = np.arange(length)
        window.append_episode(
            images,
            state=state,
            actions=rng.standard_normal((length, H, 14)).astype(np.float32),
            action_is_pad=np.arange(H)[None, :] >= (length - np.arange(length))[:, None],
            reward=(np.arange(length) == length - 1).astype(np.float32),
            done=np.arange(length) == length - 1,
            truncated=np.zeros(length, bool),
            weight=np.full(length, weight, np.float32),
            prompts=[PROMPT] * length,
        )
        raw.append(images)
    return raw


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("pipe")
    rng = np.random.default_rng(0)
    model = tiny_config()
    size = (model.vision.image_size,) * 2
    windows = {
        "demo": FrameWindow(d / "demo", 64, CAMERAS, size, 14, H, 14),
        "online": FrameWindow(d / "online", 64, CAMERAS, size, 14, H, 14),
    }
    raw = {"demo": fill(windows["demo"], rng, 2, 9, 2.0, 5.0), "online": fill(windows["online"], rng, 3, 7, 1.0)}
    return windows, raw, model, tiny_tokenizer(d, model.max_token_len)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(SOURCES), st.floats(0, 10, allow_nan=False), min_size=1),
    st.integers(1, 300),
)
def test_source_counts_follow_ratios(ratios, batch):
    if sum(ratios.values()) <= 0:
        with pytest.raises(ValueError, match="ratios"):
            source_counts(ratios, batch)
        return
    counts = source_counts(ratios, batch)
    assert sum(counts.values()) == batch
    total = sum(ratios.values())
    for name, ratio in ratios.items():
        assert abs(counts.get(name, 0) - batch * ratio / total) < 1.0 + 1e-9


def test_unknown_source_and_bad_ratio_are_named():
    with pytest.raises(ValueError, match="unknown data source.*'replay'"):
        source_counts({"replay": 1.0}, 8)
    with pytest.raises(ValueError, match="ratios"):
        source_counts({"demo": -1.0, "online": 2.0}, 8)


def test_batch_is_model_ready_and_exact(setup):
    windows, raw, model, tok = setup
    stats = norm_stats_from_windows(windows.values())
    config = PipelineConfig(batch_size=10, ratios={"demo": 0.5, "online": 0.5}, augment=False, with_next=True)
    with BatchLoader(windows, config, model, tok, stats) as loader:
        host, metrics = loader.next_host()
        batch, metrics2 = next(loader)  # the background thread continues from the same generator
    assert metrics["batch/demo"] == 5 and metrics["batch/online"] == 5 and metrics2 == {**metrics2, "batch/demo": 5}
    obs = host["observation"]
    # demo samples first (SOURCES order): weight and state offset tell the sources apart
    np.testing.assert_array_equal(host["weight"], [2.0] * 5 + [1.0] * 5)
    ep, step = obs["state"][:, 0], obs["state"][:, 1]  # normalised; undo with the stats to find the frame
    s = stats["state"]
    ep = np.rint(ep * (s.std[0] + 1e-6) + s.mean[0]).astype(int)
    step = np.rint(step * (s.std[1] + 1e-6) + s.mean[1]).astype(int)
    names = ["demo"] * 5 + ["online"] * 5
    size = (model.vision.image_size,) * 2
    for i, name in enumerate(names):
        source_raw = raw[name][ep[i]]["cam_high"][step[i]]
        np.testing.assert_array_equal(obs["images"]["base_0_rgb"][i], resize_with_pad(source_raw, *size))
    np.testing.assert_array_equal(obs["state"][:, 14:], 0)
    assert obs["state"].shape == (10, model.action_dim) and host["actions"].shape == (10, H, model.action_dim)
    np.testing.assert_array_equal(host["actions"][..., 14:], 0)
    # next observation: the following frame of the same episode, the last frame its own
    nstate = host["next_observation"]["state"]
    nstep = np.rint(nstate[:, 1] * (s.std[1] + 1e-6) + s.mean[1]).astype(int)
    last = host["done"]
    np.testing.assert_array_equal(nstep[~last], step[~last] + 1)
    np.testing.assert_array_equal(nstep[last], step[last])
    # device side: images x/255*2-1 of the same uint8 frames (to float rounding), everything else as is
    assert isinstance(batch, Batch) and isinstance(batch.observation, pi0.Observation)
    finished = finish_batch(jax.random.key(0), host, augment=False)
    for key, img in finished.observation.images.items():
        want = obs["images"][key].astype(np.float32) / 255 * 2 - 1
        np.testing.assert_allclose(np.asarray(img), want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(finished.actions), host["actions"])
    np.testing.assert_array_equal(np.asarray(finished.next_observation.state), nstate)
    assert batch.actions.shape == (10, H, model.action_dim) and batch.done.dtype == np.bool_
    params = pi0.init_params(model, jax.random.key(0))
    noise, time = pi0.sample_noise_and_time(jax.random.key(1), batch.actions.shape)
    loss = pi0.compute_loss(model, params, batch.observation, batch.actions, noise, time)
    assert loss.shape == (10, H) and np.all(np.isfinite(np.asarray(loss)))


def test_normalisation_matches_preprocessing(setup):
    windows, _, model, tok = setup
    stats = norm_stats_from_windows(windows.values())
    config = PipelineConfig(batch_size=6, ratios={"online": 1.0}, augment=False, seed=3)
    with BatchLoader({"online": windows["online"]}, config, model, tok, stats) as loader:
        rng = np.random.default_rng(3)
        slots = windows["online"].sample_slots(rng, 6)
        host, _ = loader.next_host()
    want = normalize(windows["online"].state[slots].astype(np.float64), stats["state"], False).astype(np.float32)
    np.testing.assert_allclose(host["observation"]["state"][:, :14], want, rtol=0, atol=0)
    want_a = normalize(windows["online"].actions[slots].astype(np.float64), stats["actions"], False)
    np.testing.assert_allclose(host["actions"][..., :14], want_a.astype(np.float32), rtol=0, atol=0)
    np.testing.assert_array_equal(host["action_is_pad"], windows["online"].action_is_pad[slots])


def test_sharded_placement_and_augmentation(setup):
    windows, _, model, tok = setup
    stats = norm_stats_from_windows(windows.values())
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    config = PipelineConfig(batch_size=4, ratios={"online": 1.0}, augment=True)
    with BatchLoader({"online": windows["online"]}, config, model, tok, stats, sharding=sharding) as loader:
        batch, _ = next(loader)
    for leaf in jax.tree.leaves(batch):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    img = np.asarray(batch.observation.images["base_0_rgb"])
    assert img.min() >= -1.0 - 1e-6 and img.max() <= 1.0 + 1e-6 and img.shape == (4, 56, 56, 3)


def test_augmentation_geometry_and_colour():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 12, 16, 3), dtype=np.uint8)
    ident = crop_rotate(np.random.default_rng(0), images, scale=1.0, max_deg=0.0)
    np.testing.assert_array_equal(ident, images)  # no crop, no rotation: the same pixels
    out = crop_rotate(np.random.default_rng(1), images)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out[0], images[0])
    # a pure 95 % crop at offset 0 scales about the top-left corner: pixel (0, 0) stays where it was
    flat = np.full((1, 40, 40, 3), 100, np.uint8)
    flat[0, 0, 0] = 200
    kept = crop_rotate(np.random.default_rng(2), flat, scale=1.0, max_deg=5.0)
    assert kept[0, 20, 20, 0] == 100  # the centre is a fixed point of the rotation
    x = jax.numpy.asarray(rng.random((8, 12, 16, 3), np.float32))
    jittered = color_jitter(jax.random.key(0), x)
    assert float(jittered.min()) >= 0.0 and float(jittered.max()) <= 1.0
    changed = [not np.allclose(np.asarray(jittered[i]), np.asarray(x[i])) for i in range(8)]
    assert 0 < sum(changed) < 8  # applied with probability 0.5, one draw per sample


def test_running_stats_match_numpy():
    rng = np.random.default_rng(0)
    data = rng.standard_normal((5000, 3)) * [1, 10, 0.1] + [0, 5, -2]
    one = RunningStats()
    one.update(data)
    got = one.get()
    np.testing.assert_allclose(got.mean, data.mean(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.std, data.std(0), rtol=1e-6)
    width = (data.max(0) - data.min(0)) / 5000
    for q, value in ((0.01, got.q01), (0.99, got.q99)):
        # openpi's rule: the left edge of the bin where the cumulative count reaches q * n
        order_stat = np.sort(data, axis=0)[int(np.ceil(q * len(data))) - 1]
        assert np.all(value <= order_stat + 1e-9) and np.all(order_stat - value <= width * 1.0001)
    # batch by batch (openpi's loop): same moments; quantiles only as good as its histogram redistribution
    chunked = RunningStats()
    for part in np.array_split(data, 7):
        chunked.update(part)
    np.testing.assert_allclose(chunked.get().mean, got.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(chunked.get().std, got.std, rtol=1e-6)


def test_floor_spread_keeps_idle_dims_from_blowing_up():
    rng = np.random.default_rng(0)
    data = np.c_[rng.standard_normal(1000), np.full(1000, 0.3)]  # dim 1 never moves (an idle arm)
    stats = RunningStats()
    stats.update(data)
    exact = stats.get()
    assert exact.std[1] < 1e-9 and floor_spread(exact, 0.0) is exact  # 0: openpi's exact stats
    floored = floor_spread(exact, 0.05)
    assert floored.std[0] == exact.std[0] and floored.std[1] == 0.05
    np.testing.assert_allclose([floored.q01[1], floored.q99[1]], [0.25, 0.35], atol=1e-9)
    moved = np.array([[0.0, 0.4]])  # the idle dim drifts by 0.1 later
    assert abs(normalize(moved, exact, False)[0, 1]) > 1e4
    assert abs(normalize(moved, floored, False)[0, 1]) == pytest.approx(2.0, rel=1e-4)
    assert normalize(moved, floored, True)[0, 1] == pytest.approx(2.0, rel=1e-4)  # (0.4 - 0.25) / 0.1 * 2 - 1
    with pytest.raises(ValueError, match="min_std"):
        floor_spread(exact, -1.0)


def test_loader_waits_for_an_empty_source(tmp_path, setup):
    _, _, model, tok = setup
    empty = FrameWindow(tmp_path / "acc", 16, CAMERAS, (56, 56), 14, H, 14)
    stats = norm_stats_from_windows([setup[0]["online"]])
    config = PipelineConfig(batch_size=2, ratios={"accepted": 1.0}, augment=False)
    with BatchLoader({"accepted": empty}, config, model, tok, stats) as loader:
        assert loader._queue.empty()
        fill(empty, np.random.default_rng(1), 1, 3, 1.0)
        batch, metrics = next(loader)
    assert metrics["batch/accepted"] == 2 and batch.weight.shape == (2,)
