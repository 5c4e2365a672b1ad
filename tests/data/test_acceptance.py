"""Hi-ORS acceptance rules: threshold and schedule, both filters, intervention counts, weights, reason counts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hiors_jax.data.acceptance import (
    AcceptanceConfig,
    AcceptanceCounters,
    ThresholdSchedule,
    decide,
    intervention_stats,
    noop_mask,
)

R, D = 6, 4


def chunk_rows(moving: bool, rows: int, rng) -> tuple[np.ndarray, np.ndarray]:
    chunk = np.zeros((R, D), np.float32)
    base = rng.standard_normal(D).astype(np.float32)
    chunk[:] = base
    if moving and rows >= 2:
        chunk[:rows, 1] += np.linspace(0, 0.05, rows, dtype=np.float32)  # std >> 1e-3 in one dim
    mask = np.arange(R) < rows
    return chunk, mask


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, R)), min_size=1, max_size=8), st.integers(0, 3))
def test_noop_filter_and_last_always_kept(spec, short_max):
    rng = np.random.default_rng(0)
    pairs = [chunk_rows(m, n, rng) for m, n in spec]
    chunks, masks = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    config = AcceptanceConfig(short_episode_max=short_max)
    rewards = np.zeros(len(spec))
    d = decide(config, rewards=rewards, label="success", state_chunks=chunks, row_mask=masks)
    moving = np.array([m and n >= 2 for m, n in spec])
    if len(spec) <= short_max:
        assert not d.accepted and d.reason == "short_episode" and d.dropped == {"short_episode": len(spec)}
        assert not d.keep.any()
        return
    assert d.accepted and d.weight == 1.0
    want = moving.copy()
    want[-1] = True
    np.testing.assert_array_equal(d.keep, want)
    assert d.dropped == {"noop": int(np.count_nonzero(~want))}


def test_noop_std_threshold_is_inclusive_and_per_dims():
    chunk = np.zeros((1, 4, 3))
    chunk[0, :, 2] = [0, 0.002, 0, 0.002]  # population std exactly 1e-3 in dim 2
    mask = np.ones((1, 4), bool)
    assert noop_mask(chunk, mask, None, 1e-3)[0]  # std <= eps is a no-op
    assert not noop_mask(chunk, mask, None, 0.999e-3)[0]
    assert noop_mask(chunk, mask, [0, 1], 0.0)[0]  # the moving dim is not looked at
    with pytest.raises(ValueError, match="noop_dims"):
        noop_mask(chunk, mask, [3], 1e-3)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.floats(-2, 5, allow_nan=False)),
        min_size=1,
        max_size=6,
        unique_by=lambda s: s[0],
    ),
    st.integers(0, 60),
    st.floats(-3, 6, allow_nan=False),
)
def test_schedule_is_stepwise_and_acceptance_monotone(steps, iteration, ret):
    steps = sorted(steps)
    values = [m for _, m in steps]
    if any(b < a for a, b in zip(values, values[1:], strict=False)):
        with pytest.raises(ValueError, match="non-decreasing"):
            ThresholdSchedule(tuple(steps))
        return
    schedule = ThresholdSchedule(tuple(steps))
    active = [m for i, m in steps if i <= iteration]
    assert schedule(iteration) == (active[-1] if active else steps[0][1])
    config = AcceptanceConfig(threshold=schedule, score="return", short_episode_max=0)
    rewards = np.array([0.0, ret])
    accepted = [
        decide(config, rewards=rewards, label=None, state_chunks=None, row_mask=None, iteration=k).accepted
        for k in range(61)
    ]
    # m never decreases, so once an episode of a given return is rejected it stays rejected later
    assert all(not later for earlier, later in zip(accepted, accepted[1:], strict=False) if not earlier)
    assert decide(
        config, rewards=rewards, label=None, state_chunks=None, row_mask=None, iteration=iteration
    ).accepted == (ret >= schedule(iteration))


def test_label_threshold_return_weights_and_counters():
    counters = AcceptanceCounters()
    base = dict(state_chunks=None, row_mask=None)
    label_cfg = AcceptanceConfig()
    cases = [
        decide(label_cfg, rewards=np.zeros(5), label="success", **base),
        decide(label_cfg, rewards=np.zeros(5), label="failure", **base),
        decide(label_cfg, rewards=np.zeros(5), label=None, **base),
        decide(label_cfg, rewards=np.zeros(2), label="success", **base),
    ]
    for c in cases:
        counters.add(c)
    assert [c.accepted for c in cases] == [True, False, False, False]
    assert [c.reason for c in cases] == [None, "below_threshold", "no_label", "short_episode"]
    got = counters.as_dict()
    assert got["episodes"] == 4 and got["accepted"] == 1 and got["kept"] == 5
    assert got["rejected/below_threshold"] == 1 and got["rejected/no_label"] == 1 and got["rejected/short_episode"] == 1
    assert got["dropped/rejected_episode"] == 10 and got["dropped/short_episode"] == 2
    weighted = AcceptanceConfig(threshold=0.5, score="return", weighting="return", return_weight_scale=2.0)
    d = decide(weighted, rewards=np.array([0, 0.25, 0.5]), label=None, **base)
    assert d.accepted and d.weight == pytest.approx(1.5)
    with pytest.raises(ValueError, match="NaN"):
        decide(label_cfg, rewards=np.array([0, np.nan, 1]), label="success", **base)
    with pytest.raises(ValueError, match="label"):
        decide(label_cfg, rewards=np.zeros(3), label="maybe", **base)
    with pytest.raises(ValueError, match="acceptance.score"):
        AcceptanceConfig(score="vibes")


def test_intervention_counts():
    teleop = np.array([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]], bool)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]], bool)
    # valid rows in time order: 0 1 1 | 1 0 | 0 1 1  -> rising edges at positions 1 and 6
    assert intervention_stats(teleop, mask) == {"interventions": 2, "teleop_transitions": 3, "teleop_records": 5}
    # the flag of an invalid (padding) row is ignored
    teleop[0, 3] = True
    assert intervention_stats(teleop, mask)["teleop_records"] == 5
