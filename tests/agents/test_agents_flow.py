"""Hi-ORS and SFT updates on the tiny PI0 preset (CPU)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from agent_helpers import random_batch, tiny_model, tiny_params, tree_equal

from hiors_jax.agents import hiors, sft
from hiors_jax.agents.train_state import OptimizerConfig
from hiors_jax.models import pi0

FAST = OptimizerConfig(peak_lr=3e-3, decay_lr=3e-4, warmup_steps=0, decay_steps=100)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def params(model):
    return tiny_params(model)


def run(agent, state, batch, steps):
    step = jax.jit(agent.train_step)
    losses = []
    for _ in range(steps):
        state, info = step(state, batch)
        losses.append(float(info["loss"]))
    return state, losses


@pytest.mark.parametrize("make", [hiors.make_agent, sft.make_agent], ids=["hiors", "sft"])
def test_update_lowers_loss_on_a_fixed_batch(model, params, make):
    agent = make(model, hiors.FlowConfig(optimizer=FAST))
    state = agent.init({"actor": params}, jax.random.PRNGKey(0))
    batch = random_batch(model, batch=4, seed=1)
    # Evaluate before/after with the same noise and time so the comparison measures the params only.
    key = jax.random.PRNGKey(7)
    cfg = hiors.FlowConfig(optimizer=FAST)
    before = float(hiors.flow_matching_loss(model, cfg, state.params["actor"], batch, key)[0])
    state, losses = run(agent, state, batch, 30)
    after = float(hiors.flow_matching_loss(model, cfg, state.params["actor"], batch, key)[0])
    assert int(state.step) == 30
    assert np.all(np.isfinite(losses))
    assert after < 0.7 * before, (before, after)


def test_loss_equals_openpi_compute_loss_when_nothing_is_masked(model, params):
    batch = random_batch(model, batch=3, seed=2)
    batch = dataclasses.replace(batch, action_is_pad=np.zeros_like(batch.action_is_pad))
    cfg = hiors.FlowConfig(trained_action_dims=model.action_dim)
    key = jax.random.PRNGKey(3)
    ours = hiors.flow_matching_loss(model, cfg, params, batch, key)[0]
    noise, time = pi0.sample_noise_and_time(key, batch.actions.shape)
    reference = jnp.mean(pi0.compute_loss(model, params, batch.observation, batch.actions, noise, time))
    np.testing.assert_allclose(ours, reference, rtol=1e-5)


def reference_loss(v, noise, actions, weight, is_pad, dims):
    """The weighted mean written out element by element (independent of the vectorised implementation)."""
    num = den = 0.0
    for b in range(actions.shape[0]):
        for h in range(actions.shape[1]):
            if is_pad is not None and is_pad[b, h]:
                continue
            for d in dims:
                num += weight[b] * (v[b, h, d] - (noise[b, h, d] - actions[b, h, d])) ** 2
                den += weight[b]
    return num / den


@pytest.mark.parametrize(
    "cfg",
    [
        hiors.FlowConfig(),
        hiors.FlowConfig(trained_action_dims=7),
        hiors.FlowConfig(trained_action_dims=(0, 3, 13)),
        hiors.FlowConfig(mask_padding=False),
        hiors.FlowConfig(use_weights=False),
    ],
    ids=["hiors", "left_arm", "dims", "no_pad_mask", "unweighted"],
)
def test_masks_weights_and_dims_select_what_is_trained(model, params, cfg):
    batch = random_batch(model, batch=3, seed=3)
    batch = dataclasses.replace(batch, weight=np.array([1.0, 0.0, 0.5], np.float32))
    key = jax.random.PRNGKey(4)
    noise, time = pi0.sample_noise_and_time(key, batch.actions.shape)
    t = np.asarray(time)[:, None, None]
    x_t = t * np.asarray(noise) + (1 - t) * batch.actions
    v = np.asarray(pi0.predict_velocity(model, params, batch.observation, x_t, time), np.float64)
    dims = range(cfg.trained_action_dims) if isinstance(cfg.trained_action_dims, int) else cfg.trained_action_dims
    expected = reference_loss(
        v,
        np.asarray(noise, np.float64),
        batch.actions.astype(np.float64),
        batch.weight if cfg.use_weights else np.ones(3),
        batch.action_is_pad if cfg.mask_padding else None,
        dims,
    )
    ours = float(hiors.flow_matching_loss(model, cfg, params, batch, key)[0])
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


def test_frozen_leaves_do_not_move_and_get_no_optimizer_state(model, params):
    trainable = jax.tree.map(lambda _: False, params)
    trainable["action_in_proj"] = {"kernel": True, "bias": True}
    trainable["action_out_proj"] = {"kernel": True, "bias": True}
    agent = hiors.make_agent(model, hiors.FlowConfig(optimizer=FAST), trainable)
    state = agent.init({"actor": params}, jax.random.PRNGKey(0))
    new, _ = run(agent, state, random_batch(model, seed=5), 2)
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new.params["actor"])
    assert moved["action_in_proj"]["kernel"] and moved["action_out_proj"]["kernel"]
    assert not any(jax.tree.leaves(moved["PaliGemma"])) and not moved["state_proj"]["kernel"]
    adam_leaves = sum(x.size for x in jax.tree.leaves(new.opt_state["actor"]) if x.ndim > 0)
    trained = sum(x.size for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(trainable), strict=True) if m)
    assert adam_leaves == 2 * trained  # mu and nu for trained leaves only


def test_gradient_is_clipped_and_ema_tracks_the_policy(model, params):
    opt = dataclasses.replace(FAST, clip_grad_norm=1e-3, weight_decay=0.0, schedule="constant")
    agent = hiors.make_agent(model, hiors.FlowConfig(optimizer=opt, ema_decay=0.5))
    state = agent.init({"actor": params}, jax.random.PRNGKey(0))
    new, info = jax.jit(agent.train_step)(state, random_batch(model, seed=6))
    assert float(info["grad_norm"]) > 1e-3  # the raw norm is reported; Adam's first moment saw the clipped one
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    mu = next(s.mu for s in jax.tree.leaves(new.opt_state["actor"], is_leaf=is_adam) if is_adam(s))
    np.testing.assert_allclose(float(optax.tree.norm(mu)), (1 - opt.b1) * 1e-3, rtol=1e-3)
    expected = jax.tree.map(lambda p0, p1: 0.5 * p0 + 0.5 * p1, params, new.params["actor"])
    assert jax.tree.all(jax.tree.map(lambda a, b: jnp.allclose(a, b, atol=1e-7), new.ema_params, expected))
    assert agent.policy_params(new) is new.ema_params


def test_bad_agent_config_names_the_field(model):
    with pytest.raises(ValueError, match="trained_action_dims"):
        hiors.make_agent(model, hiors.FlowConfig(trained_action_dims=40))
    with pytest.raises(ValueError, match="optimizer.schedule"):
        hiors.FlowConfig.from_dict({"optimizer": {"schedule": "linear"}})
    with pytest.raises(ValueError, match=r"agent: unknown field\(s\) \['lr'\]"):
        hiors.FlowConfig.from_dict({"lr": 1.0})
    assert tree_equal({"a": np.ones(2)}, {"a": np.ones(2)})
