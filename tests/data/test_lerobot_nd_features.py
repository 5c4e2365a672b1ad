"""N-d numeric features (e.g. a (50, 14) state chunk per frame) stored as lerobot stores them.

The reference is `fixtures/lerobot_nd`, a dataset written and read back by the real lerobot 0.4.4 (see the
README beside it): our reader must return what lerobot returned, and our writer must produce the same columns,
`huggingface` metadata, info.json and stats layout.
"""

from __future__ import annotations

import json
import pathlib

import hypothesis.extra.numpy as hnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiors_jax.data.batches import BatchLoader
from hiors_jax.data.lerobot import FrameValidationError, LeRobotDataset, LeRobotDatasetWriter, LeRobotFormatError

LEROBOT_ND = pathlib.Path(__file__).parent / "fixtures" / "lerobot_nd"
DATA = "data/chunk-000/file-000.parquet"
DEFAULT_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


def _user_features(root: pathlib.Path) -> dict:
    info = json.loads((root / "meta/info.json").read_text())
    return {k: f for k, f in info["features"].items() if k not in DEFAULT_KEYS}


def test_reads_lerobot_written_nd_dataset_like_lerobot():
    expected = np.load(LEROBOT_ND / "expected.npz")
    dataset = LeRobotDataset(LEROBOT_ND)
    batch = dataset.get_batch(np.arange(len(dataset)))
    assert batch["state_chunk"].shape == (7, 5, 3) and batch["cube"].shape == (7, 2, 3, 4)
    for key in expected.files:
        assert batch[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)
    assert batch["task"] == json.loads((LEROBOT_ND / "expected.json").read_text())["task"]
    assert dataset.output_spec()["state_chunk"] == ((5, 3), np.dtype(np.float32))


def test_writer_stores_nd_features_as_lerobot_does(tmp_path):
    expected = np.load(LEROBOT_ND / "expected.npz")
    tasks = json.loads((LEROBOT_ND / "expected.json").read_text())["task"]
    features = _user_features(LEROBOT_ND)
    ours = tmp_path / "ours"
    writer = LeRobotDatasetWriter(ours, 30, features, robot_type="dobot_xtrainer")
    for i in range(len(tasks)):
        frame = {k: expected[k][i] if expected[k][i].ndim else expected[k][i].reshape(1) for k in features}
        writer.add_frame(frame, task=tasks[i])
        if i + 1 == len(tasks) or expected["episode_index"][i + 1] != expected["episode_index"][i]:
            writer.save_episode()
    writer.finalize()

    ref_schema, our_schema = pq.read_schema(LEROBOT_ND / DATA), pq.read_schema(ours / DATA)
    assert our_schema.names == ref_schema.names
    for ref_field, our_field in zip(ref_schema, our_schema, strict=True):
        assert our_field.type == ref_field.type, ref_field.name  # nested lists for datasets' ArrayND
        assert our_field.metadata == ref_field.metadata, ref_field.name  # ArrayND extension name + shape
    hf = [json.loads(s.metadata[b"huggingface"])["info"] for s in (ref_schema, our_schema)]
    assert hf[0] == hf[1]
    ref_info, our_info = (json.loads((r / "meta/info.json").read_text()) for r in (LEROBOT_ND, ours))
    assert our_info["features"] == ref_info["features"]
    ref_stats, our_stats = (json.loads((r / "meta/stats.json").read_text()) for r in (LEROBOT_ND, ours))
    for key in features:
        for name in ("min", "max", "mean", "std", "count"):
            ref, got = np.asarray(ref_stats[key][name]), np.asarray(our_stats[key][name])
            assert got.shape == ref.shape, (key, name)  # per last-axis component: (3,) for a (5, 3) feature
            np.testing.assert_allclose(got.astype(float), ref.astype(float), rtol=1e-6, atol=1e-6, err_msg=key)
    back = LeRobotDataset(ours).get_batch(np.arange(len(tasks)))
    for key in expected.files:
        np.testing.assert_array_equal(back[key], expected[key], err_msg=key)


DTYPES = ["bool", "int8", "uint8", "int16", "int32", "int64", "float16", "float32", "float64"]


