"""Read LeRobot v2.1 / v3.0 datasets into numpy, item by item or a batch at a time, exactly like lerobot.

Item layout follows lerobot's `__getitem__`: every parquet feature keyed by its name, video features decoded
by timestamp, `task` as a string, and for `delta_timestamps` keys a window of steps with `<key>_is_pad`.
Images come back as uint8 HWC; shape-[1] features as 0-d arrays.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from hiors_jax.data.lerobot_meta import (
    DatasetMeta,
    LeRobotFormatError,
    column_to_numpy,
    image_hwc_shape,
    load_meta,
    read_parquet,
)
from hiors_jax.data.lerobot_video import VideoFileCache

DEFAULT_TOLERANCE_S = 1e-4


class FrameSource(Protocol):
    """Something that returns decoded frames for rows of one camera (e.g. the uint8 memmap cache)."""

    def frames(self, key: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray: ...


def delta_indices_from_timestamps(
    delta_timestamps: Mapping[str, Sequence[float]] | None, fps: int, features: Mapping[str, Any], tolerance_s: float
) -> dict[str, np.ndarray]:
    """lerobot's check: every offset must be a multiple of 1/fps within tolerance; returns round(dt*fps)."""
    if not delta_timestamps:
        return {}
    result = {}
    for key, offsets in delta_timestamps.items():
        if key not in features:
            raise ValueError(f"delta_timestamps key {key!r} is not a dataset feature ({sorted(features)})")
        offsets = np.asarray(list(offsets), dtype=np.float64)
        if offsets.ndim != 1 or offsets.size == 0:
            raise ValueError(f"delta_timestamps[{key!r}] must be a non-empty list of seconds")
        steps = np.round(offsets * fps)
        bad = np.abs(offsets - steps / fps) > tolerance_s
        if bad.any():
            raise ValueError(
                f"delta_timestamps[{key!r}] has offsets {offsets[bad].tolist()} that are not multiples of "
                f"1/fps (fps={fps}) within {tolerance_s}s"
            )
        result[key] = steps.astype(np.int64)
    return result


def decode_png(data: bytes, where: str) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data))
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise LeRobotFormatError(f"{where}: cannot decode image bytes ({err})") from err


class _Columns:
    """All data-parquet rows of one dataset, as numpy columns (tabular) and PNG byte arrays (images).

    Every column is checked against info.json (dtype, shape, nulls) file by file, so errors name the file.
    """

    def __init__(self, meta: DatasetMeta, positions: np.ndarray):
        paths: list[pathlib.Path] = []
        for pos in positions.tolist():
            path = meta.data_path(pos)
            if path not in paths:
                paths.append(path)
        if not paths:
            raise LeRobotFormatError(f"{meta.root}: dataset has no data files")
        self.paths = paths
        parquet_keys = [k for k, f in meta.features.items() if f["dtype"] != "video"]
        subset = meta.episodes.episode_index[positions] if len(positions) < len(meta.episodes) else None
        parts: dict[str, list] = {k: [] for k in parquet_keys}
        row_file, row_in_file = [], []
        for file_id, path in enumerate(paths):
            table = read_parquet(path)
            missing = [k for k in parquet_keys if k not in table.column_names]
            if missing:
                raise LeRobotFormatError(f"{path}: columns {missing} declared in info.json are missing")
            table = table.select(parquet_keys)
            keep = np.arange(table.num_rows)
            if subset is not None:  # a subset of episodes: drop the other episodes' rows
                episode = self._column(table.column("episode_index"), meta.features["episode_index"], f"{path}")
                keep = np.flatnonzero(np.isin(episode, subset))
                table = table.take(pa.array(keep))
            row_file.append(np.full(len(keep), file_id, np.int64))
            row_in_file.append(keep)
            for key in parquet_keys:
                parts[key].append(self._column(table.column(key), meta.features[key], f"{path}: column {key!r}"))
        self._row_file = np.concatenate(row_file)
        self._row_in_file = np.concatenate(row_in_file)
        self.tabular: dict[str, np.ndarray] = {}
        self.images: dict[str, pa.Array] = {}
        for key in parquet_keys:
            if meta.features[key]["dtype"] == "image":
                self.images[key] = pa.concat_arrays(parts[key])
            else:
                self.tabular[key] = np.concatenate(parts[key])
        order = np.argsort(self.tabular["index"], kind="stable")
        if (order != np.arange(len(order))).any():
            self._row_file, self._row_in_file = self._row_file[order], self._row_in_file[order]
            self.tabular = {k: v[order] for k, v in self.tabular.items()}
            self.images = {k: v.take(pa.array(order)) for k, v in self.images.items()}
        self.num_rows = len(order)

    @staticmethod
    def _column(column: pa.ChunkedArray, feature: Mapping[str, Any], where: str) -> Any:
        if feature["dtype"] == "image":
            if not pa.types.is_struct(column.type) or column.type.get_field_index("bytes") < 0:
                raise LeRobotFormatError(f"{where}: image column is {column.type}, not struct<bytes, path>")
            return pc.struct_field(column.combine_chunks(), "bytes")
        if feature["dtype"] == "string":
            return np.array(column.to_pylist(), dtype=object)
        return column_to_numpy(column, feature, f"{where} does not hold {feature['dtype']}{list(feature['shape'])}")

    def where(self, row: int) -> str:
        return f"{self.paths[self._row_file[row]]} row {self._row_in_file[row]}"


