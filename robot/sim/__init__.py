"""Simulated X-Trainer: gym-aloha's bimanual ViperX in raw MuJoCo, a scripted human, and a robot-PC launcher."""

import os as _os
import sys as _sys

if _sys.platform.startswith("linux") and not _os.environ.get("DISPLAY"):
    # Headless Linux: MuJoCo renders the sim cameras through EGL (set before any module here imports mujoco).
    _os.environ.setdefault("MUJOCO_GL", "egl")
