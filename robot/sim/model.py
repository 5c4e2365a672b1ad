"""The simulated X-Trainer's MuJoCo model: gym-aloha's bimanual ViperX scene plus a target marker.

The XML and meshes are vendored from gym-aloha 0.1.5 (Apache-2.0, see assets/LICENSE): the package pins
mujoco < 3.9 and dm-control, which would downgrade the mujoco 4 this project uses, and only the assets
are needed (raw MuJoCo reproduces gym-aloha's physics exactly).
"""

from __future__ import annotations

import pathlib

import mujoco
import numpy as np

ASSETS = pathlib.Path(__file__).resolve().parent / "assets"
SCENE_XML = ASSETS / "bimanual_viperx_transfer_cube.xml"

# 14-d layout: per arm waist, shoulder, elbow, forearm_roll, wrist_angle, wrist_rotate, gripper (left, right).
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
START_ARM_QPOS = np.array([0.0, -0.96, 1.16, 0.0, -0.3, 0.0])
GRIPPER_CLOSED_FINGER = 0.01844  # finger position (m) for normalised gripper 0
GRIPPER_SPAN = 0.05800 - 0.01844  # normalised 1 is fully open
START_GRIPPER = (0.02239 - GRIPPER_CLOSED_FINGER) / GRIPPER_SPAN
CAMERAS = {"cam_high": "top", "cam_left_wrist": "left_wrist", "cam_right_wrist": "right_wrist"}
MARKER_RADIUS = 0.025
TCP_OFFSET = 0.12  # metres ahead of gripper_link along its x axis: the middle of the finger pads


def build_model(with_marker: bool) -> mujoco.MjModel:
    """Compile the scene; the easy task adds a collision-free mocap sphere that all cameras see."""
    spec = mujoco.MjSpec.from_file(str(SCENE_XML))
    if with_marker:
        body = spec.worldbody.add_body(name="target_marker", mocap=True, pos=[0.0, 0.5, 0.25])
        body.add_geom(
            name="target_marker",
            type=mujoco.mjtGeom.mjGEOM_SPHERE,
            size=[MARKER_RADIUS, 0, 0],
            rgba=[0.1, 1.0, 0.1, 1.0],
            contype=0,
            conaffinity=0,
        )
    model = spec.compile()
    # Speed: no shadows, no multisampling (offsamples is read when the GL context is created).
    model.light_castshadow[:] = 0
    model.vis.quality.offsamples = 0
    return model


def start_state14() -> np.ndarray:
    arm = np.concatenate([START_ARM_QPOS, [START_GRIPPER]])
    return np.concatenate([arm, arm]).astype(np.float64)
