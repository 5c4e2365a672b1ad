"""SAC on the tiny PI0 preset: critic and actor losses fall, critic-only steps leave the actor bit-identical."""

import dataclasses

import jax
import numpy as np
import pytest
from agent_helpers import random_batch, tiny_model, tiny_params, tree_equal

from hiors_jax.agents import sac
from hiors_jax.agents.train_state import OptimizerConfig, optimizer_count
from hiors_jax.models import critic as critic_lib

CFG = sac.SacConfig(
    critic_steps=2,
    num_sample_steps=2,
    hidden_dims=(32, 32),
    distill_weight=0.1,
    ema_decay=0.5,
    actor_optimizer=OptimizerConfig(peak_lr=1e-3, schedule="constant"),
    critic_optimizer=OptimizerConfig(peak_lr=3e-3, schedule="constant"),
)


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    agent = sac.make_agent(model, CFG)
    state = jax.device_put(agent.init({"actor": tiny_params(model)}, jax.random.PRNGKey(0)), jax.devices()[0])
    batch = random_batch(model, batch=4, seed=1, sac=True)  # 2 critic minibatches of 2
    return model, agent, state, batch


def test_critic_only_step_leaves_the_actor_bit_identical(setup):
    _, agent, state, batch = setup
    full = jax.jit(agent.train_step)
    state, _ = full(state, batch)  # give the actor momentum first: a leak would now show
    critic_only = jax.jit(agent.partial_updates["critic"])
    new, info = critic_only(state, batch, jax.random.PRNGKey(5))
    assert tree_equal(jax.device_get(new.params["actor"]), jax.device_get(state.params["actor"]))
    assert tree_equal(jax.device_get(new.opt_state["actor"]), jax.device_get(state.opt_state["actor"]))
    assert tree_equal(jax.device_get(new.ema_params), jax.device_get(state.ema_params))
    assert tree_equal(jax.device_get(new.extra["reference_actor"]), jax.device_get(state.extra["reference_actor"]))
    assert not tree_equal(jax.device_get(new.params["critic"]), jax.device_get(state.params["critic"]))
    assert not tree_equal(jax.device_get(new.extra["target_critic"]), jax.device_get(state.extra["target_critic"]))
    # critic_steps=2 minibatches per update: the critic optimizer counted 2 steps, the actor's none.
    assert int(optimizer_count(new.opt_state["critic"])) == int(optimizer_count(state.opt_state["critic"])) + 2
    assert int(optimizer_count(new.opt_state["actor"])) == int(optimizer_count(state.opt_state["actor"]))
    assert np.isfinite(float(info["critic_loss"]))


def test_critic_loss_falls_on_a_fixed_batch(setup):
    _, agent, state, batch = setup
    step = jax.jit(agent.partial_updates["critic"])
    losses = []
    for i in range(25):
        state, info = step(state, batch, jax.random.PRNGKey(i % 1))
        losses.append(float(info["critic_loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


def test_full_update_raises_q_of_the_policy_actions(setup):
    """Against a fixed critic, the actor loss (-Q(s, pi(s)) + distillation) falls over full updates."""
    model, agent, state, batch = setup
    frozen_critic = dataclasses.replace(CFG, critic_optimizer=OptimizerConfig(peak_lr=1e-12, schedule="constant"))
    agent = sac.make_agent(model, frozen_critic)
    step = jax.jit(agent.train_step)
    losses = []
    for _ in range(12):
        state, info = step(state, batch)
        losses.append(float(info["actor_loss"]))
    assert np.all(np.isfinite(losses)) and "distill_loss" in info
    assert losses[-1] < losses[0], losses
    assert int(optimizer_count(state.opt_state["actor"])) == 12


def test_critic_ensemble_members_are_independent():
    critic = critic_lib.CriticEnsemble(hidden_dims=(8,), ensemble_size=3)
    params = critic_lib.init_critic(critic, jax.random.PRNGKey(0), 4, 2, 6)
    head = params["VmapQMLP_0"]["Dense_1"]["kernel"] if "VmapQMLP_0" in params else None
    q = critic.apply({"params": params}, np.ones((5, 4)), np.ones((5, 2)), np.ones((5, 3, 2)))
    assert q.shape == (3, 5)
    assert len(set(np.round(np.asarray(q[:, 0]), 6))) == 3, "each member has its own weights and head"
    assert head is None or head.shape[0] == 3


def test_bad_sac_config_names_the_field():
    with pytest.raises(ValueError, match="sac.discount"):
        sac.SacConfig(discount=1.5)
    with pytest.raises(ValueError, match="sac.ensemble_size"):
        sac.SacConfig(ensemble_size=1)
    with pytest.raises(ValueError, match="critic_optimizer.peak_lr"):
        sac.SacConfig.from_dict({"critic_optimizer": {"peak_lr": -1.0}})
