"""Helpers for the data tests: tiny synthetic episodes and the lerobot fixture datasets."""

from __future__ import annotations

import pathlib
import types

import numpy as np
import pytest

from hiors_jax.data.lerobot import LeRobotDatasetWriter

H, W = 32, 48
FIXTURE_NAMES = ("ds_lerobot", "ds_np", "ds_v21")


def tiny_features(video: bool = True, image: bool = True) -> dict:
    features = {
        "observation.state": {"dtype": "float32", "shape": [4], "names": ["a", "b", "c", "d"]},
        "action": {"dtype": "float32", "shape": [3], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
    }
    if video:
        features["observation.images.top"] = {
            "dtype": "video",
            "shape": [H, W, 3],
            "names": ["height", "width", "channels"],
        }
    if image:
        features["observation.images.wrist"] = {
            "dtype": "image",
            "shape": [H, W, 3],
            "names": ["height", "width", "channels"],
        }
    return features


def tiny_frame(episode: int, frame: int, features: dict, rng: np.random.Generator) -> dict:
    """Smooth gradients that move with the frame index (compress well, so PSNR is meaningful)."""
    yy, xx = np.mgrid[0:H, 0:W]
    values = {
        "observation.state": rng.standard_normal(4).astype(np.float32),
        "action": np.full(3, 1000 * episode + frame, np.float32),
        "next.reward": 0.0,
        "next.done": False,
    }
    for key in features:
        if features[key]["dtype"] in ("video", "image"):
            image = np.zeros((H, W, 3), np.uint8)
            image[..., 0] = (xx * 4 + frame * 3) % 256
            image[..., 1] = np.minimum(yy * 3 + episode * 20, 255)
            image[..., 2] = 128
            values[key] = image
    return values


def write_tiny(
    root: pathlib.Path,
    lengths=(5, 7, 6),
    tasks=("fold", "pick", "fold"),
    video: bool = True,
    image: bool = True,
    seed: int = 0,
    **writer_kwargs,
) -> dict:
    """Write a tiny dataset; returns what was written (per-frame values and tasks) for comparison."""
    features = tiny_features(video, image)
    rng = np.random.default_rng(seed)
    written: dict[str, list] = {k: [] for k in features}
    written["task"] = []
    append = writer_kwargs.pop("append", False)
    first_episode = writer_kwargs.pop("first_episode", 0)
    writer = LeRobotDatasetWriter(root, 30, features, append=append, **writer_kwargs)
    for e, (length, task) in enumerate(zip(lengths, tasks, strict=True)):
        for f in range(length):
            frame = tiny_frame(first_episode + e, f, features, rng)
            frame["next.reward"] = 1.0 if f == length - 1 else 0.0
            frame["next.done"] = f == length - 1
            writer.add_frame(frame, task=task)
            for k in features:
                written[k].append(frame[k])
            written["task"].append(task)
        writer.save_episode()
    writer.finalize()
    return {k: (v if k == "task" else np.stack([np.asarray(x) for x in v])) for k, v in written.items()}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@pytest.fixture(scope="session")
def lerobot_fixtures(require_fixture) -> pathlib.Path:
    return require_fixture("lerobot")


@pytest.fixture(scope="session")
def tiny_video_dataset(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    root = tmp_path_factory.mktemp("tiny") / "ds"
    return root, write_tiny(root)


@pytest.fixture(scope="session")
def tiny():
    """The helpers above, for test modules (importlib import mode cannot import conftest by name)."""
    return types.SimpleNamespace(write=write_tiny, psnr=psnr, features=tiny_features, frame=tiny_frame, H=H, W=W)
