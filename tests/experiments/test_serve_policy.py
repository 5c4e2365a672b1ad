"""The served policy in-process: checkpoint loading, robot-unit actions, one compile, errors that name the field."""

from __future__ import annotations

import numpy as np
import pytest

from experiments.dobot_pnp import serve
from hiors_jax.models import preprocessing


@pytest.fixture(scope="module")
def policy(tiny_checkpoint):
    policy = serve.CheckpointPolicy(tiny_checkpoint, asset_id="xtrainer", num_steps=3)
    policy.warm_up()
    return policy


def test_actions_are_robot_dims_and_horizon_in_robot_units(policy, tiny_checkpoint, robot_frame):
    out = policy.infer(robot_frame)
    assert out["actions"].shape == (50, 14) and out["actions"].dtype == np.float32
    assert np.all(np.isfinite(out["actions"]))
    assert out["policy_timing"]["infer_ms"] > 0
    # Same weights and noise, action stats with 2x std and +100 mean: robot-unit actions move exactly that way.
    shifted = serve.CheckpointPolicy(tiny_checkpoint, asset_id="shifted", num_steps=3)
    noise = np.random.default_rng(0).normal(size=(50, 32)).astype(np.float32)
    a = policy.infer(robot_frame, noise=noise)["actions"]
    b = shifted.infer(robot_frame, noise=noise)["actions"]
    mean_a, mean_b = policy.action_stats.mean, shifted.action_stats.mean
    np.testing.assert_allclose(b - mean_b, 2 * (a - mean_a), rtol=1e-4, atol=1e-4)
    assert np.all(np.abs(b.mean(0) - a.mean(0)) > 50)  # every joint was un-normalised, not just some


def test_sampler_compiles_once_for_any_camera_size_layout_and_prompt(policy, robot_frame):
    assert policy.compile_count == 1  # compiled by warm_up
    rng = np.random.default_rng(2)
    big = {k: rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for k in robot_frame["images"]}
    chw = {k: np.ascontiguousarray(v.transpose(2, 0, 1)) for k, v in robot_frame["images"].items()}
    for images, prompt in [(big, "fold the towel"), (chw, "transfer the cube"), (robot_frame["images"], "x")]:
        out = policy.infer({**robot_frame, "images": images, "prompt": prompt})
        assert out["actions"].shape == (50, 14)
    assert policy.compile_count == 1


def test_chw_and_hwc_cameras_give_the_same_actions(policy, robot_frame):
    noise = np.zeros((50, 32), np.float32)
    chw = {k: np.ascontiguousarray(v.transpose(2, 0, 1)) for k, v in robot_frame["images"].items()}
    a = policy.infer(robot_frame, noise=noise)["actions"]
    b = policy.infer({**robot_frame, "images": chw}, noise=noise)["actions"]
    np.testing.assert_array_equal(a, b)


def test_noise_stream_varies_between_calls(policy, robot_frame):
    a, b = policy.infer(robot_frame)["actions"], policy.infer(robot_frame)["actions"]
    assert not np.array_equal(a, b)


def _bad(frame, **changes):
    obs = {**frame, "images": dict(frame["images"])}
    for key, value in changes.items():
        if key.startswith("cam_"):
            if value is None:
                del obs["images"][key]
            else:
                obs["images"][key] = value
        elif value is None:
            del obs[key]
        else:
            obs[key] = value
    return obs


@pytest.mark.parametrize(
    "changes, names",
    [
        (dict(state=None), "'state'"),
        (dict(state=np.zeros(7, np.float32)), "'state' must be a numeric array of shape (14,)"),
        (dict(state=np.full(14, np.nan, np.float32)), "'state' has NaN"),
        (dict(state="zeros"), "'state'"),
        (dict(images=None), "'images'"),
        (dict(images=[1, 2]), "'images'"),
        (dict(cam_high=None), "camera 'cam_high'"),
        (dict(cam_high=np.zeros((224, 298, 3), np.float32)), "images.cam_high must be uint8"),
        (dict(cam_high=np.zeros((224, 298), np.uint8)), "images.cam_high must be HWC or CHW"),
        (dict(cam_high=[[0]]), "images.cam_high must be a uint8 array"),
        (dict(cam_extra=np.zeros((8, 8, 3), np.uint8)), "cam_extra"),
        (dict(prompt=None), "'prompt'"),
        (dict(prompt=7), "'prompt' must be a str"),
        (dict(prompt="pick " * 40), "prompt is"),
    ],
)
def test_bad_observations_name_the_field(policy, robot_frame, changes, names):
    with pytest.raises(serve.ObservationError) as err:
        policy.infer(_bad(robot_frame, **changes))
    assert names in str(err.value)


