"""Checkpoints: bit-exact resume, keep-N, transport marks with the state, openpi-layout policy export."""

import jax
import numpy as np
import pytest
from agent_helpers import random_batch, tiny_model, tiny_params, tree_equal

from hiors_jax.agents import hiors
from hiors_jax.agents.train_state import OptimizerConfig
from hiors_jax.models import pi0, preprocessing
from hiors_jax.train import checkpoints
from hiors_jax.transport import TrainerConfig, TrainerServer


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    opt = OptimizerConfig(peak_lr=1e-3, decay_lr=1e-4, warmup_steps=2, decay_steps=6)
    agent = hiors.make_agent(model, hiors.FlowConfig(optimizer=opt, ema_decay=0.9))
    state = agent.init({"actor": tiny_params(model)}, jax.random.PRNGKey(42))
    # Restored arrays are committed to their device; commit the live state too so both hit one compiled step
    # (the learner does this by placing the state with explicit shardings).
    state = jax.device_put(state, jax.devices()[0])
    batches = [random_batch(model, batch=2, seed=s) for s in range(5)]
    return model, agent, jax.jit(agent.train_step), state, batches


def test_train_save_restore_train_equals_uninterrupted(setup, tmp_path, free_ports):
    _, _, step, state0, batches = setup
    uninterrupted = state0
    for b in batches:
        uninterrupted, _ = step(uninterrupted, b)

    server = TrainerServer(TrainerConfig(*free_ports), ack="persist")
    try:
        ckpt = checkpoints.Checkpointer(tmp_path / "ckpt", save_every=3, keep=2)
        state = state0
        for b in batches[:3]:
            state, _ = step(state, b)
        assert ckpt.due(int(state.step))
        ckpt.save(int(state.step), state, {"replay": {"size": 3}}, persist=server.persist)
        ckpt.close()
    finally:
        server.stop()

    fresh = checkpoints.Checkpointer(tmp_path / "ckpt", save_every=3)
    restored, meta = fresh.restore(state0)  # the template is a fresh state: nothing of the run leaks in
    fresh.close()
    assert meta["step"] == 3 and meta["replay"] == {"size": 3} and meta["transport_marks"] == []
    assert int(restored.step) == 3
    for b in batches[3:]:
        restored, _ = step(restored, b)
    assert tree_equal(jax.device_get(restored), jax.device_get(uninterrupted))


def test_keeps_the_newest_n_and_restores_a_chosen_step(setup, tmp_path):
    _, _, _, state0, _ = setup
    ckpt = checkpoints.Checkpointer(tmp_path / "ckpt", save_every=1, keep=2, background=False)
    for s in range(1, 5):
        ckpt.save(s, state0.replace(step=state0.step + s), {"tag": s})
    assert ckpt.all_steps() == [3, 4] and ckpt.latest_step() == 4
    restored, meta = ckpt.restore(state0, step=3)
    assert int(restored.step) == 3 and meta["tag"] == 3
    ckpt.close()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoints.Checkpointer(tmp_path / "empty", save_every=1).restore(state0)


def test_bad_checkpoint_config_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="checkpoint.save_every"):
        checkpoints.Checkpointer(tmp_path, save_every=0)
    with pytest.raises(ValueError, match="checkpoint.keep"):
        checkpoints.Checkpointer(tmp_path, save_every=1, keep=0)


def test_export_loads_with_the_openpi_loader(setup, tmp_path):
    model, agent, _, state0, _ = setup
    stats = {"state": preprocessing.NormStats(mean=np.zeros(14), std=np.ones(14))}
    stats["actions"] = stats["state"]
    out = checkpoints.export_policy(tmp_path / "export", agent.policy_params(state0), stats, "xtrainer")
    config, params = pi0.load_openpi_params(out, max_token_len=model.max_token_len, action_horizon=8)
    assert config.action_dim == model.action_dim and config.vlm == model.vlm
    assert tree_equal(params, jax.device_get(agent.policy_params(state0)))
    loaded = preprocessing.load_norm_stats(out / "assets" / "xtrainer")
    np.testing.assert_array_equal(loaded["actions"].std, np.ones(14))
