"""Per-episode and aggregated feature statistics in lerobot's layout (min, max, mean, std, count, q01..q99).

Vectors get per-dimension lists; images/videos get per-channel values of shape (C, 1, 1) on pixels scaled to
[0, 1], computed on a subsample of frames downscaled to about 150 px (as lerobot does, full-pixel quantiles
would dominate write time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
_IMAGE_MAX_SIDE = 150


def downsample_image(image: np.ndarray) -> np.ndarray:
    """Integer-stride downsample of an HWC image so its longer side is at most ~150 px."""
    stride = max(1, int(np.ceil(max(image.shape[:2]) / _IMAGE_MAX_SIDE)))
    return image[::stride, ::stride]


class FrameSampler:
    """Keeps an evenly spaced subsample of an episode's frames in bounded memory.

    Every `stride`-th frame is kept; when more than `capacity` are held, every other one is dropped and the
    stride doubles, so any episode length ends with between capacity/2 and capacity evenly spaced frames.
    """

    def __init__(self, capacity: int = 128):
        self.capacity = capacity
        self.stride = 1
        self.count = 0
        self.frames: list[np.ndarray] = []

    def add(self, image_hwc: np.ndarray) -> None:
        if self.count % self.stride == 0:
            self.frames.append(downsample_image(image_hwc))
            if len(self.frames) > self.capacity:
                self.frames = self.frames[::2]
                self.stride *= 2
        self.count += 1


def _to_list(x: np.ndarray) -> list:
    return np.asarray(x).tolist()


def array_stats(values: np.ndarray) -> dict[str, Any]:
    """Stats of (N, ...) numeric values per component of the last axis; min/max keep the feature's dtype.

    Like lerobot 0.4: scalars and vectors reduce over frames; an N-d feature, e.g. a (50, 14) state chunk,
    reduces over frames and every axis but the last, giving (14,) stats (lerobot itself returns (50, 14) for a
    one-frame episode, which its aggregation then cannot stack; here the layout never depends on the length).
    `count` is the number of frames.
    """
    values = np.asarray(values)
    frames = len(values)
    if values.ndim == 1:
        values = values[:, None]
    samples = values.reshape(int(np.prod(values.shape[:-1])), values.shape[-1])
    if not len(samples):  # a zero-size axis before the last: nothing to reduce
        empty = [float("nan")] * values.shape[-1]
        return {"min": empty, "max": empty, "mean": empty, "std": empty, "count": [frames]} | {
            name: empty for name in QUANTILES
        }
    as_float = samples.astype(np.float64)
    stats = {
        "min": _to_list(samples.min(axis=0)),
        "max": _to_list(samples.max(axis=0)),
        "mean": _to_list(as_float.mean(axis=0)),
        "std": _to_list(as_float.std(axis=0)),
        "count": [frames],
    }
    for name, q in QUANTILES.items():
        stats[name] = _to_list(np.quantile(as_float, q, axis=0))
    return stats


def image_stats(frames: Sequence[np.ndarray], count: int) -> dict[str, Any]:
    """Per-channel stats (C, 1, 1) of sampled uint8 HWC frames scaled to [0, 1]; `count` = episode length."""
    pixels = np.concatenate([f.reshape(-1, f.shape[-1]) for f in frames]).astype(np.float64) / 255.0

    def per_channel(v: np.ndarray) -> list:
        return v.reshape(-1, 1, 1).tolist()

    stats = {
        "min": per_channel(pixels.min(axis=0)),
        "max": per_channel(pixels.max(axis=0)),
        "mean": per_channel(pixels.mean(axis=0)),
        "std": per_channel(pixels.std(axis=0)),
        "count": [int(count)],
    }
    for name, q in QUANTILES.items():
        stats[name] = per_channel(np.quantile(pixels, q, axis=0))
    return stats


def aggregate_stats(per_episode: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Count-weighted mean, pooled variance, min of mins, max of maxes, count-weighted mean of quantiles."""
    keys: list[str] = []
    for stats in per_episode:
        keys += [k for k in stats if k not in keys]
    result = {}
    for key in keys:
        parts = [s[key] for s in per_episode if key in s]
        counts = np.array([p["count"][0] for p in parts], dtype=np.float64)
        weights = counts / counts.sum()

        def stack(name: str, parts=parts) -> np.ndarray:
            return np.stack([np.asarray(p[name], dtype=np.float64) for p in parts])

        def weighted(a: np.ndarray, weights=weights) -> np.ndarray:
            return np.tensordot(weights, a, axes=1)

        means = stack("mean")
        mean = weighted(means)
        variance = weighted(stack("std") ** 2 + (means - mean) ** 2)
        mins = [np.asarray(p["min"]) for p in parts]
        maxs = [np.asarray(p["max"]) for p in parts]
        agg = {
            "min": _to_list(np.min(np.stack(mins), axis=0)),
            "max": _to_list(np.max(np.stack(maxs), axis=0)),
            "mean": _to_list(mean),
            "std": _to_list(np.sqrt(np.maximum(variance, 0.0))),
            "count": [int(counts.sum())],
        }
        for name in QUANTILES:
            if all(name in p for p in parts):
                agg[name] = _to_list(weighted(stack(name)))
        result[key] = agg
    return result
