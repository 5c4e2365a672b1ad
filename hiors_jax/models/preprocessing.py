"""Host observation -> PI0 model inputs: resize-with-pad, [-1, 1] images, norm stats, padding, prompt.

Matches openpi's inference transforms: images are resized like ``openpi_client.image_tools.resize_with_pad``
(PIL bilinear, aspect ratio kept, centred on a black canvas, the odd padding pixel at the bottom/right),
converted with ``x / 255 * 2 - 1``; state is normalised with the checkpoint's ``norm_stats.json`` (z-score for
PI0, quantiles for PI0.5) and zero-padded to the model's ``action_dim``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from hiors_jax.models.tokenizer import PaligemmaTokenizer

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
IMAGE_RESOLUTION = (224, 224)
NORM_EPS = 1e-6  # openpi adds it to std and to (q99 - q01)


# --------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------


def _check_image_batch(images: np.ndarray, name: str = "image") -> None:
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(images).__name__}")
    if images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(f"{name} must be HWC (or batched ...HWC) with 3 channels, got shape {images.shape}")
    if images.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 (0..255), got {images.dtype}")
    if images.shape[-3] == 0 or images.shape[-2] == 0:
        raise ValueError(f"{name} is empty: shape {images.shape}")


def resized_size(cur_height: int, cur_width: int, height: int, width: int) -> tuple[int, int]:
    """Content size inside the padded canvas, computed exactly as openpi does (float ratio, then int())."""
    if height <= 0 or width <= 0:
        raise ValueError(f"target size must be positive, got {height}x{width}")
    ratio = max(cur_width / width, cur_height / height)
    new_h, new_w = int(cur_height / ratio), int(cur_width / ratio)
    if new_h == 0 or new_w == 0:
        raise ValueError(f"a {cur_height}x{cur_width} image would shrink to {new_h}x{new_w} inside {height}x{width}")
    return new_h, new_w


def resize_with_pad(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 ``(..., H, W, 3)`` -> ``(..., height, width, 3)``: PIL bilinear, aspect kept, centred on black.

    Same pixels as ``openpi_client.image_tools.resize_with_pad``: content ``int(h/ratio) x int(w/ratio)`` with
    ``ratio = max(w/width, h/height)``, pasted at ``(int((height-h')/2), int((width-w')/2))``.
    Images already at the target size are returned unchanged.
    """
    from PIL import Image

    _check_image_batch(images)
    if images.shape[-3:-1] == (height, width):
        return images
    flat = images.reshape(-1, *images.shape[-3:])
    out = np.zeros((flat.shape[0], height, width, 3), dtype=np.uint8)
    new_h, new_w = resized_size(flat.shape[1], flat.shape[2], height, width)
    top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
    for i, image in enumerate(flat):
        resized = Image.fromarray(image).resize((new_w, new_h), resample=Image.BILINEAR)
        out[i, top : top + new_h, left : left + new_w] = np.asarray(resized)
    return out.reshape(*images.shape[:-3], height, width, 3)


def resize_with_pad_jax(images: Any, height: int, width: int) -> Any:
    """JAX variant (openpi's in-model fallback): ``jax.image.resize`` linear with antialiasing.

    uint8 input is rounded and clipped, float input (in [-1, 1]) is clipped; padding is 0 for uint8 and -1
    for float (both black), split ``divmod(diff, 2)`` with the extra pixel at the bottom/right. Not bitwise
    equal to the PIL path (different resampling kernels); use it for float images on device.
    """
    import jax
    import jax.numpy as jnp

    images = jnp.asarray(images)
    if images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"images must be HWC or BHWC with 3 channels, got shape {images.shape}")
    if images.dtype not in (jnp.uint8, jnp.float32):
        raise TypeError(f"images must be uint8 or float32, got {images.dtype}")
    batched = images.ndim == 4
    if not batched:
        images = images[None]
    if images.shape[1:3] == (height, width):
        return images if batched else images[0]
    new_h, new_w = resized_size(images.shape[1], images.shape[2], height, width)
    resized = jax.image.resize(
        images.astype(jnp.float32), (images.shape[0], new_h, new_w, 3), method="linear", antialias=True
    )
    if images.dtype == jnp.uint8:
        resized, pad_value = jnp.round(resized).clip(0, 255).astype(jnp.uint8), 0
    else:
        resized, pad_value = resized.clip(-1.0, 1.0), -1.0
    top, extra_h = divmod(height - new_h, 2)
    left, extra_w = divmod(width - new_w, 2)
    padded = jnp.pad(resized, ((0, 0), (top, top + extra_h), (left, left + extra_w), (0, 0)), constant_values=pad_value)
    return padded if batched else padded[0]


