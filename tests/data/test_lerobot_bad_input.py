"""Bad datasets get clear errors that name the file and what was wrong."""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import pytest

from hiors_jax.data.lerobot import LeRobotDataset, LeRobotFormatError

VIDEO = "videos/observation.images.cam_high/chunk-000/file-000.mp4"
DATA = "data/chunk-000/file-000.parquet"


@pytest.fixture
def copy_of(lerobot_fixtures, tmp_path):
    def make(name="ds_lerobot"):
        root = tmp_path / name
        shutil.copytree(lerobot_fixtures / name, root)
        for path in root.rglob("*"):  # the shared fixtures are read-only
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        return root

    return make


def _edit_info(root, **changes):
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))
    return info


def test_missing_data_parquet(copy_of):
    root = copy_of()
    (root / DATA).unlink()
    with pytest.raises(LeRobotFormatError, match=r"file-000\.parquet: parquet file is missing"):
        LeRobotDataset(root)


def test_corrupt_data_parquet(copy_of):
    root = copy_of()
    data = (root / DATA).read_bytes()
    (root / DATA).write_bytes(data[: len(data) // 2])
    with pytest.raises(LeRobotFormatError, match=r"data/chunk-000/file-000\.parquet: cannot read parquet"):
        LeRobotDataset(root)


def test_corrupt_episodes_parquet(copy_of):
    root = copy_of()
    (root / "meta/episodes/chunk-000/file-000.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(LeRobotFormatError, match=r"meta/episodes/chunk-000/file-000\.parquet: cannot read parquet"):
        LeRobotDataset(root)


def test_missing_v21_episode_file(copy_of):
    root = copy_of("ds_v21")
    (root / "data/chunk-000/episode_000001.parquet").unlink()
    with pytest.raises(LeRobotFormatError, match=r"episode_000001\.parquet: parquet file is missing"):
        LeRobotDataset(root)


def test_parquet_lacking_a_declared_column(copy_of):
    root = copy_of()
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.velocity"] = {"dtype": "float32", "shape": [14], "names": None}
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(LeRobotFormatError, match=r"file-000\.parquet: columns \['observation.velocity'\]"):
        LeRobotDataset(root)


def test_truncated_mp4_fails_when_frames_are_missing(copy_of):
    root = copy_of()
    video = root / VIDEO
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    dataset = LeRobotDataset(root)  # metadata and parquet are fine
    with pytest.raises(LeRobotFormatError, match=r"file-000\.mp4: no frame within 0\.0001s of 4\.9"):
        dataset[149]


def test_mp4_cut_to_a_stub_cannot_be_opened(copy_of):
    root = copy_of()
    video = root / VIDEO
    video.write_bytes(video.read_bytes()[:100])
    dataset = LeRobotDataset(root)
    with pytest.raises(LeRobotFormatError, match=r"file-000\.mp4: cannot open video"):
        dataset[0]


def test_missing_mp4(copy_of):
    root = copy_of()
    (root / VIDEO).unlink()
    with pytest.raises(LeRobotFormatError, match=r"file-000\.mp4: video file is missing"):
        LeRobotDataset(root)[0]


def test_unknown_codebase_version(copy_of):
    root = copy_of()
    _edit_info(root, codebase_version="v9.9")
    with pytest.raises(LeRobotFormatError, match=r"info\.json: unknown codebase_version 'v9\.9'"):
        LeRobotDataset(root)


def test_missing_and_broken_info_json(copy_of):
    root = copy_of()
    (root / "meta/info.json").write_text("{ not json")
    with pytest.raises(LeRobotFormatError, match=r"info\.json: not valid JSON"):
        LeRobotDataset(root)
    (root / "meta/info.json").unlink()
    with pytest.raises(LeRobotFormatError, match=r"info\.json: file is missing"):
        LeRobotDataset(root)
    with pytest.raises(LeRobotFormatError, match="does not exist"):
        LeRobotDataset(root / "nowhere")


def test_video_size_differs_from_info(copy_of):
    root = copy_of()
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["observation.images.cam_high"]["shape"] = [64, 128, 3]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(
        LeRobotFormatError, match=r"file-000\.mp4: frames are 96x128, info\.json declares \(64, 128, 3\)"
    ):
        LeRobotDataset(root)[0]


def test_corrupt_png_bytes_name_the_row(copy_of):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = copy_of()
    table = pq.read_table(root / DATA)
    column = table.column("observation.images.cam_left_wrist").to_pylist()
    column[3] = {"bytes": b"\x89PNG broken", "path": "frame_000003.png"}
    index = table.schema.get_field_index("observation.images.cam_left_wrist")
    table = table.set_column(index, table.schema.field(index), pa.array(column, table.schema.field(index).type))
    pq.write_table(table, root / DATA)
    dataset = LeRobotDataset(root)
    assert dataset[2]["observation.images.cam_left_wrist"].shape == (96, 128, 3)
    with pytest.raises(LeRobotFormatError, match=r"file-000\.parquet row 3 'observation.images.cam_left_wrist'"):
        dataset[3]


def test_bad_delta_timestamps_and_indices(lerobot_fixtures):
    root = lerobot_fixtures / "ds_lerobot"
    with pytest.raises(ValueError, match=r"not multiples of 1/fps \(fps=30\)"):
        LeRobotDataset(root, delta_timestamps={"action": [0.0, 0.05]})
    with pytest.raises(ValueError, match="'nope' is not a dataset feature"):
        LeRobotDataset(root, delta_timestamps={"nope": [0.0]})
    dataset = LeRobotDataset(root)
    with pytest.raises(IndexError, match="out of range"):
        dataset[150]
    with pytest.raises(IndexError, match="out of range"):
        dataset.get_batch(np.array([0, 150]))
    assert dataset[-1]["index"] == 149


def test_column_with_wrong_vector_length(copy_of):
    root = copy_of()
    info = json.loads((root / "meta/info.json").read_text())
    info["features"]["action"]["shape"] = [7]
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(LeRobotFormatError, match=r"file-000\.parquet: column 'action' does not hold float32\[7\]"):
        LeRobotDataset(root)
