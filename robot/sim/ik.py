"""Damped-least-squares inverse kinematics for one ViperX arm of the simulated X-Trainer (TCP point + orientation)."""

from __future__ import annotations

import mujoco
import numpy as np

from robot.sim import model as sim_model

ORIENTATION_WEIGHT = 0.3  # metres per radian: trades orientation error against position error
DAMPING = 0.05
MAX_DQ = 0.2


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def rotation_error(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Axis-angle (world frame) of target @ current.T."""
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, (target @ current.T).reshape(-1))
    vel = np.empty(3)
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel


class ArmIK:
    """IK on a scratch copy of the model data so the simulation itself is never touched."""

    def __init__(self, model: mujoco.MjModel, side: str):
        self.model = model
        self.data = mujoco.MjData(model)
        self.side = side
        joints = [model.joint(f"vx300s_{side}/{j}").id for j in sim_model.ARM_JOINTS]
        self.qadr = np.array([model.jnt_qposadr[j] for j in joints])
        self.dofadr = np.array([model.jnt_dofadr[j] for j in joints])
        self.low, self.high = model.jnt_range[joints, 0], model.jnt_range[joints, 1]
        self.body = model.body(f"vx300s_{side}/gripper_link").id
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))

    def forward(self, q6: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.data.qpos[self.qadr] = q6
        mujoco.mj_kinematics(self.model, self.data)
        rot = self.data.xmat[self.body].reshape(3, 3).copy()
        return self.data.xpos[self.body] + sim_model.TCP_OFFSET * rot[:, 0], rot

    def solve(
        self, pos: np.ndarray, rot: np.ndarray, q_init: np.ndarray, iterations: int = 60
    ) -> tuple[np.ndarray, bool]:
        """Returns (q6, converged to 3 mm / 0.03 rad)."""
        q = np.clip(np.array(q_init, dtype=np.float64), self.low, self.high)
        for _ in range(iterations):
            tcp, cur = self.forward(q)
            err_p = pos - tcp
            err_r = rotation_error(rot, cur)
            if np.linalg.norm(err_p) < 5e-4 and np.linalg.norm(err_r) < 5e-3:
                break
            mujoco.mj_comPos(self.model, self.data)
            mujoco.mj_jac(self.model, self.data, self._jacp, self._jacr, tcp, self.body)
            jac = np.vstack([self._jacp[:, self.dofadr], ORIENTATION_WEIGHT * self._jacr[:, self.dofadr]])
            err = np.concatenate([err_p, ORIENTATION_WEIGHT * err_r])
            dq = jac.T @ np.linalg.solve(jac @ jac.T + DAMPING**2 * np.eye(6), err)
            dq = np.clip(dq, -MAX_DQ, MAX_DQ)
            q = np.clip(q + dq, self.low, self.high)
        tcp, cur = self.forward(q)
        ok = np.linalg.norm(pos - tcp) < 3e-3 and np.linalg.norm(rotation_error(rot, cur)) < 3e-2
        return q, bool(ok)

    def solve_goal(self, pos: np.ndarray, rot: np.ndarray, q_current: np.ndarray) -> tuple[np.ndarray, bool]:
        """Multi-seed IK for joint-space moves: prefers converged, unflipped wrists close to the current pose."""
        base = self.model.body(f"vx300s_{self.side}").pos
        heading = np.arctan2(pos[1] - base[1], pos[0] - base[0])
        yaw = heading if self.side == "left" else (heading - np.pi + np.pi) % (2 * np.pi) - np.pi
        start = sim_model.START_ARM_QPOS
        seeds = [q_current, start, np.r_[yaw, start[1:]], [yaw, -0.3, 0.6, 0, 1.0, 0], [yaw, 0, 0.3, 0, 1.2, 0]]
        best, best_score, best_ok = None, np.inf, False
        for seed in seeds:
            q, ok = self.solve(pos, rot, np.asarray(seed, dtype=np.float64))
            score = 100.0 * (not ok) + abs(q[3]) + abs(q[5]) + 0.1 * np.abs(q - q_current).sum()
            if score < best_score:
                best, best_score, best_ok = q, score, ok
        return best, best_ok
