"""Policy queries per second through the whole robot path: sim robot process -> bridge -> websocket -> DobotEnv.

    python benchmarks/sim.py [--seconds 10] [--height 224 --width 298]

Each query is one env.step: the robot PC side renders the three cameras, sends the observation, gets the
50x14 chunk and executes it (20 chunk steps = 100 physics control steps while the policy drives; 1 step =
5 control steps while the scripted human teleoperates). The policy is free (it returns the current state),
so the figure is the robot layer's own ceiling. Baseline, measured in the same run: the same simulated
work (render 3 cameras + the control steps) in one process, with no bridge, protocol or websocket.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from robot.dobot.env import DobotEnv, DobotEnvConfig  # noqa: E402
from robot.sim.xtrainer import SimXTrainer  # noqa: E402

VIPERX_LOW = (-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158, 0.0) * 2
VIPERX_HIGH = (3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158, 1.0) * 2
START = (0.0, -0.96, 1.16, 0.0, -0.3, 0.0, 0.1) * 2


def baseline(size: tuple[int, int], control_steps: int, seconds: float) -> float:
    sim = SimXTrainer("easy", size)
    sim.reset(0)
    sim.render()  # renderer warm-up
    target = sim.command14()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sim.render()
        for _ in range(control_steps):
            sim.step(target)
        n += 1
        if sim.time > 10.0:
            sim.reset(n)
    sim.close()
    return n / (time.perf_counter() - start)


def through_the_bridge(size: tuple[int, int], teleop: bool, seconds: float) -> tuple[float, float]:
    env = DobotEnv(
        DobotEnvConfig(
            host="127.0.0.1",
            port=0,
            image_size=size,
            max_episode_steps=10_000,
            joint_low=VIPERX_LOW,
            joint_high=VIPERX_HIGH,
            reset_pose=START,
            robot_timeout_s=60,
        )
    )
    cmd = [sys.executable, "-m", "robot.sim.serve", "--task", "easy", "--port", str(env.port)]
    cmd += ["--height", str(size[0]), "--width", str(size[1]), "--horizon", "1e9"]
    cmd += ["--patience", "0"] if teleop else ["--no-takeover"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        obs, _ = env.reset(seed=0)
        for _ in range(3):  # warm-up: connection, first renders
            obs, *_ = env.step(np.tile(obs["state"], (50, 1)))
        n, recorded, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            obs, _, term, trunc, info = env.step(np.tile(obs["state"], (50, 1)))
            assert info["teleop"] == teleop, info
            n += 1
            recorded += int(obs["state_chunk_mask"].sum())
            if term or trunc:
                obs, _ = env.reset()
        elapsed = time.perf_counter() - start
        return n / elapsed, recorded / elapsed
    finally:
        env.close()
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=298)
    args = parser.parse_args()
    size = (args.height, args.width)
    print(f"3 cameras at {size[0]}x{size[1]}, {os.cpu_count()} CPUs visible, {args.seconds:.0f} s per figure")
    for label, teleop, control_steps in (
        ("policy drives (20 of 50 steps)", False, 100),
        ("human teleop (1 step)", True, 5),
    ):
        base = baseline(size, control_steps, args.seconds)
        qps, records = through_the_bridge(size, teleop, args.seconds)
        print(
            f"{label:32s} queries/s through bridge+websocket+env: {qps:6.1f}   "
            f"sim-only baseline: {base:6.1f}   ratio {qps / base:4.2f}   "
            f"robot time {qps * control_steps * 0.02:5.1f}x real time   10 Hz records/s {records:6.1f}"
        )


if __name__ == "__main__":
    main()
