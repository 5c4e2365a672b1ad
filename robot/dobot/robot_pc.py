"""The real X-Trainer behind the bridge: a thin real-time RobotIO over a hardware driver (ROS topics, cameras).

The driver is the only hardware-specific piece and is supplied by the deployment (e.g. a ROS node that
subscribes to the joint-state, camera and `/robot/data/xtrainer/event` topics and publishes joint commands):

    class MyDriver:                                   # satisfies XTrainerDriver
        def joint_state(self) -> np.ndarray: ...      # (14,) 6 joints + gripper per arm, left then right
        def camera_images(self) -> dict: ...          # cam_high / cam_left_wrist / cam_right_wrist, uint8 HWC
        def publish_joint_command(self, q) -> None: ...
        def teleop_event(self) -> str | None: ...     # last event string of the teleop topic

    python -m robot.dobot.robot_pc --driver mypkg.xtrainer:make_driver --uri ws://actor-host:8080 --api-key KEY
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import sys
import time
from typing import Protocol

import numpy as np
from PIL import Image

from robot.dobot import protocol, teleop
from robot.dobot.bridge import Bridge, BridgeConfig

log = logging.getLogger(__name__)


class XTrainerDriver(Protocol):
    def joint_state(self) -> np.ndarray: ...

    def camera_images(self) -> dict[str, np.ndarray]: ...

    def publish_joint_command(self, joints14: np.ndarray) -> None: ...

    def teleop_event(self) -> str | None: ...


@dataclasses.dataclass
class RobotPCConfig:
    image_size: tuple[int, int] = (224, 298)  # (H, W) sent to the env
    bgr_input: bool = False  # the driver's cameras deliver BGR (cv2): convert to RGB before sending
    control_hz: float = 50.0
    reset_duration_s: float = 3.0  # slow move to the reset pose
    settle_after_reset_s: float = 2.0  # the operator re-places the objects
    prompt: str = "put the objects in the box"


class XTrainerIO:
    """RobotIO for hardware: wall clock, 50 Hz tick grid, robot-side image resize, slow reset moves."""

    realtime = True

    def __init__(self, driver: XTrainerDriver, config: RobotPCConfig | None = None):
        self.driver = driver
        self.config = config or RobotPCConfig()
        self.prompt = self.config.prompt
        self._period = 1.0 / self.config.control_hz
        self._next_tick = time.monotonic()

    def now(self) -> float:
        return time.time()

    def read_state(self) -> np.ndarray:
        state = np.asarray(self.driver.joint_state(), np.float32)
        if state.shape != (protocol.STATE_DIM,):
            raise ValueError(f"driver joint_state must have shape (14,), got {state.shape}")
        return state

    def read_images(self) -> dict[str, np.ndarray]:
        h, w = self.config.image_size
        out = {}
        for key, img in self.driver.camera_images().items():
            img = np.asarray(img, np.uint8)
            if self.config.bgr_input:
                img = img[..., ::-1]
            if img.shape[:2] != (h, w):
                img = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), Image.BILINEAR))
            out[key] = np.ascontiguousarray(img)
        return out

    def teleop_flag(self) -> str | None:
        flag = self.driver.teleop_event()
        teleop.is_teleop(flag)  # refuses strings other than the two the X-Trainer publishes
        return flag

    def command(self, joints14: np.ndarray) -> None:
        self.driver.publish_joint_command(np.asarray(joints14, np.float64))

    def tick(self) -> None:
        """Sleep to the next point of the control grid (re-anchored after a long stall such as a query)."""
        now = time.monotonic()
        self._next_tick = max(self._next_tick + self._period, now)
        time.sleep(max(0.0, self._next_tick - now))

    def reset(self, reset_chunk: np.ndarray, seed: int | None) -> None:
        start = self.read_state().astype(np.float64)
        goal = np.asarray(reset_chunk[-1], np.float64)
        steps = max(1, round(self.config.reset_duration_s * self.config.control_hz))
        for k in range(1, steps + 1):
            self.command(start + (goal - start) * (k / steps))
            self.tick()
        time.sleep(self.config.settle_after_reset_s)

    def episode_label(self) -> tuple[str | None, str]:
        return None, ""  # the human labels at the actor (keys) or a classifier does


def load_driver(spec: str) -> XTrainerDriver:
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"--driver must look like 'package.module:factory', got {spec!r}")
    return getattr(importlib.import_module(module_name), attr)()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="X-Trainer robot PC: stream observations, execute chunks")
    parser.add_argument("--driver", required=True, help="package.module:factory returning an XTrainerDriver")
    parser.add_argument("--uri", default="ws://127.0.0.1:8080")
    parser.add_argument("--api-key", default=os.environ.get("HIORS_ROBOT_API_KEY"))
    parser.add_argument("--policy-steps", type=int, default=20)
    parser.add_argument("--teleop-steps", type=int, default=1)
    parser.add_argument("--bgr", action="store_true", help="the cameras deliver BGR images")
    parser.add_argument("--prompt", default=RobotPCConfig.prompt)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s robot-pc %(levelname)s %(message)s")
    io = XTrainerIO(load_driver(args.driver), RobotPCConfig(bgr_input=args.bgr, prompt=args.prompt))
    config = BridgeConfig(
        uri=args.uri, api_key=args.api_key, policy_steps=args.policy_steps, teleop_steps=args.teleop_steps
    )
    try:
        Bridge(io, config).run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
