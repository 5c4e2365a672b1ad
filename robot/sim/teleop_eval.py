"""Success rate of the scripted teleoperator (seeded, no rendering).

python -m robot.sim.teleop_eval --task easy --episodes 20 --seed 0
    the teleoperator drives alone from reset;
python -m robot.sim.teleop_eval --task transfer --start mid-task-walk
    it takes over after a stand-in "policy" left the robot somewhere: `hold` (a stalled policy), `walk`
    (1 s of random-walk joint targets from reset) or `mid-task-walk` (the expert ran 1-6 s, then 1 s of
    random walk), through the same takeover rules the sim robot uses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from robot.sim.expert import make_expert
from robot.sim.human import HumanConfig, ScriptedHuman
from robot.sim.xtrainer import TASKS, SimXTrainer

STARTS = ("reset", "hold", "walk", "mid-task-walk")
JOINT_MASK = np.r_[np.ones(6), 0, np.ones(6), 0]


def run_episode(sim: SimXTrainer, seed: int, start: str = "reset") -> tuple[str, str, float]:
    sim.reset(seed)
    if start == "reset":
        human = ScriptedHuman(sim, HumanConfig(drive_from_start=True))
    else:
        rng = np.random.default_rng(seed + 10_000)
        if start == "mid-task-walk":
            expert, until = make_expert(sim), rng.uniform(1.0, 6.0)
            while sim.time < until:
                sim.step(expert.act())
        # The stand-in policy gets 1 s past its start before the human's patience runs out.
        human = ScriptedHuman(sim, HumanConfig(patience_s=sim.time + 1.0))
        target = sim.command14()
        while human.label is None and not human.teleop:
            if start != "hold":
                target = target + rng.normal(0.0, 0.05, 14) * JOINT_MASK
            sim.step(target)
            human.after_step()
    while human.label is None:
        sim.step(human.expert_action())
        human.after_step()
    return human.label, human.label_reason, sim.time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="easy")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    parser.add_argument("--start", choices=STARTS, default="reset", help="where the teleoperator takes over")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    sim = SimXTrainer(args.task, render=False)
    successes, times = 0, []
    start = time.perf_counter()
    for i in range(args.episodes):
        label, reason, t = run_episode(sim, args.seed + i, args.start)
        successes += label == "success"
        if label == "success":
            times.append(t)
        print(f"episode {i:3d} seed {args.seed + i:5d}: {label:7s} at {t:5.2f} s sim time ({reason})")
    rate = successes / args.episodes
    median = f"{statistics.median(times):.2f} s" if times else "n/a"
    print(
        f"task {args.task} (start: {args.start}): {successes}/{args.episodes} successes ({100 * rate:.0f}%), "
        f"median time to label {median}, wall {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
