"""Dobot X-Trainer: DobotEnv (gymnasium, websocket server, openpi msgpack-numpy) and the robot-PC bridge."""

from robot.dobot.env import DobotEnv, DobotEnvConfig, RobotTimeout
from robot.dobot.labels import ClassifierLabels, KeyboardLabels, RobotLabels

__all__ = ["ClassifierLabels", "DobotEnv", "DobotEnvConfig", "KeyboardLabels", "RobotLabels", "RobotTimeout"]
