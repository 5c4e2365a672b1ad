"""The simulated X-Trainer behind the bridge's RobotIO interface: the scripted human sits where the operator
and the teleop device would, and time is simulated (it advances only when the bridge ticks)."""

from __future__ import annotations

import dataclasses

import numpy as np

from robot.dobot import teleop
from robot.sim.human import HumanConfig, ScriptedHuman
from robot.sim.xtrainer import SimXTrainer


class SimRobotIO:
    realtime = False

    def __init__(
        self,
        task: str = "easy",
        image_size: tuple[int, int] = (224, 298),
        human: HumanConfig | None = None,
        seed: int = 0,
        render: bool = True,
        horizon_s: float | None = None,
    ):
        self.sim = SimXTrainer(task, image_size, render=render)
        if horizon_s is not None:
            if horizon_s <= 0:
                raise ValueError(f"horizon_s must be positive, got {horizon_s}")
            self.sim.task = dataclasses.replace(self.sim.task, horizon_s=horizon_s)
        self.prompt = self.sim.task.prompt
        self.human_config = human or HumanConfig()
        self._next_seed = seed
        self.episodes = 0
        self.reset(None, None)

    def now(self) -> float:
        return self.sim.time

    def read_state(self) -> np.ndarray:
        return self.sim.state14()

    def read_images(self) -> dict[str, np.ndarray]:
        return self.sim.render()

    def teleop_flag(self) -> str | None:
        return teleop.flag_for(self.human.teleop)

    def command(self, joints14: np.ndarray) -> None:
        self._policy_target = np.asarray(joints14, np.float64)

    def tick(self) -> None:
        if self.human.label is not None:
            target = self.sim.command14()  # episode over: hold still until the env resets
        elif self.human.teleop:
            target = self.human.expert_action()  # like the real controller, teleop ignores the policy
        else:
            target = self._policy_target
        self.sim.step(target)
        self.human.after_step()

    def reset(self, reset_chunk: np.ndarray | None, seed: int | None) -> None:
        # The sim has its own start pose (the ViperX's); the X-Trainer reset pose in the chunk does not apply.
        if seed is None:
            seed, self._next_seed = self._next_seed, self._next_seed + 1
        self.seed = seed
        self.sim.reset(seed)
        self.human = ScriptedHuman(self.sim, self.human_config)
        self._policy_target = self.sim.command14()
        self.episodes += 1

    def episode_label(self) -> tuple[str | None, str]:
        return self.human.label, self.human.label_reason

    def close(self) -> None:
        self.sim.close()