def test_non_map_observation(policy):
    with pytest.raises(serve.ObservationError, match="observation must be a map"):
        policy.infer([1, 2, 3])


def test_default_prompt_and_missing_camera(tiny_checkpoint, robot_frame):
    camera_map = {**serve.XTRAINER_CAMERA_MAP, "right_wrist_0_rgb": None}
    policy = serve.CheckpointPolicy(
        tiny_checkpoint, asset_id="xtrainer", camera_map=camera_map, default_prompt="fold the towel"
    )
    obs = _bad(robot_frame, prompt=None, cam_right_wrist=None)
    inputs = policy.model_inputs(obs)
    assert not inputs["image_masks"]["right_wrist_0_rgb"][0] and inputs["image_masks"]["base_0_rgb"][0]
    expected, _ = policy.tokenizer.tokenize("fold the towel")
    np.testing.assert_array_equal(inputs["tokenized_prompt"][0], expected)
    with pytest.raises(serve.ObservationError, match="cam_right_wrist"):
        policy.model_inputs(robot_frame)  # the robot sends a camera the map says it lacks
    assert policy.metadata["cameras"]["right_wrist_0_rgb"] is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(asset_id="nope"), "--asset_id=nope"),
        (dict(asset_id=None), "--asset_id"),  # two asset dirs: the user must choose
        (dict(asset_id="xtrainer", tokenizer_path="/nonexistent.model"), "--tokenizer"),
        (dict(asset_id="xtrainer", camera_map={"top": "cam_high"}), "--camera_map"),
        (dict(asset_id="xtrainer", num_steps=0), "--num_steps"),
    ],
)
def test_bad_checkpoint_options_name_the_option(tiny_checkpoint, kwargs, message):
    with pytest.raises(serve.CheckpointError, match=message.replace("-", r"\-")):
        serve.CheckpointPolicy(tiny_checkpoint, **kwargs)


def _with_policy_json(tmp_path, tiny_checkpoint, text: str):
    """The tiny checkpoint (linked) with a policy.json, as build.export_policy writes one."""
    checkpoint = tmp_path / "policy"
    checkpoint.mkdir()
    for item in tiny_checkpoint.iterdir():
        (checkpoint / item.name).symlink_to(item)
    (checkpoint / "policy.json").write_text(text)
    return checkpoint


def test_exported_state_free_policy_ignores_the_state(tmp_path, tiny_checkpoint, robot_frame):
    checkpoint = _with_policy_json(tmp_path, tiny_checkpoint, '{"prompt": "", "model": {"state_input": false}}')
    blind = serve.CheckpointPolicy(checkpoint, asset_id="xtrainer", num_steps=3)
    seeing = serve.CheckpointPolicy(tiny_checkpoint, asset_id="xtrainer", num_steps=3)
    assert blind.config.state_input is False and seeing.config.state_input is True
    # model.init=openpi: may name the params/ item itself: its policy.json is one level up.
    assert serve.exported_model_settings(checkpoint / "params") == {"state_input": False}
    noise = np.random.default_rng(0).normal(size=(50, 32)).astype(np.float32)
    moved = {**robot_frame, "state": robot_frame["state"] + 0.5}
    np.testing.assert_array_equal(
        blind.infer(robot_frame, noise=noise)["actions"], blind.infer(moved, noise=noise)["actions"]
    )
    assert not np.allclose(
        seeing.infer(robot_frame, noise=noise)["actions"], seeing.infer(moved, noise=noise)["actions"]
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"model": {"state_inputs": false}}', "unknown model setting 'state_inputs'"),
        ('{"model": {"state_input": "no"}}', "model.state_input must be bool"),
        ('{"model": [1]}', "'model' must be an object"),
        ("not json", "not a JSON object"),
    ],
)
def test_bad_policy_json_names_the_setting(tmp_path, tiny_checkpoint, text, message):
    checkpoint = _with_policy_json(tmp_path, tiny_checkpoint, text)
    with pytest.raises(serve.CheckpointError, match=message):
        serve.CheckpointPolicy(checkpoint, asset_id="xtrainer")


def test_checkpoint_without_params_or_tokenizer(tmp_path, tiny_checkpoint):
    with pytest.raises(serve.CheckpointError, match="no params/"):
        serve.CheckpointPolicy(tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "params").symlink_to(tiny_checkpoint / "params")
    (bare / "assets").symlink_to(tiny_checkpoint / "assets")
    with pytest.raises(serve.CheckpointError, match="--tokenizer: not given"):
        serve.CheckpointPolicy(bare, asset_id="xtrainer")