class LeRobotDataset:
    """A local LeRobot dataset (v2.1 or v3.0) read with pyarrow + PyAV; no torch.

    `delta_timestamps={key: [seconds, ...]}` returns windows around each frame with `<key>_is_pad`, padded by
    repeating the episode's edge frame exactly as lerobot does.
    """

    def __init__(
        self,
        root: str | pathlib.Path,
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        video_threads: int = 1,
        decode_threads: int | None = None,
        episodes: Sequence[int] | None = None,
    ):
        self.root = pathlib.Path(root)
        self.delta_timestamps = {k: list(v) for k, v in (delta_timestamps or {}).items()}
        self.tolerance_s = tolerance_s
        self.video_threads = video_threads
        # mp4 files decoded concurrently per batch (PyAV releases the GIL while decoding and converting).
        self.decode_threads = decode_threads if decode_threads is not None else min(4, os.cpu_count() or 1)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.meta = load_meta(self.root)
        self.delta_indices = delta_indices_from_timestamps(
            self.delta_timestamps, self.meta.fps, self.meta.features, tolerance_s
        )
        self.episodes = None if episodes is None else sorted(int(e) for e in episodes)
        all_episodes = self.meta.episodes.episode_index
        if self.episodes is None:
            self.episode_positions = np.arange(len(all_episodes))
        else:
            unknown = sorted(set(self.episodes) - set(all_episodes.tolist()))
            if unknown or not self.episodes:
                raise ValueError(f"{self.root}: episodes {unknown or '[]'} not in dataset (has {len(all_episodes)})")
            self.episode_positions = np.searchsorted(all_episodes, self.episodes)
        self._cols = _Columns(self.meta, self.episode_positions)
        self._locate_episodes()
        self._videos = VideoFileCache(threads=video_threads)
        self._video_paths = {
            k: [self.meta.video_path(k, e) for e in range(len(self.meta.episodes))] for k in self.meta.video_keys
        }
        self.frame_source: FrameSource | None = None

    # Pickling re-opens from the root, so worker processes get their own files and decoders.
    def __reduce__(self):
        args = (
            self.root,
            self.delta_timestamps,
            self.tolerance_s,
            self.video_threads,
            self.decode_threads,
            self.episodes,
        )
        return (type(self), args)

    def _locate_episodes(self) -> None:
        """Row -> episode position and each episode's [from, to) rows, after checking the rows against metadata.

        Vectorised over whole columns (cheap to open big datasets). Refuses, naming file and row: rows of an
        unknown episode, `index` outside its episode's range or repeated, missing rows, `frame_index` that is
        not the row's position in its episode (a repeated or reordered row), a `timestamp` that is not
        frame_index / fps (info.json's fps disagreeing with the data: video frames would be looked up at the
        wrong time), and task_index outside meta/tasks.
        """
        eps, cols = self.meta.episodes, self._cols
        index, episode_of_row = cols.tabular["index"], cols.tabular["episode_index"]
        pos = np.clip(np.searchsorted(eps.episode_index, episode_of_row), 0, max(len(eps) - 1, 0))
        unknown = eps.episode_index[pos] != episode_of_row
        if unknown.any():
            bad = int(np.argmax(unknown))
            raise LeRobotFormatError(
                f"{cols.where(bad)}: episode {episode_of_row[bad]} is absent from the episode metadata"
            )
        offset = index - eps.dataset_from_index[pos]
        outside = (offset < 0) | (offset >= eps.length[pos])
        if outside.any():
            bad = int(np.argmax(outside))
            raise LeRobotFormatError(f"{cols.where(bad)}: row index {index[bad]} lies outside its episode's range")
        repeated = np.flatnonzero(np.diff(index) == 0)  # rows are sorted by index
        if len(repeated):
            bad = int(repeated[0]) + 1
            raise LeRobotFormatError(f"{cols.where(bad)}: index {index[bad]} appears on more than one row")
        counts = np.bincount(pos, minlength=len(eps))[self.episode_positions]
        short = counts != eps.length[self.episode_positions]
        if short.any():
            p = self.episode_positions[int(np.argmax(short))]
            raise LeRobotFormatError(
                f"{self.root}: episode {eps.episode_index[p]} has {counts[int(np.argmax(short))]} rows in "
                f"{', '.join(str(path) for path in cols.paths)} but its metadata says length {eps.length[p]}"
            )
        frame_index = cols.tabular["frame_index"]
        wrong_frame = frame_index != offset
        if wrong_frame.any():
            bad = int(np.argmax(wrong_frame))
            raise LeRobotFormatError(
                f"{cols.where(bad)}: frame_index {frame_index[bad]}, but the row is frame {offset[bad]} of episode "
                f"{episode_of_row[bad]} (a repeated, missing or reordered row)"
            )
        timestamp = cols.tabular["timestamp"].astype(np.float64)
        expected = frame_index / self.meta.fps
        # lerobot stores float32 seconds: allow their rounding on top of the lookup tolerance.
        allowed = self.tolerance_s + np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
        off = np.abs(timestamp - expected) > allowed
        if off.any():
            bad = int(np.argmax(off))
            raise LeRobotFormatError(
                f"{cols.where(bad)}: timestamp {timestamp[bad]:.6f} is not frame_index / fps = {frame_index[bad]} / "
                f"{self.meta.fps} (meta/info.json fps disagrees with the data, or the row is repeated)"
            )
        task_index = cols.tabular["task_index"]
        bad_task = (task_index < 0) | (task_index >= len(self.meta.tasks))
        if bad_task.any():
            bad = int(np.argmax(bad_task))
            raise LeRobotFormatError(
                f"{cols.where(bad)}: task_index {task_index[bad]} is not in meta/tasks ({len(self.meta.tasks)} tasks)"
            )
        rows = np.arange(len(index))
        self._ep_from = np.full(len(eps), -1, np.int64)
        self._ep_from[pos] = rows - offset
        self._ep_to = self._ep_from + eps.length
        self._row_episode = pos

    def __len__(self) -> int:
        return self._cols.num_rows

    @property
    def fps(self) -> int:
        return self.meta.fps

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.meta.features

    def episode_bounds(self, episode_pos: int) -> tuple[int, int]:
        """[from, to) row positions of the episode at position `episode_pos` of meta.episodes (loaded ones)."""
        return int(self._ep_from[episode_pos]), int(self._ep_to[episode_pos])

    def output_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shape (per item) and dtype of every array an item holds (`task` excluded: it is a string)."""
        spec = {}
        for key, feature in self.features.items():
            if feature["dtype"] in ("image", "video"):
                shape, dtype = image_hwc_shape(feature), np.dtype(np.uint8)
            elif feature["dtype"] == "string":
                continue
            else:
                shape = tuple(int(s) for s in feature["shape"])
                shape, dtype = (() if shape == (1,) else shape), np.dtype(feature["dtype"])
            if key in self.delta_indices:
                steps = len(self.delta_indices[key])
                spec[key] = ((steps, *shape), dtype)
                spec[f"{key}_is_pad"] = ((steps,), np.dtype(bool))
            else:
                spec[key] = (shape, dtype)
        return spec

    def __getitem__(self, row: int) -> dict[str, Any]:
        row = int(row)
        if row < 0:
            row += len(self)
        if not 0 <= row < len(self):
            raise IndexError(f"index {row} out of range for dataset of {len(self)} frames")
        batch = self.get_batch([row])
        return {k: (v[0] if k != "task" else v[0]) for k, v in batch.items()}

    def query_rows(self, rows: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows to read for `key` (B,) or (B, T) and the is_pad mask (None when key has no delta window)."""
        offsets = self.delta_indices.get(key)
        if offsets is None:
            return rows, None
        ep = self._row_episode[rows]
        lo, hi = self._ep_from[ep][:, None], self._ep_to[ep][:, None]
        wanted = rows[:, None] + offsets[None, :]
        return np.clip(wanted, lo, hi - 1), (wanted < lo) | (wanted >= hi)

    def get_batch(self, indices: Sequence[int], out: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Items at `indices` stacked along a new first axis (written into `out` arrays when given)."""
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"indices out of range for dataset of {len(self)} frames: {rows.tolist()}")
        result: dict[str, Any] = {} if out is None else out
        jobs: list[tuple] = []
        for key, feature in self.features.items():
            q, pad = self.query_rows(rows, key)
            if feature["dtype"] == "video":
                values = self._video_frames(key, q, image_hwc_shape(feature), result.get(key), jobs)
            elif feature["dtype"] == "image":
                values = self._image_frames(key, q, image_hwc_shape(feature), result.get(key))
            else:
                values = self._cols.tabular[key][q]
            _put(result, key, values)
            if pad is not None:
                _put(result, f"{key}_is_pad", pad)
        self._run_decode_jobs(jobs)
        task_index = self._cols.tabular["task_index"][rows]
        result["task"] = [self.meta.tasks[t] for t in task_index]
        return result

    def _video_frames(
        self, key: str, q: np.ndarray, hwc: tuple[int, int, int], dest: np.ndarray | None, jobs: list
    ) -> np.ndarray:
        """Array for `key` at rows `q`; video decoding is queued on `jobs` (one per mp4) to run afterwards."""
        flat = q.reshape(-1)
        frames = dest.reshape(-1, *hwc) if dest is not None else np.empty((len(flat), *hwc), np.uint8)
        if self.frame_source is not None:
            return self.frame_source.frames(key, flat, out=frames).reshape((*q.shape, *hwc))
        episode = self._row_episode[flat]
        eps = self.meta.episodes
        times = self._cols.tabular["timestamp"][flat].astype(np.float64) + eps.video_from_timestamp[key][episode]
        # Group queries by mp4 file so each file decodes its frames with as few seeks as possible.
        paths = self._video_paths[key]
        groups: dict[pathlib.Path, list[int]] = {}
        for i, e in enumerate(episode.tolist()):
            groups.setdefault(paths[e], []).append(i)
        for path, members in groups.items():
            video = self._videos.get(path)  # opened here, in the calling thread
            if (video.height, video.width, 3) != hwc:
                raise LeRobotFormatError(f"{path}: frames are {video.height}x{video.width}, info.json declares {hwc}")
            jobs.append((video, times, np.asarray(members), frames))
        return frames.reshape((*q.shape, *hwc))

    def camera_frames(self, key: str, rows: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (len(rows), H, W, 3) frames of one image/video feature at `rows` (no delta window)."""
        if out is None:
            out = np.empty((len(rows), *image_hwc_shape(self.features[key])), np.uint8)
        self.decode_cameras(rows, {key: out})
        return out

    def decode_cameras(self, rows: Sequence[int], outs: Mapping[str, np.ndarray]) -> None:
        """Decode frames of several cameras at `rows` into `outs[key]` (N, H, W, 3); mp4s decode in parallel."""
        q = np.asarray(rows, dtype=np.int64)
        jobs: list[tuple] = []
        for key, out in outs.items():
            hwc = image_hwc_shape(self.features[key])
            if self.features[key]["dtype"] == "image":
                self._image_frames(key, q, hwc, out)
            else:
                self._video_frames(key, q, hwc, out, jobs)
        self._run_decode_jobs(jobs)

    def _run_decode_jobs(self, jobs: list[tuple]) -> None:
        def run(job: tuple) -> None:
            video, times, members, frames = job
            if len(members) == len(frames):
                video.frames_at(times, self.tolerance_s, out=frames)
            else:
                frames[members] = video.frames_at(times[members], self.tolerance_s)

        try:
            if self.decode_threads > 1 and len(jobs) > 1:
                if self._pool is None:
                    self._pool = concurrent.futures.ThreadPoolExecutor(self.decode_threads, "lerobot-decode")
                for future in [self._pool.submit(run, job) for job in jobs]:
                    future.result()
            else:
                for job in jobs:
                    run(job)
        finally:
            self._videos.trim()

    def _image_frames(self, key: str, q: np.ndarray, hwc: tuple[int, int, int], dest: np.ndarray | None) -> np.ndarray:
        flat = q.reshape(-1)
        frames = dest.reshape(-1, *hwc) if dest is not None else np.empty((len(flat), *hwc), np.uint8)
        if self.frame_source is not None:
            return self.frame_source.frames(key, flat, out=frames).reshape((*q.shape, *hwc))
        column = self._cols.images[key]
        for i, row in enumerate(flat.tolist()):
            data = column[row].as_py()
            if data is None:
                raise LeRobotFormatError(f"{self._cols.where(row)}: image {key!r} has no bytes")
            image = decode_png(data, f"{self._cols.where(row)} {key!r}")
            if image.shape != hwc:
                raise LeRobotFormatError(f"{self._cols.where(row)}: image {key!r} is {image.shape}, expected {hwc}")
            frames[i] = image
        return frames.reshape((*q.shape, *hwc))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._videos.close()


def _put(result: dict[str, Any], key: str, values: np.ndarray) -> None:
    dest = result.get(key)
    if dest is None:
        result[key] = values
    elif dest is not values and not np.shares_memory(dest, values):
        dest[...] = values


class MultiLeRobotDataset:
    """Several LeRobot datasets read as one (features common to all; adds `dataset_index`)."""

    def __init__(
        self,
        roots: Sequence[str | pathlib.Path],
        delta_timestamps: Mapping[str, Sequence[float]] | None = None,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
    ):
        if not roots:
            raise ValueError("MultiLeRobotDataset needs at least one root")
        self.roots = [pathlib.Path(r) for r in roots]
        self.datasets = [LeRobotDataset(r, delta_timestamps, tolerance_s) for r in self.roots]
        fps = {d.fps for d in self.datasets}
        if len(fps) != 1:
            raise ValueError(f"datasets have different fps {sorted(fps)}: {[str(r) for r in self.roots]}")
        common = set(self.datasets[0].features)
        for d in self.datasets[1:]:
            common &= set(d.features)
        self.features = {k: f for k, f in self.datasets[0].features.items() if k in common}
        for key in self.features:
            shapes = {tuple(d.features[key]["shape"]) for d in self.datasets}
            if len(shapes) != 1:
                raise ValueError(f"feature {key!r} has different shapes across datasets: {sorted(shapes)}")
        self.fps = fps.pop()
        self._starts = np.cumsum([0] + [len(d) for d in self.datasets])

    def __reduce__(self):
        d = self.datasets[0]
        return (type(self), (self.roots, d.delta_timestamps, d.tolerance_s))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def output_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        spec = self.datasets[0].output_spec()
        keep = {k: v for k, v in spec.items() if k in self.features or k.removesuffix("_is_pad") in self.features}
        keep["dataset_index"] = ((), np.dtype(np.int64))
        return keep

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.get_batch([i])
        return {k: v[0] for k, v in batch.items()}

    def get_batch(self, indices: Sequence[int], out: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        flat = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(flat) and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} frames: {flat.tolist()}")
        which = np.searchsorted(self._starts, flat, side="right") - 1
        spec = self.output_spec()
        result: dict[str, Any] = out if out is not None else {}
        for key, (shape, dtype) in spec.items():
            if key not in result:
                result[key] = np.empty((len(flat), *shape), dtype)
        tasks: list[str] = [""] * len(flat)
        for d_index, dataset in enumerate(self.datasets):
            members = np.nonzero(which == d_index)[0]
            if not len(members):
                continue
            part = dataset.get_batch(flat[members] - self._starts[d_index])
            for key in spec:
                if key != "dataset_index":
                    result[key][members] = part[key]
            for m, task in zip(members.tolist(), part["task"], strict=True):
                tasks[m] = task
        result["dataset_index"][...] = which
        result["task"] = tasks
        return result

    def close(self) -> None:
        for d in self.datasets:
            d.close()


def open_dataset(
    root: str | pathlib.Path | Sequence[str | pathlib.Path], delta_timestamps=None, tolerance_s=DEFAULT_TOLERANCE_S
):
    """One root -> LeRobotDataset; a list of roots -> MultiLeRobotDataset."""
    if isinstance(root, str | pathlib.Path):
        return LeRobotDataset(root, delta_timestamps, tolerance_s)
    return MultiLeRobotDataset(root, delta_timestamps, tolerance_s)
