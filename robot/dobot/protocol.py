"""Robot <-> env messages: validation of observations from the robot PC and of action chunks from the policy.

Wire schema (msgpack-numpy, see msgpack_numpy.py), robot -> env:
    images: {cam_high, cam_left_wrist, cam_right_wrist: uint8 HWC or CHW}, state: (14,), prompt: str,
    server_teleoperation_flag: str | None,
    state_chunk: [{state: (14,), server_teleoperation_flag: str | None, state_timestamp: float}, ...],
    optional episode_label: "success" | "failure" | None and episode_label_reason: str (a robot-side labeller).
env -> robot: {"actions": float32 (50, 14)} plus optional "reset": True, "seed": int | None (start a new
episode) or "refused": str (the chunk was refused; the robot holds its pose).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from PIL import Image

from robot.dobot import teleop

CAMERA_KEYS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
STATE_DIM = 14
ACTION_HORIZON = 50
LABELS = ("success", "failure")

log = logging.getLogger(__name__)


class ProtocolError(ValueError):
    """A message from the robot that does not follow the schema; the text names what was wrong."""


class InvalidAction(ValueError):
    """An action chunk that must not reach the robot."""


@dataclasses.dataclass(frozen=True)
class ObservationSpec:
    image_size: tuple[int, int] = (224, 298)  # (H, W)
    max_state_chunk_len: int = 50


def _state_vector(value, where: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu" or arr.shape != (STATE_DIM,):
        raise ProtocolError(f"{where} must be a numeric array of shape ({STATE_DIM},), got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ProtocolError(f"{where} contains NaN or inf: {arr}")
    return arr


def _image(value, key: str, size: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise ProtocolError(f"images.{key} must be a uint8 array with 3 dims (HWC or CHW), got {arr.dtype} {arr.shape}")
    if arr.shape[-1] != 3 and arr.shape[0] == 3:
        arr = np.transpose(arr, (1, 2, 0))
    if arr.shape[-1] != 3:
        raise ProtocolError(f"images.{key} must have 3 colour channels, got shape {arr.shape}")
    h, w = size
    if arr.shape[:2] != (h, w):
        arr = np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((w, h), Image.BILINEAR))
    return np.ascontiguousarray(arr)


def _flag(value, where: str) -> bool:
    try:
        return teleop.is_teleop(value)
    except ValueError as err:
        raise ProtocolError(f"{where}: {err}") from None


def parse_observation(msg, spec: ObservationSpec) -> tuple[dict, dict]:
    """Decoded message -> (observation, extras). Raises ProtocolError naming the offending field."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"observation must be a map, got {type(msg).__name__}")
    for key in ("images", "state", "prompt"):
        if key not in msg:
            raise ProtocolError(f"observation is missing {key!r} (keys: {sorted(map(str, msg))})")
    images = msg["images"]
    if not isinstance(images, dict) or any(k not in images for k in CAMERA_KEYS):
        got = sorted(map(str, images)) if isinstance(images, dict) else type(images).__name__
        raise ProtocolError(f"images must map {list(CAMERA_KEYS)} to uint8 arrays, got {got}")
    if not isinstance(msg["prompt"], str):
        raise ProtocolError(f"prompt must be a str, got {type(msg['prompt']).__name__}")
    n = spec.max_state_chunk_len
    chunk = msg.get("state_chunk") or []
    if not isinstance(chunk, list):
        raise ProtocolError(f"state_chunk must be a list of records, got {type(chunk).__name__}")
    dropped = max(0, len(chunk) - n)
    if dropped:
        # Keep the newest records; the count travels in info so nothing disappears unnoticed.
        log.warning("state_chunk has %d records, keeping the newest %d", len(chunk), n)
        chunk = chunk[-n:]
    states = np.zeros((n, STATE_DIM), np.float32)
    flags = np.zeros(n, bool)
    stamps = np.zeros(n, np.float64)
    for i, rec in enumerate(chunk):
        if not isinstance(rec, dict) or "state" not in rec or "state_timestamp" not in rec:
            raise ProtocolError(
                f"state_chunk[{i}] must be a map with state, server_teleoperation_flag, state_timestamp"
            )
        states[i] = _state_vector(rec["state"], f"state_chunk[{i}].state")
        flags[i] = _flag(rec.get("server_teleoperation_flag"), f"state_chunk[{i}].server_teleoperation_flag")
        try:
            stamps[i] = float(rec["state_timestamp"])
        except (TypeError, ValueError):
            raise ProtocolError(f"state_chunk[{i}].state_timestamp must be a number") from None
    mask = np.zeros(n, bool)
    mask[: len(chunk)] = True
    label = msg.get("episode_label")
    if label not in (None, *LABELS):
        raise ProtocolError(f"episode_label must be None, 'success' or 'failure', got {label!r}")
    obs = {
        "images": {k: _image(images[k], k, spec.image_size) for k in CAMERA_KEYS},
        "state": _state_vector(msg["state"], "state"),
        "prompt": msg["prompt"],
        "teleop": _flag(msg.get("server_teleoperation_flag"), "server_teleoperation_flag"),
        "state_chunk": states,
        "state_chunk_mask": mask,
        "state_chunk_teleop": flags,
        "state_chunk_timestamp": stamps,
    }
    extras = {
        "episode_label": label,
        "episode_label_reason": str(msg.get("episode_label_reason") or ""),
        "state_chunk_dropped": dropped,
    }
    return obs, extras


def check_action_chunk(actions, horizon: int = ACTION_HORIZON, dim: int = STATE_DIM) -> np.ndarray:
    """Refuse anything but a finite numeric (horizon, dim) chunk; returns it as float32."""
    arr = np.asarray(actions)
    if arr.dtype.kind == "V" and arr.dtype.names is None:
        try:  # ml_dtypes floats (bfloat16 policy outputs) present themselves as void
            arr = arr.astype(np.float32)
        except (TypeError, ValueError):
            pass
    if arr.dtype.kind not in "fiu":
        raise InvalidAction(f"action chunk must be numeric, got dtype {arr.dtype}")
    if arr.shape != (horizon, dim):
        raise InvalidAction(f"action chunk must have shape ({horizon}, {dim}), got {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise InvalidAction(f"action chunk has {bad.sum()} NaN/inf values (first at step {rows[0]}, dim {cols[0]})")
    return arr.astype(np.float32)


def clip_to_limits(actions: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, int]:
    clipped = np.clip(actions, low, high).astype(np.float32)
    return clipped, int(np.count_nonzero(clipped != actions))
