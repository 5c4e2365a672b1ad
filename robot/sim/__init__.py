"""Simulated X-Trainer: gym-aloha's bimanual ViperX in raw MuJoCo, a scripted human, and a robot-PC launcher."""
