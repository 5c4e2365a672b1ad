"""Our v3.0 writer: round trip through our reader, lerobot-compatible files, rolling, append, crash safety."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from hiors_jax.data.lerobot import FrameValidationError, LeRobotDataset, LeRobotDatasetWriter, load_meta

USER_KEYS = ("observation.state", "action", "next.reward", "next.done")


def _read_all(root):
    dataset = LeRobotDataset(root)
    return dataset, dataset.get_batch(np.arange(len(dataset)))


@pytest.mark.parametrize("codec", ["libsvtav1", "h264"])
def test_round_trip_values_and_video(tmp_path, tiny, codec):
    written = tiny.write(tmp_path / "ds", vcodec=codec)
    dataset, batch = _read_all(tmp_path / "ds")
    assert len(dataset) == 18
    for key in USER_KEYS:
        np.testing.assert_array_equal(batch[key], written[key].astype(batch[key].dtype), err_msg=key)
    np.testing.assert_array_equal(batch["observation.images.wrist"], written["observation.images.wrist"])  # PNG
    assert tiny.psnr(batch["observation.images.top"], written["observation.images.top"]) >= 30
    assert batch["task"] == written["task"]
    np.testing.assert_array_equal(batch["index"], np.arange(18))
    np.testing.assert_array_equal(batch["episode_index"], np.repeat([0, 1, 2], [5, 7, 6]))
    np.testing.assert_array_equal(batch["frame_index"], np.concatenate([np.arange(n) for n in (5, 7, 6)]))
    np.testing.assert_array_equal(batch["timestamp"], (batch["frame_index"] / 30).astype(np.float32))
    assert dataset.meta.tasks == ["fold", "pick"]
    expected_codec = "av1" if codec == "libsvtav1" else "h264"
    assert dataset.features["observation.images.top"]["info"]["video.codec"] == expected_codec


def test_files_columns_and_metadata_match_lerobot(tmp_path, tiny, lerobot_fixtures):
    """Same layout lerobot 0.4.4 wrote for the fixture: file set, parquet schemas, info/stats keys."""
    reference = lerobot_fixtures / "ds_lerobot"
    source = LeRobotDataset(reference)
    features = {k: {n: v for n, v in f.items() if n != "info"} for k, f in source.features.items()}
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        features.pop(key)
    ours = tmp_path / "ours"
    writer = LeRobotDatasetWriter(ours, 30, features, robot_type="dobot_xtrainer")
    everything = source.get_batch(np.arange(len(source)))
    for i in range(len(source)):
        frame = {k: everything[k][i] if everything[k][i].ndim else everything[k][i].reshape(1) for k in features}
        writer.add_frame(frame, task=everything["task"][i])
        if i + 1 == len(source) or everything["episode_index"][i + 1] != everything["episode_index"][i]:
            writer.save_episode()
    writer.finalize()

    def files(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "expected" not in p.name)

    assert files(ours) == files(reference)
    for rel in ("data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet"):
        ref_schema, our_schema = pq.read_schema(reference / rel), pq.read_schema(ours / rel)
        assert our_schema.names == ref_schema.names, rel
        assert [f.type for f in our_schema] == [f.type for f in ref_schema], rel
    hf = [
        json.loads(pq.read_schema(r / "data/chunk-000/file-000.parquet").metadata[b"huggingface"])
        for r in (reference, ours)
    ]
    assert hf[0]["info"] == hf[1]["info"]
    tasks = pq.read_schema(ours / "meta/tasks.parquet")
    assert json.loads(tasks.metadata[b"pandas"])["index_columns"] == ["task"]
    ref_info, our_info = (json.loads((r / "meta/info.json").read_text()) for r in (reference, ours))
    assert our_info == ref_info
    ref_stats, our_stats = (json.loads((r / "meta/stats.json").read_text()) for r in (reference, ours))
    assert {k: sorted(v) for k, v in our_stats.items()} == {k: sorted(v) for k, v in ref_stats.items()}
    assert our_stats["action"]["max"] == ref_stats["action"]["max"]
    np.testing.assert_allclose(
        our_stats["observation.state"]["mean"], ref_stats["observation.state"]["mean"], atol=1e-6
    )
    np.testing.assert_allclose(our_stats["observation.state"]["std"], ref_stats["observation.state"]["std"], atol=1e-6)
    assert np.asarray(our_stats["observation.images.cam_high"]["mean"]).shape == (3, 1, 1)
    from_ts = pq.read_table(ours / "meta/episodes/chunk-000/file-000.parquet").column(
        "videos/observation.images.cam_high/from_timestamp"
    )
    assert from_ts.to_pylist() == pytest.approx([0.0, 4 / 3, 3.0])


def test_files_roll_by_size(tmp_path, tiny):
    written = tiny.write(
        tmp_path / "ds",
        lengths=(6, 6, 6, 6),
        tasks=("a", "b", "a", "b"),
        data_files_size_in_mb=0.003,
        video_files_size_in_mb=0.002,
    )
    data_files = sorted((tmp_path / "ds" / "data").rglob("*.parquet"))
    video_files = sorted((tmp_path / "ds" / "videos").rglob("*.mp4"))
    assert len(data_files) >= 2 and len(video_files) >= 2
    dataset, batch = _read_all(tmp_path / "ds")
    np.testing.assert_array_equal(batch["action"], written["action"])
    assert tiny.psnr(batch["observation.images.top"], written["observation.images.top"]) >= 30
    starts = dataset.meta.episodes.video_from_timestamp["observation.images.top"]
    assert starts[0] == 0.0 and (starts == 0.0).sum() == len(video_files)  # each new file starts at 0


def test_append_episodes(tmp_path, tiny):
    root = tmp_path / "ds"
    first = tiny.write(root, lengths=(4, 5), tasks=("fold", "pick"))
    before = {p: p.stat().st_ino for p in root.rglob("*.parquet")}
    second = tiny.write(root, lengths=(3,), tasks=("wipe",), append=True, first_episode=2, seed=1)
    dataset, batch = _read_all(root)
    assert len(dataset) == 12 and dataset.meta.total_episodes == 3
    np.testing.assert_array_equal(batch["action"], np.concatenate([first["action"], second["action"]]))
    np.testing.assert_array_equal(batch["index"], np.arange(12))
    assert batch["task"] == first["task"] + second["task"]
    assert dataset.meta.tasks == ["fold", "pick", "wipe"]
    assert (
        tiny.psnr(
            batch["observation.images.top"],
            np.concatenate([first["observation.images.top"], second["observation.images.top"]]),
        )
        >= 30
    )
    assert all(p.stat().st_ino == ino for p, ino in before.items() if "data" in p.parts)  # old data untouched
    stats = json.loads((root / "meta/stats.json").read_text())
    assert stats["action"]["count"] == [12]
    np.testing.assert_allclose(stats["action"]["mean"], batch["action"].mean(axis=0), rtol=1e-6)
    assert not list(tmp_path.glob(".ds.*"))  # no staging or previous copies left behind


def test_unfinished_writer_leaves_no_dataset(tmp_path, tiny):
    features = tiny.features()
    writer = LeRobotDatasetWriter(tmp_path / "ds", 30, features)
    writer.add_frame(tiny.frame(0, 0, features, np.random.default_rng(0)), task="t")
    writer.save_episode()
    assert not (tmp_path / "ds").exists()  # only the staging directory exists until finalize
    with pytest.raises(FileExistsError, match="another writer is active"):
        LeRobotDatasetWriter(tmp_path / "ds", 30, features)
    writer.abort()
    assert not (tmp_path / "ds").exists() and not list(tmp_path.iterdir())


def test_context_manager_keeps_saved_episodes_on_error(tmp_path, tiny):
    features = tiny.features()
    rng = np.random.default_rng(0)
    with pytest.raises(RuntimeError, match="robot fell over"), pytest.warns(UserWarning, match="dropping 1 frames"):
        with LeRobotDatasetWriter(tmp_path / "ds", 30, features) as writer:
            for f in range(3):
                writer.add_frame(tiny.frame(0, f, features, rng), task="t")
            writer.save_episode()
            writer.add_frame(tiny.frame(1, 0, features, rng), task="t")
            raise RuntimeError("robot fell over")
    dataset = LeRobotDataset(tmp_path / "ds")
    assert len(dataset) == 3  # the saved episode survived; the unsaved frame did not


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.update({"observation.state": np.zeros(5, np.float32)}), "observation.state.*shape"),
        (lambda f: f.update({"observation.state": np.zeros(4, np.float64)}), "observation.state.*dtype float64"),
        (lambda f: f.update({"observation.state": [0.0] * 4}), "observation.state.*numpy array"),
        (
            lambda f: f.update({"observation.images.top": np.zeros((32, 40, 3), np.uint8)}),
            "observation.images.top.*shape",
        ),
        (lambda f: f.update({"observation.images.wrist": np.zeros((32, 48, 3), np.int32)}), "wrist.*dtype int32"),
        (lambda f: f.update({"next.done": 1.5}), "next.done.*bool"),
        (lambda f: f.update({"action": np.array([np.nan, 0, 0], np.float32)}), "action.*NaN"),
        (lambda f: f.pop("action"), "missing \\['action'\\]"),
        (lambda f: f.update({"extra": 1}), "unexpected \\['extra'\\]"),
    ],
)
def test_bad_frames_are_rejected_by_name(tmp_path, tiny, change, message):
    features = tiny.features()
    writer = LeRobotDatasetWriter(tmp_path / "ds", 30, features)
    frame = tiny.frame(0, 0, features, np.random.default_rng(0))
    change(frame)
    with pytest.raises(FrameValidationError, match=message):
        writer.add_frame(frame, task="t")
    assert writer.episode_buffer_size == 0  # nothing half-added
    writer.abort()


def test_chw_frames_and_python_scalars_are_accepted(tmp_path, tiny):
    features = tiny.features()
    rng = np.random.default_rng(0)
    with LeRobotDatasetWriter(tmp_path / "ds", 30, features, use_videos=False) as writer:
        frame = tiny.frame(0, 0, features, rng)
        chw = dict(frame, **{"observation.images.wrist": np.moveaxis(frame["observation.images.wrist"], -1, 0)})
        writer.add_frame(chw, task="t")
        writer.save_episode()
    meta = load_meta(tmp_path / "ds")
    assert meta.video_keys == [] and meta.info["video_path"] is None  # use_videos=False stores PNGs
    item = LeRobotDataset(tmp_path / "ds")[0]
    np.testing.assert_array_equal(item["observation.images.wrist"], frame["observation.images.wrist"])
    np.testing.assert_array_equal(item["observation.images.top"], frame["observation.images.top"])


def test_writer_refuses_bad_setup(tmp_path, tiny):
    with pytest.raises(ValueError, match="even"):
        LeRobotDatasetWriter(tmp_path / "a", 30, {"cam": {"dtype": "video", "shape": [31, 48, 3], "names": None}})
    with pytest.raises(ValueError, match="vcodec"):
        LeRobotDatasetWriter(tmp_path / "b", 30, tiny.features(), vcodec="mjpeg")
    with pytest.raises(ValueError, match="must not contain '/'"):
        LeRobotDatasetWriter(tmp_path / "c", 30, {"a/b": {"dtype": "float32", "shape": [1]}})
    tiny.write(tmp_path / "d", lengths=(2,), tasks=("t",))
    with pytest.raises(FileExistsError, match="append=True"):
        LeRobotDatasetWriter(tmp_path / "d", 30, tiny.features())
    with pytest.raises(ValueError, match="features differ"):
        LeRobotDatasetWriter(tmp_path / "d", 30, tiny.features(image=False), append=True)
    with pytest.raises(ValueError, match="fps"):
        LeRobotDatasetWriter(tmp_path / "d", 15, tiny.features(), append=True)
    assert not list(tmp_path.glob(".d.*"))


def test_chw_declared_camera_reads_back_hwc(tmp_path, tiny):
    """lerobot's HIL-SERL recorder declares cameras as [C, H, W] with names; frames still come back HWC."""
    features = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": None},
        "observation.images.front": {"dtype": "video", "shape": [3, 32, 48], "names": ["channels", "height", "width"]},
    }
    rng = np.random.default_rng(0)
    frames = [tiny.frame(0, f, {"cam": {"dtype": "video"}}, rng)["cam"] for f in range(4)]
    with LeRobotDatasetWriter(tmp_path / "ds", 10, features) as writer:
        for image in frames:
            state = np.zeros(2, np.float32)
            writer.add_frame(
                {"observation.state": state, "observation.images.front": np.moveaxis(image, -1, 0)}, task="t"
            )
        writer.save_episode()
    dataset = LeRobotDataset(tmp_path / "ds")
    assert dataset.features["observation.images.front"]["shape"] == [3, 32, 48]
    assert dataset.output_spec()["observation.images.front"][0] == (32, 48, 3)
    decoded = dataset.get_batch(np.arange(4))["observation.images.front"]
    assert decoded.shape == (4, 32, 48, 3)
    assert tiny.psnr(decoded, np.stack(frames)) >= 30


