"""The scripted human: watches the policy, takes over when it stalls or drifts, and labels the outcome.

Stand-in for the Hi-ORS operator. Takeover rules (evaluated on the measured robot every control step
while the policy drives):
  * stall: the policy moved no joint more than `stall_tolerance` rad over the last `stall_window_s`;
  * drift: the task-progress distance grew `drift_m` beyond the best the policy has reached, or the
    policy put the robot somewhere the expert would struggle (a TCP near the table, the cube pushed away);
  * patience: the policy had `patience_s` of episode time without finishing.
Once in control the expert keeps it until the episode ends. Labels: success once the strict task check
holds for `success_hold_s`; failure when the scene is unrecoverable, the expert gives up, or the episode
runs past the task horizon.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from robot.sim.expert import Expert, make_expert
from robot.sim.xtrainer import CONTROL_DT, SimXTrainer

WATCH_EVERY = 5  # control steps between looks: the human watches at 10 Hz, like the state recorder
WATCH_DT = WATCH_EVERY * CONTROL_DT


@dataclasses.dataclass
class HumanConfig:
    stall_window_s: float = 1.0
    stall_tolerance: float = 0.01
    drift_m: float = 0.08
    patience_s: float | None = None  # None: the task's default
    success_hold_s: float = 0.5
    takeover: bool = True  # False: never intervene (labels only)
    drive_from_start: bool = False  # True: the expert drives the whole episode (success-rate evaluation)

    def validate(self) -> None:
        for field in ("stall_window_s", "stall_tolerance", "drift_m", "success_hold_s"):
            if getattr(self, field) <= 0:
                raise ValueError(f"HumanConfig.{field} must be positive, got {getattr(self, field)}")
        if self.patience_s is not None and self.patience_s < 0:
            raise ValueError(f"HumanConfig.patience_s must be >= 0 or None, got {self.patience_s}")


DEFAULT_PATIENCE = {"easy": 4.0, "transfer": 8.0}


class ScriptedHuman:
    def __init__(self, sim: SimXTrainer, config: HumanConfig | None = None):
        self.sim = sim
        self.config = config or HumanConfig()
        self.config.validate()
        self.reset()

    def reset(self) -> None:
        self.expert: Expert | None = None
        self.takeover_time: float | None = None
        self.takeover_reason = ""
        self.label: str | None = None
        self.label_reason = ""
        self._held = 0
        self._ticks = 0
        window = max(1, round(self.config.stall_window_s / WATCH_DT) + 1)
        self._recent = collections.deque(maxlen=window)
        self._best_progress = np.inf
        self._box_start = self.sim.box_pose()[:3]
        if self.config.drive_from_start:
            self.take_over("evaluation: the expert drives from reset")

    @property
    def teleop(self) -> bool:
        return self.expert is not None

    def take_over(self, reason: str) -> None:
        self.expert = make_expert(self.sim)
        self.takeover_time = self.sim.time
        self.takeover_reason = reason

    def expert_action(self) -> np.ndarray:
        assert self.expert is not None
        return self.expert.act()

    def progress(self) -> float:
        """Distance still to go (metres): TCP to marker, or cube to the meeting point."""
        if self.sim.task.name == "easy":
            return self.sim.left_tcp_error()
        return float(np.linalg.norm(self.sim.box_pose()[:3] - np.array([0.0, 0.5, 0.25])))

    def after_step(self) -> None:
        """Called after every control step; every WATCH_EVERY-th one updates the label and decides on takeover."""
        self._ticks += 1
        if self.label is not None or self._ticks % WATCH_EVERY:
            return
        cfg, sim = self.config, self.sim
        self._held = self._held + 1 if sim.task_success_now() else 0
        if self._held * WATCH_DT >= cfg.success_hold_s - 1e-9:
            who = "policy" if self.expert is None else "scripted teleoperator"
            self._set_label("success", f"task held for {cfg.success_hold_s} s ({who} in control)")
            return
        why = sim.unrecoverable() or (self.expert.failure if self.expert else None)
        if why:
            self._set_label("failure", why)
            return
        if sim.time >= sim.task.horizon_s:
            self._set_label("failure", f"not done within the {sim.task.horizon_s} s horizon")
            return
        if self.expert is None and cfg.takeover:
            reason = self._takeover_reason()
            if reason:
                self.take_over(reason)

    def _set_label(self, label: str, reason: str) -> None:
        self.label, self.label_reason = label, reason

    def _takeover_reason(self) -> str | None:
        cfg, sim = self.config, self.sim
        state = sim.state14()
        self._recent.append(state)
        patience = cfg.patience_s if cfg.patience_s is not None else DEFAULT_PATIENCE[sim.task.name]
        if sim.time >= patience:
            return f"policy not done after {patience} s"
        if len(self._recent) == self._recent.maxlen:
            moved = np.abs(np.asarray(self._recent) - self._recent[0]).max()
            if moved < cfg.stall_tolerance:
                return f"policy stalled (moved < {cfg.stall_tolerance} rad in {cfg.stall_window_s} s)"
        progress = self.progress()
        self._best_progress = min(self._best_progress, progress)
        if progress > self._best_progress + cfg.drift_m:
            return f"policy drifted {progress - self._best_progress:.3f} m away from the goal"
        if min(sim.tcp("left")[0][2], sim.tcp("right")[0][2]) < 0.03:
            return "policy brought a gripper too close to the table"
        if sim.task.name == "transfer" and np.linalg.norm(sim.box_pose()[:2] - self._box_start[:2]) > 0.05:
            return "policy pushed the cube away"
        return None