class _FixturePrompt:
    """Hands the served pipeline openpi's fixture prompt ids (random ids no text tokenizes to)."""

    def __init__(self, tokens, mask):
        self.tokens, self.mask = tokens, mask

    def tokenize_batch(self, prompts, states=None):
        return self.tokens[None], self.mask[None]


def test_serves_an_openpi_checkpoint_as_openpi_does(require_fixture, tiny_checkpoint, tmp_path):
    """openpi's own tiny PI0 checkpoint behind the serve path: uint8 cameras + robot-unit state in, openpi's
    sampled chunk (from the same noise) un-normalised to robot units out."""
    fixture = require_fixture("openpi_pi0_tiny")
    io = np.load(fixture / "io.npz")
    robot_dims = 24  # the fixture's state has 24 live dims, 8 of padding
    checkpoint = tmp_path / "openpi_ckpt"
    checkpoint.mkdir()
    (checkpoint / "params").symlink_to(fixture / "params")
    (checkpoint / "tiny_tokenizer.model").symlink_to(tiny_checkpoint / "tiny_tokenizer.model")
    rng = np.random.default_rng(3)
    state_mean, state_std = rng.normal(size=robot_dims), rng.uniform(0.5, 2.0, robot_dims)
    act_mean, act_std = rng.normal(size=robot_dims) * 10, rng.uniform(0.1, 3.0, robot_dims)
    stats = {
        "state": preprocessing.NormStats(mean=state_mean, std=state_std),
        "actions": preprocessing.NormStats(mean=act_mean, std=act_std),
    }
    preprocessing.save_norm_stats(checkpoint / "assets" / "robot" / "norm_stats.json", stats)
    policy = serve.CheckpointPolicy(checkpoint, num_steps=10)
    policy.tokenizer = _FixturePrompt(io["tokenized_prompt"][0], io["tokenized_prompt_mask"][0])

    cams = {"base_0_rgb": "cam_high", "left_wrist_0_rgb": "cam_left_wrist", "right_wrist_0_rgb": "cam_right_wrist"}
    images = {
        cams[k]: np.round((io[f"image_{k}"][0] + 1.0) * 127.5).astype(np.uint8) for k in cams
    }  # the fixture's floats are exactly u8/255*2-1
    state = io["state"][0, :robot_dims].astype(np.float64) * (state_std + 1e-6) + state_mean
    obs = {"images": images, "state": state.astype(np.float32), "prompt": "ignored"}
    out = policy.infer(obs, noise=io["noise"][0])
    assert out["actions"].shape == (50, robot_dims)
    expected = io["sample_actions"][0, :, :robot_dims] * (act_std + 1e-6) + act_mean
    np.testing.assert_allclose(out["actions"], expected, atol=1e-4 * act_std.max(), rtol=1e-4)


def test_params_directory_itself_is_accepted(tiny_checkpoint):
    policy = serve.CheckpointPolicy(tiny_checkpoint / "params", asset_id="xtrainer")
    assert policy.checkpoint == tiny_checkpoint


def test_pi05_checkpoint_quantile_actions_and_state_in_prompt(tmp_path, robot_frame):
    import jax

    from hiors_jax import demo
    from hiors_jax.models import config as model_config
    from hiors_jax.models import pi0, tokenizer

    config = model_config.get_preset("pi05_tiny")
    params = jax.jit(pi0.init_params, static_argnums=0)(config, jax.random.key(1))
    states = np.random.default_rng(0).normal(size=(300, 14))
    q01, q99 = np.quantile(states, [0.01, 0.99], axis=0)
    stats = preprocessing.NormStats(mean=states.mean(0), std=states.std(0), q01=q01, q99=q99)
    demo.write_checkpoint(tmp_path, params, {"state": stats, "actions": stats})
    tokenizer.train_tiny_tokenizer(tmp_path / "tok.model", [demo.PROMPT, "Task: , State: 0123456789;\nAction: "], 64)
    policy = serve.CheckpointPolicy(tmp_path, num_steps=1)  # max_token_len: openpi's PI0.5 default, 200
    assert policy.metadata["policy"] == "pi05"
    inputs = policy.model_inputs(robot_frame)
    text = policy.tokenizer.decode(inputs["tokenized_prompt"][0][inputs["tokenized_prompt_mask"][0]])
    assert "State: " in text and "Action:" in text  # PI0.5 writes the discretised state into the prompt
    out = policy.infer(robot_frame, noise=np.zeros((50, 32), np.float32))
    assert out["actions"].shape == (50, 14) and np.all(np.isfinite(out["actions"]))
