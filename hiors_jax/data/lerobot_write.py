"""Write LeRobot v3.0 datasets (the files, columns and metadata lerobot 0.4 reads) with pyarrow + PyAV.

Crash safety: everything is written into a hidden staging directory next to `root` and swapped in by
`finalize()` in one atomic step (lerobot_commit.py), so `root` always holds the old or the new dataset, never a
half-written one. Appending hard-links the existing files into the staging directory (no copy), adds new
data/video/episode files with new file indices and rewrites only the small meta files (new inodes, never in place).

Saved episodes are durable: `save_episode` writes the episode's own parquet and mp4 files and appends an
fsync'ed line to a journal in the staging directory; only then is the episode accepted. A failed `save_episode`
(disk full, ...) changes nothing and can be retried. After a crash at any point, the next writer for the same
root (or `LeRobotDatasetWriter.recover(root)`) completes the interrupted commit, or finalizes every episode that
had been saved; one writer per root at a time (a lock file beside it).

Video frames are encoded while they are added (one mp4 per camera and episode), so memory stays bounded for
long recordings; `finalize` appends them to the camera files by remuxing (no re-encode), like lerobot.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import warnings
from collections.abc import Mapping
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from hiors_jax.data.lerobot_commit import (
    COMMITTED,
    JOURNAL,
    WriterLock,
    atomic_json,
    cleanup_after_swap,
    crash_point,
    finish_commit,
    fsync_path,
    staging_dir,
    swap_in,
)
from hiors_jax.data.lerobot_meta import (
    DEFAULT_FEATURES,
    MAX_FEATURE_DIMS,
    LeRobotFormatError,
    column_to_numpy,
    image_hwc_shape,
    load_meta,
)
from hiors_jax.data.lerobot_stats import FrameSampler, aggregate_stats, array_stats, image_stats
from hiors_jax.data.lerobot_video import VIDEO_CODECS, ConcatVideoWriter, EpisodeVideoEncoder

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
_NUMERIC_DTYPES = {"float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool"}


class FrameValidationError(ValueError):
    """A frame given to add_frame does not match the declared features."""


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk, file + 1) if file + 1 < CHUNKS_SIZE else (chunk + 1, 0)


def _hf_feature(feature: Mapping[str, Any]) -> dict[str, Any]:
    """The `datasets.Features` JSON lerobot 0.4 (datasets 4) stores in the parquet `huggingface` metadata."""
    if feature["dtype"] == "image":
        return {"_type": "Image"}
    shape = [int(s) for s in feature["shape"]]
    if shape == [1]:
        return {"dtype": feature["dtype"], "_type": "Value"}
    if shape == [0]:  # see _arrow_type
        return {"feature": {"dtype": feature["dtype"], "_type": "Value"}, "_type": "List"}
    if len(shape) == 1:
        return {"feature": {"dtype": feature["dtype"], "_type": "Value"}, "length": shape[0], "_type": "List"}
    return {"shape": shape, "dtype": feature["dtype"], "_type": f"Array{len(shape)}D"}


class _HFArrayType(pa.ExtensionType):
    """datasets' Array2D..Array5D column type (nested lists), which lerobot uses for N-d numeric features.

    Written with datasets' extension name and metadata, so `datasets` (and so lerobot) reads these columns as
    its own ArrayND; other readers see the nested-list storage. Never registered with pyarrow: registering
    would clash with `datasets` registering the same name when both are imported in one process.
    """

    def __init__(self, shape: tuple[int, ...], dtype: str):
        self.shape, self.value_type = tuple(shape), dtype
        storage = pa.from_numpy_dtype(np.dtype(dtype))
        for _ in shape:
            storage = pa.list_(storage)
        super().__init__(storage, f"datasets.features.features.Array{len(shape)}DExtensionType")

    def __arrow_ext_serialize__(self) -> bytes:
        return json.dumps((list(self.shape), self.value_type)).encode()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> _HFArrayType:
        shape, dtype = json.loads(serialized)
        return cls(tuple(shape), dtype)


def _arrow_type(feature: Mapping[str, Any]) -> pa.DataType:
    if feature["dtype"] == "image":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    scalar = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    shape = [int(s) for s in feature["shape"]]
    if shape == [1]:
        return scalar
    if shape == [0]:  # pyarrow cannot read back a parquet fixed_size_list[0]; empty variable lists it can
        return pa.list_(scalar)
    if len(shape) == 1:
        return pa.list_(scalar, shape[0])
    return _HFArrayType(tuple(shape), feature["dtype"])


def _numeric_column(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
    """Arrow column of (rows, *shape) native-order values in the layout `_arrow_type` chose."""
    if isinstance(arrow_type, _HFArrayType):
        array: pa.Array = pa.array(values.reshape(-1))
        shape = arrow_type.shape
        for level in reversed(range(len(shape))):  # innermost lists first: rows * prod(shape[:level]) of them
            count = values.shape[0] * int(np.prod(shape[:level], dtype=np.int64))
            offsets = np.arange(count + 1, dtype=np.int64) * shape[level]
            array = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), array)
        return pa.ExtensionArray.from_storage(arrow_type, array)
    if pa.types.is_list(arrow_type):  # shape [0]: every row an empty list
        return pa.ListArray.from_arrays(pa.array(np.zeros(values.shape[0] + 1, np.int32)), pa.array(values.reshape(-1)))
    if pa.types.is_fixed_size_list(arrow_type):
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), arrow_type.list_size)
    return pa.array(values, type=arrow_type)


def _normalise_features(features: Mapping[str, Mapping[str, Any]], use_videos: bool) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    for key, feature in features.items():
        if "/" in key:
            raise ValueError(f"feature name {key!r} must not contain '/'")
        if key in DEFAULT_FEATURES:
            if feature.get("dtype") != DEFAULT_FEATURES[key]["dtype"]:
                raise ValueError(
                    f"feature {key!r} is added automatically as {DEFAULT_FEATURES[key]}; do not redefine it"
                )
            continue
        if "dtype" not in feature or "shape" not in feature:
            raise ValueError(f"feature {key!r} needs 'dtype' and 'shape'")
        dtype = feature["dtype"]
        shape = [int(s) for s in feature["shape"]]
        names = feature.get("names")
        if dtype in ("image", "video"):
            if dtype == "video" and not use_videos:
                dtype = "image"
            h, w, c = image_hwc_shape({"shape": shape, "names": names})
            if c != 3:
                raise ValueError(f"feature {key!r}: only 3-channel images are supported, got shape {shape}")
            if dtype == "video" and (h % 2 or w % 2):
                raise ValueError(f"video feature {key!r}: height and width must be even for yuv420p, got {h}x{w}")
        elif dtype in _NUMERIC_DTYPES:
            if not 1 <= len(shape) <= MAX_FEATURE_DIMS or min(shape) < 0:
                raise ValueError(
                    f"feature {key!r}: numeric shape {shape} must have 1 to {MAX_FEATURE_DIMS} non-negative dims "
                    "(lerobot stores at most 5-D arrays)"
                )
        else:
            raise ValueError(f"feature {key!r}: dtype {dtype!r} not supported (numeric, 'image' or 'video')")
        result[key] = {"dtype": dtype, "shape": shape, "names": names}
    return result


class LeRobotDatasetWriter:
    """Record episodes into a LeRobot v3.0 dataset: `add_frame` ... `save_episode`, then `finalize`.

    `features` are the user features (lerobot's `timestamp`, `frame_index`, `episode_index`, `index` and
    `task_index` are added). With `use_videos=True` "video" features are encoded (AV1 by default, `vcodec="h264"`
    for H.264); "image" features are stored as PNG bytes in the parquet. `append=True` adds episodes to the
    dataset at `root` (same fps and features), creating it when there is none yet.

    Opening a writer first completes whatever a crashed writer for the same root left (see `recover`).
    """

    def __init__(
        self,
        root: str | pathlib.Path,
        fps: int,
        features: Mapping[str, Mapping[str, Any]],
        use_videos: bool = True,
        robot_type: str | None = None,
        *,
        vcodec: str = "libsvtav1",
        crf: int = 30,
        gop: int = 2,
        data_files_size_in_mb: float = 100,
        video_files_size_in_mb: float = 200,
        append: bool = False,
        image_stats_frames: int = 128,
    ):
        if vcodec not in VIDEO_CODECS:
            raise ValueError(f"vcodec {vcodec!r} not supported; choose one of {sorted(VIDEO_CODECS)}")
        if int(fps) != fps or fps <= 0:
            raise ValueError(f"fps must be a positive integer, got {fps!r}")
        config = {
            "root": str(root),
            "fps": int(fps),
            "features": _normalise_features(features, use_videos),
            "robot_type": robot_type,
            "vcodec": vcodec,
            "crf": crf,
            "gop": gop,
            "size_limits_mb": [data_files_size_in_mb, video_files_size_in_mb],
            "image_stats_frames": image_stats_frames,
        }
        self._configure(config)
        self._lock: WriterLock | None = WriterLock(self.root)
        try:
            resumed = self._resume(self.root)
            if append and self.root.exists():
                self._open_for_append()
            else:
                if self.root.exists():
                    recovered = resumed in ("committed", "recovered")
                    why = f" (a crashed writer's saved episodes were just {resumed} into it)" if recovered else ""
                    raise FileExistsError(f"{self.root} already exists{why}; pass append=True to add episodes to it")
                self._staging.mkdir(parents=True)
                self._base = {
                    "tasks": [],
                    "total_episodes": 0,
                    "total_frames": 0,
                    "data_pos": [0, 0],
                    "video_pos": {k: [0, 0] for k in self._video_keys},
                    "episodes_pos": [0, 0],
                    "prior_stats": None,
                    "video_info": {},
                }
            self._start_journal()
        except BaseException:
            self._release_lock()
            raise

    def _configure(self, config: dict[str, Any]) -> None:
        """Everything derived from the writer's settings (shared by __init__ and recover)."""
        self._config = config
        self.root = pathlib.Path(config["root"])
        self.fps = config["fps"]
        self.features = config["features"]
        self.robot_type = config["robot_type"]
        self.vcodec, self.crf, self.gop = config["vcodec"], config["crf"], config["gop"]
        self._size_limits_mb = tuple(config["size_limits_mb"])
        self.data_limit = self._size_limits_mb[0] * 1024 * 1024
        self.video_limit = self._size_limits_mb[1] * 1024 * 1024
        self._image_stats_frames = config["image_stats_frames"]
        self._staging = staging_dir(self.root)
        self._journal_dir = self._staging / JOURNAL
        self._finalized = False
        self._all_features = {**self.features, **{k: dict(v) for k, v in DEFAULT_FEATURES.items()}}
        self._video_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        self._image_keys = [k for k, f in self.features.items() if f["dtype"] == "image"]
        self._tabular_keys = [k for k in self._all_features if k not in self._video_keys]
        self._schema = pa.schema(
            [pa.field(k, _arrow_type(self._all_features[k])) for k in self._tabular_keys],
            metadata={
                "huggingface": json.dumps(
                    {"info": {"features": {k: _hf_feature(self._all_features[k]) for k in self._tabular_keys}}}
                )
            },
        )
        self._journal: list[dict[str, Any]] = []
        self._data_writer: pq.ParquetWriter | None = None
        self._data_sink: Any = None
        self._video_writers: dict[str, ConcatVideoWriter] = {}
        self._reset_buffer()

    def _start_journal(self) -> None:
        """Record the settings and the starting state, so a crashed writer can be finalized later."""
        self.tasks = {t: i for i, t in enumerate(self._base["tasks"])}
        self.total_episodes = self._base["total_episodes"]
        self.total_frames = self._base["total_frames"]
        self._journal_dir.mkdir(parents=True, exist_ok=True)
        (self._staging / ".tmp").mkdir(exist_ok=True)
        atomic_json({"config": self._config, "base": self._base}, self._journal_dir / "writer.json")

    @classmethod
    def recover(cls, root: str | pathlib.Path) -> pathlib.Path:
        """Complete what a crashed writer for `root` left: finish an interrupted commit, or finalize the
        episodes it had saved (its unsaved frames are dropped), or discard a writer that saved nothing.

        Any new writer for `root` does this by itself; call it to tidy up without writing. Raises
        FileNotFoundError when there was nothing to recover.
        """
        root = pathlib.Path(root)
        lock = WriterLock(root)
        try:
            outcome = cls._resume(root)
        finally:
            lock.release()
        if outcome is None:
            raise FileNotFoundError(f"{staging_dir(root)}: no interrupted writer to recover for {root}")
        if outcome == "discarded" and not root.exists():
            raise ValueError(f"{root}: the interrupted writer had saved no episode; nothing to recover")
        return root

    @classmethod
    def _resume(cls, root: pathlib.Path) -> str | None:
        """Roll an interrupted writer forward (or discard it when it saved nothing); call with the lock held.

        Returns "committed", "recovered", "discarded", or None when no writer had been interrupted.
        """
        if finish_commit(root):
            return "committed"
        staging = staging_dir(root)
        state_path = staging / JOURNAL / "writer.json"
        if not state_path.is_file():  # never started, or abort() was under way: nothing was saved
            if staging.exists():
                shutil.rmtree(staging)
                return "discarded"
            return None
        state = json.loads(state_path.read_text())
        writer = cls.__new__(cls)
        writer._lock = None  # the caller holds it
        writer._configure(state["config"])
        writer._base = state["base"]
        writer._start_journal()
        journal = writer._journal_dir / "journal.jsonl"
        lines = journal.read_text().splitlines() if journal.is_file() else []
        for number, line in enumerate(lines):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines) - 1:
                    break  # the crash interrupted this last line: that episode was not saved
                raise LeRobotFormatError(f"{journal}:{number + 1}: corrupt journal line") from None
            writer._journal.append(entry)
            writer.tasks = {t: i for i, t in enumerate(entry["task_table"])}
            writer.total_episodes += 1
            writer.total_frames += entry["length"]
        if not writer._journal:
            writer.abort()
            return "discarded"
        writer._commit()
        return "recovered"

    # ---------------------------------------------------------------- append
    def _open_for_append(self) -> None:
        meta = load_meta(self.root)
        if meta.version != CODEBASE_VERSION:
            raise LeRobotFormatError(f"{self.root}: can only append to {CODEBASE_VERSION}, found {meta.version}")
        if meta.fps != self.fps:
            raise ValueError(f"{self.root}: dataset fps is {meta.fps}, writer was given {self.fps}")
        existing = {k: f for k, f in meta.features.items() if k not in DEFAULT_FEATURES}
        mismatch = sorted(
            set(existing) ^ set(self.features)
            | {
                k
                for k in set(existing) & set(self.features)
                if existing[k]["dtype"] != self.features[k]["dtype"]
                or list(existing[k]["shape"]) != self.features[k]["shape"]
            }
        )
        if mismatch:
            raise ValueError(f"{self.root}: features differ from the existing dataset: {mismatch}")
        self.features = {k: {**self.features[k], "names": existing[k].get("names")} for k in existing}
        self.robot_type = self.robot_type or meta.robot_type
        self._config.update(features=self.features, robot_type=self.robot_type)
        self._configure(self._config)
        self._staging.mkdir(parents=True)
        for path in self.root.rglob("*"):  # hard links: the existing files are shared, never modified
            relative = path.relative_to(self.root)
            if relative.parts[0] == JOURNAL:
                continue
            target = self._staging / relative
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, target)
                except OSError:  # filesystem without hard links
                    shutil.copy2(path, target)
        # New files always start after the highest existing file index, so existing files stay untouched.
        video_pos = {
            k: _next_file(
                *max(zip(meta.episodes.video_chunk[k].tolist(), meta.episodes.video_file[k].tolist(), strict=True))
            )
            for k in self._video_keys
        }
        last = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))[-1]
        self._base = {
            "tasks": list(meta.tasks),
            "total_episodes": len(meta.episodes),
            "total_frames": meta.total_frames,
            "data_pos": list(_next_file(*max(meta.episodes.data_file))),
            "video_pos": {k: list(v) for k, v in video_pos.items()},
            "episodes_pos": list(_next_file(int(last.parent.name.split("-")[1]), int(last.stem.split("-")[1]))),
            "prior_stats": meta.stats,
            "video_info": {k: existing[k]["info"] for k in self._video_keys if "info" in existing[k]},
        }

    # ---------------------------------------------------------------- frames
    def _reset_buffer(self) -> None:
        self._buffer: dict[str, list] = {k: [] for k in self._tabular_keys}
        self._encoders: dict[str, EpisodeVideoEncoder] = {}
        self._samplers = {k: FrameSampler(self._image_stats_frames) for k in self._video_keys + self._image_keys}
        self._episode_tasks: list[str] = []

    @property
    def episode_buffer_size(self) -> int:
        return len(self._buffer["frame_index"])

    def add_frame(self, frame: Mapping[str, Any], task: str | None = None, timestamp: float | None = None) -> None:
        """Add one frame of the current episode; `task` may also be given as frame["task"]."""
        self._check_open()
        frame = dict(frame)
        task = frame.pop("task", task)
        timestamp = frame.pop("timestamp", timestamp)
        if not isinstance(task, str) or not task:
            raise FrameValidationError("add_frame needs a task string (frame['task'] or task=...)")
        missing = [k for k in self.features if k not in frame]
        extra = [k for k in frame if k not in self.features]
        if missing or extra:
            raise FrameValidationError(f"frame keys do not match the features: missing {missing}, unexpected {extra}")
        values = {key: self._validate(key, frame[key]) for key in self.features}
        frame_index = self.episode_buffer_size
        if timestamp is not None and not _timestamp_matches(timestamp, frame_index, self.fps):
            # Readers (ours and lerobot's video lookup) take frame k to be at k / fps: refuse what they would.
            raise FrameValidationError(
                f"timestamp {timestamp} of frame {frame_index} is not frame_index / fps = {frame_index / self.fps}"
            )
        for key in self._video_keys:
            if key not in self._encoders:
                h, w, _ = image_hwc_shape(self.features[key])
                path = self._staging / ".tmp" / f"{key}.mp4"
                self._encoders[key] = EpisodeVideoEncoder(path, h, w, self.fps, self.vcodec, self.crf, self.gop)
            self._encoders[key].add(values[key])
            self._samplers[key].add(values[key])
        for key in self._image_keys:
            self._samplers[key].add(values[key])
            values[key] = {"bytes": _png_bytes(values[key]), "path": f"frame_{frame_index:06d}.png"}
        for key in self._tabular_keys:
            if key in values:
                self._buffer[key].append(values[key])
        self._buffer["timestamp"].append(np.float32(frame_index / self.fps if timestamp is None else timestamp))
        self._buffer["frame_index"].append(frame_index)
        self._buffer["episode_index"].append(self.total_episodes)
        self._buffer["index"].append(self.total_frames + frame_index)
        self._buffer["task_index"].append(task)  # strings until save_episode gives them indices
        if task not in self._episode_tasks:
            self._episode_tasks.append(task)

    def _validate(self, key: str, value: Any) -> Any:
        feature = self.features[key]
        dtype, shape = feature["dtype"], tuple(feature["shape"])
        if dtype in ("image", "video"):
            return _validate_image(key, value, image_hwc_shape(feature))
        expected = np.dtype(dtype)
        if shape == (1,) and isinstance(value, bool | int | float | np.generic):
            if isinstance(value, np.generic):
                ok = value.dtype == expected
            elif isinstance(value, bool):
                ok = expected.kind == "b"
            elif isinstance(value, int):
                ok = expected.kind in "iuf"
            else:
                ok = expected.kind == "f"
            if not ok:
                got = value.dtype if isinstance(value, np.generic) else type(value).__name__
                raise FrameValidationError(f"feature {key!r}: expected a {dtype} scalar, got {got}")
            if expected.kind == "f" and not np.isfinite(value):
                raise FrameValidationError(f"feature {key!r}: value is NaN or infinite")
            return np.asarray(value).astype(expected).item()
        if not isinstance(value, np.ndarray):
            raise FrameValidationError(
                f"feature {key!r}: expected a numpy array {dtype}{list(shape)}, got {type(value)}"
            )
        # The same dtype in the other byte order ('>f4' for float32) is the same values: stored natively.
        if value.dtype.newbyteorder("=") != expected.newbyteorder("="):
            raise FrameValidationError(f"feature {key!r}: dtype {value.dtype} does not match declared {dtype}")
        if value.shape != shape and not (shape == (1,) and value.shape == ()):
            raise FrameValidationError(f"feature {key!r}: shape {value.shape} does not match declared {shape}")
        value = value.astype(expected)  # native byte order, contiguous, and a copy the caller cannot change
        if expected.kind == "f" and not np.isfinite(value).all():
            raise FrameValidationError(f"feature {key!r}: contains NaN or infinity")
        return value.item() if shape == (1,) else value

    # ---------------------------------------------------------------- episodes
    def clear_episode_buffer(self) -> None:
        """Drop the frames of the episode being recorded."""
        for encoder in self._encoders.values():
            encoder.close()
            encoder.path.unlink(missing_ok=True)
        self._reset_buffer()

    def save_episode(self) -> int:
        """Write the buffered episode; returns its episode_index."""
        self._check_open()
        length = self.episode_buffer_size
        if length == 0:
            raise ValueError("save_episode: no frames were added to this episode")
        # Nothing of the writer's state changes until the episode is journaled, so a failure can be retried.
        tasks = dict(self.tasks)
        task_index = [tasks.setdefault(t, len(tasks)) for t in self._buffer["task_index"]]
        columns = [self._column(k, task_index if k == "task_index" else self._buffer[k]) for k in self._tabular_keys]
        table = pa.Table.from_arrays(columns, schema=self._schema)
        videos = {}
        for key in self._video_keys:
            self._encoders[key].close()  # idempotent
            videos[key] = self._encoders[key].path
        stats = self._compute_stats(table, length)
        episode_index = self._save(table, videos, stats, list(self._episode_tasks), tasks, remove_videos=True)
        self._reset_buffer()
        return episode_index

    def save_prepared_episode(
        self,
        table: pa.Table,
        videos: Mapping[str, pathlib.Path],
        stats: Mapping[str, Any],
        tasks: list[str],
        remove_videos: bool = False,
    ) -> int:
        """Store an episode whose rows and per-camera mp4s already exist (used by save_episode and convert).

        `table` holds the parquet rows (its `index`/`episode_index` columns are rewritten to continue this
        dataset). With `remove_videos` the mp4s are moved into the writer's journal, else they are read from
        where they are at `finalize`.
        """
        self._check_open()
        return self._save(table, videos, stats, tasks, dict(self.tasks), remove_videos)

    def _save(
        self,
        table: pa.Table,
        videos: Mapping[str, pathlib.Path],
        stats: Mapping[str, Any],
        tasks: list[str],
        task_table: dict[str, int],
        remove_videos: bool,
    ) -> int:
        """Journal one episode. The episode is accepted when its journal line is on disk; before that, a
        failure leaves the writer as it was (files of the attempt are overwritten by the retry)."""
        length = table.num_rows
        episode_index = self.total_episodes
        missing = [k for k in self._video_keys if k not in videos]
        if missing:
            raise ValueError(f"episode {episode_index}: no video given for {missing}")
        for task in tasks:
            task_table.setdefault(task, len(task_table))
        table = self._renumber(table.select(self._tabular_keys).cast(self._schema), episode_index)
        data_name = f"{episode_index:06d}.parquet"
        _atomic_parquet(table, self._journal_dir / data_name)
        crash_point("save.data_written")
        video_refs = {}
        for key in self._video_keys:
            if remove_videos:
                name = f"{episode_index:06d}.{key}.mp4"
                _link_or_copy(pathlib.Path(videos[key]), self._journal_dir / name)
                video_refs[key] = name
            else:
                video_refs[key] = str(pathlib.Path(videos[key]).resolve())
        crash_point("save.videos_linked")
        entry = {
            "episode_index": episode_index,
            "length": length,
            "tasks": list(tasks),
            "task_table": list(task_table),
            "data": data_name,
            "videos": video_refs,
            "stats": stats,
        }
        _append_line(self._journal_dir / "journal.jsonl", json.dumps(entry))
        crash_point("save.journaled")
        if remove_videos:
            for key in self._video_keys:
                pathlib.Path(videos[key]).unlink(missing_ok=True)
        self._journal.append(entry)
        self.tasks = task_table
        self.total_episodes += 1
        self.total_frames += length
        return episode_index

    def _renumber(self, table: pa.Table, episode_index: int) -> pa.Table:
        n = table.num_rows
        columns = {
            "episode_index": pa.array(np.full(n, episode_index, np.int64)),
            "index": pa.array(np.arange(self.total_frames, self.total_frames + n, dtype=np.int64)),
        }
        for name, column in columns.items():
            table = table.set_column(table.schema.get_field_index(name), self._schema.field(name), column)
        return table.replace_schema_metadata(self._schema.metadata)

    def _column(self, key: str, values: list) -> pa.Array:
        arrow_type = self._schema.field(key).type
        if pa.types.is_struct(arrow_type):
            return pa.array(values, type=arrow_type)
        dtype = np.dtype(self._all_features[key]["dtype"])
        shape = tuple(self._all_features[key]["shape"])
        array = np.asarray(values, dtype=dtype)
        return _numeric_column(array.reshape((len(values), *([] if shape == (1,) else shape))), arrow_type)

    def _write_data(self, table: pa.Table) -> dict[str, int]:
        estimate = table.nbytes
        if self._data_writer is not None and self._data_sink.tell() + estimate > self.data_limit:
            self._close_data()
            self._data_pos = _next_file(*self._data_pos)
        if self._data_writer is None:
            path = self._staging / DATA_PATH.format(chunk_index=self._data_pos[0], file_index=self._data_pos[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_sink = pa.OSFile(str(path), "wb")
            self._data_writer = pq.ParquetWriter(self._data_sink, self._schema, compression="snappy")
        self._data_writer.write_table(table)
        return {"data/chunk_index": self._data_pos[0], "data/file_index": self._data_pos[1]}

    def _close_data(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
            self._data_sink.close()
            self._data_writer = self._data_sink = None

    def _append_video(self, key: str, episode_mp4: pathlib.Path, length: int) -> dict[str, Any]:
        if key not in self._video_info:
            self._video_info[key] = _probe_video_info(episode_mp4, self.fps)
        writer = self._video_writers.get(key)
        episode_bytes = episode_mp4.stat().st_size
        if writer is not None and writer.size_bytes() + episode_bytes > self.video_limit:
            writer.close()
            self._video_pos[key] = _next_file(*self._video_pos[key])
            writer = None
        if writer is None:
            chunk, file = self._video_pos[key]
            path = self._staging / VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = self._video_writers[key] = ConcatVideoWriter(path)
        start, end = writer.append(episode_mp4, length, self.fps)
        chunk, file = self._video_pos[key]
        return {
            f"videos/{key}/chunk_index": chunk,
            f"videos/{key}/file_index": file,
            f"videos/{key}/from_timestamp": start,
            f"videos/{key}/to_timestamp": end,
        }

    def _compute_stats(self, table: pa.Table, length: int) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        for key, feature in self._all_features.items():
            if feature["dtype"] in ("image", "video"):
                stats[key] = image_stats(self._samplers[key].frames, length)
            else:
                # Over frames only (axis 0), as lerobot: an (H, D) feature gets (H, D) stats.
                stats[key] = array_stats(column_to_numpy(table.column(key), feature, f"episode column {key!r}"))
        return stats

    # ---------------------------------------------------------------- finalize
    def finalize(self) -> pathlib.Path:
        """Assemble the saved episodes into the dataset files, write the metadata and move it to `root`."""
        self._check_open()
        if self.episode_buffer_size:
            warnings.warn(
                f"finalize: dropping {self.episode_buffer_size} frames of an episode that was not saved", stacklevel=2
            )
            self.clear_episode_buffer()
        if not self._journal:
            appending = self.root.exists()
            self.abort()
            if appending:
                return self.root  # nothing new: the existing dataset stays as it was
            raise ValueError("finalize: no episode was saved; nothing was written")
        self._commit()
        self._release_lock()
        return self.root

    def _commit(self) -> None:
        """Assemble the journaled episodes into the staging tree, mark it complete, swap it in, clean up.

        Each step is a crash point (lerobot_commit.COMMIT_STEPS); from the marker on, recovery rolls forward.
        """
        records = self._assemble()
        crash_point("commit.assembled")
        self._write_meta(records)
        crash_point("commit.meta_written")
        shutil.rmtree(self._staging / ".tmp", ignore_errors=True)
        for path in self._staging.rglob("*"):  # new files only (hard-linked old ones are already durable)
            if path.is_file() and JOURNAL not in path.relative_to(self._staging).parts and path.stat().st_nlink == 1:
                fsync_path(path)
        atomic_json({"episodes": len(self._journal)}, self._journal_dir / COMMITTED)
        crash_point("commit.marked")
        swap_in(self._staging, self.root)
        crash_point("commit.swapped")
        cleanup_after_swap(self.root)
        crash_point("commit.done")
        self._finalized = True

    def _assemble(self) -> list[dict[str, Any]]:
        """Write the journaled episodes into rolled data and video files; returns the episodes-parquet rows."""
        self._data_pos = tuple(self._base["data_pos"])
        self._video_pos = {k: tuple(v) for k, v in self._base["video_pos"].items()}
        self._video_info = dict(self._base["video_info"])
        records = []
        start_frame = self._base["total_frames"]
        for entry in self._journal:
            table = pq.read_table(self._journal_dir / entry["data"]).cast(self._schema)
            length = entry["length"]
            record: dict[str, Any] = {
                "episode_index": entry["episode_index"],
                "tasks": entry["tasks"],
                "length": length,
            }
            record.update(self._write_data(table))
            record["dataset_from_index"] = start_frame
            record["dataset_to_index"] = start_frame + length
            start_frame += length
            for key in self._video_keys:
                record.update(self._append_video(key, self._journal_dir / entry["videos"][key], length))
            for feature, values in entry["stats"].items():
                for name, value in values.items():
                    record[f"stats/{feature}/{name}"] = value
            record["meta/episodes/chunk_index"], record["meta/episodes/file_index"] = self._base["episodes_pos"]
            records.append(record)
        self._close_data()
        for writer in self._video_writers.values():
            writer.close()
        return records

    def _write_meta(self, records: list[dict[str, Any]]) -> None:
        meta = self._staging / "meta"
        chunk, file = self._base["episodes_pos"]
        path = self._staging / EPISODES_PATH.format(chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_parquet(pa.Table.from_pylist(records), path)
        tasks = sorted(self.tasks.items(), key=lambda kv: kv[1])
        _atomic_parquet(_tasks_table([t for t, _ in tasks]), meta / "tasks.parquet")
        prior = self._base["prior_stats"]
        parts = ([prior] if prior else []) + [entry["stats"] for entry in self._journal]
        atomic_json(aggregate_stats(parts), meta / "stats.json")
        atomic_json(self._info(), meta / "info.json")

    def _info(self) -> dict[str, Any]:
        features = {}
        for key, feature in self._all_features.items():
            features[key] = dict(feature)
            if key in self._video_info:
                features[key]["info"] = self._video_info[key]
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": self.total_episodes,
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": self._size_limits_mb[0],
            "video_files_size_in_mb": self._size_limits_mb[1],
            "fps": self.fps,
            "splits": {"train": f"0:{self.total_episodes}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self._video_keys else None,
            "features": features,
        }

    def _check_open(self) -> None:
        if self._finalized:
            raise RuntimeError(f"writer for {self.root} is already finalized")

    def abort(self) -> None:
        """Discard everything written by this writer (root stays as it was)."""
        if self._finalized:
            return
        self.clear_episode_buffer()
        self._close_data()
        for writer in self._video_writers.values():
            writer.close()
        # Without writer.json a crash in the middle of this deletion is read as "discard", never "recover".
        (self._journal_dir / "writer.json").unlink(missing_ok=True)
        shutil.rmtree(self._staging, ignore_errors=True)
        self._finalized = True
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> LeRobotDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Saved episodes were accepted: keep them even when the recording loop failed.
        if not self._finalized:
            if self._journal:
                self.finalize()
            else:
                self.abort()


def _timestamp_matches(timestamp: Any, frame_index: int, fps: int, tolerance_s: float = 1e-4) -> bool:
    expected = frame_index / fps
    return bool(abs(float(timestamp) - expected) <= tolerance_s + float(np.spacing(np.float32(expected))))


def _validate_image(key: str, value: Any, hwc: tuple[int, int, int]) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise FrameValidationError(f"image feature {key!r}: expected a numpy array, got {type(value).__name__}")
    chw = (hwc[2], hwc[0], hwc[1])
    if value.shape == chw and value.shape != hwc:
        value = np.moveaxis(value, 0, -1)
    if value.shape != hwc:
        raise FrameValidationError(f"image feature {key!r}: shape {value.shape} does not match declared HWC {hwc}")
    if value.dtype == np.uint8:
        return np.ascontiguousarray(value)
    if value.dtype.kind == "f":
        if not (np.isfinite(value).all() and value.min() >= 0.0 and value.max() <= 1.0):
            raise FrameValidationError(f"image feature {key!r}: float images must lie in [0, 1]")
        return np.round(value * 255).astype(np.uint8)
    raise FrameValidationError(f"image feature {key!r}: dtype {value.dtype} not supported (uint8 or float in [0, 1])")


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _probe_video_info(path: pathlib.Path, fps: int) -> dict[str, Any]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        return {
            "video.height": stream.codec_context.height,
            "video.width": stream.codec_context.width,
            "video.codec": "av1" if "av1" in codec else codec,
            "video.pix_fmt": stream.codec_context.pix_fmt,
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": 3,
            "has_audio": False,
        }


def _tasks_table(tasks: list[str]) -> pa.Table:
    """meta/tasks.parquet: task_index column, the task string as a pandas index named `task` (lerobot reads
    it with pandas and needs that index)."""
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    schema = pa.schema(
        [("task_index", pa.int64()), ("task", pa.string())], metadata={"pandas": json.dumps(pandas_meta)}
    )
    return pa.table({"task_index": list(range(len(tasks))), "task": tasks}, schema=schema)


def _atomic_parquet(table: pa.Table, path: pathlib.Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(table, tmp, compression="snappy")
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _link_or_copy(source: pathlib.Path, target: pathlib.Path) -> None:
    """`target` becomes `source`'s content; `source` stays (a retry can link it again)."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # filesystem without hard links
        shutil.copyfile(source, target)
    fsync_path(target)


def _append_line(path: pathlib.Path, line: str) -> None:
    """Append one line durably; on failure (disk full, ...) cut the file back, so no partial line stays."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        data = (line + "\n").encode()
        try:
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)