@st.composite
def nd_feature_values(draw):
    """A feature (dtype, shape of 1 to 4 dims, some zero-size) and per-frame arrays in awkward layouts."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4))
    frames = draw(st.integers(1, 4))
    elements = None
    if dtype.kind == "f":
        elements = st.floats(-1e3, 1e3, width=dtype.itemsize * 8, allow_nan=False, allow_infinity=False)
    values = draw(hnp.arrays(dtype, (frames, *shape), elements=elements))
    layout = draw(st.sampled_from(["native", "swapped", "strided", "fortran"]))
    given = []
    for frame in values:
        if layout == "swapped" and dtype.itemsize > 1:  # same values, other byte order ('>f4' on x86)
            frame = frame.astype(dtype.newbyteorder("S"))
        elif layout == "strided":  # a non-contiguous view holding the same values
            wide = np.repeat(frame[..., None], 2, axis=-1)
            frame = wide[..., 0]
        elif layout == "fortran":
            frame = np.asfortranarray(frame)
        given.append(frame)
    return dtype, list(shape), values, given, layout


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=nd_feature_values())
def test_any_numeric_layout_round_trips(tmp_path_factory, case):
    """Byte order, strides and zero-size dims change nothing: the values read back are the values given."""
    dtype, shape, values, given_frames, layout = case
    root = tmp_path_factory.mktemp("nd") / "ds"
    features = {"x": {"dtype": dtype.name, "shape": shape, "names": None}}
    with LeRobotDatasetWriter(root, 30, features) as writer:
        for frame in given_frames:
            writer.add_frame({"x": frame}, task="t")
        writer.save_episode()
    np.testing.assert_array_equal(np.stack(given_frames), values)  # the caller's arrays are left as given
    batch = LeRobotDataset(root).get_batch(np.arange(len(values)))
    expected = values if shape != [1] else values.reshape(len(values))
    assert batch["x"].dtype == dtype and batch["x"].dtype.isnative, layout
    np.testing.assert_array_equal(batch["x"], expected, err_msg=layout)
    stats = json.loads((root / "meta/stats.json").read_text())["x"]
    assert np.asarray(stats["mean"]).shape == (shape[-1],) and stats["count"] == [len(values)]
    if values.size:  # per component of the last axis, over frames and every other axis (lerobot's layout)
        per_component = values.reshape(-1, shape[-1]).astype(np.float64)
        np.testing.assert_allclose(stats["mean"], per_component.mean(axis=0), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(stats["max"], dtype), per_component.max(axis=0).astype(dtype))


def test_big_endian_values_are_not_relabelled(tmp_path):
    """`>i4` [0, 1, 2] must arrive as [0, 1, 2], not as the bytes read little-endian (0, 16777216, ...)."""
    features = {"v": {"dtype": "int32", "shape": [3], "names": None}, "m": {"dtype": "float64", "shape": [2, 2]}}
    with LeRobotDatasetWriter(tmp_path / "ds", 30, features) as writer:
        writer.add_frame({"v": np.array([0, 1, 2], ">i4"), "m": np.array([[1.5, -2.0], [0.0, 3.25]], ">f8")}, "t")
        writer.save_episode()
    item = LeRobotDataset(tmp_path / "ds")[0]
    np.testing.assert_array_equal(item["v"], [0, 1, 2])
    np.testing.assert_array_equal(item["m"], [[1.5, -2.0], [0.0, 3.25]])


def test_nd_features_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="'too_deep'.*1 to 5"):
        LeRobotDatasetWriter(tmp_path / "a", 30, {"too_deep": {"dtype": "float32", "shape": [1] * 6}})
    features = {"state_chunk": {"dtype": "float32", "shape": [4, 2], "names": None}}
    writer = LeRobotDatasetWriter(tmp_path / "b", 30, features)
    with pytest.raises(FrameValidationError, match=r"'state_chunk'.*shape \(2, 4\)"):
        writer.add_frame({"state_chunk": np.zeros((2, 4), np.float32)}, task="t")
    with pytest.raises(FrameValidationError, match="'state_chunk'.*dtype int32"):
        writer.add_frame({"state_chunk": np.zeros((4, 2), np.int32)}, task="t")
    writer.abort()


def test_ragged_nested_lists_are_refused_with_file_and_column(tmp_path):
    """A row whose inner list is short must not be reshaped into its neighbours' values."""
    root = tmp_path / "ds"
    features = {"state_chunk": {"dtype": "float32", "shape": [2, 3], "names": None}}
    with LeRobotDatasetWriter(root, 30, features) as writer:
        for _ in range(2):
            writer.add_frame({"state_chunk": np.ones((2, 3), np.float32)}, task="t")
        writer.save_episode()
    table = pq.read_table(root / DATA)
    ragged = pa.array(
        [[[1.0, 1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]], pa.list_(pa.list_(pa.float32()))
    )
    index = table.schema.get_field_index("state_chunk")
    pq.write_table(table.set_column(index, table.schema.field(index).with_type(ragged.type), ragged), root / DATA)
    with pytest.raises(LeRobotFormatError, match=r"file-000\.parquet: column 'state_chunk'.*dimension 1 has length 2"):
        LeRobotDataset(root)


def test_nd_feature_windows_through_the_batch_loader():
    """Delta windows and worker batches carry the N-d shape: (batch, steps, 5, 3) for a (5, 3) feature."""
    expected = np.load(LEROBOT_ND / "expected.npz")
    dataset = LeRobotDataset(LEROBOT_ND, delta_timestamps={"state_chunk": [0.0, 1 / 30]})
    with BatchLoader(dataset, 4, num_workers=1, seed=0) as loader:
        batch = next(loader)
    assert batch["state_chunk"].shape == (4, 2, 5, 3) and batch["cube"].shape == (4, 2, 3, 4)
    for i, row in enumerate(batch["index"]):
        last = int(np.flatnonzero(expected["episode_index"] == expected["episode_index"][row])[-1])
        np.testing.assert_array_equal(batch["state_chunk"][i, 0], expected["state_chunk"][row])
        np.testing.assert_array_equal(batch["state_chunk"][i, 1], expected["state_chunk"][min(row + 1, last)])
        assert batch["state_chunk_is_pad"][i, 1] == (row == last)
