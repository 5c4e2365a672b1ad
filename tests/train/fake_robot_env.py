"""A gymnasium env shaped like robot.dobot.DobotEnv, standing in for the physical robot (tests only).

Observations carry three small uint8 cameras, a 14-d state, the prompt and the 10 Hz state records of the
chunk just executed; every `length` steps the scripted outcome labels the episode (success on even episodes).
`disconnect_at` (episode, step) pairs end those steps truncated with `robot_disconnected`, as DobotEnv does.
"""

import gymnasium as gym
import numpy as np

CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


class FakeRobotEnv(gym.Env):
    def __init__(self, length=3, rows=5, hw=(24, 32), disconnect_at=()):
        self.length, self.rows, self.hw = length, rows, hw
        self.disconnect_at = set(disconnect_at)
        self.episode, self.t, self.clock = -1, 0, 0.0
        self.rng = np.random.default_rng(0)

    def _obs(self, action=None):
        state = np.zeros(14, np.float32) if action is None else np.asarray(action[-1], np.float32)
        chunk = np.zeros((self.rows, 14), np.float32)
        if action is not None:  # the robot moved through the first rows of the chunk
            chunk[:] = action[: self.rows] + 0.01 * np.arange(self.rows)[:, None]
        stamps = self.clock + 0.1 * np.arange(self.rows)
        self.clock += 0.1 * self.rows
        return {
            "images": {c: self.rng.integers(0, 256, (*self.hw, 3), dtype=np.uint8) for c in CAMERAS},
            "state": state,
            "prompt": "pick up the cube",
            "teleop": np.zeros(1, np.int8),
            "state_chunk": chunk,
            "state_chunk_mask": np.full(self.rows, action is not None),
            "state_chunk_teleop": np.zeros(self.rows, bool),
            "state_chunk_timestamp": stamps,
        }

    def reset(self, *, seed=None, options=None):
        self.episode += 1
        self.t = 0
        return self._obs(), {"label": None}

    def step(self, action):
        self.t += 1
        lost = (self.episode, self.t) in self.disconnect_at
        terminated = not lost and self.t >= self.length
        label = ("success" if self.episode % 2 == 0 else "failure") if terminated else None
        info = {"label": label, "robot_disconnected": lost, "interventions": 0}
        return self._obs(action), float(label == "success"), terminated, lost, info
