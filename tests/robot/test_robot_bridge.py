"""Robot-PC bridge: interpolation, varied-frequency execution, the 10 Hz recorder, refusals (fake hardware)."""

import numpy as np
import pytest

from robot.dobot import teleop
from robot.dobot.bridge import Bridge, BridgeConfig, StateRecorder, interpolate_chunk


class FakeIO:
    """A perfectly stiff robot on a simulated 50 Hz clock; optionally switches to teleop at a given tick."""

    realtime = False
    prompt = "test"

    def __init__(self, teleop_at_tick=None, label_at_tick=None):
        self.t = 0.0
        self.ticks = 0
        self.state = np.zeros(14, np.float32)
        self.commands = []
        self.teleop = False
        self.teleop_at_tick = teleop_at_tick
        self.label_at_tick = label_at_tick
        self.resets = []

    def now(self):
        return self.t

    def read_state(self):
        return self.state.copy()

    def read_images(self):
        return {k: np.zeros((4, 5, 3), np.uint8) for k in ("cam_high", "cam_left_wrist", "cam_right_wrist")}

    def teleop_flag(self):
        return teleop.flag_for(self.teleop)

    def command(self, q):
        self.commands.append(np.array(q))
        if not self.teleop:
            self.state = np.asarray(q, np.float32)

    def tick(self):
        self.ticks += 1
        self.t = round(self.t + 0.02, 10)
        if self.teleop_at_tick is not None and self.ticks >= self.teleop_at_tick:
            self.teleop = True

    def reset(self, chunk, seed):
        self.resets.append(seed)
        self.state = np.asarray(chunk[-1], np.float32)

    def episode_label(self):
        if self.label_at_tick is not None and self.ticks >= self.label_at_tick:
            return "success", "fake"
        return None, ""


def ramp_chunk():
    return np.outer(np.arange(1, 51), np.ones(14)).astype(np.float32) * 0.01


def test_interpolation_hits_every_waypoint_and_starts_from_the_current_state():
    current = np.full(14, -1.0)
    actions = ramp_chunk()
    commands = interpolate_chunk(current, actions, 5)
    assert commands.shape == (250, 14)
    np.testing.assert_allclose(commands[4::5], actions, atol=1e-7)
    np.testing.assert_allclose(commands[0], current + (actions[0] - current) / 5)


def test_policy_chunk_executes_20_steps_as_100_commands():
    io = FakeIO()
    bridge = Bridge(io, BridgeConfig())
    bridge.handle_reply({"actions": ramp_chunk()})
    assert io.ticks == 100
    np.testing.assert_allclose(io.commands[-1], ramp_chunk()[19], atol=1e-6)


def test_teleop_chunk_executes_one_step_as_five_commands():
    io = FakeIO()
    io.teleop = True
    Bridge(io, BridgeConfig()).handle_reply({"actions": ramp_chunk()})
    assert io.ticks == 5


def test_configurable_step_counts_and_early_stop_on_takeover_or_label():
    io = FakeIO()
    Bridge(io, BridgeConfig(policy_steps=7, interpolation=2)).handle_reply({"actions": ramp_chunk()})
    assert io.ticks == 14
    io = FakeIO(teleop_at_tick=30)
    Bridge(io, BridgeConfig()).handle_reply({"actions": ramp_chunk()})
    assert io.ticks == 30  # the env hears about the takeover at once, not 1.4 s later
    io = FakeIO(label_at_tick=12)
    Bridge(io, BridgeConfig()).handle_reply({"actions": ramp_chunk()})
    assert io.ticks == 12
    with pytest.raises(ValueError, match="policy_steps"):
        BridgeConfig(policy_steps=51).validate()


def test_recorder_records_at_10hz_with_flags_and_travels_with_the_next_observation():
    io = FakeIO(teleop_at_tick=100)
    bridge = Bridge(io, BridgeConfig())
    bridge.handle_reply({"actions": ramp_chunk()})  # policy: 2 s, then the human takes over
    bridge.handle_reply({"actions": ramp_chunk()})  # teleop: 0.1 s
    msg = bridge.observation()
    records = msg["state_chunk"]
    stamps = [r["state_timestamp"] for r in records]
    assert len(records) == 21
    np.testing.assert_allclose(np.diff(stamps), 0.1, atol=1e-9)
    assert [r["server_teleoperation_flag"] for r in records] == [teleop.POLICY_TAKES_OVER] * 20 + [
        teleop.HUMAN_TAKES_OVER
    ]
    np.testing.assert_allclose(records[4]["state"], io.commands[20], atol=1e-6)  # after tick 21 (t = 0.42 s)
    assert msg["server_teleoperation_flag"] == teleop.HUMAN_TAKES_OVER
    assert bridge.observation()["state_chunk"] == []  # drained


def test_recorder_caps_records_keeping_the_newest():
    io = FakeIO()
    rec = StateRecorder(0.1, max_records=3)
    for _ in range(10):
        rec.poll(io)
        io.t += 0.1
    assert [r["state_timestamp"] for r in rec.drain()] == pytest.approx([0.7, 0.8, 0.9])


def test_bad_chunks_from_the_env_are_not_executed():
    io = FakeIO()
    bridge = Bridge(io, BridgeConfig())
    nan_chunk = ramp_chunk()
    nan_chunk[0, 0] = np.nan
    bridge.handle_reply({"actions": nan_chunk})
    bridge.handle_reply({"actions": np.zeros((10, 14))})
    bridge.handle_reply({"actions": np.zeros((50, 14)), "refused": "NaN in policy output"})
    assert io.ticks == 0 and len(bridge.refusals) == 3
    with pytest.raises(RuntimeError, match="error from the env"):
        bridge.handle_reply("malformed message: boom")


def test_reset_reply_resets_the_robot_and_clears_records():
    io = FakeIO()
    bridge = Bridge(io, BridgeConfig())
    bridge.recorder.poll(io)
    bridge.handle_reply({"actions": ramp_chunk(), "reset": True, "seed": 7})
    assert io.resets == [7] and io.ticks == 0
    assert bridge.observation()["state_chunk"] == []


def test_bridge_with_a_wrong_api_key_stops_with_a_clear_error():
    from robot.dobot.env import DobotEnv, DobotEnvConfig

    env = DobotEnv(DobotEnvConfig(host="127.0.0.1", port=0, api_key="right", robot_timeout_s=5))
    try:
        bridge = Bridge(FakeIO(), BridgeConfig(uri=f"ws://127.0.0.1:{env.port}", api_key="wrong"))
        with pytest.raises(PermissionError, match="refused our API key"):
            bridge.run(max_queries=1)
    finally:
        env.close()


def test_bridge_drives_a_real_env_session():
    import concurrent.futures

    from robot.dobot.env import DobotEnv, DobotEnvConfig

    env = DobotEnv(DobotEnvConfig(host="127.0.0.1", port=0, image_size=(8, 10), api_key="k", robot_timeout_s=10))
    io = FakeIO()
    bridge = Bridge(io, BridgeConfig(uri=f"ws://127.0.0.1:{env.port}", api_key="k"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        robot = pool.submit(bridge.run)
        try:
            obs, _ = env.reset(seed=11)
            obs, *_ = env.step(ramp_chunk())
        finally:
            bridge.stop_event.set()
            env.close()  # unblocks the bridge's pending receive
        robot.result(timeout=10)
    assert io.resets == [11] and io.ticks == 100
    np.testing.assert_allclose(obs["state"], ramp_chunk()[19], atol=1e-6)
    assert obs["state_chunk_mask"].sum() == 20 and obs["images"]["cam_high"].shape == (8, 10, 3)  # resized
