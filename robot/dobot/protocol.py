"""Robot <-> env messages: validation of observations from the robot PC and of action chunks from the policy.

Wire schema (msgpack-numpy, see msgpack_numpy.py), robot -> env:
    images: {cam_high, cam_left_wrist, cam_right_wrist: uint8 HWC or CHW}, state: (14,), prompt: str,
    server_teleoperation_flag: str | None,
    state_chunk: [{state: (14,), server_teleoperation_flag: str | None, state_timestamp: float}, ...],
    optional episode_label: "success" | "failure" | None and episode_label_reason: str (a robot-side labeller).
env -> robot: {"actions": float32 (50, 14)} plus optional "reset": True, "seed": int | None (start a new
episode) or "refused": str (the chunk was refused; the robot holds its pose).

Refusals are ProtocolErrors whose text names the field (`state_chunk[3].state`, `images.cam_high`) and what
was wrong with it; received values appear in them only in bounded form (`describe`). Images must be uint8 with
3 channels and sides within MAX_IMAGE_RESCALE of the configured size; every array handed out is a fresh,
writable, native-order copy, whatever byte order or layout arrived.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import reprlib

import numpy as np
from PIL import Image

from robot.dobot import msgpack_numpy, teleop

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

    def image_side_range(self, axis: int) -> tuple[int, int]:
        """Sides an incoming image may have before it is resized: within MAX_IMAGE_RESCALE of the configured one."""
        side = self.image_size[axis]
        return max(1, math.ceil(side / MAX_IMAGE_RESCALE)), side * MAX_IMAGE_RESCALE

    def nominal_frame_bytes(self) -> int:
        """The msgpack size of an observation at the configured size with a full state_chunk (plus the prompt)."""
        h, w = self.image_size
        return len(CAMERA_KEYS) * (h * w * 3 + 64) + (self.max_state_chunk_len + 1) * _RECORD_BYTES + 4096


MAX_IMAGE_RESCALE = 8  # images further than 8x from the configured size (either way) are refused, not resized
_RECORD_BYTES = 200  # one state_chunk record in msgpack-numpy (56 bytes of state plus keys and the flag string)


def describe(value) -> str:
    """A short description of a received value for error messages (bounded, whatever the robot sent)."""
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype.str} {value.shape}"
    return f"{type(value).__name__} {reprlib.repr(value)}"


def _state_vector(value, where: str) -> np.ndarray:
    if not isinstance(value, np.ndarray | list | tuple):
        raise ProtocolError(f"{where} must be a numeric array of shape ({STATE_DIM},), got {describe(value)}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):  # ragged lists
        raise ProtocolError(f"{where} must be a numeric array of shape ({STATE_DIM},), got {describe(value)}") from None
    if arr.dtype.kind not in "fiu" or arr.shape != (STATE_DIM,):
        raise ProtocolError(f"{where} must be a numeric array of shape ({STATE_DIM},), got {arr.dtype} {arr.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are refused just below
        arr = arr.astype(np.float32)  # a native-order copy, whatever the sender's byte order
    if not np.all(np.isfinite(arr)):
        raise ProtocolError(f"{where} contains NaN or inf: {arr}")
    return arr


def _image(value, key: str, spec: ObservationSpec) -> np.ndarray:
    """uint8 HWC or CHW with 3 channels -> a fresh, writable, C-contiguous uint8 (H, W, 3) at the configured size."""
    where = f"images.{key}"
    if not isinstance(value, np.ndarray):
        raise ProtocolError(f"{where} must be a uint8 array (HWC or CHW), got {describe(value)}")
    arr = value
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise ProtocolError(f"{where} must be a uint8 array with 3 dims (HWC or CHW), got {arr.dtype} {arr.shape}")
    if arr.shape[-1] != 3 and arr.shape[0] == 3:
        arr = np.transpose(arr, (1, 2, 0))
    if arr.shape[-1] != 3:
        raise ProtocolError(f"{where} must have 3 colour channels (HWC or CHW), got shape {value.shape}")
    for axis, name in ((0, "height"), (1, "width")):
        low, high = spec.image_side_range(axis)
        if not low <= arr.shape[axis] <= high:
            raise ProtocolError(
                f"{where} has {name} {arr.shape[axis]} (shape {value.shape}); the env takes {low}..{high} "
                f"(within {MAX_IMAGE_RESCALE}x of the configured {spec.image_size[axis]}) and resizes it"
            )
    h, w = spec.image_size
    if arr.shape[:2] != (h, w):
        return np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((w, h), Image.BILINEAR)).copy()
    # One rule for every layout: the observation owns its images (a copy, writable), never a view on the frame.
    return np.array(arr, dtype=np.uint8, order="C", copy=True)


def _flag(value, where: str) -> bool:
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"{where} must be a str or None, got {describe(value)}")
    try:
        return teleop.is_teleop(value)
    except ValueError as err:
        raise ProtocolError(f"{where}: {err}") from None


def _timestamp(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ProtocolError(f"{where} must be a number, got {describe(value)}")
    stamp = float(value)
    if not np.isfinite(stamp):
        raise ProtocolError(f"{where} must be finite, got {stamp}")
    return stamp


def parse_observation(msg, spec: ObservationSpec) -> tuple[dict, dict]:
    """Decoded message -> (observation, extras). Raises ProtocolError naming the offending field.

    Every array in the observation is a fresh native-order copy the caller may write to; nothing refers to
    the received frame."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"observation must be a map, got {describe(msg)}")
    for key in ("images", "state", "prompt"):
        if key not in msg:
            raise ProtocolError(f"observation is missing {key!r} (keys: {reprlib.repr(sorted(map(str, msg)))})")
    images = msg["images"]
    if not isinstance(images, dict) or any(k not in images for k in CAMERA_KEYS):
        got = reprlib.repr(sorted(map(str, images))) if isinstance(images, dict) else describe(images)
        raise ProtocolError(f"images must map {list(CAMERA_KEYS)} to uint8 arrays, got {got}")
    if not isinstance(msg["prompt"], str):
        raise ProtocolError(f"prompt must be a str, got {describe(msg['prompt'])}")
    n = spec.max_state_chunk_len
    chunk = msg.get("state_chunk")
    if chunk is None:
        chunk = []
    if not isinstance(chunk, list):
        raise ProtocolError(f"state_chunk must be a list of records, got {describe(chunk)}")
    dropped = max(0, len(chunk) - n)
    if dropped:
        # Keep the newest records; the count travels in info so nothing disappears unnoticed.
        log.warning("state_chunk has %d records, keeping the newest %d", len(chunk), n)
        chunk = chunk[-n:]
    states = np.zeros((n, STATE_DIM), np.float32)
    flags = np.zeros(n, bool)
    stamps = np.zeros(n, np.float64)
    for i, rec in enumerate(chunk):
        where = f"state_chunk[{i + dropped}]"
        if not isinstance(rec, dict) or "state" not in rec or "state_timestamp" not in rec:
            raise ProtocolError(
                f"{where} must be a map with state, server_teleoperation_flag, state_timestamp; got {describe(rec)}"
            )
        states[i] = _state_vector(rec["state"], f"{where}.state")
        flags[i] = _flag(rec.get("server_teleoperation_flag"), f"{where}.server_teleoperation_flag")
        stamps[i] = _timestamp(rec["state_timestamp"], f"{where}.state_timestamp")
    mask = np.zeros(n, bool)
    mask[: len(chunk)] = True
    label = msg.get("episode_label")
    if not (label is None or (isinstance(label, str) and label in LABELS)):
        raise ProtocolError(f"episode_label must be None, 'success' or 'failure', got {describe(label)}")
    reason = msg.get("episode_label_reason")
    if reason is not None and not isinstance(reason, str):
        raise ProtocolError(f"episode_label_reason must be a str or None, got {describe(reason)}")
    obs = {
        "images": {k: _image(images[k], k, spec) for k in CAMERA_KEYS},
        "state": _state_vector(msg["state"], "state"),
        "prompt": msg["prompt"],
        "teleop": _flag(msg.get("server_teleoperation_flag"), "server_teleoperation_flag"),
        "state_chunk": states,
        "state_chunk_mask": mask,
        "state_chunk_teleop": flags,
        "state_chunk_timestamp": stamps,
    }
    extras = {"episode_label": label, "episode_label_reason": reason or "", "state_chunk_dropped": dropped}
    return obs, extras


def decode_observation(frame: bytes, spec: ObservationSpec) -> tuple[dict, dict]:
    """A binary websocket frame -> (observation, extras); every failure is a ProtocolError naming the problem."""
    try:
        msg = msgpack_numpy.unpackb(frame)
    except msgpack_numpy.WireFormatError as err:
        raise ProtocolError(str(err)) from None
    return parse_observation(msg, spec)


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
