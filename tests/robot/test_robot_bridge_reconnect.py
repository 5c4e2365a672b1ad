"""The robot-PC bridge against a real DobotEnv when things go wrong: no env yet, the env's slot taken, the env
refusing an observation, an observation over the env's frame limit, the env going away."""

import concurrent.futures
import logging
import re
import threading
import time

import numpy as np
import pytest
from net_helpers import free_port
from websockets.sync.client import connect

from robot.dobot.bridge import Bridge, BridgeConfig, EnvError
from robot.dobot.env import DobotEnv, DobotEnvConfig

SIZE = (8, 10)


class FakeIO:
    """A stiff simulated robot whose cameras can be swapped for broken ones."""

    realtime = False
    prompt = "test"

    def __init__(self, image_shape=(*SIZE, 3)):
        self.t, self.state, self.resets = 0.0, np.zeros(14, np.float32), []
        self.image_shape = image_shape

    def now(self):
        return self.t

    def read_state(self):
        return self.state.copy()

    def read_images(self):
        return {k: np.zeros(self.image_shape, np.uint8) for k in ("cam_high", "cam_left_wrist", "cam_right_wrist")}

    def teleop_flag(self):
        return None

    def command(self, q):
        self.state = np.asarray(q, np.float32)

    def tick(self):
        self.t += 0.02

    def reset(self, chunk, seed):
        self.resets.append(seed)

    def episode_label(self):
        return None, ""


def retry_delays(records):
    return [float(m.group(1)) for r in records if (m := re.search(r"retrying in ([\d.]+) s", r.getMessage()))]


def wait_until(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


def test_no_env_backs_off_exponentially_says_what_it_waits_for_then_tells_lost_from_never(caplog):
    port = free_port()
    uri = f"ws://127.0.0.1:{port}"
    bridge = Bridge(FakeIO(), BridgeConfig(uri=uri, reconnect_delay_s=0.02, max_reconnect_delay_s=0.16))
    with (
        caplog.at_level(logging.WARNING, logger="robot.dobot.bridge"),
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        run = pool.submit(bridge.run)
        wait_until(lambda: len(retry_delays(caplog.records)) >= 6)
        never = [r.getMessage() for r in caplog.records]
        env = DobotEnv(DobotEnvConfig(port=port, image_size=SIZE, robot_timeout_s=10))
        try:
            env.reset(seed=3)  # the bridge connects on its next try
            wait_until(lambda: bridge.sessions == 1)
        finally:
            caplog.clear()
            env.close()
        wait_until(lambda: len(retry_delays(caplog.records)) >= 3)
        after = [r.getMessage() for r in caplog.records]
        bridge.stop_event.set()
        run.result(timeout=10)
    assert retry_delays([r for r in caplog.records])[:3] == [0.02, 0.04, 0.08]  # reset once connected
    for message in never[:6]:
        assert message.startswith(f"waiting for the env at {uri} (never connected yet: "), message
    delays = [float(re.search(r"retrying in ([\d.]+) s", m).group(1)) for m in never[:6]]
    assert delays == [0.02, 0.04, 0.08, 0.16, 0.16, 0.16]  # doubled, then capped
    assert after[0].startswith(f"connection to the env at {uri} lost"), after[0]
    assert all("never connected" not in m for m in after)
    assert any(m.startswith(f"waiting for the env at {uri} to come back") for m in after[1:]), after
    assert bridge.io.resets == [3]


def test_a_busy_env_is_reported_and_retried_until_the_slot_frees(caplog):
    env = DobotEnv(DobotEnvConfig(port=0, image_size=SIZE, robot_timeout_s=10))
    holder = connect(f"ws://127.0.0.1:{env.port}").__enter__()
    holder.recv(timeout=5)
    bridge = Bridge(FakeIO(), BridgeConfig(uri=f"ws://127.0.0.1:{env.port}", reconnect_delay_s=0.02))
    with (
        caplog.at_level(logging.WARNING, logger="robot.dobot.bridge"),
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        run = pool.submit(bridge.run)
        try:
            wait_until(lambda: len(retry_delays(caplog.records)) >= 2)
            assert run.running()  # reported, not crashed
            holder.close()
            env.reset(seed=5)  # served by the bridge once the slot is free
        finally:
            bridge.stop_event.set()
            env.close()  # unblocks the bridge's pending receive
    run.result(timeout=10)
    message = caplog.records[0].getMessage()
    assert "turned us away" in message and "another robot" in message and "already connected" in message, message
    assert bridge.io.resets == [5] and bridge.sessions == 1


def test_an_observation_the_env_refuses_is_reported_and_the_bridge_carries_on(caplog):
    """A broken camera (0x0 images): every observation is refused by name; the bridge logs it and backs off
    instead of crashing, and works again once the camera does."""
    env = DobotEnv(DobotEnvConfig(port=0, image_size=SIZE, robot_timeout_s=10))
    io = FakeIO(image_shape=(0, 0, 3))
    bridge = Bridge(io, BridgeConfig(uri=f"ws://127.0.0.1:{env.port}", reconnect_delay_s=0.02))
    with (
        caplog.at_level(logging.WARNING, logger="robot.dobot.bridge"),
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        run = pool.submit(bridge.run)
        try:
            wait_until(lambda: len(bridge.env_errors) >= 3)
            io.image_shape = (*SIZE, 3)
            env.reset(seed=1)
        finally:
            bridge.stop_event.set()
            env.close()
    run.result(timeout=10)
    assert bridge.env_errors[0].startswith("error from the env: malformed message: images.cam_high has height 0")
    assert io.resets == [1] and bridge.sessions == 1  # the same connection throughout


def test_an_observation_over_the_frame_limit_stops_the_bridge_with_the_fix_named():
    env = DobotEnv(DobotEnvConfig(port=0, image_size=SIZE, robot_timeout_s=10, max_frame_bytes=2000))
    try:
        bridge = Bridge(FakeIO(image_shape=(60, 80, 3)), BridgeConfig(uri=f"ws://127.0.0.1:{env.port}"))
        with pytest.raises(ValueError, match=r"over its size limit .*2000.*DobotEnvConfig.max_frame_bytes"):
            bridge.run(max_queries=1)
    finally:
        env.close()


def test_text_replies_raise_env_error_for_the_run_loop():
    with pytest.raises(EnvError, match="error from the env: malformed message: x"):
        Bridge(FakeIO(), BridgeConfig()).handle_reply("malformed message: x")


def test_sim_serve_backs_off_without_an_env(caplog):
    """`robot.sim.serve` with nothing listening: a handful of "waiting for" lines, not five a second."""
    pytest.importorskip("mujoco", reason="the sim needs the `sim` extra (mujoco)")
    from robot.sim.serve import SimServeConfig, make_bridge

    port = free_port()
    bridge = make_bridge(SimServeConfig(uri=f"ws://127.0.0.1:{port}", image_size=SIZE, render=False))
    try:
        with caplog.at_level(logging.WARNING, logger="robot.dobot.bridge"):
            stopper = threading.Timer(2.0, bridge.stop_event.set)
            stopper.start()
            bridge.run()
    finally:
        bridge.io.close()
    delays = retry_delays(caplog.records)
    assert delays[:4] == [0.2, 0.4, 0.8, 1.6] and len(delays) <= 5
    assert all(
        f"waiting for the env at ws://127.0.0.1:{port} (never connected yet" in r.getMessage() for r in caplog.records
    )