def image_to_model(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1] as ``x / 255 * 2 - 1`` (openpi's Observation.from_dict, same op order)."""
    _check_image_batch(images)
    return images.astype(np.float32) / np.float32(255.0) * np.float32(2.0) - np.float32(1.0)


# --------------------------------------------------------------------------------------------------------
# Norm stats
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Per-dimension statistics of one array (robot-native dims, not padded), as in openpi."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray | None = None
    q99: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name in ("mean", "std", "q01", "q99"):
            value = getattr(self, name)
            if value is None:
                if name in ("mean", "std"):
                    raise ValueError(f"norm stats need '{name}'")
                continue
            arr = np.asarray(value, dtype=np.float64)
            if arr.ndim != 1 or not np.all(np.isfinite(arr)):
                raise ValueError(f"norm stats '{name}' must be a 1-D list of finite numbers, got {value!r}")
            object.__setattr__(self, name, arr)
        if (self.q01 is None) != (self.q99 is None):
            raise ValueError("norm stats need both 'q01' and 'q99' or neither")
        lengths = {
            name: len(getattr(self, name)) for name in ("mean", "std", "q01", "q99") if getattr(self, name) is not None
        }
        if len(set(lengths.values())) != 1:
            raise ValueError(f"norm stats fields differ in length: {lengths}")

    @property
    def dim(self) -> int:
        return len(self.mean)

    def to_json_dict(self) -> dict[str, list[float] | None]:
        return {
            name: None if getattr(self, name) is None else [float(v) for v in getattr(self, name)]
            for name in ("mean", "std", "q01", "q99")
        }


def _norm_stats_file(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path).expanduser()
    # openpi stores assets/<asset_id>/norm_stats.json and its loader takes the directory.
    return path / "norm_stats.json" if path.is_dir() else path


def load_norm_stats(path: str | os.PathLike) -> dict[str, NormStats]:
    """Read openpi's ``norm_stats.json`` (the file, or the asset directory holding it)."""
    file = _norm_stats_file(path)
    if not file.is_file():
        raise FileNotFoundError(f"norm stats file {file} not found")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("norm_stats"), dict):
        raise ValueError(f"{file}: expected {{'norm_stats': {{name: {{mean, std, q01, q99}}}}}}")
    stats = {}
    for name, fields in data["norm_stats"].items():
        if not isinstance(fields, dict):
            raise ValueError(f"{file}: norm_stats['{name}'] must be an object, got {type(fields).__name__}")
        unknown = set(fields) - {"mean", "std", "q01", "q99"}
        if unknown:
            raise ValueError(f"{file}: norm_stats['{name}'] has unknown fields {sorted(unknown)}")
        try:
            stats[name] = NormStats(**fields)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{file}: norm_stats['{name}']: {err}") from err
    return stats


def save_norm_stats(path: str | os.PathLike, stats: Mapping[str, NormStats]) -> pathlib.Path:
    """Write ``{"norm_stats": ...}`` like openpi (indent 2); a directory gets ``norm_stats.json``. Atomic."""
    path = pathlib.Path(path).expanduser()
    file = path / "norm_stats.json" if path.is_dir() or not path.suffix else path
    file.parent.mkdir(parents=True, exist_ok=True)
    payload = {"norm_stats": {name: s.to_json_dict() for name, s in stats.items()}}
    tmp = file.parent / f".{file.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, file)
    finally:
        if tmp.exists():
            tmp.unlink()
    return file


