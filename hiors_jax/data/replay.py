"""Learner-side replay on LeRobot datasets: transitions in, whole episodes committed, newest frames sampled.

The transition an actor sends (one policy step; a plain dict so it crosses the transport as is)::

    {
        "images": {camera: uint8 (H, W, 3)},       # the observation o_t the policy saw, RGB, HWC
        "state": float32 (D,),                     # robot state at o_t (14 for the X-Trainer)
        "prompt": str,                             # task instruction (stored as the LeRobot task)
        "action": float32 (H_a, A),                # the chunk the policy sent (50 x 14)
        "reward": float,                           # finite
        "done": bool,                              # terminal: the episode ended in a labelled outcome
        "truncated": bool,                         # cut short (step limit, robot lost); kept apart from done
        "state_chunk": float32 (R, D),             # states recorded while `action` ran (10 Hz), time order
        "state_chunk_mask": bool (R,),             # which rows are real records (the rest is padding)
        "state_chunk_teleop": bool (R,),           # per row: a human was driving
        "state_chunk_timestamp": float64 (R,),     # per row: robot clock, seconds
        "episode_id": int,                         # per actor, increasing
        "actor_id": str,
        "policy_version": int,                     # version of the params that produced `action`
        "label": "success" | "failure" | None,     # the episode's outcome, on its last transition
    }

`validate_transition` checks one (ValueError naming the field). `ReplayStore.insert` (also usable as a
transport data store) buffers transitions per actor and, when one has done or truncated, commits the episode:
every transition to the LeRobot v3.0 dataset `online/` and, when the acceptance rules accept it, its kept
transitions with relabelled action targets (`action` (H, A'), `action_is_pad`) and loss weight to
`accepted/`. Each commit is atomic (the LeRobot writer stages, journals and renames); on start the store
finishes or discards an interrupted commit, re-derives `accepted/` episodes missing after a crash from
`online/`, and refills its sampling windows. The windows (`FrameWindow`) hold the newest N frames of each
source with images already resized-with-pad to the model's resolution in a uint8 memmap `FrameCache`, so
sampling never decodes video.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import pathlib
import pickle
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from hiors_jax.data.acceptance import AcceptanceConfig, AcceptanceCounters, EpisodeDecision, decide
from hiors_jax.data.batches import FrameCache
from hiors_jax.data.chunks import chunks_from_actions, relabel_from_states, stored_chunks
from hiors_jax.data.lerobot import LeRobotDataset, LeRobotDatasetWriter, load_meta
from hiors_jax.models.preprocessing import resize_with_pad

log = logging.getLogger(__name__)

SOURCES = ("demo", "online", "accepted")
LABEL_CODES = {None: -1, "failure": 0, "success": 1}
LABEL_NAMES = {v: k for k, v in LABEL_CODES.items()}
_SCALAR_INT_FIELDS = ("episode_id", "policy_version")
_CI = "complementary_info."


class TransitionError(ValueError):
    """A transition does not match the schema (or the dataset it would be stored in)."""


class EmptySourceError(ValueError):
    """A window has no frame to sample yet."""


# ------------------------------------------------------------------------------------------------ schema
@dataclasses.dataclass(frozen=True)
class TransitionSpec:
    """Shapes a store's transitions must have: cameras {name: (H, W)}, state dim D, action chunk (H_a, A),
    recorded rows R."""

    cameras: tuple[tuple[str, tuple[int, int]], ...]
    state_dim: int
    action_horizon: int
    action_dim: int
    chunk_len: int

    @property
    def camera_shapes(self) -> dict[str, tuple[int, int]]:
        return dict(self.cameras)

    @classmethod
    def from_transition(cls, transition: Mapping[str, Any]) -> TransitionSpec:
        """The spec a (schema-valid) first transition defines."""
        images = transition.get("images")
        if not isinstance(images, Mapping) or not images:
            raise TransitionError("field 'images': expected a non-empty dict {camera name: uint8 HWC array}")
        cameras = []
        for name in sorted(images):
            shape = np.shape(images[name])
            if len(shape) != 3 or shape[2] != 3:
                raise TransitionError(f"field 'images.{name}': expected uint8 (H, W, 3), got shape {shape}")
            cameras.append((str(name), (int(shape[0]), int(shape[1]))))
        action, chunk = np.shape(transition.get("action")), np.shape(transition.get("state_chunk"))
        state = np.shape(transition.get("state"))
        if len(state) != 1:
            raise TransitionError(f"field 'state': expected a (dim,) vector, got shape {state}")
        if len(action) != 2:
            raise TransitionError(f"field 'action': expected a (horizon, dim) chunk, got shape {action}")
        if len(chunk) != 2:
            raise TransitionError(f"field 'state_chunk': expected (rows, state dim), got shape {chunk}")
        return cls(tuple(cameras), int(state[0]), int(action[0]), int(action[1]), int(chunk[0]))


def _field_array(t: Mapping[str, Any], name: str, shape: tuple[int, ...], kind: str, dtype) -> np.ndarray:
    if name not in t:
        raise TransitionError(f"field {name!r} is missing")
    value = t[name]
    if not isinstance(value, np.ndarray | list | tuple) and not np.isscalar(value):
        raise TransitionError(f"field {name!r}: expected an array, got {type(value).__name__}")
    arr = np.asarray(value)
    if arr.shape != shape:
        raise TransitionError(f"field {name!r}: shape {arr.shape} differs from the dataset's {shape}")
    if kind == "f":
        if arr.dtype.kind not in "fiu":
            raise TransitionError(f"field {name!r}: expected floats, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise TransitionError(f"field {name!r}: contains NaN or infinity")
    elif kind == "b" and arr.dtype != np.bool_:
        raise TransitionError(f"field {name!r}: expected bool, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=dtype)


def validate_transition(transition: Mapping[str, Any], spec: TransitionSpec | None = None) -> dict[str, Any]:
    """A checked copy of `transition` with canonical dtypes; TransitionError (a ValueError) names the bad field.

    With `spec` the shapes must match it (the dataset's shapes); without, they must only be self-consistent.
    """
    if not isinstance(transition, Mapping):
        raise TransitionError(f"a transition must be a dict, got {type(transition).__name__}")
    spec = spec or TransitionSpec.from_transition(transition)
    out: dict[str, Any] = {}
    images = transition.get("images")
    if not isinstance(images, Mapping):
        raise TransitionError("field 'images': expected a dict {camera name: uint8 HWC array}")
    cameras = spec.camera_shapes
    if set(images) != set(cameras):
        raise TransitionError(f"field 'images': cameras {sorted(images)} differ from the dataset's {sorted(cameras)}")
    out["images"] = {}
    for name, (h, w) in cameras.items():
        image = images[name]
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            got = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
            raise TransitionError(f"field 'images.{name}': expected a uint8 array, got {got}")
        if image.shape != (h, w, 3):
            raise TransitionError(f"field 'images.{name}': shape {image.shape} differs from the dataset's {(h, w, 3)}")
        out["images"][name] = np.ascontiguousarray(image)
    d, r = spec.state_dim, spec.chunk_len
    out["state"] = _field_array(transition, "state", (d,), "f", np.float32)
    out["action"] = _field_array(transition, "action", (spec.action_horizon, spec.action_dim), "f", np.float32)
    out["state_chunk"] = _field_array(transition, "state_chunk", (r, d), "f", np.float32)
    out["state_chunk_mask"] = _field_array(transition, "state_chunk_mask", (r,), "b", bool)
    out["state_chunk_teleop"] = _field_array(transition, "state_chunk_teleop", (r,), "b", bool)
    out["state_chunk_timestamp"] = _field_array(transition, "state_chunk_timestamp", (r,), "f", np.float64)
    stamps = out["state_chunk_timestamp"][out["state_chunk_mask"]]
    if np.any(np.diff(stamps) < 0):
        raise TransitionError("field 'state_chunk_timestamp': recorded rows are not in time order")
    prompt = transition.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise TransitionError(f"field 'prompt': expected a non-empty string, got {prompt!r}")
    out["prompt"] = prompt
    reward = transition.get("reward")
    if isinstance(reward, bool) or not isinstance(reward, int | float | np.integer | np.floating):
        raise TransitionError(f"field 'reward': expected a number, got {type(reward).__name__}")
    if not math.isfinite(float(reward)):
        raise TransitionError(f"field 'reward': {reward} is not finite")
    out["reward"] = float(reward)
    for name in ("done", "truncated"):
        value = transition.get(name)
        if not isinstance(value, bool | np.bool_):
            raise TransitionError(f"field {name!r}: expected a bool, got {type(value).__name__}")
        out[name] = bool(value)
    for name in _SCALAR_INT_FIELDS:
        value = transition.get(name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise TransitionError(f"field {name!r}: expected a non-negative int, got {value!r}")
        out[name] = int(value)
    actor = transition.get("actor_id")
    if not isinstance(actor, str) or not actor:
        raise TransitionError(f"field 'actor_id': expected a non-empty string, got {actor!r}")
    out["actor_id"] = actor
    label = transition.get("label")
    if label not in LABEL_CODES:
        raise TransitionError(f"field 'label': expected 'success', 'failure' or None, got {label!r}")
    out["label"] = label
    return out


# ------------------------------------------------------------------------------------------------ features
def _camera_feature(h: int, w: int, video: bool) -> dict[str, Any]:
    return {"dtype": "video" if video else "image", "shape": [h, w, 3], "names": ["height", "width", "channels"]}


def _vec(dtype: str, *shape: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "names": None}


def online_features(spec: TransitionSpec, use_videos: bool = True) -> dict[str, dict[str, Any]]:
    """LeRobot features of `online/`: every transition as sent."""
    features = {f"observation.images.{c}": _camera_feature(h, w, use_videos) for c, (h, w) in spec.cameras}
    r, d = spec.chunk_len, spec.state_dim
    features.update(
        {
            "observation.state": _vec("float32", d),
            "action": _vec("float32", spec.action_horizon, spec.action_dim),
            "next.reward": _vec("float32", 1),
            "next.done": _vec("bool", 1),
            "next.truncated": _vec("bool", 1),
            _CI + "state_chunk": _vec("float32", r, d),
            _CI + "state_chunk_mask": _vec("bool", r),
            _CI + "state_chunk_teleop": _vec("bool", r),
            _CI + "state_chunk_timestamp": _vec("float64", r),
            _CI + "episode_id": _vec("int64", 1),
            _CI + "actor_index": _vec("int64", 1),
            _CI + "policy_version": _vec("int64", 1),
            _CI + "label": _vec("int64", 1),  # -1 none, 0 failure, 1 success
        }
    )
    return features


def accepted_features(spec: TransitionSpec, horizon: int, target_dim: int, use_videos: bool = True) -> dict:
    """LeRobot features of `accepted/`: kept transitions with their relabelled targets and loss weight."""
    features = {f"observation.images.{c}": _camera_feature(h, w, use_videos) for c, (h, w) in spec.cameras}
    features.update(
        {
            "observation.state": _vec("float32", spec.state_dim),
            "action": _vec("float32", horizon, target_dim),
            "action_is_pad": _vec("bool", horizon),
            "next.reward": _vec("float32", 1),
            "next.done": _vec("bool", 1),
            "next.truncated": _vec("bool", 1),
            _CI + "weight": _vec("float32", 1),
            _CI + "online_episode": _vec("int64", 1),  # episode_index in online/ it was derived from
            _CI + "episode_id": _vec("int64", 1),
            _CI + "actor_index": _vec("int64", 1),
            _CI + "policy_version": _vec("int64", 1),
        }
    )
    return features


def spec_from_features(features: Mapping[str, Mapping[str, Any]]) -> TransitionSpec:
    """The transition spec an existing `online/` dataset was written with."""
    cameras = []
    for key, f in sorted(features.items()):
        if key.startswith("observation.images."):
            h, w = (int(f["shape"][0]), int(f["shape"][1]))
            cameras.append((key[len("observation.images.") :], (h, w)))
    action = features["action"]["shape"]
    return TransitionSpec(
        tuple(cameras),
        int(features["observation.state"]["shape"][0]),
        int(action[0]),
        int(action[1]),
        int(features[_CI + "state_chunk"]["shape"][0]),
    )


# ------------------------------------------------------------------------------------------------ windows
class FrameWindow:
    """The newest `capacity` frames of one source, ready to sample: a ring over uint8 images (memmap files in
    a `FrameCache`, resized-with-pad at append time) and small arrays in memory.

    Per frame: state (D,), actions (H, A), action_is_pad (H,), reward, done, truncated, weight, prompt id and
    the slot of the next frame of the same episode (itself for an episode's last frame).
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        capacity: int,
        cameras: Sequence[str],
        image_size: tuple[int, int],
        state_dim: int,
        horizon: int,
        action_dim: int,
    ):
        if capacity < 1:
            raise ValueError(f"window capacity must be >= 1 frame, got {capacity}")
        pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
        # Files private to this window, unlinked once mapped: two stores never share them, and the disk space
        # goes back to the system when the process ends, however it ends.
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="window-", dir=directory))
        self.capacity, self.image_size = int(capacity), tuple(image_size)
        self.cameras = tuple(cameras)
        h, w = self.image_size
        arrays = {
            cam: np.memmap(self.directory / f"{cam}.u8", np.uint8, "w+", shape=(self.capacity, h, w, 3))
            for cam in self.cameras
        }
        for cam in self.cameras:
            (self.directory / f"{cam}.u8").unlink()
        self.directory.rmdir()
        self.name = pathlib.Path(directory).name
        self.images = FrameCache(self.directory, arrays)
        n = self.capacity
        self.state = np.zeros((n, state_dim), np.float32)
        self.actions = np.zeros((n, horizon, action_dim), np.float32)
        self.action_is_pad = np.zeros((n, horizon), bool)
        self.reward = np.zeros(n, np.float32)
        self.done = np.zeros(n, bool)
        self.truncated = np.zeros(n, bool)
        self.weight = np.zeros(n, np.float32)
        self.prompt_id = np.zeros(n, np.int32)
        self.next_slot = np.zeros(n, np.int64)
        self.prompts: list[str] = []
        self._prompt_ids: dict[str, int] = {}
        self.size = 0
        self.position = 0
        self.frames_added = 0
        self.episodes_added = 0
        self.lock = threading.RLock()

    @property
    def nbytes(self) -> int:
        tabular = sum(
            a.nbytes
            for a in (self.state, self.actions, self.action_is_pad, self.reward, self.done, self.truncated)
            + (self.weight, self.prompt_id, self.next_slot)
        )
        return self.images.nbytes() + tabular

    def __len__(self) -> int:
        return self.size

    def append_episode(
        self,
        images: Mapping[str, np.ndarray],
        *,
        state: np.ndarray,
        actions: np.ndarray,
        action_is_pad: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        truncated: np.ndarray,
        weight: np.ndarray,
        prompts: Sequence[str],
    ) -> None:
        """Add one episode's frames (time order), overwriting the oldest frames when full."""
        t = len(state)
        if t == 0:
            return
        keep = slice(max(0, t - self.capacity), t)  # an episode longer than the window keeps its newest frames
        n = keep.stop - keep.start
        resized = {cam: resize_with_pad(np.asarray(images[cam][keep]), *self.image_size) for cam in self.cameras}
        ids = np.array([self._prompt_id(p) for p in prompts[keep]], np.int32)
        with self.lock:
            slots = (self.position + np.arange(n)) % self.capacity
            for cam in self.cameras:
                self.images.arrays[cam][slots] = resized[cam]
            self.state[slots] = state[keep]
            self.actions[slots] = actions[keep]
            self.action_is_pad[slots] = action_is_pad[keep]
            self.reward[slots] = reward[keep]
            self.done[slots] = done[keep]
            self.truncated[slots] = truncated[keep]
            self.weight[slots] = weight[keep]
            self.prompt_id[slots] = ids
            self.next_slot[slots] = np.append(slots[1:], slots[-1])
            self.position = int((self.position + n) % self.capacity)
            self.size = min(self.size + n, self.capacity)
            self.frames_added += n
            self.episodes_added += 1

    def _prompt_id(self, prompt: str) -> int:
        if prompt not in self._prompt_ids:
            self._prompt_ids[prompt] = len(self.prompts)
            self.prompts.append(prompt)
        return self._prompt_ids[prompt]

    def sample_slots(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` slots drawn uniformly (with replacement) from the frames held."""
        if self.size == 0:
            raise EmptySourceError(f"window {self.name!r} is empty: nothing to sample yet")
        return rng.integers(0, self.size, n)  # slots [0, size) are the filled ones until the ring wraps

    def gather(self, slots: np.ndarray, with_next: bool = False) -> dict[str, Any]:
        """Host arrays of the frames at `slots` (uint8 images at the window's resolution)."""
        slots = np.asarray(slots, np.int64)
        with self.lock:
            out: dict[str, Any] = {
                "images": {cam: self.images.frames(cam, slots) for cam in self.cameras},
                "state": self.state[slots],
                "actions": self.actions[slots],
                "action_is_pad": self.action_is_pad[slots],
                "reward": self.reward[slots],
                "done": self.done[slots],
                "truncated": self.truncated[slots],
                "weight": self.weight[slots],
                "prompt": [self.prompts[i] for i in self.prompt_id[slots]],
            }
            if with_next:
                nxt = self.next_slot[slots]
                out["next_images"] = {cam: self.images.frames(cam, nxt) for cam in self.cameras}
                out["next_state"] = self.state[nxt]
                out["next_prompt"] = [self.prompts[i] for i in self.prompt_id[nxt]]
        return out


def window_from_dataset(
    dataset_root: str | pathlib.Path,
    directory: str | pathlib.Path,
    *,
    horizon: int,
    image_size: tuple[int, int],
    capacity: int | None = None,
    camera_keys: Mapping[str, str] | None = None,
    state_key: str = "observation.state",
    action_key: str = "action",
    action_dims: Sequence[int] | None = None,
    weight: float = 1.0,
    batch_rows: int = 256,
) -> FrameWindow:
    """A window over the newest `capacity` frames (all by default) of an offline LeRobot dataset (demos).

    Targets: per-step actions (D,) become chunks of the next `horizon` actions of the same episode (lerobot's
    delta_timestamps semantics, with is_pad); stored chunks (H, D) are used as they are (with
    `action_is_pad` when the dataset has it). `camera_keys` maps window camera names to dataset keys
    (default: every camera, named after its key's last part). Without `next.reward` / `next.done` columns an
    episode counts as a success ending at its last frame (reward 1 there), as the original's demos did.
    """
    dataset = LeRobotDataset(dataset_root)
    try:
        feats = dataset.features
        if camera_keys is None:
            camera_keys = {k.split(".")[-1]: k for k in dataset.meta.camera_keys}
        missing = [k for k in [*camera_keys.values(), state_key, action_key] if k not in feats]
        if missing:
            raise ValueError(f"{dataset_root}: dataset has no feature(s) {missing}")
        action_shape = list(feats[action_key]["shape"])
        chunked = len(action_shape) == 2
        target_dim = len(action_dims) if action_dims is not None else action_shape[-1]
        total = len(dataset)
        capacity = total if capacity is None else capacity
        window = FrameWindow(
            directory,
            capacity,
            list(camera_keys),
            image_size,
            int(feats[state_key]["shape"][0]),
            horizon,
            target_dim,
        )
        for pos in dataset.episode_positions.tolist():
            start, stop = dataset.episode_bounds(pos)
            if stop <= total - capacity:
                continue  # older than the window
            parts = [dataset.get_batch(np.arange(s, min(s + batch_rows, stop))) for s in range(start, stop, batch_rows)]
            cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "task"}
            tasks = [t for p in parts for t in p["task"]]
            episode = np.zeros(stop - start, np.int64)
            if chunked:
                pad = cat.get(f"{action_key}_is_pad") if f"{action_key}_is_pad" in feats else None
                pad = cat.get("action_is_pad") if pad is None and "action_is_pad" in feats else pad
                targets, is_pad = stored_chunks(cat[action_key], horizon, is_pad=pad, dims=action_dims)
            else:
                targets, is_pad = chunks_from_actions(cat[action_key], episode, horizon, dims=action_dims)
            n = stop - start
            last = np.arange(n) == n - 1  # without reward/done columns: a demo is a success that ends here
            reward = cat.get("next.reward", last).astype(np.float32).reshape(n)
            done = cat.get("next.done", last).astype(bool).reshape(n)
            truncated = cat.get("next.truncated", np.zeros(n, bool)).astype(bool).reshape(n)
            window.append_episode(
                {name: cat[key] for name, key in camera_keys.items()},
                state=cat[state_key].astype(np.float32),
                actions=targets.astype(np.float32),
                action_is_pad=is_pad,
                reward=reward,
                done=done,
                truncated=truncated,
                weight=np.full(n, weight, np.float32),
                prompts=tasks,
            )
        return window
    finally:
        dataset.close()


# ------------------------------------------------------------------------------------------------ recovery
def _total_episodes(root: pathlib.Path) -> int:
    try:
        return int(json.loads((root / "meta" / "info.json").read_text())["total_episodes"])
    except (OSError, ValueError, KeyError):
        return -1


def recover_dataset(root: str | pathlib.Path) -> str:
    """Let the LeRobot writer complete what a killed commit left at `root` (roll an interrupted swap forward,
    finalize a saved episode, discard an unsaved one); earlier episodes are never touched. Returns what was
    done, "" when nothing had been interrupted."""
    try:
        LeRobotDatasetWriter.recover(root)
    except FileNotFoundError:
        return ""
    except ValueError as err:
        return f"discarded an interrupted commit ({err})"
    return "completed an interrupted commit"


def _read_scalar_columns(root: pathlib.Path, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Whole scalar columns of a v3.0 dataset in `index` order, without touching images."""
    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    tables = [pq.read_table(f, columns=[*columns, "index"]) for f in files]
    if not tables:
        return {c: np.zeros(0, np.int64) for c in columns}
    cat = {c: np.concatenate([t.column(c).to_numpy() for t in tables]) for c in [*columns, "index"]}
    order = np.argsort(cat["index"], kind="stable")
    return {c: cat[c][order] for c in columns}


# ------------------------------------------------------------------------------------------------ store
@dataclasses.dataclass
class _OpenEpisode:
    episode_id: int
    transitions: list[dict[str, Any]]
    fingerprints: set[bytes] = dataclasses.field(default_factory=set)  # of `transitions`, to spot resends


def _fingerprint(t: Mapping[str, Any]) -> bytes:
    """Digest of a validated transition's content (names, dtypes, shapes, bytes): equal for the same
    transition however it arrived (first send, resend, spill file)."""
    h = hashlib.blake2b(digest_size=16)

    def feed(name: str, value: Any) -> None:
        h.update(name.encode() + b"\0")
        if isinstance(value, Mapping):
            for key in sorted(value):
                feed(f"{name}.{key}", value[key])
        elif isinstance(value, np.ndarray):
            h.update(f"{value.dtype.str}{value.shape}".encode())
            h.update(np.ascontiguousarray(value).tobytes())
        else:
            h.update(repr(value).encode())

    for key in sorted(t):
        feed(key, t[key])
    return h.digest()


class ReplayStore:
    """Episodes from actors into `online/` and `accepted/` LeRobot datasets, and the windows sampled from them.

    root: directory holding `online/`, `accepted/`, `actors.json` (actor id -> index stored per frame) and
    `progress.json` (online episodes already decided); fps: dataset fps (the 10 Hz policy step);
    acceptance: the Hi-ORS rules (`AcceptanceConfig`); window_frames: frames per source kept for sampling
    (newest first; the memory is logged at start and in `window_nbytes`); image_size: (H, W) the windows
    store images at (the model's, 224x224 for PI0); horizon / target_dims: relabelled target rows and state
    dims (all by default); use_videos / vcodec: cameras as AV1 (or H.264) video, or PNG images (lossless);
    window_dir: where the window memmaps live (default root/window; their files are unlinked once mapped);
    spill_open / fsync_open: transitions of open episodes are appended (fsync'ed) to `root/open/` before
    `insert` returns, so nothing `insert` accepted is lost in a crash: the next start reopens those
    episodes, and commits the ones that had ended; finalize_every: an ended episode is saved at once (atomic
    and durable: the LeRobot writer's journal), and the saved episodes are published into the dataset
    directories every `finalize_every` episodes (default 1: each episode is in the dataset directory when its
    last `insert` returns) and at `flush()` / `close()`. A publish re-reads the dataset's episode metadata, so
    its time grows with the dataset (about 1 s per dataset at 120 episodes here); with finalize_every=10 it
    is paid once per 10 episodes (call `close()` at the end; a crash before is rolled forward at start).

    The sending actor's episode ids must increase; a new id while its previous episode is open commits that
    one as truncated (the actor restarted). A transition identical to one its open episode already holds is a
    resend and is dropped (counted in `resent_duplicates`): after a learner restart the transport marks come
    from the last checkpoint, older than the spill files, and the actor sends again what came after them (a
    resend of a committed episode is refused by the episode-id rule). Thread-safe: `insert` may run on the
    transport's thread while the learner samples. `insert` raises TransitionError (a ValueError) for a bad
    transition and leaves everything stored and buffered as it was; the stored datasets are only ever appended to.
    """

    def __init__(
        self,
        root: str | pathlib.Path,
        *,
        fps: int = 10,
        acceptance: AcceptanceConfig | None = None,
        window_frames: int = 20_000,
        image_size: tuple[int, int] = (224, 224),
        horizon: int = 50,
        target_dims: Sequence[int] | None = None,
        use_videos: bool = True,
        vcodec: str = "libsvtav1",
        window_dir: str | pathlib.Path | None = None,
        image_stats_frames: int = 32,
        spill_open: bool = True,
        fsync_open: bool = True,
        finalize_every: int = 1,
    ):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.online_root, self.accepted_root = self.root / "online", self.root / "accepted"
        self.fps, self.use_videos, self.vcodec = int(fps), use_videos, vcodec
        # frames per episode sampled for the datasets' image stats (lerobot estimates them from a sample too;
        # PI0 does not use image stats, and quantiles over many frames dominated the commit time)
        self.image_stats_frames = int(image_stats_frames)
        self.spill_open, self.fsync_open = spill_open, fsync_open
        if finalize_every < 1:
            raise ValueError(f"replay.finalize_every must be >= 1, got {finalize_every}")
        self.finalize_every = int(finalize_every)
        self._writers: dict[pathlib.Path, LeRobotDatasetWriter] = {}
        self._unpublished: dict[pathlib.Path, int] = {}
        self.acceptance = acceptance or AcceptanceConfig()
        self.window_frames, self.image_size, self.horizon = int(window_frames), tuple(image_size), int(horizon)
        self.target_dims = None if target_dims is None else tuple(int(d) for d in target_dims)
        self.window_dir = pathlib.Path(window_dir) if window_dir is not None else self.root / "window"
        self.counters = AcceptanceCounters()
        self.abandoned_episodes = 0
        self.resent_duplicates = 0
        self._lock = threading.RLock()
        self._open: dict[str, _OpenEpisode] = {}
        self._last_episode: dict[str, int] = {}
        self._actors: dict[str, int] = {}
        self.spec: TransitionSpec | None = None
        self.windows: dict[str, FrameWindow] = {}
        self.recovery_log: list[str] = []
        for dataset in (self.online_root, self.accepted_root):
            done = recover_dataset(dataset)
            if done:
                self.recovery_log.append(f"{dataset.name}: {done}")
                log.warning("replay %s: %s", dataset, done)
        actors_file = self.root / "actors.json"
        if actors_file.is_file():
            self._actors = json.loads(actors_file.read_text())
        if self.online_root.exists():
            self.spec = spec_from_features(load_meta(self.online_root).features)
            self._make_windows()
            self._resume()
        self._restore_spills()

    # ---------------------------------------------------------------- public
    def __len__(self) -> int:
        return self.online_frames

    @property
    def online_frames(self) -> int:
        writer = self._writers.get(self.online_root)
        return writer.total_frames if writer is not None else max(_total_frames(self.online_root), 0)

    def window(self, source: str) -> FrameWindow:
        if source not in ("online", "accepted"):
            raise ValueError(f"unknown replay source {source!r}; the store has 'online' and 'accepted'")
        if source not in self.windows:
            raise ValueError(f"replay source {source!r} has no data yet (no transition received)")
        return self.windows[source]

    def insert(self, transition: Mapping[str, Any]) -> None:
        """Validate and buffer one transition; the transition that ends an episode commits the episode."""
        with self._lock:
            t = validate_transition(transition, self.spec)
            if self.spec is None:
                self.spec = TransitionSpec.from_transition(t)
                self._make_windows()
            actor, episode_id = t["actor_id"], t["episode_id"]
            last = self._last_episode.get(actor, -1)
            if episode_id <= last:
                raise TransitionError(
                    f"field 'episode_id': actor {actor!r} sent episode {episode_id}, but its episode {last} is "
                    "already committed (episode ids must increase per actor)"
                )
            current = self._open.get(actor)
            if current is not None and episode_id < current.episode_id:
                raise TransitionError(
                    f"field 'episode_id': actor {actor!r} sent episode {episode_id} while episode "
                    f"{current.episode_id} is open (episode ids must increase per actor)"
                )
            fingerprint = _fingerprint(t)
            if current is not None and episode_id == current.episode_id and fingerprint in current.fingerprints:
                # Already held (spilled before a learner crash whose checkpoint had older marks): exactly once.
                self.resent_duplicates += 1
                log.warning("actor %s episode %d: dropped a resent transition already held", actor, episode_id)
                return
            if current is not None and episode_id > current.episode_id:
                # The actor started a new episode without ending the last (it restarted): keep what it sent.
                log.warning("actor %s: episode %d never ended; committing it as truncated", actor, current.episode_id)
                current.transitions[-1]["truncated"] = True
                self.abandoned_episodes += 1
                self._commit(actor)
                current = None
            self._spill(actor, t, new_episode=current is None)
            if current is None:
                current = self._open[actor] = _OpenEpisode(episode_id, [])
            current.transitions.append(t)
            current.fingerprints.add(fingerprint)
            if t["done"] or t["truncated"]:
                self._commit(actor)

    def batch_insert(self, items: Iterable[Mapping[str, Any]]) -> None:
        for item in items:
            self.insert(item)

    @property
    def open_transitions(self) -> int:
        """Transitions of episodes not ended yet (on disk in the spill files, not yet in the datasets)."""
        return sum(len(e.transitions) for e in self._open.values())

    @property
    def unpersisted_transitions(self) -> int:
        """Transitions `insert` accepted that a crash now would lose (0 unless spill_open=False)."""
        return 0 if self.spill_open else self.open_transitions

    # ---------------------------------------------------------------- open-episode spill
    def _spill_path(self, actor: str) -> pathlib.Path:
        return self.root / "open" / f"{self._actor_index(actor)}.spill"

    def _spill(self, actor: str, t: dict[str, Any], new_episode: bool) -> None:
        """Append one accepted transition of an open episode to the actor's spill file (length-prefixed
        pickles; a new episode starts the file over), so an acknowledged transition survives a crash."""
        if not self.spill_open:
            return
        path = self._spill_path(actor)
        path.parent.mkdir(exist_ok=True)
        payload = pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL)
        with open(path, "wb" if new_episode else "ab") as f:
            f.write(len(payload).to_bytes(8, "little") + payload)
            f.flush()
            if self.fsync_open:
                os.fsync(f.fileno())

    def _restore_spills(self) -> None:
        """After a restart: reopen the episodes that were open, and commit those whose last transition had
        arrived (a crash inside their commit); spills of episodes already committed are dropped."""
        spill_dir = self.root / "open"
        names = {v: k for k, v in self._actors.items()}
        for path in sorted(spill_dir.glob("*.spill")) if spill_dir.is_dir() else []:
            actor = names.get(int(path.stem))
            records = _read_spill(path)
            if actor is None or not records:
                path.unlink()
                continue
            fresh = [t for t in records if t["episode_id"] > self._last_episode.get(actor, -1)]
            if not fresh:
                path.unlink()
                continue
            if self.spec is None:
                self.spec = TransitionSpec.from_transition(fresh[0])
                self._make_windows()
            self._open[actor] = _OpenEpisode(fresh[0]["episode_id"], fresh, {_fingerprint(t) for t in fresh})
            self.recovery_log.append(f"open episode {fresh[0]['episode_id']} of {actor}: {len(fresh)} transitions")
            if fresh[-1]["done"] or fresh[-1]["truncated"]:
                self._commit(actor)

    def stats(self) -> dict[str, Any]:
        out = {f"acceptance/{k}": v for k, v in self.counters.as_dict().items()}
        out["replay/online_frames"] = self.online_frames
        out["replay/open_transitions"] = self.open_transitions
        out["replay/abandoned_episodes"] = self.abandoned_episodes
        out["replay/resent_duplicates"] = self.resent_duplicates
        for name, window in self.windows.items():
            out[f"replay/window_{name}_frames"] = len(window)
        return out

    # ---------------------------------------------------------------- commit
    def _actor_index(self, actor: str) -> int:
        if actor not in self._actors:
            self._actors[actor] = len(self._actors)
            tmp = self.root / "actors.json.tmp"
            tmp.write_text(json.dumps(self._actors))
            os.replace(tmp, self.root / "actors.json")
        return self._actors[actor]

    def _commit(self, actor: str) -> None:
        episode = self._open.pop(actor)
        ts = episode.transitions
        cols = _stack_transitions(ts)
        label = next((t["label"] for t in reversed(ts) if t["label"] is not None), None)
        online_episode = self._episodes(self.online_root)
        actor_index = self._actor_index(actor)
        cols["actor_index"] = np.full(len(ts), actor_index, np.int64)
        frames = [_online_frame(t, actor_index, label) for t in ts]
        self._write(self.online_root, online_features(self.spec, self.use_videos), frames, [t["prompt"] for t in ts])
        self._last_episode[actor] = episode.episode_id
        self._after_online_commit(cols, [t["prompt"] for t in ts], label, online_episode)
        if self.spill_open:
            self._spill_path(actor).unlink(missing_ok=True)

    def _after_online_commit(self, cols: dict[str, Any], prompts: list[str], label, online_episode: int) -> None:
        """Acceptance, `accepted/` write and window updates for an episode already in `online/`."""
        decision = self._decide(cols, label)
        self.counters.add(decision)
        if decision.accepted:
            self._write_accepted(cols, prompts, decision, online_episode)
        self._write_progress(online_episode + 1)
        self._append_online_window(cols, prompts, decision)

    def _append_online_window(self, cols: dict[str, Any], prompts: list[str], decision: EpisodeDecision) -> None:
        """Every transition, targets relabelled over the whole episode, weight = the episode's (0 if rejected)."""
        targets, pad = self._targets(cols, np.ones(len(prompts), bool))
        self.windows["online"].append_episode(
            self._window_images(cols),
            state=cols["state"],
            actions=targets,
            action_is_pad=pad,
            reward=cols["reward"],
            done=cols["done"],
            truncated=cols["truncated"],
            weight=np.full(len(prompts), decision.weight, np.float32),
            prompts=prompts,
        )

    def _window_images(self, cols: dict[str, Any]) -> dict[str, np.ndarray]:
        """The episode's images resized-with-pad to the windows' size, once for both windows."""
        if "window_images" not in cols:
            cols["window_images"] = {c: resize_with_pad(v, *self.image_size) for c, v in cols["images"].items()}
        return cols["window_images"]

    def _decide(self, cols: dict[str, Any], label) -> EpisodeDecision:
        return decide(
            self.acceptance,
            rewards=cols["reward"],
            label=label,
            state_chunks=cols["state_chunk"],
            row_mask=cols["state_chunk_mask"],
            teleop=cols["state_chunk_teleop"],
            iteration=int(cols["policy_version"].max()),
        )

    def _targets(self, cols: dict[str, Any], keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Targets of the kept transitions, relabelled over the kept transitions' recorded states."""
        return relabel_from_states(
            cols["state_chunk"][keep],
            cols["state_chunk_mask"][keep],
            np.zeros(int(keep.sum()), np.int64),
            self.horizon,
            dims=self.target_dims,
            fallback=cols["state"][keep],
        )

    def _write_accepted(self, cols, prompts, decision: EpisodeDecision, online_episode: int) -> None:
        keep = decision.keep
        targets, is_pad = self._targets(cols, keep)
        idx = np.flatnonzero(keep)
        frames = []
        for j, i in enumerate(idx):
            frame = {f"observation.images.{c}": cols["images"][c][i] for c in self.spec.camera_shapes}
            frame.update(
                {
                    "observation.state": cols["state"][i],
                    "action": targets[j],
                    "action_is_pad": is_pad[j],
                    "next.reward": np.float32(cols["reward"][i]),
                    "next.done": bool(cols["done"][i]),
                    "next.truncated": bool(cols["truncated"][i]),
                    _CI + "weight": np.float32(decision.weight),
                    _CI + "online_episode": int(online_episode),
                    _CI + "episode_id": int(cols["episode_id"][i]),
                    _CI + "actor_index": int(cols["actor_index"][i]),
                    _CI + "policy_version": int(cols["policy_version"][i]),
                }
            )
            frames.append(frame)
        features = accepted_features(self.spec, self.horizon, targets.shape[-1], self.use_videos)
        self._write(self.accepted_root, features, frames, [prompts[i] for i in idx])
        self.windows["accepted"].append_episode(
            {c: v[idx] for c, v in self._window_images(cols).items()},
            state=cols["state"][idx],
            actions=targets,
            action_is_pad=is_pad,
            reward=cols["reward"][idx],
            done=cols["done"][idx],
            truncated=cols["truncated"][idx],
            weight=np.full(len(idx), decision.weight, np.float32),
            prompts=[prompts[i] for i in idx],
        )

    def _write(self, root: pathlib.Path, features: dict, frames: list[dict], prompts: list[str]) -> None:
        """Save one episode to `root` through the store's open writer for it: durable and atomic once
        `save_episode` returns (its fsync'ed journal line; a crash later is rolled forward at the next start).
        The writer publishes its saved episodes into `root` every `finalize_every` episodes and at `flush()`."""
        writer = self._writers.get(root)
        if writer is None:
            writer = self._writers[root] = LeRobotDatasetWriter(
                root,
                self.fps,
                features,
                use_videos=self.use_videos,
                vcodec=self.vcodec,
                append=root.exists(),
                image_stats_frames=self.image_stats_frames,
            )
            self._unpublished[root] = 0
        try:
            for frame, prompt in zip(frames, prompts, strict=True):
                writer.add_frame(frame, task=prompt)
            writer.save_episode()
        except BaseException:
            writer.clear_episode_buffer()  # only this episode's frames: the saved ones stay
            raise
        self._unpublished[root] += 1
        if self._unpublished[root] >= self.finalize_every:
            self._publish(root)

    def _publish(self, root: pathlib.Path) -> None:
        writer = self._writers.pop(root, None)
        if writer is not None:
            writer.finalize()
        self._unpublished[root] = 0

    def _episodes(self, root: pathlib.Path) -> int:
        """Episodes saved to `root`, published or not."""
        writer = self._writers.get(root)
        return writer.total_episodes if writer is not None else max(_total_episodes(root), 0)

    def flush(self) -> None:
        """Publish every saved episode into `online/` and `accepted/` (readable by lerobot tools)."""
        with self._lock:
            for root in list(self._writers):
                self._publish(root)

    def close(self) -> None:
        """Publish what was saved and release the datasets (open episodes stay in their spill files)."""
        self.flush()

    def __enter__(self) -> ReplayStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- start-up
    def _make_windows(self) -> None:
        cams = [c for c, _ in self.spec.cameras]
        target_dim = len(self.target_dims) if self.target_dims is not None else self.spec.state_dim
        for name in ("online", "accepted"):
            self.windows[name] = FrameWindow(
                self.window_dir / name,
                self.window_frames,
                cams,
                self.image_size,
                self.spec.state_dim,
                self.horizon,
                target_dim,
            )
        total = sum(w.nbytes for w in self.windows.values())
        log.info(
            "replay windows: %d frames per source at %s, %.2f GiB (images in memmaps under %s)",
            self.window_frames,
            self.image_size,
            total / 2**30,
            self.window_dir,
        )
        self.window_nbytes = total

    def _resume(self) -> None:
        """After a restart: per-actor episode ids, `accepted/` catch-up, windows refilled from disk."""
        actor_names = {v: k for k, v in self._actors.items()}
        online = _read_scalar_columns(self.online_root, [_CI + "actor_index", _CI + "episode_id"])
        for a, e in zip(online[_CI + "actor_index"].tolist(), online[_CI + "episode_id"].tolist(), strict=True):
            name = actor_names.get(a, f"#{a}")
            self._last_episode[name] = max(self._last_episode.get(name, -1), e)
        n_online = max(_total_episodes(self.online_root), 0)
        decided = self._read_progress()
        if self.accepted_root.exists():
            self._refill_accepted_window()
            acc = _read_scalar_columns(self.accepted_root, [_CI + "online_episode"])[_CI + "online_episode"]
            decided = max(decided, int(acc.max()) + 1 if len(acc) else 0)
        # Episodes of online/ that were never decided (a crash between the online/ and accepted/ commits) are
        # decided now (deterministic) and the accepted ones written; the newest episodes refill the window.
        start = self._window_start_episode(n_online)
        first = min(start, decided)
        dataset = LeRobotDataset(self.online_root, episodes=list(range(first, n_online))) if first < n_online else None
        for episode in range(first, n_online):
            cols, prompts, label = self._load_online_episode(dataset, episode)
            decision = self._decide(cols, label)
            if episode >= decided:
                self.counters.add(decision)
                if decision.accepted:
                    self._write_accepted(cols, prompts, decision, episode)
                    self.recovery_log.append(f"accepted: derived online episode {episode} after a restart")
            if episode >= start:
                self._append_online_window(cols, prompts, decision)
        if dataset is not None:
            dataset.close()
        self._write_progress(n_online)

    def _read_progress(self) -> int:
        try:
            return int(json.loads((self.root / "progress.json").read_text())["decided_online_episodes"])
        except (OSError, ValueError, KeyError):
            return 0

    def _write_progress(self, decided: int) -> None:
        tmp = self.root / "progress.json.tmp"
        tmp.write_text(json.dumps({"decided_online_episodes": int(decided)}))
        os.replace(tmp, self.root / "progress.json")

    def _window_start_episode(self, n_online: int) -> int:
        """First online episode that still has frames inside the window."""
        if n_online == 0:
            return 0
        lengths = load_meta(self.online_root).episodes.length
        covered = np.cumsum(lengths[::-1])
        return max(int(n_online - 1 - np.searchsorted(covered, self.window_frames)), 0)

    def _load_online_episode(self, ds: LeRobotDataset, episode: int) -> tuple[dict[str, Any], list[str], Any]:
        start, stop = ds.episode_bounds(int(np.searchsorted(ds.meta.episodes.episode_index, episode)))
        b = ds.get_batch(np.arange(start, stop))
        cols = _columns_from_online_batch(b, self.spec)
        codes = b[_CI + "label"].reshape(-1)
        label = LABEL_NAMES.get(int(codes[codes >= 0][-1])) if np.any(codes >= 0) else None
        return cols, list(b["task"]), label

    def _refill_accepted_window(self) -> None:
        meta = load_meta(self.accepted_root)
        lengths = meta.episodes.length
        covered = np.cumsum(lengths[::-1])
        first = int(len(lengths) - 1 - np.searchsorted(covered, self.window_frames))
        ds = LeRobotDataset(self.accepted_root, episodes=list(range(max(first, 0), len(lengths))))
        try:
            for pos in ds.episode_positions.tolist():
                start, stop = ds.episode_bounds(pos)
                b = ds.get_batch(np.arange(start, stop))
                n = stop - start
                self.windows["accepted"].append_episode(
                    {c: b[f"observation.images.{c}"] for c in self.spec.camera_shapes},
                    state=b["observation.state"],
                    actions=b["action"],
                    action_is_pad=b["action_is_pad"],
                    reward=b["next.reward"].reshape(n).astype(np.float32),
                    done=b["next.done"].reshape(n).astype(bool),
                    truncated=b["next.truncated"].reshape(n).astype(bool),
                    weight=b[_CI + "weight"].reshape(n).astype(np.float32),
                    prompts=list(b["task"]),
                )
        finally:
            ds.close()


def _read_spill(path: pathlib.Path) -> list[dict[str, Any]]:
    """The complete records of a spill file (a torn last record, from a crash inside `insert`, is dropped)."""
    data, records, pos = path.read_bytes(), [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 8], "little")
        if pos + 8 + size > len(data):
            break
        records.append(pickle.loads(data[pos + 8 : pos + 8 + size]))
        pos += 8 + size
    return records


def _total_frames(root: pathlib.Path) -> int:
    try:
        return int(json.loads((root / "meta" / "info.json").read_text())["total_frames"])
    except (OSError, ValueError, KeyError):
        return -1


def _stack_transitions(ts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    cols: dict[str, Any] = {"images": {c: np.stack([t["images"][c] for t in ts]) for c in ts[0]["images"]}}
    for key in ("state", "action", "state_chunk", "state_chunk_mask", "state_chunk_teleop", "state_chunk_timestamp"):
        cols[key] = np.stack([t[key] for t in ts])
    cols["reward"] = np.array([t["reward"] for t in ts], np.float32)
    cols["done"] = np.array([t["done"] for t in ts], bool)
    cols["truncated"] = np.array([t["truncated"] for t in ts], bool)
    cols["episode_id"] = np.array([t["episode_id"] for t in ts], np.int64)
    cols["policy_version"] = np.array([t["policy_version"] for t in ts], np.int64)
    return cols


def _online_frame(t: Mapping[str, Any], actor_index: int, label) -> dict[str, Any]:
    frame = {f"observation.images.{c}": img for c, img in t["images"].items()}
    frame.update(
        {
            "observation.state": t["state"],
            "action": t["action"],
            "next.reward": np.float32(t["reward"]),
            "next.done": t["done"],
            "next.truncated": t["truncated"],
            _CI + "state_chunk": t["state_chunk"],
            _CI + "state_chunk_mask": t["state_chunk_mask"],
            _CI + "state_chunk_teleop": t["state_chunk_teleop"],
            _CI + "state_chunk_timestamp": t["state_chunk_timestamp"],
            _CI + "episode_id": t["episode_id"],
            _CI + "actor_index": actor_index,
            _CI + "policy_version": t["policy_version"],
            _CI + "label": LABEL_CODES[t["label"]],
        }
    )
    return frame


def _columns_from_online_batch(b: Mapping[str, Any], spec: TransitionSpec) -> dict[str, Any]:
    n = len(b["task"])
    return {
        "images": {c: b[f"observation.images.{c}"] for c in spec.camera_shapes},
        "state": b["observation.state"].astype(np.float32),
        "action": b["action"].astype(np.float32),
        "state_chunk": b[_CI + "state_chunk"].astype(np.float32),
        "state_chunk_mask": b[_CI + "state_chunk_mask"].astype(bool),
        "state_chunk_teleop": b[_CI + "state_chunk_teleop"].astype(bool),
        "state_chunk_timestamp": b[_CI + "state_chunk_timestamp"].astype(np.float64),
        "reward": b["next.reward"].reshape(n).astype(np.float32),
        "done": b["next.done"].reshape(n).astype(bool),
        "truncated": b["next.truncated"].reshape(n).astype(bool),
        "episode_id": b[_CI + "episode_id"].reshape(n).astype(np.int64),
        "policy_version": b[_CI + "policy_version"].reshape(n).astype(np.int64),
        "actor_index": b[_CI + "actor_index"].reshape(n).astype(np.int64),
    }
