"""Actor process for the learner/actor integration test: DobotEnv + the simulated X-Trainer (MuJoCo, scripted
human who takes over and labels each episode) in this process, the actor loop, the transport to the learner.

    python integration_actor.py WORKDIR PORT BROADCAST_PORT
Runs episodes (one every ~0.3 s) until WORKDIR/stop_actor exists, then waits until the learner has
persisted everything and writes WORKDIR/actor_result.json with what it sent.
"""

import json
import os
import pathlib
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from hiors_jax.train.actor import Actor  # noqa: E402
from hiors_jax.transport import ParamsSlot, QueuedDataStore, TrainerClient, TrainerConfig  # noqa: E402
from robot.dobot.env import DobotEnv, DobotEnvConfig  # noqa: E402
from robot.sim.serve import SimServeConfig, start_in_thread  # noqa: E402

SIZE = (24, 32)


def hold_pose(params, obs, key):
    # The learner's params arrive and are versioned; what is under test is the machinery, not the policy, so the
    # robot holds its pose and the scripted human takes over and finishes the task.
    return np.tile(np.asarray(obs["state"], np.float32), (50, 1))


def main(workdir: pathlib.Path, port: int, bport: int) -> None:
    config = TrainerConfig(port, bport, ["send-stats"])
    queue = QueuedDataStore(10_000, spill_dir=workdir / "spill")
    client = TrainerClient("actor_env", "127.0.0.1", config, data_stores={"actor_env": queue},
                           wait_for_server=True, timeout_ms=3000)  # fmt: skip
    slot = ParamsSlot()
    client.recv_network_callback(slot.set, with_version=True)
    env = DobotEnv(DobotEnvConfig(port=0, image_size=SIZE, robot_timeout_s=60, max_episode_s=4.0))
    sim = start_in_thread(SimServeConfig(uri=f"ws://127.0.0.1:{env.port}", image_size=SIZE, horizon_s=4.0))
    actor = Actor(env, hold_pose, slot, queue, client=client, actor_id="actor-0")
    actor.wait_for_params(timeout=300)
    while not (workdir / "stop_actor").exists():
        actor.run_episode()
        time.sleep(0.3)
    deadline = time.monotonic() + 240
    while len(queue) and time.monotonic() < deadline:  # acknowledged only once persisted by the learner
        client.update()
        time.sleep(0.5)
    result = {
        "sent": actor.sent_transitions,
        "episodes": {e["episode_id"]: e["length"] for e in actor.episodes},
        "labels": [e["label"] for e in actor.episodes],
        "unacknowledged": len(queue),
        "versions": sorted({v for e in actor.episodes for v in e["policy_versions"]}),
    }
    (workdir / "actor_result.json").write_text(json.dumps(result))
    client.stop()
    sim.stop()
    env.close()


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
