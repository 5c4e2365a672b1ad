"""Actor loop against a real learner-side TrainerServer and ReplayStore (the robot is a stand-in env)."""

import threading

import jax
import numpy as np
from fake_robot_env import FakeRobotEnv

from hiors_jax.data.replay import ReplayStore
from hiors_jax.train.actor import Actor
from hiors_jax.transport import DataStoreBase, ParamsSlot, QueuedDataStore, TrainerClient, TrainerConfig, TrainerServer


class Recording(DataStoreBase):
    """The learner's replay store, also remembering every transition it accepted."""

    def __init__(self, replay):
        super().__init__(10_000)
        self.replay, self.items = replay, []

    def insert(self, data):
        self.replay.insert(data)
        self.items.append(data)


def policy(params, obs, key):
    # The chunk encodes the params' version: a transition whose action disagrees with its recorded
    # policy_version would prove a swap inside a query.
    return np.full((10, 14), float(params["v"][0]), np.float32) + 0.0 * jax.random.uniform(key)


def test_actor_ships_whole_labelled_episodes_with_their_policy_version(tmp_path, free_ports):
    config = TrainerConfig(*free_ports, request_types=["send-stats"])
    stats = []
    server = TrainerServer(config, request_callback=lambda kind, payload: stats.append(payload) or {})
    replay = ReplayStore(tmp_path / "replay", window_frames=100, image_size=(24, 32), horizon=10, use_videos=False)
    store = Recording(replay)
    server.register_data_store("actor_env", store)
    server.start(threaded=True)
    queue = QueuedDataStore(1000, spill_dir=tmp_path / "spill")
    client = TrainerClient("actor_env", "127.0.0.1", config, data_stores={"actor_env": queue}, timeout_ms=3000)
    slot = ParamsSlot()
    client.recv_network_callback(slot.set, with_version=True)
    stop = threading.Event()

    def publish():
        v = 1
        while not stop.is_set():
            server.publish_network({"v": np.array([v], np.float32)}, version=v)
            v += 1
            stop.wait(0.05)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    env = FakeRobotEnv(length=3, disconnect_at={(2, 2)})
    actor = Actor(env, policy, slot, queue, client=client, actor_id="actor-0")
    try:
        actor.wait_for_params(timeout=30)
        episodes = actor.run(episodes=4)
        for _ in range(50):
            if len(store.items) == actor.sent_transitions:
                break
            client.update()
            stop.wait(0.1)
    finally:
        stop.set()
        client.stop()
        server.stop()
    assert [e["length"] for e in episodes] == [3, 3, 2, 3]  # episode 2 lost the robot at its 2nd step
    assert [e["label"] for e in episodes] == ["success", "failure", None, "failure"]
    assert episodes[2]["truncated"] and episodes[2]["robot_disconnected"]
    assert len(store.items) == actor.sent_transitions == 11
    assert [(t["episode_id"], t["label"]) for t in store.items if t["done"] or t["truncated"]] == [
        (0, "success"), (1, "failure"), (2, None), (3, "failure"),
    ]  # fmt: skip
    for t in store.items:
        assert np.all(t["action"] == t["policy_version"])
    assert len({t["policy_version"] for t in store.items}) > 1, "params were swapped between queries"
    assert replay.online_frames == 11  # every episode committed to the LeRobot dataset exactly once
    assert any("environment" in s for s in stats)
