"""Batch loading: delta windows against a plain reference, worker processes, the uint8 frame cache."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hiors_jax.data.batches import BatchLoader, FrameCache, attach_frame_cache
from hiors_jax.data.lerobot import LeRobotDataset, MultiLeRobotDataset


@pytest.fixture(scope="module")
def tabular_dataset(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("tab") / "ds"
    tiny.write(root, lengths=(1, 4, 9, 2), tasks=("a", "b", "a", "c"), video=False, image=False)
    return root


def _reference_window(action, bounds, row, offsets):
    """lerobot's rule written out plainly: clip to the episode, flag steps outside it."""
    start, stop = next((a, b) for a, b in bounds if a <= row < b)
    values, pads = [], []
    for d in offsets:
        j = row + d
        pads.append(j < start or j >= stop)
        values.append(action[min(max(j, start), stop - 1)])
    return np.stack(values), np.array(pads)


@settings(max_examples=60, deadline=None)
@given(
    offsets=st.lists(st.integers(-4, 10), min_size=1, max_size=8),
    rows=st.lists(st.integers(0, 15), min_size=1, max_size=6),
)
def test_delta_windows_follow_lerobot_rule(tabular_dataset, offsets, rows):
    dataset = LeRobotDataset(tabular_dataset, delta_timestamps={"action": [d / 30 for d in offsets]})
    plain = LeRobotDataset(tabular_dataset).get_batch(np.arange(16))
    bounds = [dataset.episode_bounds(e) for e in range(4)]
    batch = dataset.get_batch(rows)
    for i, row in enumerate(rows):
        values, pads = _reference_window(plain["action"], bounds, row, offsets)
        np.testing.assert_array_equal(batch["action"][i], values)
        np.testing.assert_array_equal(batch["action_is_pad"][i], pads)
    assert batch["observation.state"].shape == (len(rows), 4)  # keys without a window stay per-frame


def test_single_process_loader_is_seeded(tiny_video_dataset):
    root, _ = tiny_video_dataset
    dataset = LeRobotDataset(root, delta_timestamps={"action": [0, 1 / 30, 2 / 30]})
    first = [next(BatchLoader(dataset, 4, seed=7))["index"] for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])
    batch = next(BatchLoader(dataset, 4, seed=7))
    assert batch["action"].shape == (4, 3, 3) and batch["observation.images.top"].shape == (4, 32, 48, 3)
    expected = dataset.get_batch(batch["index"])
    for key in expected:
        np.testing.assert_array_equal(np.asarray(batch[key]), np.asarray(expected[key]), err_msg=key)
    given = [[0, 1], [5, 17]]
    got = [b["index"].tolist() for b in BatchLoader(dataset, 2, index_batches=given, reuse_buffers=True)]
    assert got == given


@pytest.mark.integration
def test_worker_loader_matches_in_process_decoding(tiny_video_dataset):
    root, _ = tiny_video_dataset
    dataset = LeRobotDataset(root, delta_timestamps={"action": [0, 1 / 30], "observation.images.top": [-1 / 30, 0]})
    rng = np.random.default_rng(0)
    index_batches = [rng.integers(0, len(dataset), 6) for _ in range(7)]
    with BatchLoader(dataset, 6, num_workers=2, prefetch=2, index_batches=index_batches, timeout_s=60) as loader:
        batches = list(loader)
        shm_names = [s.name for s in loader._slots]
    assert len(batches) == 7
    for indices, batch in zip(index_batches, batches, strict=True):
        expected = dataset.get_batch(indices)
        assert batch["task"] == expected["task"]
        for key, value in expected.items():
            if key != "task":
                np.testing.assert_array_equal(batch[key], value, err_msg=key)
    assert not any(pathlib.Path("/dev/shm", name).exists() for name in shm_names)  # shared memory released


@pytest.mark.integration
def test_worker_errors_reach_the_caller(tiny_video_dataset):
    root, _ = tiny_video_dataset
    dataset = LeRobotDataset(root)
    with BatchLoader(dataset, 2, num_workers=1, index_batches=[[0, 1], [0, 999]], timeout_s=60) as loader:
        assert next(loader)["index"].tolist() == [0, 1]
        with pytest.raises(RuntimeError, match="out of range"):
            next(loader)
    assert all(not w.is_alive() for w in loader._workers)


@pytest.mark.integration
def test_worker_loader_with_reused_buffers_and_cache(tiny_video_dataset, tmp_path):
    root, _ = tiny_video_dataset
    dataset = LeRobotDataset(root)
    index_batches = [[0, 3, 17], [2, 2, 9], [11, 12, 13]]
    with BatchLoader(
        dataset, 3, num_workers=2, index_batches=index_batches, reuse_buffers=True, cache_dir=tmp_path / "c"
    ) as loader:
        for indices in index_batches:
            batch = next(loader)
            np.testing.assert_array_equal(batch["index"], indices)
            decoded = LeRobotDataset(root).get_batch(indices)["observation.images.top"]
            np.testing.assert_array_equal(batch["observation.images.top"], decoded)


def test_frame_cache_equals_decoding_and_detects_stale_files(tiny_video_dataset, tmp_path):
    root, _ = tiny_video_dataset
    decoded = LeRobotDataset(root, delta_timestamps={"observation.images.top": [-2 / 30, 0]})
    cached = LeRobotDataset(root, delta_timestamps={"observation.images.top": [-2 / 30, 0]})
    cache = FrameCache.build(cached, tmp_path / "cache")
    assert cache.nbytes() == 2 * len(cached) * 32 * 48 * 3  # video and PNG camera
    cached.frame_source = cache
    rows = np.arange(len(cached))
    a, b = decoded.get_batch(rows), cached.get_batch(rows)
    for key in ("observation.images.top", "observation.images.wrist", "observation.images.top_is_pad"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    video = next(root.rglob("*.mp4"))
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="different files"):
        FrameCache.open(cached, tmp_path / "cache")
    rebuilt = FrameCache.open_or_build(cached, tmp_path / "cache")
    np.testing.assert_array_equal(rebuilt.arrays["observation.images.top"], a["observation.images.top"][:, 1])


def test_frame_cache_for_several_datasets(lerobot_fixtures, tmp_path):
    roots = [lerobot_fixtures / "ds_lerobot", lerobot_fixtures / "ds_v21"]
    multi = MultiLeRobotDataset(roots)
    attach_frame_cache(multi, tmp_path / "cache")
    batch = multi.get_batch([5, 155])
    for position, (root, row) in enumerate(((roots[0], 5), (roots[1], 5))):
        expected = np.load(root / "expected.npz")
        for key in ("observation.images.cam_high", "observation.images.cam_left_wrist"):
            np.testing.assert_array_equal(batch[key][position], expected[key][row])


@pytest.mark.integration
def test_workers_over_several_datasets(lerobot_fixtures):
    roots = [lerobot_fixtures / "ds_np", lerobot_fixtures / "ds_v21"]
    multi = MultiLeRobotDataset(roots, delta_timestamps={"action": [0, 1 / 30]})
    index_batches = [[0, 149, 150, 299], [40, 41, 190, 191]]
    with BatchLoader(multi, 4, num_workers=2, index_batches=index_batches, timeout_s=60) as loader:
        for indices, batch in zip(index_batches, loader, strict=True):
            expected = multi.get_batch(indices)
            assert batch["task"] == expected["task"]
            for key in ("observation.images.cam_high", "action", "action_is_pad", "dataset_index", "index"):
                np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)
