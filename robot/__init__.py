"""Robot layer: the Dobot X-Trainer env and robot-PC bridge (robot.dobot) and its MuJoCo stand-in (robot.sim)."""
