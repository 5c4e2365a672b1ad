"""Policy queries per second through the whole robot path: sim robot process -> bridge -> websocket -> DobotEnv.

    python benchmarks/sim.py [--seconds 4 --rounds 3] [--height 224 --width 298]

Each query is one env.step: the robot PC side renders the three cameras, sends the observation, gets the
50x14 chunk and executes it (20 chunk steps = 100 physics control steps while the policy drives; 1 step =
5 control steps while the scripted human teleoperates). The policy is free (it holds the episode's start pose),
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


class SimOnly:
    """Baseline: the same simulated work per query (render 3 cameras + the control steps), in this process."""

    def __init__(self, size: tuple[int, int], control_steps: int):
        self.sim = SimXTrainer("easy", size)
        self.sim.reset(0)
        self.sim.render()  # renderer warm-up
        self.control_steps = control_steps
        self.episodes = 0

    def measure(self, seconds: float) -> float:
        target = self.sim.command14()
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.sim.render()
            for _ in range(self.control_steps):
                self.sim.step(target)
            n += 1
            if self.sim.time > 10.0:
                self.episodes += 1
                self.sim.reset(self.episodes)
                target = self.sim.command14()
        return n / (time.perf_counter() - start)


class ThroughTheBridge:
    """Sim robot in its own process -> bridge -> websocket -> DobotEnv here, with a free policy (hold the pose)."""

    def __init__(self, size: tuple[int, int], teleop: bool):
        self.teleop = teleop
        self.env = DobotEnv(
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
        cmd = [sys.executable, "-m", "robot.sim.serve", "--task", "easy", "--port", str(self.env.port)]
        # Episodes of 10 s robot time, as in the baseline; resets are part of the measured path.
        cmd += ["--height", str(size[0]), "--width", str(size[1]), "--horizon", "10"]
        cmd += ["--patience", "0"] if teleop else ["--no-takeover"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._reset()
        for _ in range(3):  # warm-up: connection, first renders
            self.obs, *_ = self.env.step(self.hold)

    def _reset(self) -> None:
        self.obs, _ = self.env.reset()
        # Hold the pose the episode started in (commanding the measured state instead would let the arms sag).
        self.hold = np.tile(self.obs["state"], (50, 1))

    def measure(self, seconds: float) -> tuple[float, float]:
        n, recorded, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            self.obs, _, term, trunc, info = self.env.step(self.hold)
            assert info["teleop"] == self.teleop, info
            n += 1
            recorded += int(self.obs["state_chunk_mask"].sum())
            if term or trunc:
                self._reset()
        elapsed = time.perf_counter() - start
        return n / elapsed, recorded / elapsed

    def close(self) -> None:
        self.env.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="alternating baseline/bridge rounds (medians)")
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=298)
    args = parser.parse_args()
    size = (args.height, args.width)
    print(
        f"3 cameras at {size[0]}x{size[1]}, {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}; "
        f"{args.rounds} alternating rounds of {args.seconds:.0f} s, medians"
    )
    modes = (("policy drives (20 of 50 steps)", False, 100), ("human teleop (1 step)", True, 5))
    for label, teleop, control_steps in modes:
        baseline, bridge = SimOnly(size, control_steps), ThroughTheBridge(size, teleop)
        try:
            base, through, records = [], [], []
            for _ in range(args.rounds):  # alternate so that load from other processes hits both alike
                qps, rec = bridge.measure(args.seconds)
                through.append(qps)
                records.append(rec)
                base.append(baseline.measure(args.seconds))
        finally:
            bridge.close()
            baseline.sim.close()
        qps, ref, rec = (float(np.median(v)) for v in (through, base, records))
        rounds = ", ".join(f"{v:.1f}" for v in through)
        print(
            f"{label:32s} queries/s through bridge+websocket+env: {qps:6.1f} (rounds {rounds})"
            f"   sim-only baseline: {ref:6.1f}   ratio {qps / ref:4.2f}"
            f"   robot time {qps * control_steps * 0.02:5.1f}x real time   10 Hz records/s {rec:6.1f}"
        )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
