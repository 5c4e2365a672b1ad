"""PI0 / PI0.5 against openpi's own outputs (../shared/fixtures/openpi_pi0{,5}_tiny, made by running openpi)."""

import jax.numpy as jnp
import numpy as np
import pytest

from hiors_jax.models import gemma, pi0, siglip

F32_ATOL = 1e-5
# The fixture README: bf16 runs move by up to ~0.09 against f32 and depend on op order; atol ~0.1 suggested.
BF16_ATOL = 0.1

FIXTURES = ["openpi_pi0_tiny", "openpi_pi05_tiny"]


@pytest.fixture(scope="module", params=FIXTURES)
def fixture_dir(request, require_fixture):
    return require_fixture(request.param)


def _observation(io, keys):
    return pi0.Observation(
        images={k: io[f"image_{k}"] for k in keys},
        image_masks={k: io[f"image_mask_{k}"] for k in keys},
        state=io["state"],
        tokenized_prompt=io["tokenized_prompt"],
        tokenized_prompt_mask=io["tokenized_prompt_mask"],
    )


def _close(actual, expected, atol, what):
    actual = np.asarray(jnp.asarray(actual, jnp.float32))
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = float(np.abs(actual - expected).max())
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol}"


@pytest.mark.parametrize("checkpoint", ["params", "params_nnx_state"])
def test_f32_outputs_match_openpi(fixture_dir, checkpoint):
    io = np.load(fixture_dir / "io.npz")
    config, params = pi0.load_openpi_params(fixture_dir / checkpoint)
    assert config.dtype == "float32"
    assert config.pi05 == ("pi05" in fixture_dir.name)
    assert config.max_token_len == io["tokenized_prompt"].shape[1]
    obs = _observation(io, config.image_keys)
    prepared = pi0.prepare_observation(config, obs)

    img = siglip.encode_images(config.vision, params["PaliGemma"]["img"], io["image_base_0_rgb"], jnp.float32)
    _close(img, io["img_tokens_base_0_rgb"], F32_ATOL, "SigLIP image tokens")

    prefix_tokens, prefix_mask, prefix_ar = pi0.embed_prefix(config, params, prepared)
    _close(prefix_tokens, io["prefix_tokens"], F32_ATOL, "prefix tokens")
    np.testing.assert_array_equal(prefix_mask, io["prefix_input_mask"])
    np.testing.assert_array_equal(prefix_ar, io["prefix_ar_mask"])
    np.testing.assert_array_equal(pi0.make_attn_mask(prefix_mask, prefix_ar), io["prefix_attn_mask"])

    suffix_tokens, suffix_mask, suffix_ar, _ = pi0.embed_suffix(config, params, prepared, io["x_t"], io["time"])
    _close(suffix_tokens, io["suffix_tokens"], F32_ATOL, "suffix tokens")
    np.testing.assert_array_equal(suffix_ar, io["suffix_ar_mask"])
    full_mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
    full_ar = jnp.concatenate([prefix_ar, suffix_ar])
    np.testing.assert_array_equal(pi0.make_attn_mask(full_mask, full_ar), io["full_attn_mask"])
    np.testing.assert_array_equal(jnp.cumsum(full_mask, axis=1) - 1, io["full_positions"])

    (k, v), mask = pi0.prefix_kv_cache(config, params, prepared)
    valid = io["prefix_input_mask"][None, :, :, None, None]  # padded queries carry meaningless values by design
    _close(np.where(valid, k, 0), np.where(valid, io["kv_cache_k"], 0), F32_ATOL, "prefix keys")
    _close(np.where(valid, v, 0), np.where(valid, io["kv_cache_v"], 0), F32_ATOL, "prefix values")

    _close(pi0.predict_velocity(config, params, obs, io["x_t"], io["time"]), io["v_t"], F32_ATOL, "v_t")
    loss = pi0.compute_loss(config, params, obs, io["actions"], io["noise"], io["time"])
    _close(loss, io["loss"], F32_ATOL, "loss")
    actions, trajectory = pi0.sample_actions(config, params, obs, io["noise"], num_steps=10, return_trajectory=True)
    _close(actions, io["sample_actions"], F32_ATOL, "sample_actions")
    _close(trajectory, io["sample_trajectory"][1:], F32_ATOL, "sampling trajectory")
    one = pi0.sample_actions(config, params, obs, io["noise"], num_steps=1)
    _close(one, io["sample_actions_num_steps_1"], F32_ATOL, "sample_actions(num_steps=1)")


def test_bf16_outputs_match_openpi(fixture_dir):
    io = np.load(fixture_dir / "io.npz")
    config, params = pi0.load_openpi_params(fixture_dir / "params_bf16")
    assert config.dtype == "bfloat16"
    assert {np.dtype(x.dtype) for x in _leaves(params)} == {np.dtype(jnp.bfloat16)}
    obs = _observation(io, config.image_keys)
    img = siglip.encode_images(config.vision, params["PaliGemma"]["img"], io["image_base_0_rgb"], jnp.bfloat16)
    assert img.dtype == jnp.bfloat16
    _close(img, io["bf16_img_tokens_base_0_rgb"], BF16_ATOL, "bf16 image tokens")
    _close(pi0.predict_velocity(config, params, obs, io["x_t"], io["time"]), io["bf16_v_t"], BF16_ATOL, "bf16 v_t")
    loss = pi0.compute_loss(config, params, obs, io["actions"], io["noise"], io["time"])
    assert loss.dtype == jnp.float32
    _close(loss, io["bf16_loss"], BF16_ATOL, "bf16 loss")
    actions = pi0.sample_actions(config, params, obs, io["noise"], num_steps=10)
    assert actions.dtype == jnp.float32
    _close(actions, io["bf16_sample_actions"], BF16_ATOL, "bf16 sample_actions")
    one = pi0.sample_actions(config, params, obs, io["noise"], num_steps=1)
    _close(one, io["bf16_sample_actions_num_steps_1"], BF16_ATOL, "bf16 sample_actions(num_steps=1)")


def test_f32_checkpoint_cast_to_bf16_matches_bf16_checkpoint(fixture_dir):
    """openpi's inference path restores f32 checkpoints with dtype=bfloat16: same bits as the bf16 copy."""
    _, cast = pi0.load_openpi_params(fixture_dir / "params", dtype=jnp.bfloat16)
    _, stored = pi0.load_openpi_params(fixture_dir / "params_bf16")
    for a, b in zip(_leaves(cast), _leaves(stored), strict=True):
        np.testing.assert_array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16))


def test_pi05_ignores_state_array(shared_fixtures):
    path = shared_fixtures / "openpi_pi05_tiny"
    io = np.load(path / "io.npz")
    config, params = pi0.load_openpi_params(path / "params")
    obs = _observation(io, config.image_keys)
    moved = pi0.Observation(**{**obs.__dict__, "state": io["state"] + 1.0})
    a = pi0.predict_velocity(config, params, obs, io["x_t"], io["time"])
    b = pi0.predict_velocity(config, params, moved, io["x_t"], io["time"])
    np.testing.assert_array_equal(a, b)


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def test_rms_norm_uses_one_plus_scale():
    x = jnp.asarray([[[1.0, -2.0, 3.0, 0.5]]])
    out, gate = gemma.rms_norm(x, {"scale": jnp.asarray([0.0, 1.0, -1.0, 0.5])})
    rms = np.sqrt(np.mean(np.square([1.0, -2.0, 3.0, 0.5])) + 1e-6)
    np.testing.assert_allclose(out[0, 0], np.array([1.0, -4.0, 0.0, 0.75]) / rms, rtol=1e-6)
    assert gate is None
