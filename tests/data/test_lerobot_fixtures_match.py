"""Our reader against what lerobot itself returned for the fixture datasets (bit-identical frames and values)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hiors_jax.data.lerobot import LeRobotDataset, MultiLeRobotDataset, convert_v21_to_v30, load_meta, main

FIXTURES = ("ds_lerobot", "ds_np", "ds_v21")


def _expected(lerobot_fixtures, name):
    root = lerobot_fixtures / name
    return root, np.load(root / "expected.npz"), json.loads((root / "expected.json").read_text())


def _assert_matches_full(batch, expected, tasks, where):
    plain = [k for k in expected.files if not k.startswith("delta__")]
    assert plain, "expected.npz has no per-frame arrays"
    for key in plain:
        assert batch[key].dtype == expected[key].dtype, f"{where}: {key} dtype"
        assert batch[key].shape == expected[key].shape, f"{where}: {key} shape"
        np.testing.assert_array_equal(batch[key], expected[key], err_msg=f"{where}: {key}")
    assert batch["task"] == tasks


def _assert_matches_delta(batch, expected, tasks, where):
    keys = [
        k for k in expected.files if k.startswith("delta__") and "__offsets_s" not in k and k != "delta__query_index"
    ]
    assert len(keys) >= 6
    for key in keys:
        ours = batch[key.removeprefix("delta__")]
        assert ours.dtype == expected[key].dtype and ours.shape == expected[key].shape, f"{where}: {key}"
        np.testing.assert_array_equal(ours, expected[key], err_msg=f"{where}: {key}")
    assert batch["task"] == tasks


@pytest.mark.parametrize("name", FIXTURES)
def test_every_frame_matches_lerobot(lerobot_fixtures, name):
    root, expected, meta = _expected(lerobot_fixtures, name)
    dataset = LeRobotDataset(root)
    assert len(dataset) == meta["num_frames"]
    _assert_matches_full(dataset.get_batch(np.arange(len(dataset))), expected, meta["task"], name)


@pytest.mark.parametrize("name", FIXTURES)
def test_items_match_lerobot(lerobot_fixtures, name):
    root, expected, meta = _expected(lerobot_fixtures, name)
    dataset = LeRobotDataset(root)
    for i in (0, 39, 40, 89, 90, 149):
        item = dataset[i]
        for key in (k for k in expected.files if not k.startswith("delta__")):
            assert item[key].shape == expected[key].shape[1:], key
            np.testing.assert_array_equal(item[key], expected[key][i], err_msg=f"{name}[{i}] {key}")
        assert item["task"] == meta["task"][i]


@pytest.mark.parametrize("name", FIXTURES)
def test_delta_windows_match_lerobot(lerobot_fixtures, name):
    root, expected, meta = _expected(lerobot_fixtures, name)
    dataset = LeRobotDataset(root, delta_timestamps=meta["delta"]["delta_timestamps"])
    for key, indices in meta["delta"]["delta_indices"].items():
        np.testing.assert_array_equal(dataset.delta_indices[key], indices)
    batch = dataset.get_batch(expected["delta__query_index"])
    _assert_matches_delta(batch, expected, meta["delta"]["task"], name)
    item = dataset[int(expected["delta__query_index"][4])]  # last frame of episode 0
    np.testing.assert_array_equal(item["action_is_pad"], expected["delta__action_is_pad"][4])


@pytest.mark.parametrize("name", FIXTURES)
def test_meta(lerobot_fixtures, name):
    meta = load_meta(lerobot_fixtures / name)
    assert meta.fps == 30
    assert meta.robot_type == "dobot_xtrainer"
    assert meta.tasks == ["fold the towel", "pick the cube"]
    assert meta.episodes.length.tolist() == [40, 50, 60]
    assert meta.episodes.tasks == [["fold the towel"], ["pick the cube"], ["fold the towel"]]
    assert meta.video_keys == ["observation.images.cam_high"]
    assert meta.image_keys == ["observation.images.cam_left_wrist"]


def test_convert_v21_reads_like_lerobot(lerobot_fixtures, tmp_path):
    root, expected, meta = _expected(lerobot_fixtures, "ds_v21")
    out = convert_v21_to_v30(root, tmp_path / "v30")
    converted = load_meta(out)
    assert converted.version == "v3.0"
    assert converted.episodes.video_from_timestamp["observation.images.cam_high"] == pytest.approx([0, 4 / 3, 3])
    assert len(list((out / "videos").rglob("*.mp4"))) == 1  # episodes concatenated
    _assert_matches_full(LeRobotDataset(out).get_batch(np.arange(150)), expected, meta["task"], "converted")
    windows = LeRobotDataset(out, delta_timestamps=meta["delta"]["delta_timestamps"])
    _assert_matches_delta(windows.get_batch(expected["delta__query_index"]), expected, meta["delta"]["task"], "conv")


def test_several_datasets_read_as_one(lerobot_fixtures):
    roots = [lerobot_fixtures / "ds_lerobot", lerobot_fixtures / "ds_v21"]
    multi = MultiLeRobotDataset(roots, delta_timestamps={"action": [0, 1 / 30]})
    assert len(multi) == 300
    assert "complementary_info.discrete_penalty" not in multi.features  # only in v3.0: not common
    batch = multi.get_batch([0, 149, 150, 299])
    np.testing.assert_array_equal(batch["dataset_index"], [0, 0, 1, 1])
    for part, rows, positions in ((0, [0, 149], [0, 1]), (1, [0, 149], [2, 3])):
        expected = np.load(roots[part] / "expected.npz")
        np.testing.assert_array_equal(
            batch["observation.images.cam_high"][positions], expected["observation.images.cam_high"][rows]
        )
        np.testing.assert_array_equal(batch["index"][positions], rows)
    np.testing.assert_array_equal(batch["action_is_pad"][:, 1], [False, True, False, True])


def test_cli_info(lerobot_fixtures, capsys):
    assert main(["info", str(lerobot_fixtures / "ds_v21")]) == 0
    out = capsys.readouterr().out
    assert "episodes:  3   frames: 150" in out
    assert "observation.images.cam_high" in out and "video" in out
    assert "1: pick the cube" in out


def test_cli_convert_and_errors(lerobot_fixtures, tmp_path, capsys):
    assert main(["convert", str(lerobot_fixtures / "ds_v21"), str(tmp_path / "out")]) == 0
    assert "v3.0" in capsys.readouterr().out
    assert main(["convert", str(lerobot_fixtures / "ds_v21"), str(tmp_path / "out")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(lerobot_fixtures / "ds_lerobot"), str(tmp_path / "again")]) == 1
    assert "expects a v2.1 dataset" in capsys.readouterr().err
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("name", ["ds_lerobot", "ds_v21"])
def test_subset_of_episodes(lerobot_fixtures, name):
    root, expected, meta = _expected(lerobot_fixtures, name)
    dataset = LeRobotDataset(root, delta_timestamps=meta["delta"]["delta_timestamps"], episodes=[2, 0])
    kept = np.r_[0:40, 90:150]
    assert len(dataset) == 100 and dataset.episodes == [0, 2]
    batch = dataset.get_batch(np.arange(100))
    np.testing.assert_array_equal(batch["index"], kept)
    for query_pos, row in enumerate(expected["delta__query_index"].tolist()):
        if row not in kept:
            continue
        item = dataset[int(np.searchsorted(kept, row))]
        for key in ("action", "action_is_pad", "observation.images.cam_high", "observation.images.cam_high_is_pad"):
            np.testing.assert_array_equal(item[key], expected[f"delta__{key}"][query_pos], err_msg=f"{row} {key}")
    with pytest.raises(ValueError, match=r"episodes \[7\] not in dataset"):
        LeRobotDataset(root, episodes=[0, 7])


def test_v21_stats_are_aggregated_like_lerobot(lerobot_fixtures):
    """v2.1 has only per-episode stats; aggregated they equal what lerobot 0.4.4 stored for the same data."""
    v21, v30 = load_meta(lerobot_fixtures / "ds_v21").stats, load_meta(lerobot_fixtures / "ds_lerobot").stats
    for key in ("observation.state", "action", "next.reward", "index"):
        for name in ("min", "max", "mean", "std", "count"):
            np.testing.assert_allclose(
                np.asarray(v21[key][name], float),
                np.asarray(v30[key][name], float),
                rtol=1e-6,
                atol=1e-6,
                err_msg=f"{key} {name}",
            )
