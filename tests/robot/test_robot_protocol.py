"""Observation parsing, action safety checks and the teleop flag definition."""

import numpy as np
import pytest

from robot.dobot import protocol, teleop

SPEC = protocol.ObservationSpec(image_size=(12, 16), max_state_chunk_len=4)


def make_msg(**overrides):
    msg = {
        "images": {k: np.full((12, 16, 3), i, np.uint8) for i, k in enumerate(protocol.CAMERA_KEYS)},
        "state": np.arange(14, dtype=np.float32),
        "prompt": "do it",
        "server_teleoperation_flag": None,
        "state_chunk": [
            {"state": np.full(14, i, np.float32), "server_teleoperation_flag": f, "state_timestamp": 0.1 * i}
            for i, f in enumerate([None, teleop.HUMAN_TAKES_OVER])
        ],
    }
    msg.update(overrides)
    return msg


def test_valid_observation_is_unpacked_into_fixed_arrays():
    obs, extras = protocol.parse_observation(make_msg(), SPEC)
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (14,)
    assert obs["state_chunk"].shape == (4, 14)
    np.testing.assert_array_equal(obs["state_chunk_mask"], [True, True, False, False])
    np.testing.assert_array_equal(obs["state_chunk_teleop"], [False, True, False, False])
    np.testing.assert_allclose(obs["state_chunk_timestamp"][:2], [0.0, 0.1])
    np.testing.assert_array_equal(obs["state_chunk"][1], np.ones(14))
    assert obs["teleop"] is False and extras["episode_label"] is None and extras["state_chunk_dropped"] == 0


def test_chw_images_are_transposed_and_other_sizes_resized():
    images = {
        "cam_high": np.zeros((3, 12, 16), np.uint8),
        "cam_left_wrist": np.full((24, 32, 3), 77, np.uint8),
        "cam_right_wrist": np.zeros((12, 16, 3), np.uint8),
    }
    obs, _ = protocol.parse_observation(make_msg(images=images), SPEC)
    for key in protocol.CAMERA_KEYS:
        assert obs["images"][key].shape == (12, 16, 3)
    assert np.all(obs["images"]["cam_left_wrist"] == 77)


def test_overlong_state_chunk_keeps_the_newest_and_reports_the_drop():
    chunk = [{"state": np.full(14, i, np.float32), "state_timestamp": float(i)} for i in range(6)]
    obs, extras = protocol.parse_observation(make_msg(state_chunk=chunk), SPEC)
    assert extras["state_chunk_dropped"] == 2
    np.testing.assert_array_equal(obs["state_chunk_timestamp"], [2, 3, 4, 5])


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"state": np.zeros(13, np.float32)}, r"state must be a numeric array of shape \(14,\)"),
        ({"state": np.full(14, np.nan, np.float32)}, "state contains NaN"),
        ({"prompt": 3}, "prompt must be a str"),
        ({"images": {"cam_high": np.zeros((2, 2, 3), np.uint8)}}, "images must map"),
        ({"server_teleoperation_flag": "from server to teleoperation"}, "unknown server_teleoperation_flag"),
        ({"state_chunk": [{"state": np.zeros(14)}]}, r"state_chunk\[0\] must be a map"),
        ({"state_chunk": "nope"}, "state_chunk must be a list"),
        ({"episode_label": "maybe"}, "episode_label must be"),
    ],
)
def test_malformed_fields_are_named(overrides, message):
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.parse_observation(make_msg(**overrides), SPEC)


def test_float_image_and_missing_key_are_refused():
    images = {k: np.zeros((12, 16, 3), np.float32) for k in protocol.CAMERA_KEYS}
    with pytest.raises(protocol.ProtocolError, match="images.cam_high must be a uint8"):
        protocol.parse_observation(make_msg(images=images), SPEC)
    msg = make_msg()
    del msg["state"]
    with pytest.raises(protocol.ProtocolError, match="missing 'state'"):
        protocol.parse_observation(msg, SPEC)
    with pytest.raises(protocol.ProtocolError, match="must be a map"):
        protocol.parse_observation([1, 2], SPEC)


def test_action_checks():
    good = np.zeros((50, 14))
    assert protocol.check_action_chunk(good).dtype == np.float32
    with pytest.raises(protocol.InvalidAction, match=r"shape \(50, 14\), got \(50, 7\)"):
        protocol.check_action_chunk(np.zeros((50, 7)))
    bad = good.copy()
    bad[3, 5] = np.inf
    with pytest.raises(protocol.InvalidAction, match="first at step 3, dim 5"):
        protocol.check_action_chunk(bad)
    with pytest.raises(protocol.InvalidAction, match="numeric"):
        protocol.check_action_chunk(np.array([["a"] * 14] * 50))
    with pytest.raises(protocol.InvalidAction, match="numeric"):
        protocol.check_action_chunk(np.zeros((50, 14), dtype=[("a", "<f4")]))


def test_bfloat16_policy_output_is_accepted():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    chunk = np.full((50, 14), 0.5, dtype=ml_dtypes.bfloat16)
    out = protocol.check_action_chunk(chunk)
    assert out.dtype == np.float32 and np.all(out == 0.5)


def test_clip_to_limits_counts_clipped_values():
    chunk = np.zeros((2, 3), np.float32)
    chunk[0, 0], chunk[1, 2] = 5.0, -5.0
    clipped, n = protocol.clip_to_limits(chunk, np.full(3, -1.0), np.full(3, 1.0))
    assert n == 2 and clipped[0, 0] == 1.0 and clipped[1, 2] == -1.0


def test_teleop_flag_single_definition():
    assert teleop.is_teleop(teleop.HUMAN_TAKES_OVER)
    assert not teleop.is_teleop(teleop.POLICY_TAKES_OVER) and not teleop.is_teleop(None)
    assert teleop.flag_for(True) == "server to teleoperation"
    with pytest.raises(ValueError, match="unknown server_teleoperation_flag"):
        teleop.is_teleop("from server to teleoperation")
