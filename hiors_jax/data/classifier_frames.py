"""Frames of LeRobot datasets labelled for a success classifier, split into train / held-out by episode.

Which frames are positive (the original labelled only the terminal frame of a successful episode: one positive
per episode, then balanced batches repeated those few frames over and over, defect 12 of the reference):

1. Each episode's outcome comes from, in this order: `complementary_info.label` (our replay's `online/`: the last
   labelled frame, 1 success / 0 failure; an episode with no label, e.g. the robot dropped, is left out),
   `next.success` (success iff any frame is true), `next.reward` (success iff any frame's reward exceeds
   `reward_threshold`), or, with none of these columns, success ending at the last frame (demonstrations, as
   the replay's demo windows treat them).
2. In a successful episode the last `positive_frames` frames are positive, and with `positive_seconds > 0` also
   every frame observed within that many seconds of the episode's end (robot clock from
   `complementary_info.state_chunk_timestamp` when the dataset has it: a teleoperated end has many frames per
   second, an autonomous one a frame every ~2 s; else the `timestamp` column). The `margin_frames` frames just
   before that window are left out (neither class): the moment the task became done is fuzzy.
3. Frames marked positive by the data itself (`next.success` true, or `next.reward` > `reward_threshold`, as
   LeRobot's HIL-SERL recordings mark the frames after success) are positive in any episode.
4. Every other frame of a labelled episode is negative (all frames of a failed episode, the earlier frames of
   a successful one).

Images are decoded once, resized-with-pad to the classifier's size and kept in memory as uint8.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np

from hiors_jax.data.lerobot import LeRobotDataset
from hiors_jax.data.lerobot_meta import LeRobotFormatError, image_hwc_shape, read_json
from hiors_jax.models.preprocessing import resize_with_pad

POSITIVE, NEGATIVE, UNUSED = 1, 0, -1
CAMERA_PREFIX = "observation.images."
_LABEL = "complementary_info.label"
_STAMPS = "complementary_info.state_chunk_timestamp"
_STAMP_MASK = "complementary_info.state_chunk_mask"


class ClassifierDataError(ValueError):
    """The datasets cannot train a classifier (no positives, missing camera, empty...); the message says why."""


@dataclasses.dataclass(frozen=True)
class LabelRule:
    positive_frames: int = 3
    positive_seconds: float = 0.0
    margin_frames: int = 2
    reward_threshold: float = 0.5

    def __post_init__(self):
        if self.positive_frames < 1:
            raise ValueError(f"positive_frames must be >= 1, got {self.positive_frames}")
        if self.positive_seconds < 0:
            raise ValueError(f"positive_seconds must be >= 0, got {self.positive_seconds}")
        if self.margin_frames < 0:
            raise ValueError(f"margin_frames must be >= 0, got {self.margin_frames}")


# ---------------------------------------------------------------------------------------------- labels
def episode_outcome(columns: dict[str, np.ndarray], reward_threshold: float) -> tuple[str | None, np.ndarray, str]:
    """(outcome "success" | "failure" | None, per-frame positive markers, the column the outcome came from)."""
    n = len(columns["frame_index"])
    markers = np.zeros(n, bool)
    if "next.success" in columns:
        markers |= columns["next.success"].reshape(n).astype(bool)
    if "next.reward" in columns:
        markers |= columns["next.reward"].reshape(n).astype(np.float64) > reward_threshold
    if _LABEL in columns:
        codes = columns[_LABEL].reshape(n)
        labelled = codes[codes >= 0]
        if not len(labelled):
            return None, markers, _LABEL
        return ("success" if labelled[-1] == 1 else "failure"), markers, _LABEL
    for key in ("next.success", "next.reward"):
        if key in columns:
            return ("success" if markers.any() else "failure"), markers, key
    return "success", markers, "none (a demonstration: success at its last frame)"


def frame_times(columns: dict[str, np.ndarray], fps: int) -> tuple[np.ndarray, float]:
    """Per-frame observation time and the episode's end time, in seconds (robot clock when recorded)."""
    n = len(columns["frame_index"])
    if _STAMPS in columns and _STAMP_MASK in columns:
        stamps = columns[_STAMPS].reshape(n, -1).astype(np.float64)
        mask = columns[_STAMP_MASK].reshape(n, -1).astype(bool)
        if mask.any():
            first = np.where(mask.any(1), np.where(mask, stamps, np.inf).min(1), np.nan)
            # a frame whose action recorded nothing happened at its predecessor's time
            idx = np.where(np.isfinite(first), np.arange(n), 0)
            np.maximum.accumulate(idx, out=idx)
            times = first[idx]
            times[~np.isfinite(times)] = np.nanmin(first)
            return times, float(np.where(mask, stamps, -np.inf).max())
    times = columns["timestamp"].reshape(n).astype(np.float64)
    return times, float(times[-1] + 1.0 / fps)


