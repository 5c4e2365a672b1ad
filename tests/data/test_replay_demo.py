"""Offline demo datasets as a replay source: targets exactly as lerobot's delta_timestamps returns them."""

from __future__ import annotations

import numpy as np
import pytest

from hiors_jax.data.lerobot import LeRobotDataset
from hiors_jax.data.replay import ReplayStore, window_from_dataset

from .replay_helpers import CAMERAS, make_episode


@pytest.mark.parametrize("name", ["ds_lerobot", "ds_v21"])
def test_demo_window_matches_what_lerobot_returns(shared_fixtures, tmp_path, name):
    root = shared_fixtures / "lerobot" / name
    expected = np.load(root / "expected.npz")
    window = window_from_dataset(root, tmp_path / "w", horizon=10, image_size=(96, 128))
    assert len(window) == 150 and window.cameras == ("cam_high", "cam_left_wrist")
    q = expected["delta__query_index"]
    # lerobot 0.4.4 / 0.3.3 read these 10-step action chunks with delta_timestamps (edge frame repeated, flagged)
    np.testing.assert_array_equal(window.actions[q], expected["delta__action"])
    np.testing.assert_array_equal(window.action_is_pad[q], expected["delta__action_is_pad"])
    np.testing.assert_array_equal(window.state, expected["observation.state"])
    np.testing.assert_array_equal(window.done, expected["next.done"].astype(bool))
    for cam in window.cameras:
        np.testing.assert_array_equal(window.images.arrays[cam], expected[f"observation.images.{cam}"])
    assert window.prompts == ["fold the towel", "pick the cube"]
    # a window smaller than the dataset holds its newest frames
    small = window_from_dataset(root, tmp_path / "s", horizon=10, image_size=(96, 128), capacity=70)
    got = small.gather(np.arange(70))
    assert sorted(got["state"].tolist()) == sorted(expected["observation.state"][-70:].tolist())


def test_accepted_dataset_reused_as_demos(tmp_path):
    """An accepted/ dataset (stored (H, D) chunks with action_is_pad) serves as demos for the next run."""
    rng = np.random.default_rng(0)
    s = ReplayStore(tmp_path / "run1", fps=10, window_frames=50, image_size=(24, 32), horizon=10, use_videos=False)
    for e in range(2):
        for t in make_episode(rng, 4, success=True, episode_id=e):
            s.insert(t)
    s.close()  # publish the saved episodes
    demo = window_from_dataset(
        tmp_path / "run1" / "accepted", tmp_path / "w", horizon=10, image_size=(24, 32), weight=1.0
    )
    acc = s.window("accepted")
    np.testing.assert_array_equal(demo.actions[: len(acc)], acc.actions[: len(acc)])
    np.testing.assert_array_equal(demo.action_is_pad[: len(acc)], acc.action_is_pad[: len(acc)])
    for cam in CAMERAS:
        np.testing.assert_array_equal(demo.images.arrays[cam][: len(acc)], acc.images.arrays[cam][: len(acc)])
    ds = LeRobotDataset(tmp_path / "run1" / "accepted")
    assert ds.features["action"]["shape"] == [10, 14] and ds.features["action_is_pad"]["shape"] == [10]
    with pytest.raises(ValueError, match="no feature"):
        window_from_dataset(
            tmp_path / "run1" / "accepted", tmp_path / "x", horizon=10, image_size=(24, 32), state_key="nope"
        )
