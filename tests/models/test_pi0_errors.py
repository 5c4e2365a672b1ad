"""Bad input to the PI0 API fails early with a message that names what was wrong."""

import jax
import numpy as np
import pytest
from pi0_test_helpers import random_observation

from hiors_jax.models import config as model_config
from hiors_jax.models import pi0, weights

CFG = model_config.tiny_config(action_horizon=4, max_token_len=8)


@pytest.fixture(scope="module")
def params():
    return jax.jit(pi0.init_params, static_argnums=0)(CFG, jax.random.key(0))


def _noise(batch=2, dims=None):
    return np.zeros((batch, CFG.action_horizon, dims or CFG.action_dim), np.float32)


def _with(obs, **changes):
    return pi0.Observation(**{**obs.__dict__, **changes})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda o: _with(o, images={**o.images, "cam_top": o.images["base_0_rgb"]}), "unknown camera.*cam_top"),
        (lambda o: _with(o, images={k: v for k, v in o.images.items() if k != "right_wrist_0_rgb"}), "missing camera"),
        (
            lambda o: _with(o, images={**o.images, "base_0_rgb": o.images["base_0_rgb"][:, :20]}),
            r"image 'base_0_rgb' has shape \(2, 20, 56, 3\)",
        ),
        (
            lambda o: _with(o, images={**o.images, "base_0_rgb": (o.images["base_0_rgb"] > 0).astype(np.uint8)}),
            "image 'base_0_rgb' has dtype uint8",
        ),
        (lambda o: _with(o, image_masks={"wrist": np.ones(2, bool)}), "image_masks has unknown camera"),
        (
            lambda o: _with(
                o, tokenized_prompt=np.zeros((2, 9), np.int32), tokenized_prompt_mask=np.ones((2, 9), bool)
            ),
            "prompt has 9 tokens, longer than max_token_len=8",
        ),
        (lambda o: _with(o, state=np.zeros((2, 33), np.float32)), "state has 33 dims, wider than .*action_dim=32"),
        (lambda o: _with(o, tokenized_prompt=None), "tokenized_prompt and tokenized_prompt_mask are required"),
    ],
)
def test_bad_observation(params, change, message):
    obs = change(random_observation(CFG, batch=2))
    with pytest.raises(ValueError, match=message):
        pi0.sample_actions(CFG, params, obs, _noise())


def test_bad_chunks_and_steps(params):
    obs = random_observation(CFG, batch=2)
    with pytest.raises(ValueError, match="noise has 40 dims, wider"):
        pi0.sample_actions(CFG, params, obs, _noise(dims=40))
    with pytest.raises(ValueError, match=r"actions has shape \(2, 5, 32\)"):
        pi0.compute_loss(CFG, params, obs, np.zeros((2, 5, 32)), _noise(), 0.5)
    with pytest.raises(ValueError, match="time has shape"):
        pi0.predict_velocity(CFG, params, obs, _noise(), np.ones(3))
    with pytest.raises(ValueError, match="num_steps must be >= 1"):
        pi0.sample_actions(CFG, params, obs, _noise(), num_steps=0)


def test_checkpoint_of_another_architecture(tmp_path, params):
    pi05 = pi0.init_params(model_config.tiny_config(pi05=True), jax.random.key(1))
    hybrid = {**pi05, "state_proj": params["state_proj"]}  # a PI0.5 tree with a stray PI0 leaf
    weights.save_params_tree(tmp_path / "hybrid", hybrid)
    with pytest.raises(ValueError, match="unexpected state_proj"):
        pi0.load_openpi_params(tmp_path / "hybrid")

    wrong = jax.tree.map(lambda x: x, params)
    wrong["action_out_proj"]["kernel"] = np.zeros((32, 7), np.float32)
    weights.save_params_tree(tmp_path / "wrong", wrong)
    with pytest.raises(ValueError, match=r"action_out_proj/kernel has shape \(32, 7\)"):
        pi0.load_openpi_params(tmp_path / "wrong")

    weights.save_params_tree(tmp_path / "not_pi0", {"encoder": {"kernel": np.zeros((3, 3), np.float32)}})
    with pytest.raises(ValueError, match="not a PI0/PI0.5 parameter tree: missing PaliGemma/llm/embedder"):
        pi0.load_openpi_params(tmp_path / "not_pi0")


def test_saved_tiny_checkpoint_round_trips(tmp_path, params):
    weights.save_params_tree(tmp_path / "params", params)
    default_config, _ = pi0.load_openpi_params(tmp_path)  # the checkpoint directory holding params/
    # Horizon and prompt length are not in the weights: openpi's defaults unless overridden.
    assert (default_config.action_horizon, default_config.max_token_len) == (50, 48)
    config, loaded = pi0.load_openpi_params(
        tmp_path / "params", action_horizon=CFG.action_horizon, max_token_len=CFG.max_token_len
    )
    assert config == CFG
    obs = random_observation(CFG, batch=1)
    np.testing.assert_array_equal(
        pi0.sample_actions(config, loaded, obs, _noise(1), num_steps=2),
        pi0.sample_actions(CFG, params, obs, _noise(1), num_steps=2),
    )


def test_from_dict_accepts_openpi_keys_and_uint8(params):
    obs = random_observation(CFG, batch=1)
    u8 = {k: np.round((v + 1) * 127.5).astype(np.uint8) for k, v in obs.images.items()}
    converted = pi0.Observation.from_dict(
        {
            "image": u8,
            "image_mask": obs.image_masks,
            "state": obs.state,
            "tokenized_prompt": obs.tokenized_prompt,
            "tokenized_prompt_mask": obs.tokenized_prompt_mask,
        }
    )
    for k, v in u8.items():
        np.testing.assert_allclose(converted.images[k], v / 255.0 * 2 - 1, atol=1e-6)
    assert pi0.sample_actions(CFG, params, converted, _noise(1), num_steps=1).shape == (1, 4, 32)
