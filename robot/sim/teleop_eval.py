"""Success rate of the scripted teleoperator driving alone from reset (seeded, no rendering).

    python -m robot.sim.teleop_eval --task easy --episodes 20 --seed 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from robot.sim.human import HumanConfig, ScriptedHuman
from robot.sim.xtrainer import TASKS, SimXTrainer


def run_episode(sim: SimXTrainer, seed: int) -> tuple[str, str, float]:
    sim.reset(seed)
    human = ScriptedHuman(sim, HumanConfig(drive_from_start=True))
    while human.label is None:
        sim.step(human.expert_action())
        human.after_step()
    return human.label, human.label_reason, sim.time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="easy")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="episode i uses seed + i")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    sim = SimXTrainer(args.task, render=False)
    successes, times = 0, []
    start = time.perf_counter()
    for i in range(args.episodes):
        label, reason, t = run_episode(sim, args.seed + i)
        successes += label == "success"
        if label == "success":
            times.append(t)
        print(f"episode {i:3d} seed {args.seed + i:5d}: {label:7s} at {t:5.2f} s sim time ({reason})")
    rate = successes / args.episodes
    median = f"{statistics.median(times):.2f} s" if times else "n/a"
    print(
        f"task {args.task}: {successes}/{args.episodes} successes ({100 * rate:.0f}%), "
        f"median time to label {median}, wall {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
