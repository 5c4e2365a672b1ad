"""Scripted experts (closed-loop IK + re-entrant state machines) that finish a task from whatever state they get.

An expert is a generator of 14-d joint targets, one per 50 Hz control step. It reads the simulator's true
state (cube pose, contacts) like a human looking at the scene, and it is re-created from the measured
state whenever it takes over, so it can start from reset or from anything a policy left behind.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from robot.sim import model as sim_model
from robot.sim.ik import ArmIK, rot_x, rot_y, rot_z
from robot.sim.xtrainer import CONTROL_DT, SimXTrainer

OPEN, CLOSED = 1.0, 0.0
JOINT_SPEED = 1.2  # rad/s for joint-space moves
CARRY_JOINT_SPEED = 0.8
MEET = np.array([0.0, 0.5, 0.25])
GRASP_PITCH = np.deg2rad(60)
GRASP_DZ = 0.025


class Expert:
    """Base: keeps its own commanded 14-d pose and provides joint-space and Cartesian move primitives."""

    def __init__(self, sim: SimXTrainer):
        self.sim = sim
        self.ik = {side: ArmIK(sim.model, side) for side in ("left", "right")}
        self.q = sim.state14().astype(np.float64)  # start from what is measured, not what was commanded
        self.failure: str | None = None
        self._plan = self.plan()

    def act(self) -> np.ndarray:
        """Next 14-d target; holds the last one once the plan is finished."""
        try:
            next(self._plan)
        except StopIteration:
            pass
        return self.q.copy()

    def plan(self) -> Iterator[None]:
        raise NotImplementedError

    # -- primitives ----------------------------------------------------------------------------------------
    def _sl(self, side: str) -> slice:
        return slice(0, 6) if side == "left" else slice(7, 13)

    def _gi(self, side: str) -> int:
        return 6 if side == "left" else 13

    def sync_ik(self) -> None:
        for ik in self.ik.values():
            ik.data.qpos[:] = self.sim.data.qpos

    def wait(self, seconds: float) -> Iterator[None]:
        for _ in range(max(1, round(seconds / CONTROL_DT))):
            yield

    def joint_move(
        self, goals: dict[str, np.ndarray], grippers: dict[str, float] | None = None, speed: float = JOINT_SPEED
    ) -> Iterator[None]:
        start = self.q.copy()
        end = start.copy()
        for side, q6 in goals.items():
            end[self._sl(side)] = q6
        for side, g in (grippers or {}).items():
            end[self._gi(side)] = g
        joints = np.r_[0:6, 7:13]
        steps = max(1, int(np.ceil(np.abs(end[joints] - start[joints]).max() / (speed * CONTROL_DT))))
        for k in range(1, steps + 1):
            self.q = start + (end - start) * (k / steps)
            self.q[[6, 13]] = end[[6, 13]]
            yield

    def ik_goal(self, side: str, pos: np.ndarray, rot: np.ndarray) -> np.ndarray:
        self.sync_ik()
        q6, _ = self.ik[side].solve_goal(pos, rot, self.q[self._sl(side)])
        return q6

    def cartesian_move(self, side: str, pos: np.ndarray, rot: np.ndarray, speed: float) -> Iterator[None]:
        """Straight TCP line at `speed` m/s, IK warm-started from the previous command (not the measured pose)."""
        self.sync_ik()
        ik = self.ik[side]
        start, _ = ik.forward(self.q[self._sl(side)])
        steps = max(1, int(np.ceil(np.linalg.norm(pos - start) / (speed * CONTROL_DT))))
        for k in range(1, steps + 1):
            waypoint = start + (pos - start) * (k / steps)
            self.q[self._sl(side)], _ = ik.solve(waypoint, rot, self.q[self._sl(side)], iterations=20)
            yield

    def set_gripper(self, side: str, value: float, seconds: float) -> Iterator[None]:
        self.q[self._gi(side)] = value
        yield from self.wait(seconds)

    def home(self, grippers: float = OPEN) -> Iterator[None]:
        start = sim_model.START_ARM_QPOS
        # Lift a low TCP first so the joint path home does not sweep through the table.
        for side in ("left", "right"):
            self.sync_ik()
            tcp, rot = self.ik[side].forward(self.q[self._sl(side)])
            if tcp[2] < 0.1:
                yield from self.cartesian_move(side, np.r_[tcp[:2], 0.15], rot, 0.15)
        yield from self.joint_move({"left": start, "right": start}, {"left": grippers, "right": grippers}, 1.5)


class ReachExpert(Expert):
    """Easy task: left TCP onto the marker, gripper aimed along the horizontal line from the left arm's base to the
    marker and pitched 0.5 rad down; the right arm parks.

    Why aim at the marker rather than hold one world orientation: a fixed orientation makes the wrist undo the
    waist's yaw with forearm_roll and wrist_rotate, which have two mirrored solutions (about +-1 rad each) that
    the IK picks between by small differences, so demos of neighbouring targets disagreed by 2 rad in those
    joints and a policy trained on them averaged the branches. Aimed, roll and rotate stay near 0 and the joint
    goal is a smooth function of the marker's position, as a person's natural reach is."""

    PITCH = 0.5

    def rotation(self, target: np.ndarray) -> np.ndarray:
        base = self.sim.model.body("vx300s_left").pos
        return rot_z(np.arctan2(target[1] - base[1], target[0] - base[0])) @ rot_y(self.PITCH)

    def plan(self) -> Iterator[None]:
        target = self.sim.target
        rot = self.rotation(target)
        goal = self.ik_goal("left", target, rot)
        yield from self.joint_move({"left": goal, "right": sim_model.START_ARM_QPOS})
        aim = target.copy()
        while True:  # close the loop on the measured TCP: sag and lag leave a few millimetres
            yield from self.wait(0.1)
            error = target - self.sim.tcp("left")[0]
            if np.linalg.norm(error) > 0.004:
                aim = aim + 0.7 * error
                yield from self.cartesian_move("left", aim, rot, 0.1)


class TransferExpert(Expert):
    """Contact-rich task: right arm picks the cube, hands it over at MEET, the left arm holds it."""

    RIGHT_MEET_ROT = rot_z(np.pi)  # pointing -x, fingers along world y, z up
    LEFT_MEET_ROT = rot_x(np.pi / 2)  # pointing +x, fingers closing along world z

    def plan(self) -> Iterator[None]:
        retries = 0
        while self.failure is None:
            stage = self.assess()
            if stage == "done":
                yield from self.wait(1.0)
                continue
            if stage == "failed":
                return
            if retries > 4:
                self.failure = "gave up after 4 retries"
                return
            retries += 1
            if stage == "home":
                yield from self.home()
                yield from self.settle()
                yield from self.pick()
            elif stage == "lift":
                yield from self.lift()
            elif stage == "left_grasp":
                yield from self.left_grasp()
            elif stage == "release":
                yield from self.release()

    def holding(self, side: str) -> bool:
        contacts = self.sim.box_contacts()[side]
        opening = self.sim.state14()[self._gi(side)]
        return contacts >= 2 or (contacts >= 1 and 0.3 < opening < 0.85)

    def assess(self) -> str:
        why = self.sim.unrecoverable()
        if why:
            self.failure = why
            return "failed"
        z = self.sim.box_pose()[2]
        if self.sim.task_success_now():
            return "done"
        if z > 0.04 and self.holding("left"):
            return "release"
        if z > 0.04 and self.holding("right") and self.sim.box_contacts()["left"] == 0:
            return "left_grasp"
        if self.holding("right") and z > 0.03:
            return "lift"
        return "home"

    def settle(self) -> Iterator[None]:
        for _ in range(50):
            if self.sim.box_speed() < 0.02:
                return
            yield

    def grasp_rotation(self) -> np.ndarray:
        box = self.sim.box_pose()
        base = self.sim.model.body("vx300s_right").pos
        heading = np.arctan2(box[1] - base[1], box[0] - base[0])
        w, x, y, z = box[3:]
        cube_yaw = np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
        # The finger axis must be a cube face normal: choose the face-aligned yaw nearest the approach heading.
        candidates = cube_yaw + np.arange(-4, 5) * (np.pi / 2)
        diffs = np.abs((candidates - heading + np.pi) % (2 * np.pi) - np.pi)
        yaw = candidates[int(np.argmin(diffs))]
        return rot_z(yaw) @ rot_y(GRASP_PITCH)

    def pick(self) -> Iterator[None]:
        box = self.sim.box_pose()[:3]
        rot = self.grasp_rotation()
        above = box + np.array([0, 0, GRASP_DZ + 0.08])
        goal = self.ik_goal("right", above, rot)
        yield from self.joint_move({"right": goal}, {"right": OPEN})
        box = self.sim.box_pose()[:3]
        yield from self.cartesian_move("right", box + np.array([0, 0, GRASP_DZ + 0.08]), rot, 0.1)
        yield from self.cartesian_move("right", box + np.array([0, 0, GRASP_DZ]), rot, 0.1)
        yield from self.set_gripper("right", CLOSED, 0.4)
        if self.holding("right"):
            yield from self.lift()

    def lift(self) -> Iterator[None]:
        self.sync_ik()
        tcp, rot = self.ik["right"].forward(self.q[7:13])
        yield from self.cartesian_move("right", np.r_[tcp[:2], 0.15], rot, 0.15)
        right_goal = self.ik_goal("right", MEET, self.RIGHT_MEET_ROT)
        left_goal = self.ik_goal("left", MEET + np.array([-0.12, 0, 0]), self.LEFT_MEET_ROT)
        yield from self.joint_move({"right": right_goal, "left": left_goal}, {"left": OPEN}, CARRY_JOINT_SPEED)
        yield from self.wait(0.3)
        if self.holding("right"):
            yield from self.left_grasp()

    def left_grasp(self) -> Iterator[None]:
        self.q[6] = OPEN
        box = self.sim.box_pose()[:3]
        self.sync_ik()
        tcp, _ = self.ik["left"].forward(self.q[0:6])
        if tcp[0] > box[0] - 0.1:  # not lined up in front of the cube: back off first
            yield from self.joint_move(
                {"left": self.ik_goal("left", box + np.array([-0.12, 0, 0]), self.LEFT_MEET_ROT)}, {"left": OPEN}
            )
        yield from self.cartesian_move("left", box + np.array([-0.005, 0, 0]), self.LEFT_MEET_ROT, 0.1)
        yield from self.set_gripper("left", CLOSED, 0.5)
        if self.holding("left"):
            yield from self.release()

    def release(self) -> Iterator[None]:
        self.q[6] = CLOSED
        yield from self.set_gripper("right", OPEN, 0.3)
        self.sync_ik()
        tcp, rot = self.ik["right"].forward(self.q[7:13])
        yield from self.cartesian_move("right", tcp + 0.12 * rot[:, 0] * -1, rot, 0.15)
        yield from self.wait(0.2)


EXPERTS = {"easy": ReachExpert, "transfer": TransferExpert}


def make_expert(sim: SimXTrainer) -> Expert:
    return EXPERTS[sim.task.name](sim)
