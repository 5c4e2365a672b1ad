"""Opening a dataset checks its metadata against the data it describes, and refuses with file and feature named.

Each case here used to open and return wrong numbers without a word (values cast to the wrong dtype, the
wrong video frame for a repeated row, timestamps that do not follow info.json's fps).
"""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiors_jax.data.lerobot import LeRobotDataset, LeRobotDatasetWriter, LeRobotFormatError

DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


@pytest.fixture
def copy_of(lerobot_fixtures, tmp_path):
    def make(name="ds_lerobot"):
        root = tmp_path / name
        shutil.copytree(lerobot_fixtures / name, root)
        for path in root.rglob("*"):  # the shared fixtures are read-only
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        return root

    return make


def _edit_info(root, edit):
    path = root / "meta/info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


def _edit_column(path, name, edit, arrow_type=None):
    """Rewrite one column of a parquet file through numpy (`edit` gets and returns the column's values)."""
    table = pq.read_table(path)
    i = table.schema.get_field_index(name)
    values = edit(table.column(name).to_numpy().copy())
    column = pa.array(values, arrow_type or table.schema.field(i).type)
    pq.write_table(table.set_column(i, table.schema.field(i).with_type(column.type), column), path)


def _edit_rows(path, edit):
    """Rewrite the rows of a parquet file: `edit` gets and returns a list of row positions to keep, in order."""
    table = pq.read_table(path)
    pq.write_table(table.take(pa.array(edit(list(range(table.num_rows))))), path)


@pytest.mark.parametrize("name", ["ds_lerobot", "ds_v21"])
def test_fps_that_disagrees_with_timestamps(copy_of, name):
    root = copy_of(name)
    _edit_info(root, lambda info: info.update(fps=25))
    with pytest.raises(LeRobotFormatError, match=r"\.parquet row 1: timestamp 0\.033333 is not frame_index / fps"):
        LeRobotDataset(root)


@pytest.mark.parametrize(
    ("feature", "dtype", "stored"),
    [("action", "int64", "float"), ("next.reward", "bool", "float"), ("next.done", "float32", "bool")],
)
def test_declared_dtype_that_would_cast_values(copy_of, feature, dtype, stored):
    root = copy_of()
    _edit_info(root, lambda info: info["features"][feature].update(dtype=dtype))
    message = rf"file-000\.parquet: column '{feature}'.*stored as {stored}; reading them as {dtype} would change"
    with pytest.raises(LeRobotFormatError, match=message):
        LeRobotDataset(root)


def test_stored_column_wider_than_declared_is_refused_narrower_is_read(copy_of, lerobot_fixtures):
    root = copy_of()
    _edit_column(root / DATA, "next.reward", lambda v: v.astype(np.float64) + 1e-12, pa.float64())
    with pytest.raises(LeRobotFormatError, match="'next.reward'.*stored as double; reading them as float32"):
        LeRobotDataset(root)
    root = copy_of("ds_np")
    _edit_column(root / DATA, "frame_index", lambda v: v.astype(np.int32), pa.int32())  # int32 -> int64 is exact
    reference = np.load(lerobot_fixtures / "ds_np" / "expected.npz")["frame_index"]
    np.testing.assert_array_equal(LeRobotDataset(root).get_batch(np.arange(150))["frame_index"], reference)


def test_row_repeating_the_previous_one(copy_of):
    """Row 6 replaced by a copy of row 5 (same timestamp and frame_index): the wrong video frame, silently."""
    root = copy_of()
    _edit_column(root / DATA, "frame_index", lambda v: np.where(np.arange(len(v)) == 6, 5, v))
    _edit_column(root / DATA, "timestamp", lambda v: np.where(np.arange(len(v)) == 6, v[5], v))
    with pytest.raises(LeRobotFormatError, match=r"file-000\.parquet row 6: frame_index 5, but the row is frame 6"):
        LeRobotDataset(root)


def test_repeated_index_and_missing_rows(copy_of):
    root = copy_of()
    _edit_rows(root / DATA, lambda rows: rows[:7] + [6] + rows[8:])  # row 7 lost, row 6 twice
    with pytest.raises(LeRobotFormatError, match=r"file-000\.parquet row 7: index 6 appears on more than one row"):
        LeRobotDataset(root)
    root = copy_of("ds_np")
    _edit_rows(root / DATA, lambda rows: rows[:20] + rows[21:])
    with pytest.raises(LeRobotFormatError, match=r"episode 0 has 39 rows in .*file-000\.parquet but its metadata"):
        LeRobotDataset(root)


def test_frame_index_out_of_order(copy_of):
    root = copy_of()
    _edit_column(root / DATA, "frame_index", lambda v: v[[0, 2, 1, *range(3, len(v))]])
    with pytest.raises(LeRobotFormatError, match=r"row 1: frame_index 2, but the row is frame 1 of episode 0"):
        LeRobotDataset(root)


