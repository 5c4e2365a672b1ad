"""Relabelled targets: property tests against a plain per-transition reference (no leakage, exact is_pad)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hiors_jax.data.chunks import chunks_from_actions, episode_starts, relabel_from_states, stored_chunks

D = 3


@st.composite
def episodes(draw):
    """Back-to-back episodes; each transition has 0..R valid rows (scattered in its chunk, order kept)."""
    r = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    chunks, masks, ep = [], [], []
    for e, length in enumerate(lengths):
        for t in range(length):
            mask = np.array(draw(st.lists(st.booleans(), min_size=r, max_size=r)), bool)
            chunk = np.full((r, D), -1.0, np.float32)  # invalid rows hold junk that must never appear
            # value encodes (episode, transition, row) so any leak is visible
            chunk[:, 0] = e
            chunk[:, 1] = t
            chunk[:, 2] = np.arange(r)
            chunk[~mask] = 999.0
            chunks.append(chunk)
            masks.append(mask)
            ep.append(10 + e)
    horizon = draw(st.integers(1, 8))
    return np.stack(chunks), np.stack(masks), np.array(ep), horizon


def reference(chunks, masks, ep, horizon, fallback):
    out, pad = [], []
    for t in range(len(ep)):
        rows = [chunks[j][masks[j]] for j in range(t, len(ep)) if ep[j] == ep[t]]
        rows = np.concatenate(rows) if rows else np.zeros((0, D), np.float32)
        p = np.arange(horizon) >= len(rows)
        if len(rows):
            target = rows[np.minimum(np.arange(horizon), len(rows) - 1)]
        else:
            target = np.repeat(fallback[t][None], horizon, 0)
        out.append(target)
        pad.append(p)
    return np.stack(out), np.stack(pad)


@settings(max_examples=150, deadline=None)
@given(episodes())
def test_relabel_matches_reference_and_never_leaks(data):
    chunks, masks, ep, horizon = data
    fallback = np.full((len(ep), D), 7.0, np.float32)
    targets, is_pad = relabel_from_states(chunks, masks, ep, horizon, fallback=fallback)
    want, want_pad = reference(chunks, masks, ep, horizon, fallback)
    np.testing.assert_array_equal(is_pad, want_pad)
    np.testing.assert_array_equal(targets, want)
    episode_of_row = targets[..., 0]
    own = (np.searchsorted(np.unique(ep), ep))[:, None]
    has_rows = ~is_pad[:, 0]
    # no leakage: every target row (pad rows included) comes from the transition's own episode
    assert np.all(episode_of_row[has_rows] == np.broadcast_to(own, episode_of_row.shape)[has_rows])
    assert not np.any(targets == 999.0)
    # is_pad is exactly the tail beyond the recorded rows left in the episode
    assert np.all(np.diff(is_pad.astype(int), axis=1) >= 0)


@settings(max_examples=50, deadline=None)
@given(episodes(), st.lists(st.integers(0, D - 1), min_size=1, max_size=D, unique=True))
def test_dims_select_columns(data, dims):
    chunks, masks, ep, horizon = data
    full, pad = relabel_from_states(chunks, masks, ep, horizon)
    part, pad2 = relabel_from_states(chunks, masks, ep, horizon, dims=dims)
    np.testing.assert_array_equal(part, full[..., dims])
    np.testing.assert_array_equal(pad, pad2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=4), st.integers(1, 9))
def test_actions_like_lerobot_delta_timestamps(lengths, horizon):
    ep = np.repeat(np.arange(len(lengths)), lengths)
    actions = np.stack([ep, np.concatenate([np.arange(n) for n in lengths])], axis=1).astype(np.float32)
    targets, is_pad = chunks_from_actions(actions, ep, horizon)
    for t in range(len(ep)):
        start = t - int(np.sum(ep[:t] == ep[t]))
        end = start + lengths[ep[t]]
        q = np.minimum(t + np.arange(horizon), end - 1)  # lerobot: clip to the episode, flag the clipped
        np.testing.assert_array_equal(targets[t], actions[q])
        np.testing.assert_array_equal(is_pad[t], t + np.arange(horizon) >= end)


def test_split_episode_is_refused():
    with pytest.raises(ValueError, match="contiguous"):
        episode_starts(np.array([1, 1, 2, 1]))


def test_bad_shapes_named():
    with pytest.raises(ValueError, match="row_mask"):
        relabel_from_states(np.zeros((2, 3, 4)), np.zeros((2, 2), bool), np.zeros(2), 5)
    with pytest.raises(ValueError, match="dims"):
        relabel_from_states(np.zeros((2, 3, 4)), np.ones((2, 3), bool), np.zeros(2), 5, dims=[4])
    with pytest.raises(ValueError, match="stored action chunks"):
        stored_chunks(np.zeros((2, 4, 3)), 5)