def _as_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float32)


def normalize(x: np.ndarray, stats: NormStats, use_quantiles: bool) -> np.ndarray:
    """openpi's Normalize on the first ``min(x_dim, stats_dim)`` dims; wider data passes through beyond that.

    z-score: ``(x - mean) / (std + 1e-6)``; quantiles: ``(x - q01) / (q99 - q01 + 1e-6) * 2 - 1``.
    """
    x = _as_float(x)
    d = min(x.shape[-1], stats.dim)
    head = x[..., :d].astype(np.float64)
    if use_quantiles:
        q01, q99 = _quantiles(stats)
        out = (head - q01[:d]) / (q99[:d] - q01[:d] + NORM_EPS) * 2.0 - 1.0
    else:
        out = (head - stats.mean[:d]) / (stats.std[:d] + NORM_EPS)
    return np.concatenate([out.astype(x.dtype), x[..., d:]], axis=-1)


def unnormalize(x: np.ndarray, stats: NormStats, use_quantiles: bool) -> np.ndarray:
    """Inverse of :func:`normalize` on the first ``min(x_dim, stats_dim)`` dims; padded dims pass through.

    (openpi's z-score Unnormalize pads std with 1 and so scales padded dims by 1 + 1e-6; they are discarded
    by the robot output transforms either way.)
    """
    x = _as_float(x)
    d = min(x.shape[-1], stats.dim)
    head = x[..., :d].astype(np.float64)
    if use_quantiles:
        q01, q99 = _quantiles(stats)
        out = (head + 1.0) / 2.0 * (q99[:d] - q01[:d] + NORM_EPS) + q01[:d]
    else:
        out = head * (stats.std[:d] + NORM_EPS) + stats.mean[:d]
    return np.concatenate([out.astype(x.dtype), x[..., d:]], axis=-1)


def _quantiles(stats: NormStats) -> tuple[np.ndarray, np.ndarray]:
    if stats.q01 is None or stats.q99 is None:
        raise ValueError("quantile normalisation (PI0.5) needs q01/q99 in the norm stats; they have only mean/std")
    return stats.q01, stats.q99


def pad_to_dim(x: np.ndarray, dim: int, axis: int = -1) -> np.ndarray:
    """Zero-pad ``axis`` up to ``dim``; an array already wider than ``dim`` is an error (no silent cut)."""
    x = np.asarray(x)
    size = x.shape[axis]
    if size > dim:
        raise ValueError(f"array has {size} entries along axis {axis}, more than the model's {dim}")
    if size == dim:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, dim - size)
    return np.pad(x, widths)


# --------------------------------------------------------------------------------------------------------
# Observation -> model inputs
# --------------------------------------------------------------------------------------------------------


