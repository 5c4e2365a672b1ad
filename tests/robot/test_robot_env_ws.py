"""DobotEnv over a real websocket with a hand-driven robot client: handshake, API key, bad input, disconnects."""

import concurrent.futures
import re

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from robot.dobot import msgpack_numpy, teleop
from robot.dobot.env import DobotEnv, DobotEnvConfig, RobotTimeout

SIZE = (8, 10)


def obs_msg(state=0.0, flag=None, chunk_flags=(), label=None):
    msg = {
        "images": {k: np.zeros((*SIZE, 3), np.uint8) for k in ("cam_high", "cam_left_wrist", "cam_right_wrist")},
        "state": np.full(14, state, np.float32),
        "prompt": "p",
        "server_teleoperation_flag": flag,
        "state_chunk": [
            {"state": np.full(14, state, np.float32), "server_teleoperation_flag": f, "state_timestamp": 0.1 * i}
            for i, f in enumerate(chunk_flags)
        ],
    }
    if label:
        msg["episode_label"] = label
        msg["episode_label_reason"] = "test"
    return msg


@pytest.fixture
def env_factory():
    envs = []

    def make(**kw):
        kw.setdefault("robot_timeout_s", 10.0)
        env = DobotEnv(DobotEnvConfig(host="127.0.0.1", port=0, image_size=SIZE, **kw))
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture
def actor():
    """Runs the env's blocking calls in a thread while the test plays the robot."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        yield pool


class Robot:
    def __init__(self, port, api_key=None):
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        client = connect(f"ws://127.0.0.1:{port}", additional_headers=headers, compression=None, max_size=None)
        self.ws = client.__enter__()
        self.metadata = msgpack_numpy.unpackb(self.ws.recv(timeout=5))

    def ask(self, msg):
        self.ws.send(msgpack_numpy.packb(msg))
        reply = self.ws.recv(timeout=10)
        return reply if isinstance(reply, str) else msgpack_numpy.unpackb(reply)

    def send(self, msg):
        self.ws.send(msgpack_numpy.packb(msg))

    def recv(self):
        reply = self.ws.recv(timeout=10)
        return reply if isinstance(reply, str) else msgpack_numpy.unpackb(reply)

    def close(self):
        self.ws.close()


def start_episode(env, actor, robot, seed=3):
    """reset() on the actor side; the robot answers the reset command with a fresh observation."""
    fut = actor.submit(env.reset, seed=seed)
    reply = robot.ask(obs_msg())
    assert reply["reset"] is True and reply["seed"] == seed and reply["actions"].shape == (50, 14)
    robot.send(obs_msg(state=0.1))
    obs, info = fut.result(timeout=10)
    return obs, info


def test_handshake_reset_and_step(env_factory, actor):
    env = env_factory()
    robot = Robot(env.port)
    assert robot.metadata == {}
    obs, info = start_episode(env, actor, robot)
    assert obs["images"]["cam_high"].shape == (*SIZE, 3) and obs["state"][0] == pytest.approx(0.1)
    assert info["label"] is None and info["episode_steps"] == 0
    chunk = np.full((50, 14), 0.2, np.float32)
    fut = actor.submit(env.step, chunk)
    np.testing.assert_array_equal(robot.recv()["actions"], chunk)
    robot.send(obs_msg(state=0.2, chunk_flags=[None, None]))
    obs, reward, term, trunc, info = fut.result(timeout=10)
    assert (reward, term, trunc) == (0.0, False, False)
    assert obs["state_chunk_mask"].sum() == 2 and info["episode_steps"] == 1
    robot.close()


def test_api_key_keeps_other_machines_out(env_factory):
    env = env_factory(api_key="s3cret")
    for key in (None, "wrong"):
        with pytest.raises(InvalidStatus) as err:
            Robot(env.port, api_key=key)
        assert err.value.response.status_code == 401
    robot = Robot(env.port, api_key="s3cret")
    assert robot.metadata == {}
    robot.close()


def test_malformed_messages_get_a_text_error_and_the_connection_survives(env_factory, actor):
    env = env_factory()
    robot = Robot(env.port)
    robot.ws.send(b"\xc1\xc1 not msgpack")
    assert robot.recv().startswith("malformed message")
    robot.ws.send("hello")
    assert "text frame" in robot.recv()
    bad = obs_msg()
    del bad["state"]
    assert "missing 'state'" in robot.ask(bad)
    assert "unknown server_teleoperation_flag" in robot.ask(obs_msg(flag="from server to teleoperation"))
    start_episode(env, actor, robot)  # nothing was queued by the bad messages; the env works normally
    robot.close()


@pytest.mark.parametrize(
    "bad_chunk, message",
    [
        (np.where(np.eye(50, 14, dtype=bool), np.nan, 0.0), "NaN/inf"),
        (np.zeros((50, 7)), r"shape \(50, 14\)"),
        (np.zeros((49, 14)), r"shape \(50, 14\)"),
    ],
)
def test_bad_action_is_refused_and_the_robot_holds_its_pose(env_factory, actor, bad_chunk, message):
    env = env_factory()
    robot = Robot(env.port)
    obs, _ = start_episode(env, actor, robot)
    fut = actor.submit(env.step, bad_chunk)
    reply = robot.recv()
    np.testing.assert_array_equal(reply["actions"], np.tile(obs["state"], (50, 1)))  # hold the current pose
    assert "refused" in reply
    robot.send(obs_msg(state=0.1))
    _, _, term, trunc, info = fut.result(timeout=10)
    assert not term and not trunc
    assert info["action_error"] is not None
    assert re.search(message, info["action_error"])
    robot.close()


def test_out_of_limit_actions_are_clipped(env_factory, actor):
    env = env_factory()
    robot = Robot(env.port)
    start_episode(env, actor, robot)
    chunk = np.zeros((50, 14), np.float32)
    chunk[:, 0] = 10.0
    chunk[:, 6] = -1.0
    fut = actor.submit(env.step, chunk)
    sent = robot.recv()["actions"]
    assert np.all(sent[:, 0] == np.float32(np.pi)) and np.all(sent[:, 6] == 0.0)
    robot.send(obs_msg())
    assert fut.result(timeout=10)[4]["clipped_values"] == 100
    robot.close()


def test_labels_teleop_flags_and_step_limit(env_factory, actor):
    env = env_factory(max_episode_steps=3)
    robot = Robot(env.port)
    start_episode(env, actor, robot)
    h, p = teleop.HUMAN_TAKES_OVER, teleop.POLICY_TAKES_OVER
    fut = actor.submit(env.step, np.zeros((50, 14)))
    robot.recv()
    robot.send(obs_msg(flag=h, chunk_flags=[p, h, h]))
    _, _, term, _, info = fut.result(timeout=10)
    assert info["teleop"] and info["teleop_records"] == 2 and info["interventions"] == 1 and not term
    fut = actor.submit(env.step, np.zeros((50, 14)))
    robot.recv()
    robot.send(obs_msg(flag=h, chunk_flags=[h], label="success"))
    _, reward, term, trunc, info = fut.result(timeout=10)
    assert (reward, term, trunc) == (1.0, True, False)
    assert info["label"] == "success" and info["success"] and info["teleop_steps"] == 2 and info["interventions"] == 1
    start_episode(env, actor, robot)
    for _ in range(3):
        fut = actor.submit(env.step, np.zeros((50, 14)))
        robot.recv()
        robot.send(obs_msg())
        _, reward, term, trunc, info = fut.result(timeout=10)
    assert (reward, term, trunc) == (0.0, False, True)
    assert info["label"] == "failure" and "3 steps" in info["label_reason"]
    robot.close()


def test_robot_disconnect_mid_episode_is_reported_and_waited_for(env_factory, actor):
    env = env_factory()
    robot = Robot(env.port)
    start_episode(env, actor, robot)
    fut = actor.submit(env.step, np.zeros((50, 14)))
    robot.recv()
    robot.close()  # the robot PC crashes before sending its next observation
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.result(timeout=0.5)  # the actor waits rather than crashing
    robot2 = Robot(env.port)
    robot2.send(obs_msg(state=0.5))
    obs, reward, term, trunc, info = fut.result(timeout=10)
    assert info["robot_disconnected"] and trunc and not term and reward == 0.0 and info["label"] is None
    assert obs["state"][0] == pytest.approx(0.5)
    fut = actor.submit(env.reset, seed=1)  # the next episode starts on the new connection
    assert robot2.recv()["reset"] is True
    robot2.send(obs_msg(state=0.7))
    obs, info = fut.result(timeout=10)
    assert obs["state"][0] == pytest.approx(0.7) and not info["robot_disconnected"]
    robot2.close()


def test_second_robot_is_turned_away(env_factory):
    env = env_factory()
    robot = Robot(env.port)
    with connect(f"ws://127.0.0.1:{env.port}") as intruder:
        assert "already connected" in intruder.recv(timeout=5)
    robot.close()


def test_no_robot_times_out_with_a_clear_error(env_factory):
    env = env_factory(robot_timeout_s=0.3)
    with pytest.raises(RobotTimeout, match="no observation from the robot within 0.3 s"):
        env.reset()


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"joint_low": (0.0,) * 13}, "joint_low"),
        ({"joint_high": (-5.0,) * 14}, "joint_high"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"image_size": (4,)}, "image_size"),
        ({"reset_pose": (9.0,) * 14}, "reset_pose"),
    ],
)
def test_invalid_config_names_the_field(kw, field):
    with pytest.raises(ValueError, match=f"DobotEnvConfig.{field}"):
        DobotEnv(DobotEnvConfig(host="127.0.0.1", port=0, **kw))