def frame_labels(outcome: str | None, markers: np.ndarray, times: np.ndarray, end: float, rule: LabelRule):
    """int8 POSITIVE / NEGATIVE / UNUSED per frame (see the module docstring)."""
    n = len(markers)
    labels = np.full(n, NEGATIVE, np.int8)
    if outcome is None:
        labels[:] = UNUSED
        return labels
    if outcome == "success":
        window = np.arange(n) >= n - rule.positive_frames
        if rule.positive_seconds > 0:
            window |= times >= end - rule.positive_seconds
        start = int(np.argmax(window))
        labels[max(0, start - rule.margin_frames) : start] = UNUSED
        labels[window] = POSITIVE
    labels[markers] = POSITIVE
    return labels


def split_episodes(outcomes: Sequence[str], val_fraction: float, seed: int) -> np.ndarray:
    """Held-out mask over episodes, drawn separately among successes and failures (so both appear in each
    split when there are at least two of them); val_fraction 0 holds nothing out."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(outcomes), bool)
    outcomes = np.asarray(outcomes, dtype=object)
    for kind in ("success", "failure"):
        members = np.flatnonzero(outcomes == kind)
        if val_fraction <= 0 or len(members) < 2:
            continue
        k = int(np.clip(round(val_fraction * len(members)), 1, len(members) - 1))
        held[rng.permutation(members)[:k]] = True
    return held


# ---------------------------------------------------------------------------------------------- loading
def camera_key(name: str) -> str:
    """`cam_high` or `observation.images.cam_high` -> the dataset feature key."""
    return name if name.startswith(CAMERA_PREFIX) else CAMERA_PREFIX + name


def camera_name(key_or_name: str) -> str:
    return key_or_name[len(CAMERA_PREFIX) :] if key_or_name.startswith(CAMERA_PREFIX) else key_or_name


@dataclasses.dataclass
class EpisodeInfo:
    root: str
    episode_index: int
    outcome: str | None
    outcome_source: str
    length: int
    first_positive: int  # frame index of the first positive frame, -1 when none


@dataclasses.dataclass
class ClassifierFrames:
    """Every frame of the loaded episodes (UNUSED ones included, for episode-level checks)."""

    images: dict[str, np.ndarray]  # camera name -> uint8 (N, H, W, 3) at the classifier's size
    state: np.ndarray  # float32 (N, D), D = 0 without state
    label: np.ndarray  # int8 (N,): POSITIVE / NEGATIVE / UNUSED
    episode: np.ndarray  # int64 (N,): position in `episodes`
    frame: np.ndarray  # int64 (N,): frame index within its episode
    episodes: list[EpisodeInfo]

    def __len__(self) -> int:
        return len(self.label)

    def counts(self, rows: np.ndarray | None = None) -> dict[str, int]:
        label = self.label if rows is None else self.label[rows]
        return {
            "positive": int(np.sum(label == POSITIVE)),
            "negative": int(np.sum(label == NEGATIVE)),
            "unused": int(np.sum(label == UNUSED)),
        }


class _NoFrames:
    """A frame source that decodes nothing: reads an episode's tabular columns without touching video."""

    def frames(self, key: str, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        return out if out is not None else np.zeros((len(rows), 1, 1, 3), np.uint8)


def _open(root: pathlib.Path) -> LeRobotDataset:
    if not root.is_dir():
        raise ClassifierDataError(f"--dataset {root}: no such directory")
    info = root / "meta" / "info.json"
    if not info.is_file():
        raise ClassifierDataError(f"--dataset {root}: not a LeRobot dataset (meta/info.json is missing)")
    try:
        empty = int(read_json(info).get("total_frames", -1)) == 0
    except (LeRobotFormatError, TypeError, ValueError) as err:
        raise ClassifierDataError(f"--dataset {root}: {err}") from err
    if empty:
        raise ClassifierDataError(f"--dataset {root}: the dataset is empty (meta/info.json: total_frames 0)")
    try:
        dataset = LeRobotDataset(root)
    except LeRobotFormatError as err:
        raise ClassifierDataError(f"--dataset {root}: {err}") from err
    if len(dataset) == 0:
        dataset.close()
        raise ClassifierDataError(f"--dataset {root}: the dataset is empty (no frames)")
    return dataset


def load_frames(
    roots: Sequence[str | pathlib.Path],
    cameras: Sequence[str],
    image_size: tuple[int, int],
    rule: LabelRule,
    state_key: str | None = "observation.state",
) -> ClassifierFrames:
    """Label and decode every frame of `roots`; raises ClassifierDataError naming the dataset and what is wrong."""
    if not roots:
        raise ClassifierDataError("--dataset: no dataset given")
    names = [camera_name(c) for c in cameras]
    h, w = image_size
    images: dict[str, list[np.ndarray]] = {n: [] for n in names}
    states, labels, episode_ids, frame_ids, episodes = [], [], [], [], []
    state_dim = None
    for root in (pathlib.Path(r).expanduser() for r in roots):
        dataset = _open(root)
        try:
            features = dataset.features
            available = sorted(k for k, f in features.items() if f["dtype"] in ("image", "video"))
            for name in names:
                if camera_key(name) not in features:
                    raise ClassifierDataError(
                        f"--camera {name}: dataset {root} has no camera {camera_key(name)!r} (its cameras: {available})"
                    )
            if state_key is not None:
                if state_key not in features:
                    raise ClassifierDataError(f"--state_key {state_key}: dataset {root} has no such feature")
                dim = int(np.prod(features[state_key]["shape"]))
                if state_dim is not None and dim != state_dim:
                    raise ClassifierDataError(
                        f"--state_key {state_key}: dataset {root} has {dim} values, the previous dataset(s) {state_dim}"
                    )
                state_dim = dim
            for pos in dataset.episode_positions.tolist():
                start, stop = dataset.episode_bounds(pos)
                rows = np.arange(start, stop)
                dataset.frame_source = _NoFrames()
                try:
                    columns = {k: v for k, v in dataset.get_batch(rows).items() if k != "task"}
                finally:
                    dataset.frame_source = None
                outcome, markers, source = episode_outcome(columns, rule.reward_threshold)
                times, end = frame_times(columns, dataset.fps)
                ep_labels = frame_labels(outcome, markers, times, end, rule)
                positives = np.flatnonzero(ep_labels == POSITIVE)
                episodes.append(
                    EpisodeInfo(
                        str(root),
                        int(dataset.meta.episodes.episode_index[pos]),
                        outcome,
                        source,
                        len(rows),
                        int(positives[0]) if len(positives) else -1,
                    )
                )
                if outcome is None:
                    continue  # unlabelled: neither class, and not worth decoding
                native = {n: np.empty((len(rows), *image_hwc_shape(features[camera_key(n)])), np.uint8) for n in names}
                dataset.decode_cameras(rows, {camera_key(n): native[n] for n in names})
                for n in names:
                    images[n].append(resize_with_pad(native[n], h, w))
                if state_key is not None:
                    states.append(columns[state_key].reshape(len(rows), -1).astype(np.float32))
                labels.append(ep_labels)
                episode_ids.append(np.full(len(rows), len(episodes) - 1, np.int64))
                frame_ids.append(np.arange(len(rows), dtype=np.int64))
        finally:
            dataset.close()
    if not labels:
        raise ClassifierDataError(
            f"--dataset: none of the {len(episodes)} episode(s) has a success/failure label "
            f"({_LABEL} is -1 on every frame)"
        )
    frames = ClassifierFrames(
        images={n: np.concatenate(v) for n, v in images.items()},
        state=np.concatenate(states) if states else np.zeros((sum(map(len, labels)), 0), np.float32),
        label=np.concatenate(labels),
        episode=np.concatenate(episode_ids),
        frame=np.concatenate(frame_ids),
        episodes=episodes,
    )
    counts = frames.counts()
    labelled = [e for e in episodes if e.outcome is not None]
    if counts["positive"] == 0:
        raise ClassifierDataError(
            f"--dataset: no positive frames: none of the {len(labelled)} labelled episode(s) is a success "
            f"(outcomes from {sorted({e.outcome_source for e in labelled})}); the classifier needs successful episodes"
        )
    if counts["negative"] == 0:
        raise ClassifierDataError(
            f"--dataset: no negative frames: all {counts['positive']} labelled frames are positive (every episode "
            "succeeded and is no longer than --positive_frames/--positive_seconds); add failed or longer episodes"
        )
    return frames
