"""Action-chunk targets: relabelled from the robot states actually recorded, or from stored actions (demos).

Hi-ORS trains on what the robot did, not on what the policy asked for: the target for observation o_t is the
next H recorded states, i.e. the valid rows of transition t's state chunk (states recorded while its action
ran), then of t+1, t+2, ... of the same episode. That is how human takeovers become supervision. A target
never reads past its episode's last recorded state: the tail is filled with that last state and flagged in
`is_pad` (lerobot's edge-repeat convention). When a transition has no recorded state at or after it, the
whole chunk is padding filled with `fallback` (the observation's own state).

All functions are pure numpy over transitions in time order, several episodes back to back; each episode's
transitions must be contiguous (`episode` is checked).
"""

from __future__ import annotations

import numpy as np


def episode_starts(episode: np.ndarray) -> np.ndarray:
    """Index of the first transition of each transition's episode, (T,); raises if an episode is split up."""
    episode = np.asarray(episode)
    if episode.ndim != 1:
        raise ValueError(f"episode must be 1-D (one id per transition), got shape {episode.shape}")
    n = len(episode)
    if n == 0:
        return np.zeros(0, np.int64)
    new = np.ones(n, bool)
    new[1:] = episode[1:] != episode[:-1]
    ids = episode[new]
    if len(np.unique(ids)) != len(ids):
        raise ValueError("episode ids must be contiguous: an episode's transitions appear in two separate runs")
    return np.maximum.accumulate(np.where(new, np.arange(n), 0))


def _episode_ends(episode: np.ndarray) -> np.ndarray:
    """One past the last transition of each transition's episode, (T,)."""
    n = len(episode)
    last = np.ones(n, bool)
    last[:-1] = episode[1:] != episode[:-1]
    ends = np.where(last, np.arange(1, n + 1), n + 1)
    return np.minimum.accumulate(ends[::-1])[::-1]


def _select_dims(x: np.ndarray, dims) -> np.ndarray:
    if dims is None:
        return x
    dims = np.asarray(dims, dtype=np.int64)
    if dims.ndim != 1 or len(dims) == 0 or dims.min() < 0 or dims.max() >= x.shape[-1]:
        raise ValueError(f"dims {dims.tolist()} must be a non-empty list of indices below {x.shape[-1]}")
    return x[..., dims]


def relabel_from_states(
    state_chunks: np.ndarray,
    row_mask: np.ndarray,
    episode: np.ndarray,
    horizon: int,
    *,
    dims=None,
    fallback: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Targets from recorded states: ``(targets (T, horizon, D'), is_pad (T, horizon) bool)``.

    state_chunks: (T, R, D) recorded states per transition, valid rows flagged by row_mask (T, R) and kept in
    their order (time order); episode: (T,) id per transition; dims: state dims to keep (all by default);
    fallback: (T, D) value for transitions with no recorded state at or after them (zeros if None).
    """
    state_chunks = np.asarray(state_chunks)
    row_mask = np.asarray(row_mask, dtype=bool)
    episode = np.asarray(episode)
    if state_chunks.ndim != 3:
        raise ValueError(f"state_chunks must be (T, R, D), got shape {state_chunks.shape}")
    t, r, d = state_chunks.shape
    if row_mask.shape != (t, r):
        raise ValueError(f"row_mask has shape {row_mask.shape}, expected {(t, r)}")
    if episode.shape != (t,):
        raise ValueError(f"episode has shape {episode.shape}, expected {(t,)}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if fallback is not None and np.shape(fallback) != (t, d):
        raise ValueError(f"fallback has shape {np.shape(fallback)}, expected {(t, d)}")
    episode_starts(episode)  # contiguity check
    ends = _episode_ends(episode)
    rows = state_chunks[row_mask]  # (M, D), transitions in order, rows in order within each
    counts = row_mask.sum(axis=1)
    first_row = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)  # row offset of transition t
    # Rows of the episode end where the episode's last transition's rows end.
    end_row = first_row[ends - 1] + counts[ends - 1] if t else np.zeros(0, np.int64)
    idx = first_row[:, None] + np.arange(horizon)[None, :]
    is_pad = idx >= end_row[:, None]
    has_any = end_row > first_row
    gather = np.minimum(idx, end_row[:, None] - 1)
    targets = np.empty((t, horizon, d), dtype=state_chunks.dtype)
    if len(rows):
        targets[has_any] = rows[gather[has_any]]
    empty_value = np.zeros((t, d), state_chunks.dtype) if fallback is None else np.asarray(fallback, state_chunks.dtype)
    targets[~has_any] = empty_value[~has_any][:, None, :]
    return _select_dims(targets, dims), is_pad


def chunks_from_actions(actions: np.ndarray, episode: np.ndarray, horizon: int, *, dims=None):
    """Targets from per-step stored actions (T, D): actions t .. t+horizon-1 of the same episode.

    Steps past the episode's end repeat its last action and are flagged in is_pad, exactly as lerobot's
    ``delta_timestamps`` lookup does. Returns ``(targets (T, horizon, D'), is_pad (T, horizon))``.
    """
    actions = np.asarray(actions)
    episode = np.asarray(episode)
    if actions.ndim != 2:
        raise ValueError(f"actions must be (T, D) per-step actions, got shape {actions.shape}")
    if episode.shape != (len(actions),):
        raise ValueError(f"episode has shape {episode.shape}, expected {(len(actions),)}")
    episode_starts(episode)  # contiguity check
    ends = _episode_ends(episode)
    idx = np.arange(len(actions))[:, None] + np.arange(horizon)[None, :]
    is_pad = idx >= ends[:, None]
    targets = actions[np.minimum(idx, ends[:, None] - 1)]
    return _select_dims(targets, dims), is_pad


def stored_chunks(actions: np.ndarray, horizon: int, *, is_pad: np.ndarray | None = None, dims=None):
    """Targets from stored action chunks (T, H, D) (e.g. a Hi-ORS accepted dataset): taken as they are."""
    actions = np.asarray(actions)
    if actions.ndim != 3 or actions.shape[1] != horizon:
        raise ValueError(f"stored action chunks must be (T, {horizon}, D), got shape {actions.shape}")
    pad = np.zeros(actions.shape[:2], bool) if is_pad is None else np.asarray(is_pad, bool)
    if pad.shape != actions.shape[:2]:
        raise ValueError(f"action_is_pad has shape {pad.shape}, expected {actions.shape[:2]}")
    return _select_dims(actions, dims), pad
