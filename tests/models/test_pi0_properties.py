"""Structural properties of the PI0 / PI0.5 port on the tiny presets (no external data needed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pi0_test_helpers import random_observation, random_params, take

from hiors_jax.models import config as model_config
from hiors_jax.models import gemma, pi0, weights


@pytest.fixture(scope="module", params=[False, True], ids=["pi0", "pi05"])
def model(request):
    cfg = model_config.tiny_config(pi05=request.param, action_horizon=6, max_token_len=10)
    return cfg, random_params(cfg, seed=3)


def _chunk(cfg, batch, seed):
    return np.random.default_rng(seed).normal(size=(batch, cfg.action_horizon, cfg.action_dim)).astype(np.float32)


def test_cached_denoise_equals_joint_pass(model):
    cfg, params = model
    obs = random_observation(cfg, batch=2, prompt_lengths=[4, 10], masks={"left_wrist_0_rgb": np.array([True, False])})
    x_t, t = _chunk(cfg, 2, 1), np.array([0.3, 0.9], np.float32)
    joint = pi0.predict_velocity(cfg, params, obs, x_t, t)
    prepared = pi0.prepare_observation(cfg, obs)
    cache, prefix_mask = pi0.prefix_kv_cache(cfg, params, prepared)
    cached = pi0.denoise_step(cfg, params, prepared, cache, prefix_mask, jnp.asarray(x_t), jnp.asarray(t))
    np.testing.assert_allclose(cached, joint, atol=2e-6)


def test_one_step_sampling_is_noise_minus_velocity(model):
    cfg, params = model
    obs = random_observation(cfg, batch=2, seed=1)
    noise = _chunk(cfg, 2, 2)
    v = pi0.predict_velocity(cfg, params, obs, noise, 1.0)
    np.testing.assert_allclose(pi0.sample_actions(cfg, params, obs, noise, num_steps=1), noise - v, atol=2e-6)


def test_sampler_takes_num_steps_euler_steps(model):
    cfg, params = model
    obs = random_observation(cfg, batch=1, seed=2)
    noise = _chunk(cfg, 1, 3)
    actions, traj = pi0.sample_actions(cfg, params, obs, noise, num_steps=4, return_trajectory=True)
    assert traj.shape == (4, 1, cfg.action_horizon, cfg.action_dim)
    np.testing.assert_array_equal(traj[-1], actions)
    # Replay the Euler steps with the joint pass at openpi's float32-accumulated times.
    x, t = jnp.asarray(noise), np.float32(1.0)
    for k in range(4):
        x = x + np.float32(-0.25) * pi0.predict_velocity(cfg, params, obs, x, t)
        t = np.float32(t + np.float32(-0.25))
        np.testing.assert_allclose(traj[k], x, atol=1e-5)


def test_prefix_never_sees_the_suffix(model):
    cfg, params = model
    prepared = pi0.prepare_observation(cfg, random_observation(cfg, batch=2, seed=4))
    prefix_tokens, prefix_mask, prefix_ar = pi0.embed_prefix(cfg, params, prepared)

    def joint_keys(x_t):
        suffix, suffix_mask, suffix_ar, cond = pi0.embed_suffix(cfg, params, prepared, x_t, jnp.full((2,), 0.5))
        mask = jnp.concatenate([prefix_mask, suffix_mask], 1)
        ar = jnp.concatenate([prefix_ar, suffix_ar])
        _, (k, v) = gemma.apply(
            (cfg.vlm, cfg.expert),
            params["PaliGemma"]["llm"],
            [prefix_tokens, suffix],
            jnp.cumsum(mask, 1) - 1,
            pi0.make_attn_mask(mask, ar),
            adarms_cond=[None, cond],
        )
        return k[:, :, : prefix_tokens.shape[1]], v[:, :, : prefix_tokens.shape[1]]

    a, b = joint_keys(jnp.asarray(_chunk(cfg, 2, 5))), joint_keys(jnp.asarray(_chunk(cfg, 2, 6)))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    cached, _ = pi0.prefix_kv_cache(cfg, params, prepared)
    np.testing.assert_allclose(cached[0], a[0], atol=1e-5)


def test_padding_and_masked_cameras_do_not_leak(model):
    cfg, params = model
    masks = {"left_wrist_0_rgb": np.array([False, True])}
    obs = random_observation(cfg, batch=2, prompt_lengths=[3, 7], masks=masks, seed=5)
    noise = _chunk(cfg, 2, 7)
    base = pi0.sample_actions(cfg, params, obs, noise, num_steps=2)
    images = dict(obs.images)
    images["left_wrist_0_rgb"] = images["left_wrist_0_rgb"].copy()
    images["left_wrist_0_rgb"][0] = -images["left_wrist_0_rgb"][0]  # masked camera of sample 0
    tokens = obs.tokenized_prompt.copy()
    tokens[0, 3:] = 7  # padding tokens of sample 0
    changed = pi0.Observation(
        images=images,
        image_masks=obs.image_masks,
        state=obs.state,
        tokenized_prompt=tokens,
        tokenized_prompt_mask=obs.tokenized_prompt_mask,
    )
    np.testing.assert_array_equal(pi0.sample_actions(cfg, params, changed, noise, num_steps=2), base)


def test_batch_invariance(model):
    cfg, params = model
    obs = random_observation(cfg, batch=3, prompt_lengths=[2, 10, 6], seed=6)
    noise = _chunk(cfg, 3, 8)
    together = pi0.sample_actions(cfg, params, obs, noise, num_steps=3)
    for i in range(3):
        alone = pi0.sample_actions(cfg, params, take(obs, slice(i, i + 1)), noise[i : i + 1], num_steps=3)
        np.testing.assert_allclose(alone[0], together[i], atol=1e-5)


def test_short_state_and_prompt_are_zero_padded(model):
    cfg, params = model
    obs = random_observation(cfg, batch=2, prompt_lengths=[5, 5], seed=7, state_dim=14)
    short = pi0.Observation(
        images=obs.images,
        image_masks=obs.image_masks,
        state=obs.state,
        tokenized_prompt=obs.tokenized_prompt[:, :5],
        tokenized_prompt_mask=obs.tokenized_prompt_mask[:, :5],
    )
    noise = _chunk(cfg, 2, 9)[..., :14]
    padded_noise = np.pad(noise, [(0, 0), (0, 0), (0, cfg.action_dim - 14)])
    padded_state = pi0.Observation(**{**obs.__dict__, "state": np.pad(obs.state, [(0, 0), (0, cfg.action_dim - 14)])})
    np.testing.assert_array_equal(
        pi0.sample_actions(cfg, params, short, noise, num_steps=2),
        pi0.sample_actions(cfg, params, padded_state, padded_noise, num_steps=2),
    )


def test_gradients_finite_and_dead_parameters_get_none(model):
    cfg, params = model
    obs = random_observation(cfg, batch=2, seed=8)
    actions, noise = _chunk(cfg, 2, 10), _chunk(cfg, 2, 11)
    time = np.array([0.2, 0.8], np.float32)
    grads = jax.grad(lambda p: pi0.compute_loss(cfg, p, obs, actions, noise, time).mean())(params)
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(g)), f"non-finite gradient at {jax.tree_util.keystr(path)}"
    # The last PaliGemma layer's prefix outputs are never consumed (only its keys/values are): openpi's dead params.
    llm = grads["PaliGemma"]["llm"]
    assert np.all(llm["layers"]["attn"]["q_einsum"]["w"][-1] == 0)
    assert np.all(llm["layers"]["mlp"]["linear"][-1] == 0)
    assert np.all(llm["final_norm"]["scale"] == 0)
    assert np.any(llm["layers"]["attn"]["kv_einsum"]["w"][-1] != 0)
    assert np.any(grads["PaliGemma"]["img"]["head"]["kernel"] != 0)


def test_remat_and_bf16_compute(model):
    cfg, params = model
    obs = random_observation(cfg, batch=2, seed=9)
    actions, noise = _chunk(cfg, 2, 12), _chunk(cfg, 2, 13)
    time = np.array([0.4, 0.6], np.float32)
    loss_fn = lambda c: lambda p: pi0.compute_loss(c, p, obs, actions, noise, time).mean()
    base_loss, base_grads = jax.value_and_grad(loss_fn(cfg))(params)
    remat_loss, remat_grads = jax.value_and_grad(loss_fn(cfg.replace(remat=True)))(params)
    np.testing.assert_allclose(remat_loss, base_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(base_grads), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    bf16 = cfg.replace(dtype="bfloat16")
    bf16_loss = pi0.compute_loss(bf16, params, obs, actions, noise, time)
    assert bf16_loss.dtype == jnp.float32
    np.testing.assert_allclose(bf16_loss.mean(), base_loss, rtol=0.05)


def test_real_presets_have_openpi_parameter_counts():
    # Shapes only (jax.eval_shape): no memory for 3.2e9 parameters.
    assert weights.count_params(pi0.param_shapes(model_config.pi0_config())) == 3_238_048_528
    pi05_count = weights.count_params(pi0.param_shapes(model_config.pi05_config()))
    assert abs(pi05_count - 3.353e9) < 1e6
    shapes = pi0.param_shapes(model_config.pi0_config())
    assert shapes["PaliGemma"]["llm"]["layers"]["attn"]["kv_einsum"]["w"].shape == (18, 2, 1, 2048, 256)
    assert shapes["PaliGemma"]["img"]["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (
        27,
        1152,
        4304,
    )
    assert pi0.infer_config(shapes) == model_config.pi0_config()


def test_state_input_false_ignores_the_state():
    """The sim preset's PI0 without proprioception: the state token is the same whatever the state."""
    import dataclasses

    cfg = model_config.tiny_config(pi05=False, action_horizon=6, max_token_len=10)
    params = random_params(cfg, seed=3)
    blind = dataclasses.replace(cfg, state_input=False)
    obs = random_observation(cfg, batch=1, seed=5)
    moved = dataclasses.replace(obs, state=obs.state + 1.0)
    x_t = _chunk(cfg, 1, 6)
    same = [pi0.predict_velocity(blind, params, o, x_t, 0.5) for o in (obs, moved)]
    np.testing.assert_array_equal(same[0], same[1])
    seen = [pi0.predict_velocity(cfg, params, o, x_t, 0.5) for o in (obs, moved)]
    assert not np.allclose(seen[0], seen[1])
    assert model_config.get_preset("pi0_sim").state_input is False
    with pytest.raises(ValueError, match="state_input=False is for PI0"):
        model_config.tiny_config(pi05=True, state_input=False)