def test_episode_ranges_that_do_not_match(copy_of):
    root = copy_of()
    _edit_column(root / EPISODES, "dataset_from_index", lambda v: v + np.array([0, 1, 0]))
    with pytest.raises(LeRobotFormatError, match=r"meta/episodes: episode 1 covers index range \[41, 90\)"):
        LeRobotDataset(root)
    root = copy_of("ds_np")
    for column in ("dataset_from_index", "dataset_to_index"):
        _edit_column(root / EPISODES, column, lambda v: v + np.array([0, 5, 5]))
    with pytest.raises(LeRobotFormatError, match="episode 1 starts at index 45, expected 40"):
        LeRobotDataset(root)
    root = copy_of("ds_v21")
    _edit_info(root, lambda info: info.update(total_frames=151))
    with pytest.raises(LeRobotFormatError, match="info.json: total_frames is 151 but the episodes hold 150"):
        LeRobotDataset(root)


def test_task_index_outside_tasks(copy_of):
    root = copy_of()
    _edit_column(root / DATA, "task_index", lambda v: np.where(np.arange(len(v)) == 44, 7, v))
    with pytest.raises(LeRobotFormatError, match=r"file-000\.parquet row 44: task_index 7 is not in meta/tasks"):
        LeRobotDataset(root)


# ------------------------------------------------------------------ the class, by property
LENGTHS = (4, 6, 5)


@pytest.fixture(scope="module")
def clean_tabular(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean") / "ds"
    features = {"action": {"dtype": "float32", "shape": [2, 3], "names": None}}
    with LeRobotDatasetWriter(root, 10, features) as writer:
        for e, length in enumerate(LENGTHS):
            for f in range(length):
                writer.add_frame({"action": np.full((2, 3), 100 * e + f, np.float32)}, task=f"t{e}")
            writer.save_episode()
    return root


CORRUPTIONS = {
    "repeat previous row": lambda rows, i: rows[:i] + [rows[i - 1]] + rows[i + 1 :],
    "drop a row": lambda rows, i: rows[:i] + rows[i + 1 :],
    "duplicate a row": lambda rows, i: rows[:i] + [rows[i]] + rows[i:],
}
COLUMN_EDITS = {
    "frame_index": lambda v, i, k: np.where(np.arange(len(v)) == i, v + k, v),
    "timestamp": lambda v, i, k: np.where(np.arange(len(v)) == i, v + np.float32(k / 10), v),
    "episode_index": lambda v, i, k: np.where(np.arange(len(v)) == i, v + k, v),
    "index": lambda v, i, k: np.where(np.arange(len(v)) == i, v + k, v),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    kind=st.sampled_from(sorted(CORRUPTIONS) + sorted(COLUMN_EDITS)),
    row=st.integers(1, sum(LENGTHS) - 1),
    shift=st.sampled_from([-2, -1, 1, 3]),
)
def test_any_row_level_corruption_is_refused(clean_tabular, tmp_path_factory, kind, row, shift):
    """Whatever single row-level change is made to a valid file, opening refuses it rather than reading it.

    (Whole rows stored out of order are not a corruption: rows are read in `index` order.)
    """
    root = tmp_path_factory.mktemp("bad") / "ds"
    shutil.copytree(clean_tabular, root)
    if kind in CORRUPTIONS:
        _edit_rows(root / DATA, lambda rows: CORRUPTIONS[kind](rows, row))
    else:
        _edit_column(root / DATA, kind, lambda v: COLUMN_EDITS[kind](v, row, shift))
    with pytest.raises(LeRobotFormatError, match=r"file-000\.parquet|meta"):
        LeRobotDataset(root)


def test_clean_dataset_opens(clean_tabular):
    batch = LeRobotDataset(clean_tabular).get_batch(np.arange(sum(LENGTHS)))
    assert batch["action"][5, 1, 2] == 100 + 1


def test_writer_refuses_timestamps_the_reader_would_refuse(tmp_path):
    features = {"a": {"dtype": "float32", "shape": [1], "names": None}}
    with LeRobotDatasetWriter(tmp_path / "ds", 10, features) as writer:
        writer.add_frame({"a": 0.0}, task="t", timestamp=0.0)
        with pytest.raises(ValueError, match=r"timestamp 0\.2 of frame 1 is not frame_index / fps = 0\.1"):
            writer.add_frame({"a": 1.0}, task="t", timestamp=0.2)
        writer.add_frame({"a": 1.0, "timestamp": np.float32(0.1)}, task="t")
        writer.save_episode()
    np.testing.assert_array_equal(
        LeRobotDataset(tmp_path / "ds").get_batch([0, 1])["timestamp"], np.float32([0.0, 0.1])
    )
