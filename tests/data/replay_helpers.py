"""Synthetic Hi-ORS episodes shaped like the X-Trainer's (small images), and a tiny tokenizer."""

from __future__ import annotations

import pathlib

import numpy as np

from hiors_jax.models.tokenizer import PaligemmaTokenizer, train_tiny_tokenizer

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
PROMPT = "put the objects in the box"


def make_transition(
    rng: np.random.Generator,
    *,
    episode_id: int = 0,
    step: int = 0,
    actor_id: str = "actor-0",
    hw: tuple[int, int] = (24, 32),
    state_dim: int = 14,
    horizon: int = 10,
    rows: int = 6,
    valid_rows: int | None = None,
    moving: bool = True,
    done: bool = False,
    truncated: bool = False,
    label: str | None = None,
    reward: float = 0.0,
    teleop: bool = False,
    policy_version: int = 0,
) -> dict:
    """One transition; values encode (episode, step) so a relabelled target's origin is visible."""
    n = rows if valid_rows is None else valid_rows
    chunk = np.zeros((rows, state_dim), np.float32)
    chunk[:, 0] = episode_id
    chunk[:, 1] = step
    chunk[:, 2] = np.arange(rows) * (0.01 if moving else 0.0)
    mask = np.arange(rows) < n
    stamps = 100.0 * episode_id + step + np.arange(rows) * 0.1
    images = {c: rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for c in CAMERAS}
    return {
        "images": images,
        "state": np.concatenate([[episode_id, step], rng.standard_normal(state_dim - 2)]).astype(np.float32),
        "prompt": PROMPT,
        "action": rng.standard_normal((horizon, state_dim)).astype(np.float32),
        "reward": float(reward),
        "done": bool(done),
        "truncated": bool(truncated),
        "state_chunk": chunk,
        "state_chunk_mask": mask,
        "state_chunk_teleop": np.full(rows, teleop) & mask,
        "state_chunk_timestamp": stamps.astype(np.float64),
        "episode_id": episode_id,
        "actor_id": actor_id,
        "policy_version": policy_version,
        "label": label,
    }


def make_episode(rng, length: int, *, success: bool = True, episode_id: int = 0, **kw) -> list[dict]:
    out = []
    for step in range(length):
        last = step == length - 1
        out.append(
            make_transition(
                rng,
                episode_id=episode_id,
                step=step,
                done=last,
                label=("success" if success else "failure") if last else None,
                reward=1.0 if (last and success) else 0.0,
                **kw,
            )
        )
    return out


def tiny_tokenizer(directory: pathlib.Path, max_len: int = 16) -> PaligemmaTokenizer:
    path = train_tiny_tokenizer(directory / "tok.model", [PROMPT, "fold the towel", "pick up the cup"], 60)
    return PaligemmaTokenizer(path, max_len)
