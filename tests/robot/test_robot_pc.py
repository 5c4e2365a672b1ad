"""The hardware-side RobotIO with a fake driver, running the real-time bridge path."""

import threading

import numpy as np
import pytest

from robot.dobot import teleop
from robot.dobot.bridge import Bridge, BridgeConfig
from robot.dobot.robot_pc import RobotPCConfig, XTrainerIO, load_driver


class FakeDriver:
    def __init__(self):
        self.state = np.zeros(14)
        self.published = []
        self.event = None
        self.lock = threading.Lock()

    def joint_state(self):
        with self.lock:
            return self.state.copy()

    def camera_images(self):
        img = np.zeros((480, 640, 3), np.uint8)
        img[..., 0] = 255  # pure blue in BGR order... or red in RGB
        return {k: img for k in ("cam_high", "cam_left_wrist", "cam_right_wrist")}

    def publish_joint_command(self, q):
        with self.lock:
            self.published.append(np.array(q))
            self.state = np.array(q)

    def teleop_event(self):
        return self.event


def make_driver():
    return FakeDriver()


def test_robot_side_resizes_and_converts_bgr():
    io = XTrainerIO(FakeDriver(), RobotPCConfig(image_size=(24, 32), bgr_input=True))
    images = io.read_images()
    assert images["cam_high"].shape == (24, 32, 3)
    assert np.all(images["cam_high"][..., 2] == 255) and np.all(images["cam_high"][..., 0] == 0)


def test_teleop_chunk_streams_interpolated_commands_and_records_in_the_background():
    driver = FakeDriver()
    driver.event = teleop.HUMAN_TAKES_OVER
    io = XTrainerIO(driver, RobotPCConfig(control_hz=200.0))
    bridge = Bridge(io, BridgeConfig(record_hz=100.0))
    recorder = threading.Thread(target=bridge._record_forever, daemon=True)
    recorder.start()
    chunk = np.full((50, 14), 1.0)
    bridge.handle_reply({"actions": chunk})  # 1 step while teleoperating = 5 commands
    bridge.stop_event.set()
    recorder.join(timeout=5)
    np.testing.assert_allclose(np.array(driver.published), np.outer(np.arange(1, 6) / 5, np.ones(14)))
    records = bridge.recorder.drain()
    assert records and all(r["server_teleoperation_flag"] == teleop.HUMAN_TAKES_OVER for r in records)


def test_unknown_teleop_event_and_bad_state_are_refused():
    driver = FakeDriver()
    driver.event = "from server to teleoperation"
    io = XTrainerIO(driver)
    with pytest.raises(ValueError, match="unknown server_teleoperation_flag"):
        io.teleop_flag()
    driver.state = np.zeros(7)
    with pytest.raises(ValueError, match="shape"):
        io.read_state()


def test_reset_moves_to_the_pose_and_driver_loading():
    driver = FakeDriver()
    io = XTrainerIO(driver, RobotPCConfig(control_hz=500.0, reset_duration_s=0.02, settle_after_reset_s=0.0))
    io.reset(np.full((50, 14), 0.5), seed=None)
    np.testing.assert_allclose(driver.published[-1], 0.5)
    assert len(driver.published) == 10
    assert isinstance(load_driver(f"{__name__}:make_driver"), FakeDriver)
    with pytest.raises(ValueError, match="package.module:factory"):
        load_driver("nonsense")