def test_recover_after_crash_keeps_saved_episodes(tmp_path, tiny):
    features = tiny.features()
    rng = np.random.default_rng(0)
    writer = LeRobotDatasetWriter(tmp_path / "ds", 30, features)
    frames = []
    for episode, length in enumerate((3, 4)):
        for f in range(length):
            frames.append(tiny.frame(episode, f, features, rng))
            writer.add_frame(frames[-1], task=f"task {episode}")
        writer.save_episode()
    writer.add_frame(tiny.frame(2, 0, features, rng), task="never saved")  # in progress when the process dies
    journal = tmp_path / ".ds.writing" / ".journal" / "journal.jsonl"
    with open(journal, "a") as f:
        f.write('{"episode_index": 2, "len')  # a crash in the middle of writing the next journal line
    del writer  # no finalize: the process "crashed"
    assert not (tmp_path / "ds").exists()

    LeRobotDatasetWriter.recover(tmp_path / "ds")
    dataset = LeRobotDataset(tmp_path / "ds")
    batch = dataset.get_batch(np.arange(len(dataset)))
    assert len(dataset) == 7 and dataset.meta.tasks == ["task 0", "task 1"]
    np.testing.assert_array_equal(batch["action"], np.stack([f["action"] for f in frames]))
    assert tiny.psnr(batch["observation.images.top"], np.stack([f["observation.images.top"] for f in frames])) >= 30
    assert not (tmp_path / ".ds.writing").exists()
    with pytest.raises(FileNotFoundError, match="no interrupted writer"):
        LeRobotDatasetWriter.recover(tmp_path / "ds")


def test_append_with_no_new_episode_leaves_dataset_unchanged(tmp_path, tiny):
    tiny.write(tmp_path / "ds", lengths=(2,), tasks=("t",))
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "ds").rglob("*")}
    writer = LeRobotDatasetWriter(tmp_path / "ds", 30, tiny.features(), append=True)
    assert writer.finalize() == tmp_path / "ds"
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "ds").rglob("*")} == before
    assert not list(tmp_path.glob(".ds.*"))
