"""Learner process for the learner/actor integration test: tiny PI0, Hi-ORS on accepted data, ack="persist".

    python integration_learner.py WORKDIR PORT BROADCAST_PORT
SIGTERM stops it gracefully (final checkpoint, marks persisted); SIGKILL is what the test uses mid-run.
"""

import logging
import pathlib
import signal
import sys
import threading
import time

import jax
import numpy as np

from hiors_jax.data.pipeline import BatchLoader, PipelineConfig
from hiors_jax.data.replay import ReplayStore
from hiors_jax.models import pi0
from hiors_jax.models.config import tiny_config
from hiors_jax.models.preprocessing import NormStats
from hiors_jax.models.tokenizer import PaligemmaTokenizer, train_tiny_tokenizer
from hiors_jax.train import learner as learner_lib
from hiors_jax.transport import TrainerConfig, TrainerServer

PROMPTS = ["raise the left hand to the green ball", "pick up the cube", "fold the towel", "put the objects in the box"]


def main(workdir: pathlib.Path, port: int, bport: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    model = tiny_config(action_horizon=10, max_token_len=48)
    replay = ReplayStore(workdir / "replay", window_frames=500, image_size=(56, 56), horizon=10, use_videos=False)
    server = TrainerServer(TrainerConfig(port, bport, ["send-stats"]), ack="persist")
    server.register_data_store("actor_env", replay)
    cfg = learner_lib.LearnerConfig(
        max_steps=100_000, batch_size=2, publish_every=5, checkpoint_every=5, log_every=5, mesh_data=1
    )
    agent = learner_lib.make_agent(cfg, model, {"optimizer": {"schedule": "constant"}}, True)
    params = jax.jit(pi0.init_params, static_argnums=0)(model, jax.random.key(0))
    state = agent.init({"actor": params}, jax.random.PRNGKey(0))
    persist, stats = learner_lib.replay_hooks(replay)
    tok = PaligemmaTokenizer(train_tiny_tokenizer(workdir / "tok.model", PROMPTS, 40), model.max_token_len)
    loaders = []

    def batches():
        while "accepted" not in replay.windows:  # the first transition defines the dataset's shapes
            time.sleep(0.2)
        identity = NormStats(mean=np.zeros(14), std=np.ones(14))
        pipeline = PipelineConfig(batch_size=2, ratios={"accepted": 1.0}, augment=False)
        stats_ = {"state": identity, "actions": identity}
        loaders.append(BatchLoader({"accepted": replay.window("accepted")}, pipeline, model, tok, stats_))
        yield from loaders[0]

    learner = learner_lib.Learner(
        cfg, agent, state, batches(), workdir=workdir, server=server, replay_persist=persist, replay_stats=stats
    )
    server.start(threaded=True)  # after the Learner restored the checkpoint's transport marks
    print(f"resumed_from {learner.resumed_from}", flush=True)
    try:
        final = learner.run(stop)
        print(f"stopped at {int(final.step)}", flush=True)
    finally:
        for loader in loaders:
            loader.close()
        server.stop()
        replay.close()  # publish the saved episodes into the LeRobot datasets


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