def make_observation_inputs(
    observation: Mapping[str, Any],
    *,
    camera_map: Mapping[str, str | None],
    tokenizer: PaligemmaTokenizer,
    state_stats: NormStats | None,
    use_quantiles: bool = False,
    discrete_state: bool = False,
    action_dim: int = 32,
    image_size: tuple[int, int] = IMAGE_RESOLUTION,
) -> dict[str, Any]:
    """Build model-input arrays from one host observation or a batch of them.

    ``observation``: ``{"images": {camera_name: uint8 HWC or BHWC}, "state": float (S,) or (B, S) in robot
    units, "prompt": str or list of B str}``. ``camera_map`` maps each model camera (``base_0_rgb``,
    ``left_wrist_0_rgb``, ``right_wrist_0_rgb``) to a host camera name, or to None when the robot has no such
    camera (zero image, mask False). ``state_stats`` None means the state is already normalised.
    ``discrete_state`` writes the normalised state into the prompt (PI0.5); the padded state is returned too.

    Returns numpy arrays with a leading batch axis: ``images`` {model camera: (B, H, W, 3) float32 in [-1, 1]},
    ``image_masks`` {model camera: (B,) bool}, ``state`` (B, action_dim) float32, ``tokenized_prompt``
    (B, L) int32, ``tokenized_prompt_mask`` (B, L) bool.
    """
    for key in ("images", "state", "prompt"):
        if key not in observation:
            raise KeyError(f"observation has no '{key}' (keys: {sorted(observation)})")
    unknown_slots = set(camera_map) - set(IMAGE_KEYS)
    if unknown_slots:
        raise ValueError(f"camera_map has unknown model cameras {sorted(unknown_slots)}; expected {IMAGE_KEYS}")
    host_images = observation["images"]
    if not isinstance(host_images, Mapping):
        raise TypeError(f"observation['images'] must map camera names to arrays, got {type(host_images).__name__}")
    mapped = {name for name in camera_map.values() if name is not None}
    unknown_cams = set(host_images) - mapped
    if unknown_cams:
        raise ValueError(
            f"observation has camera(s) {sorted(unknown_cams)} that camera_map does not use "
            f"(it maps {dict(camera_map)})"
        )

    state = np.asarray(observation["state"])
    batched = state.ndim == 2
    if state.ndim not in (1, 2) or not np.issubdtype(state.dtype, np.number):
        raise ValueError(f"state must be a numeric (S,) or (B, S) array, got {state.dtype} {state.shape}")
    states = state if batched else state[None]
    if not np.all(np.isfinite(states)):
        raise ValueError(f"state has non-finite values: {state!r}")
    if states.shape[-1] > action_dim:
        raise ValueError(f"state has {states.shape[-1]} dims, more than the model's action_dim={action_dim}")
    if state_stats is not None and states.shape[-1] > state_stats.dim:
        # normalize() would pass the extra dims through un-normalised; for a robot state that is a config error.
        raise ValueError(f"state has {states.shape[-1]} dims but the state norm stats cover {state_stats.dim}")
    batch = states.shape[0]
    prompts = observation["prompt"]
    prompts = [prompts] if isinstance(prompts, str) else prompts
    if not isinstance(prompts, list | tuple | np.ndarray) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompt must be a str or a list of str, got {observation['prompt']!r}")
    prompts = list(prompts)
    if len(prompts) != batch:
        raise ValueError(f"got {len(prompts)} prompt(s) for a batch of {batch} state(s)")

    images, masks = {}, {}
    for key in IMAGE_KEYS:
        name = camera_map.get(key)
        if name is None:
            images[key] = np.full((batch, *image_size, 3), -1.0, dtype=np.float32)  # uint8 0 -> -1
            masks[key] = np.zeros(batch, dtype=bool)
            continue
        if name not in host_images:
            raise KeyError(
                f"camera '{name}' (model camera {key}) is missing from the observation; "
                f"map {key} to None if the robot has no such camera"
            )
        image = host_images[name]
        _check_image_batch(image, f"camera '{name}'")
        if image.ndim != (4 if batched else 3):
            want = "BHWC" if batched else "HWC"
            raise ValueError(f"camera '{name}' has shape {image.shape}; expected {want} to match the state")
        if batched and image.shape[0] != batch:
            raise ValueError(f"camera '{name}' has batch {image.shape[0]}, state has {batch}")
        resized = resize_with_pad(image if batched else image[None], *image_size)
        images[key] = image_to_model(resized)
        masks[key] = np.ones(batch, dtype=bool)

    # float64 like openpi (float32 data minus float64 stats), so PI0.5 state bins match at bin edges too.
    states64 = states.astype(np.float64)
    norm_state = states64 if state_stats is None else normalize(states64, state_stats, use_quantiles)
    tokens, token_mask = tokenizer.tokenize_batch(prompts, norm_state if discrete_state else None)
    return {
        "images": images,
        "image_masks": masks,
        "state": pad_to_dim(norm_state.astype(np.float32), action_dim),
        "tokenized_prompt": tokens,
        "tokenized_prompt_mask": token_mask,
    }
