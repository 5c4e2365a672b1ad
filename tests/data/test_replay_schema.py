"""The transition schema: what the actor sends, and the error a bad transition gets."""

from __future__ import annotations

import numpy as np
import pytest

from hiors_jax.data.replay import TransitionError, TransitionSpec, validate_transition

from .replay_helpers import make_transition


def test_valid_transition_canonical_dtypes():
    t = make_transition(np.random.default_rng(0), label="success", done=True)
    t["state"] = t["state"].astype(np.float64)
    out = validate_transition(t)
    assert out["state"].dtype == np.float32 and out["state_chunk_timestamp"].dtype == np.float64
    assert out["done"] is True and out["truncated"] is False and out["label"] == "success"
    spec = TransitionSpec.from_transition(t)
    assert spec.camera_shapes == {"cam_high": (24, 32), "cam_left_wrist": (24, 32), "cam_right_wrist": (24, 32)}
    assert (spec.state_dim, spec.action_horizon, spec.action_dim, spec.chunk_len) == (14, 10, 14, 6)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("reward", float("nan"), "'reward'.*not finite"),
        ("reward", None, "'reward'"),
        ("done", 1, "'done'.*bool"),
        ("truncated", "no", "'truncated'"),
        ("state", np.zeros(13, np.float32), "'state'.*shape"),
        ("state", np.full(14, np.inf, np.float32), "'state'.*NaN or infinity"),
        ("action", np.zeros((10, 7), np.float32), "'action'.*shape"),
        ("state_chunk_mask", np.ones(6, np.int8), "'state_chunk_mask'.*bool"),
        ("state_chunk_timestamp", np.arange(6)[::-1].astype(float), "time order"),
        ("prompt", "", "'prompt'"),
        ("episode_id", -1, "'episode_id'"),
        ("actor_id", 3, "'actor_id'"),
        ("label", "great", "'label'"),
    ],
)
def test_bad_field_is_named(field, value, match):
    rng = np.random.default_rng(0)
    spec = TransitionSpec.from_transition(make_transition(rng))
    t = make_transition(rng)
    t[field] = value
    with pytest.raises(TransitionError, match=match):
        validate_transition(t, spec)


def test_images_checked_against_the_dataset():
    rng = np.random.default_rng(0)
    spec = TransitionSpec.from_transition(make_transition(rng))
    t = make_transition(rng, hw=(24, 30))
    with pytest.raises(TransitionError, match=r"'images.cam_high'.*\(24, 30, 3\).*\(24, 32, 3\)"):
        validate_transition(t, spec)
    t = make_transition(rng)
    t["images"]["cam_high"] = t["images"]["cam_high"].astype(np.float32)
    with pytest.raises(TransitionError, match="'images.cam_high'.*uint8"):
        validate_transition(t, spec)
    t = make_transition(rng)
    del t["images"]["cam_left_wrist"]
    with pytest.raises(TransitionError, match="'images'.*cameras"):
        validate_transition(t, spec)
    t = make_transition(rng)
    del t["state_chunk"]
    with pytest.raises(TransitionError, match="'state_chunk'"):
        validate_transition(t, spec)
