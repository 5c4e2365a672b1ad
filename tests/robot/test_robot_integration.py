"""Whole episodes: the sim robot (its own process, or a thread) and DobotEnv over a real loopback websocket."""

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the sim needs the `sim` extra (mujoco)")

from robot.dobot.env import DobotEnv, DobotEnvConfig  # noqa: E402
from robot.dobot.video import EpisodeVideoWrapper, merge_timelapse, read_frames  # noqa: E402
from robot.sim.serve import SimServeConfig, start_in_thread  # noqa: E402

pytestmark = pytest.mark.integration
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = (48, 64)
VIPERX_LOW = (-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158, 0.0) * 2
VIPERX_HIGH = (3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158, 1.0) * 2
START = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.1) * 2


def make_env(**kw):
    config = DobotEnvConfig(
        host="127.0.0.1",
        port=0,
        image_size=SIZE,
        joint_low=VIPERX_LOW,
        joint_high=VIPERX_HIGH,
        reset_pose=START,
        robot_timeout_s=60.0,
        **kw,
    )
    return DobotEnv(config)


def hold_policy(obs):
    """A policy that stalls: it keeps commanding where the robot is."""
    return np.tile(obs["state"], (50, 1))


def wandering_policy(rng):
    def policy(obs):
        steps = rng.normal(0.0, 0.03, (50, 14)).cumsum(axis=0)
        steps[:, [6, 13]] = 0.0
        return obs["state"] + steps

    return policy


def run_episode(env, policy, seed):
    obs, info = env.reset(seed=seed)
    transitions = []
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        transitions.append((obs, info))
        done = terminated or truncated
    return transitions, reward, terminated, info


def check_episode(transitions, reward, terminated, info):
    assert terminated and info["label"] == "success" and reward == 1.0, info
    assert info["interventions"] == 1 and info["teleop_steps"] >= 1
    first_teleop = next(i for i, (obs, _) in enumerate(transitions) if obs["teleop"])
    assert all(not obs["teleop"] for obs, _ in transitions[:first_teleop])
    assert all(obs["teleop"] for obs, _ in transitions[first_teleop:])  # the human keeps control
    records = [(obs, obs["state_chunk_mask"].sum()) for obs, _ in transitions]
    assert sum(n for _, n in records) >= 10  # 10 Hz states travel with the observations
    for obs, n in records:
        stamps = obs["state_chunk_timestamp"][:n]
        assert np.all(np.diff(stamps) > 0.09)
    # while the human drives, the bridge asks every 1 chunk step (0.1 s): about one record per query
    teleop_counts = [n for obs, n in records[first_teleop + 1 :]]
    assert teleop_counts and max(teleop_counts) <= 2
    assert any(obs["state_chunk_teleop"][obs["state_chunk_mask"]].any() for obs, _ in transitions[first_teleop:])


def start_robot(port, *extra):
    cmd = [sys.executable, "-m", "robot.sim.serve", "--task", "easy", "--port", str(port)]
    cmd += ["--height", str(SIZE[0]), "--width", str(SIZE[1]), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def test_robot_process_killed_mid_episode_then_replaced():
    env = make_env()
    first = start_robot(env.port)
    second = None
    try:
        obs, _ = env.reset(seed=0)
        obs, *_ = env.step(hold_policy(obs))
        first.kill()  # the robot PC dies mid-episode
        first.wait(timeout=10)
        second = start_robot(env.port, "--seed", "50")
        obs, reward, terminated, truncated, info = env.step(hold_policy(obs))
        assert info["robot_disconnected"] and truncated and not terminated and reward == 0.0
        transitions, reward, terminated, info = run_episode(env, hold_policy, seed=1)
        check_episode(transitions, reward, terminated, info)
    finally:
        env.close()
        stop(first)
        if second is not None:
            stop(second)


def test_sim_robot_process_and_env_run_episodes_with_takeovers(tmp_path):
    env = EpisodeVideoWrapper(make_env(api_key="local-key"), tmp_path / "videos", fps=10)
    proc = start_robot(env.unwrapped.port, "--api-key", "local-key")
    try:
        rng = np.random.default_rng(0)
        policies = [hold_policy, wandering_policy(rng), hold_policy]
        paths = []
        for seed, policy in enumerate(policies):
            transitions, reward, terminated, info = run_episode(env, policy, seed)
            check_episode(transitions, reward, terminated, info)
            paths.append(info["video_path"])
            assert transitions[0][0]["images"]["cam_high"].shape == (*SIZE, 3)
    finally:
        env.close()
        stop(proc)
    frames = [sum(1 for _ in read_frames(p)) for p in paths]
    assert all(n >= 2 for n in frames)
    first = next(read_frames(paths[0]))
    assert first.shape == (SIZE[0], 3 * SIZE[1], 3)
    out = tmp_path / "timelapse.mp4"
    assert merge_timelapse(paths, out, every=2) == sum((n + 1) // 2 for n in frames)
    assert sum(1 for _ in read_frames(out)) == sum((n + 1) // 2 for n in frames)


def test_in_process_sim_robot_transfer_episode():
    env = make_env()
    config = SimServeConfig(task="transfer", uri=f"ws://127.0.0.1:{env.port}", image_size=SIZE)
    robot = start_in_thread(config)
    try:
        transitions, reward, terminated, info = run_episode(env, hold_policy, seed=4)
        check_episode(transitions, reward, terminated, info)
        assert transitions[-1][0]["prompt"] == "transfer the red cube to the left hand"
    finally:
        robot.stop()
        env.close()
    assert robot.error is None
