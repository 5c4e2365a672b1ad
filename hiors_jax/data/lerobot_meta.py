"""LeRobot dataset metadata (v2.1 and v3.0): info.json, episodes, tasks, file paths.

Everything here is read once when a dataset is opened; the frame data itself lives in lerobot_read.py.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hiors_jax.data.lerobot_stats import aggregate_stats

SUPPORTED_VERSIONS = ("v2.1", "v3.0")
# Columns lerobot adds to every dataset; all shape [1].
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
VISUAL_DTYPES = ("image", "video")
# lerobot maps numeric features of 2 to 5 dims to datasets' Array2D..Array5D; more dims it cannot store.
MAX_FEATURE_DIMS = 5


class LeRobotFormatError(ValueError):
    """A dataset file is missing, corrupt or not what the LeRobot format says it should be."""


def read_json(path: pathlib.Path) -> Any:
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LeRobotFormatError(f"{path}: not valid JSON ({err})") from err


def read_jsonl(path: pathlib.Path) -> list[dict]:
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: file is missing")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise LeRobotFormatError(f"{path}:{line_no}: not valid JSON ({err})") from err
    return rows


def read_parquet(path: pathlib.Path, columns: list[str] | None = None) -> pa.Table:
    """pq.read_table with errors that name the file."""
    if not path.is_file():
        raise LeRobotFormatError(f"{path}: parquet file is missing")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise LeRobotFormatError(f"{path}: cannot read parquet ({err})") from err


def image_hwc_shape(feature: Mapping[str, Any]) -> tuple[int, int, int]:
    """(H, W, C) of an image/video feature, using `names` because some writers declare CHW shapes."""
    shape = tuple(int(s) for s in feature["shape"])
    names = feature.get("names")
    if len(shape) != 3:
        raise LeRobotFormatError(f"image feature shape {shape} is not 3-D")
    if isinstance(names, list) and len(names) == 3 and all(isinstance(n, str) for n in names):
        lowered = [n.lower() for n in names]
        if {"height", "width", "channels"} <= set(lowered) or {"height", "width", "channel"} <= set(lowered):
            pick = {n.rstrip("s"): s for n, s in zip(lowered, shape, strict=True)}
            return pick["height"], pick["width"], pick["channel"]
    if shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):
        return shape[1], shape[2], shape[0]
    return shape


def feature_dims(feature: Mapping[str, Any]) -> tuple[int, ...]:
    """Per-frame shape of a numeric feature; shape [1] is a scalar column, so ()."""
    shape = tuple(int(s) for s in feature["shape"])
    return () if shape == (1,) else shape


def _check_stored_dtype(stored: pa.DataType, declared: np.dtype, where: str) -> None:
    """Refuse a column whose values would change when read as the declared dtype (no lossy casts)."""
    try:
        stored_np = np.dtype(stored.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        raise LeRobotFormatError(f"{where}: values are stored as {stored}") from None
    if stored_np == declared:
        return
    if stored_np.kind == declared.kind and np.can_cast(stored_np, declared, "safe"):
        return  # widening within a kind (int32 -> int64, float32 -> float64) keeps every value
    raise LeRobotFormatError(f"{where}: values are stored as {stored}; reading them as {declared} would change them")


def column_to_numpy(column: pa.Array | pa.ChunkedArray, feature: Mapping[str, Any], where: str) -> np.ndarray:
    """(rows, *shape) values of a numeric parquet column, checked against the feature's declared dtype and shape.

    Vectors are fixed-size lists, N-d features nested lists (datasets' ArrayND, as lerobot writes them) or
    nested fixed-size lists; shape [1] may be a plain column or a list of one. Lengths are checked per row
    with vectorised compute, so a wrong shape is refused instead of reshaped into other rows' values.
    """
    declared = np.dtype(feature["dtype"])
    shape = tuple(int(s) for s in feature["shape"])
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    rows = len(array)
    depth, walk = 0, array.type
    while True:
        if isinstance(walk, pa.ExtensionType):
            walk = walk.storage_type
        if not (pa.types.is_list(walk) or pa.types.is_large_list(walk) or pa.types.is_fixed_size_list(walk)):
            break
        depth, walk = depth + 1, walk.value_type
    dims = () if shape == (1,) and depth == 0 else shape
    if depth != len(dims):
        raise LeRobotFormatError(
            f"{where}: the column nests {depth} list level(s) for {len(dims)} declared dimension(s)"
        )
    for level, size in enumerate(dims):
        if isinstance(array, pa.ExtensionArray):
            array = array.storage
        if array.null_count:
            raise LeRobotFormatError(f"{where}: {array.null_count} null values")
        if pa.types.is_fixed_size_list(array.type):
            if array.type.list_size != size:
                raise LeRobotFormatError(f"{where}: dimension {level} has length {array.type.list_size}")
        else:
            bad = pc.not_equal(pc.list_value_length(array), size)
            if pc.any(bad).as_py():
                first = int(pc.index(bad, True).as_py())
                length = pc.list_value_length(array)[first].as_py()
                raise LeRobotFormatError(
                    f"{where}: dimension {level} has length {length} at entry {first} (rows, then inner lists)"
                )
        array = array.flatten()
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    if array.null_count:
        raise LeRobotFormatError(f"{where}: {array.null_count} null values")
    _check_stored_dtype(array.type, declared, where)
    values = array.to_numpy(zero_copy_only=False).astype(declared, copy=False)
    return values.reshape((rows, *feature_dims(feature)))


@dataclasses.dataclass(frozen=True)
class EpisodeTable:
    """Per-episode metadata as numpy columns (row i describes episodes[i])."""

    episode_index: np.ndarray  # int64 (E,)
    length: np.ndarray  # int64 (E,)
    dataset_from_index: np.ndarray  # int64 (E,), global `index` range, end exclusive
    dataset_to_index: np.ndarray
    tasks: list[list[str]]
    data_file: list[tuple[int, int]]  # v3.0: (chunk_index, file_index); v2.1: (episode_chunk, episode_index)
    # per video key: (E,) chunk, (E,) file, (E,) from_timestamp float64 seconds inside the mp4
    video_chunk: dict[str, np.ndarray]
    video_file: dict[str, np.ndarray]
    video_from_timestamp: dict[str, np.ndarray]
    video_to_timestamp: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.episode_index)


@dataclasses.dataclass
class DatasetMeta:
    """What `LeRobotDataset.meta` exposes: fps, features, episodes, tasks, plus the raw info.json."""

    root: pathlib.Path
    info: dict[str, Any]
    episodes: EpisodeTable
    tasks: list[str]  # position = task_index
    stats: dict[str, Any] | None

    @property
    def version(self) -> str:
        return self.info["codebase_version"]

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def robot_type(self) -> str | None:
        return self.info.get("robot_type")

    @property
    def total_frames(self) -> int:
        return int(self.info["total_frames"])

    @property
    def total_episodes(self) -> int:
        return len(self.episodes)

    @property
    def video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "image"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] in VISUAL_DTYPES]

    def data_path(self, episode_pos: int) -> pathlib.Path:
        chunk, file = self.episodes.data_file[episode_pos]
        template = self.info["data_path"]
        if self.version == "v2.1":
            return self.root / template.format(episode_chunk=chunk, episode_index=file)
        return self.root / template.format(chunk_index=chunk, file_index=file)

    def video_path(self, key: str, episode_pos: int) -> pathlib.Path:
        template = self.info["video_path"]
        if self.version == "v2.1":
            ep = int(self.episodes.episode_index[episode_pos])
            chunk = ep // int(self.info.get("chunks_size", 1000))
            return self.root / template.format(episode_chunk=chunk, video_key=key, episode_index=ep)
        chunk = int(self.episodes.video_chunk[key][episode_pos])
        file = int(self.episodes.video_file[key][episode_pos])
        return self.root / template.format(video_key=key, chunk_index=chunk, file_index=file)


def load_info(root: pathlib.Path) -> dict[str, Any]:
    info = read_json(root / "meta" / "info.json")
    path = root / "meta" / "info.json"
    if not isinstance(info, dict):
        raise LeRobotFormatError(f"{path}: expected a JSON object")
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise LeRobotFormatError(
            f"{path}: unknown codebase_version {version!r}; this reader supports {', '.join(SUPPORTED_VERSIONS)}"
        )
    for field in ("fps", "features", "data_path"):
        if field not in info:
            raise LeRobotFormatError(f"{path}: required field {field!r} is missing")
    for key, feature in info["features"].items():
        if not isinstance(feature, dict) or "dtype" not in feature or "shape" not in feature:
            raise LeRobotFormatError(f"{path}: feature {key!r} lacks dtype/shape")
    return info


def _episodes_v21(root: pathlib.Path, info: dict, video_keys: list[str]) -> EpisodeTable:
    rows = sorted(read_jsonl(root / "meta" / "episodes.jsonl"), key=lambda r: r["episode_index"])
    ep = np.array([r["episode_index"] for r in rows], dtype=np.int64)
    length = np.array([r["length"] for r in rows], dtype=np.int64)
    to = np.cumsum(length)
    chunks_size = int(info.get("chunks_size", 1000))
    zeros = np.zeros(len(rows), dtype=np.float64)
    return EpisodeTable(
        episode_index=ep,
        length=length,
        dataset_from_index=to - length,
        dataset_to_index=to,
        tasks=[list(r.get("tasks", [])) for r in rows],
        data_file=[(int(e) // chunks_size, int(e)) for e in ep],
        video_chunk={k: ep // chunks_size for k in video_keys},
        video_file={k: ep.copy() for k in video_keys},
        video_from_timestamp={k: zeros.copy() for k in video_keys},
        video_to_timestamp={k: length / float(info["fps"]) for k in video_keys},
    )


def _episodes_v30(root: pathlib.Path, video_keys: list[str]) -> EpisodeTable:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise LeRobotFormatError(f"{root / 'meta' / 'episodes'}: no episode parquet files")
    wanted = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index"]
    wanted += ["dataset_from_index", "dataset_to_index"]
    for k in video_keys:
        wanted += [f"videos/{k}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    tables = []
    for path in files:
        schema = _read_schema(path)
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            raise LeRobotFormatError(f"{path}: episode columns missing: {missing}")
        tables.append(read_parquet(path, columns=wanted))
    table = pa.concat_tables(tables)
    order = np.argsort(table.column("episode_index").to_numpy(), kind="stable")
    col = {c: table.column(c) for c in wanted}

    def ints(name: str) -> np.ndarray:
        return col[name].to_numpy().astype(np.int64)[order]

    data_chunk, data_file = ints("data/chunk_index"), ints("data/file_index")
    tasks = col["tasks"].to_pylist()
    return EpisodeTable(
        episode_index=ints("episode_index"),
        length=ints("length"),
        dataset_from_index=ints("dataset_from_index"),
        dataset_to_index=ints("dataset_to_index"),
        tasks=[list(tasks[i] or []) for i in order],
        data_file=list(zip(data_chunk.tolist(), data_file.tolist(), strict=True)),
        video_chunk={k: ints(f"videos/{k}/chunk_index") for k in video_keys},
        video_file={k: ints(f"videos/{k}/file_index") for k in video_keys},
        video_from_timestamp={
            k: col[f"videos/{k}/from_timestamp"].to_numpy().astype(np.float64)[order] for k in video_keys
        },
        video_to_timestamp={
            k: col[f"videos/{k}/to_timestamp"].to_numpy().astype(np.float64)[order] for k in video_keys
        },
    )


def _read_schema(path: pathlib.Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise LeRobotFormatError(f"{path}: cannot read parquet ({err})") from err


def load_tasks(root: pathlib.Path, version: str) -> list[str]:
    if version == "v2.1":
        rows = read_jsonl(root / "meta" / "tasks.jsonl")
        pairs = [(int(r["task_index"]), str(r["task"])) for r in rows]
    else:
        path = root / "meta" / "tasks.parquet"
        table = read_parquet(path)
        # The task string is a pandas index: "__index_level_0__" (lerobot 0.4.4) or "task" (newer writers).
        names = [n for n in table.column_names if n != "task_index"]
        if "task_index" not in table.column_names or len(names) != 1:
            raise LeRobotFormatError(f"{path}: expected columns task_index and one task-string column, got {names}")
        pairs = list(zip(table.column("task_index").to_pylist(), table.column(names[0]).to_pylist(), strict=True))
    tasks: list[str] = [""] * len(pairs)
    for index, task in pairs:
        if not 0 <= index < len(pairs):
            raise LeRobotFormatError(f"{root}/meta: task_index {index} out of range 0..{len(pairs) - 1}")
        tasks[index] = task
    return tasks


def load_meta(root: str | pathlib.Path) -> DatasetMeta:
    root = pathlib.Path(root)
    if not root.is_dir():
        raise LeRobotFormatError(f"{root}: dataset directory does not exist")
    info = load_info(root)
    video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    if info["codebase_version"] == "v2.1":
        episodes = _episodes_v21(root, info, video_keys)
    else:
        episodes = _episodes_v30(root, video_keys)
    stats_path = root / "meta" / "stats.json"
    stats = read_json(stats_path) if stats_path.is_file() else None
    episodes_stats = root / "meta" / "episodes_stats.jsonl"
    if stats is None and episodes_stats.is_file():  # v2.1: lerobot aggregates per-episode stats at load
        stats = aggregate_stats([row["stats"] for row in read_jsonl(episodes_stats)])
    meta = DatasetMeta(
        root=root, info=info, episodes=episodes, tasks=load_tasks(root, info["codebase_version"]), stats=stats
    )
    check_episode_table(meta)
    if video_keys and not info.get("video_path"):
        raise LeRobotFormatError(f"{root / 'meta' / 'info.json'}: video features present but video_path is null")
    return meta


def check_episode_table(meta: DatasetMeta) -> None:
    """Episode metadata must describe one contiguous run of rows per episode, and agree with info.json."""
    eps = meta.episodes
    where = meta.root / "meta" / "episodes.jsonl" if meta.version == "v2.1" else meta.root / "meta" / "episodes"
    repeated = np.flatnonzero(np.diff(eps.episode_index) == 0)
    if len(repeated):
        raise LeRobotFormatError(f"{where}: episode {eps.episode_index[repeated[0]]} is listed more than once")
    empty = eps.length < 1
    if empty.any():
        raise LeRobotFormatError(f"{where}: episode {eps.episode_index[np.argmax(empty)]} has length < 1")
    span = eps.dataset_to_index - eps.dataset_from_index
    wrong_span = span != eps.length
    if wrong_span.any():
        i = int(np.argmax(wrong_span))
        raise LeRobotFormatError(
            f"{where}: episode {eps.episode_index[i]} covers index range [{eps.dataset_from_index[i]}, "
            f"{eps.dataset_to_index[i]}) but has length {eps.length[i]}"
        )
    starts = np.concatenate([[0], eps.dataset_to_index[:-1]])
    gap = eps.dataset_from_index != starts
    if gap.any():
        i = int(np.argmax(gap))
        raise LeRobotFormatError(
            f"{where}: episode {eps.episode_index[i]} starts at index {eps.dataset_from_index[i]}, expected "
            f"{starts[i]} (episode index ranges must follow each other from 0 without gaps or overlaps)"
        )
    info_path = meta.root / "meta" / "info.json"
    frames = int(eps.length.sum())
    for field, actual in (("total_frames", frames), ("total_episodes", len(eps))):
        if field in meta.info and int(meta.info[field]) != actual:
            raise LeRobotFormatError(f"{info_path}: {field} is {meta.info[field]} but the episodes hold {actual}")
