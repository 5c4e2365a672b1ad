"""Learner loop: trains, publishes bf16 params over the transport, checkpoints with marks, resumes; bad configs
fail at start-up naming the field."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from agent_helpers import random_batch, tiny_model, tiny_params, tree_equal

from experiments.plot_run import read_scalars
from hiors_jax.train import learner as learner_lib
from hiors_jax.transport import ParamsSlot, TrainerClient, TrainerConfig, TrainerServer

AGENT = {"optimizer": {"peak_lr": 1e-3, "warmup_steps": 2, "decay_steps": 6}}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def batches(model, n=2):
    fixed = [random_batch(model, batch=2, seed=s) for s in range(n)]
    return ((b, {"accepted": 2}) for b in itertools.cycle(fixed))


def test_learner_trains_publishes_checkpoints_and_resumes(model, tmp_path, free_ports):
    cfg = learner_lib.LearnerConfig(
        max_steps=6, batch_size=2, publish_every=3, checkpoint_every=3, log_every=2, mesh_data=1,
        freeze=("PaliGemma/img/.*",),
    )  # fmt: skip
    params = tiny_params(model)
    agent = learner_lib.make_agent(cfg, model, AGENT, learner_lib.policy_trainable(cfg, model, params))
    config = TrainerConfig(*free_ports)
    server = TrainerServer(config, ack="persist")
    server.start(threaded=True)
    client = TrainerClient("actor_env", "127.0.0.1", config, data_stores={}, wait_for_server=True, timeout_ms=3000)
    slot = ParamsSlot()
    client.recv_network_callback(slot.set, with_version=True)
    try:
        learner = learner_lib.Learner(
            cfg, agent, agent.init({"actor": params}, jax.random.PRNGKey(0)), batches(model),
            workdir=tmp_path, mesh=None, server=server,
        )  # fmt: skip
        final = learner.run()
        assert int(final.step) == 6 and learner.publisher.sent[-1] == 6 and learner.publisher.errors == 0
        version, received = slot.wait_for(lambda v: v >= 6, timeout=30)
    finally:
        client.stop()
        server.stop()
    assert version == 6
    expected = jax.device_get(jax.tree.map(lambda x: x.astype(jnp.bfloat16), agent.policy_params(final)))
    assert tree_equal(jax.tree.map(np.asarray, received), expected)
    assert learner.checkpointer.all_steps() == [3, 6]
    assert tree_equal(
        jax.device_get(final.params["actor"]["PaliGemma"]["img"]), jax.device_get(params["PaliGemma"]["img"])
    )
    scalars = read_scalars(tmp_path / "tensorboard")
    assert {"training/loss", "training/lr", "training/grad_norm", "timer/wait_fraction", "batch/accepted"} <= set(
        scalars
    )
    np.testing.assert_array_equal(scalars["training/loss"].steps, [2, 4, 6])

    # A new learner in the same workdir resumes from step 6 and runs on to 8.
    cfg8 = learner_lib.LearnerConfig(max_steps=8, batch_size=2, checkpoint_every=3, log_every=2, mesh_data=1)
    fresh = agent.init({"actor": params}, jax.random.PRNGKey(0))
    resumed = learner_lib.Learner(cfg8, agent, fresh, batches(model), workdir=tmp_path)
    assert resumed.resumed_from == 6
    assert tree_equal(jax.device_get(resumed.state.params), jax.device_get(final.params))
    assert int(resumed.run().step) == 8
    assert resumed.checkpointer.all_steps() == [3, 6, 8]  # keep_checkpoints=3


def test_bad_config_fails_at_start_up_naming_the_field(model, tmp_path):
    with pytest.raises(ValueError, match="learner.algorithm='ppo'"):
        learner_lib.LearnerConfig(algorithm="ppo")
    with pytest.raises(ValueError, match=r"learner: unknown field\(s\) \['bach_size'\]"):
        learner_lib.LearnerConfig.from_dict({"bach_size": 8})
    long_schedule = {"optimizer": {"warmup_steps": 10, "decay_steps": 1000}}
    with pytest.raises(ValueError, match=r"agent.optimizer.decay_steps=1000 is longer than training \(max_steps=100\)"):
        learner_lib.make_agent(learner_lib.LearnerConfig(max_steps=100), model, long_schedule, True)
    params = tiny_params(model)
    with pytest.raises(ValueError, match=r"learner.freeze: 'PaliGemma/vision/.\*' names no parameter"):
        learner_lib.trainable_mask(params, ("PaliGemma/vision/.*",))
    with pytest.raises(ValueError, match="freezes every parameter"):
        learner_lib.trainable_mask(params, (".*",))
    with pytest.raises(ValueError, match=r"learner.trainable='lora'.*selects no parameter"):
        learner_lib.policy_trainable(learner_lib.LearnerConfig(trainable="lora"), model, params)
    with pytest.raises(ValueError, match="trains nothing"):
        cfg_ae = learner_lib.LearnerConfig(trainable="action_expert", freeze=("action_.*", "state_proj/.*", ".*_1.*"))
        learner_lib.policy_trainable(cfg_ae, model, params)
    mask = learner_lib.trainable_mask(params, ("PaliGemma/img/.*",))
    assert not any(jax.tree.leaves(mask["PaliGemma"]["img"])) and all(jax.tree.leaves(mask["PaliGemma"]["llm"]))

    # batch_size must split over the mesh's batch shards: checked before anything compiles.
    fake_mesh = type("M", (), {"shape": {"data": 4, "fsdp": 2}})()
    cfg = learner_lib.LearnerConfig(max_steps=10, batch_size=12)
    agent = learner_lib.make_agent(cfg, model, {"optimizer": {"schedule": "constant"}}, True)
    with pytest.raises(ValueError, match="learner.batch_size=12 must be a positive multiple"):
        learner_lib.Learner(cfg, agent, None, iter(()), workdir=tmp_path, mesh=fake_mesh)
    with pytest.raises(ValueError, match=r"gave 2 samples; .* = 12"):
        learner_lib._check_batch(random_batch(model, batch=2), 12)
