"""Does the SFT base learn the sim task? Fit against generalisation, with and without proprioception.

    python benchmarks/sim_base.py [--demos 50] [--updates 1500,3000] [--with-state] [--out outputs/sim_base]

The first stage of `benchmarks/sim_hiors.py` on its own (same demos, preset, trainer and evaluation): scripted
demos -> `pi0_sim` trained from scratch, and after each number of updates in --updates the policy alone is
evaluated on two sets of initial conditions: the first demos' own (`train`: can it reproduce what it saw?) and
held-out ones (`eval`: does it generalise?). For the easy task the median distance of the left TCP to the target
at the end is printed as well.

The `pi0_sim` preset has no state input (`state_input=False`); --with-state gives it one, as openpi's PI0 has.
With it the policy uses the state as a shortcut: the scripted demos move along straight joint-space lines from one
start pose, so a state on such a line already says where the goal is, and once the policy's own imprecise first
chunk leaves the line, each further query extrapolates further away (the TCP error grows query after query).
Rows "blind" below were measured with the robot state replaced by a constant, which is what the preset now does.

Measured (2026-12-03, 2 CPU cores, seed 0, demos from the aimed-gripper expert). Rows "wide" had the easy task's
former 30 x 30 x 23 cm target box (the reference prototype's), the last row a 10 x 10 x 7.7 cm box around the
current one's centre (the current box is 10 x 10 x 7 cm):
| demos | state | updates | loss | train: success, TCP error | eval: success, TCP error |
|---|---|---|---|---|---|
| wide, 50 | seen | 1500 | 0.097 | 0%, 17 cm | 0%, 21 cm |
| wide, 50 | seen | 3000 | 0.069 | 10%, 12 cm | 0%, 18 cm |
| wide, 50 | seen | 5000 | 0.017 | 50%, 4.6 cm | 10%, 17 cm |
| wide, 200 | seen | 2500 | 0.062 | 0%, 16 cm | 10%, 14 cm |
| wide, 200 | seen | 5000 | 0.076 | 0%, 18 cm | 0%, 17 cm |
| wide, 50 | blind | 2500 | 0.032 | 60%, 1.8 cm | 0%, 14 cm |
| wide, 50 | blind | 4000 | 0.024 | 60%, 1.7 cm | 10%, 9.4 cm |
| wide, 200 | blind | 2500 | 0.076 | 0%, 13 cm | 0%, 16 cm |
| wide, 200 | blind | 4500 | 0.051 | 0%, 16 cm | 0%, 16 cm |
| 50 | blind | 2500 | 0.018 | 100%, 1.1 cm | 80%, 1.6 cm |
Updates take ~75-90 ms each at batch 16.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import sim_hiors  # noqa: E402

from experiments.dobot_pnp import build  # noqa: E402
from hiors_jax.data.acceptance import AcceptanceConfig  # noqa: E402
from hiors_jax.data.pipeline import norm_stats_from_windows  # noqa: E402
from hiors_jax.models import pi0, tokenizer  # noqa: E402
from hiors_jax.models.config import get_preset  # noqa: E402
from robot.sim.human import HumanConfig  # noqa: E402
from robot.sim.xtrainer import TASKS  # noqa: E402


def run(args) -> list[dict]:
    checkpoints = sorted(int(u) for u in args.updates.split(","))
    cfg = sim_hiors.BenchConfig(task=args.task, demos=args.demos, base_updates=checkpoints[-1],
                                eval_episodes=args.eval_episodes, out=args.out)  # fmt: skip
    work = pathlib.Path(args.out)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = get_preset(cfg.preset, state_input=args.with_state)
    prompt = TASKS[cfg.task].prompt
    tok_path = tokenizer.train_tiny_tokenizer(work / "tokenizer.model", sorted({*build.TINY_CORPUS, prompt}), 64)
    tok = build.load_tokenizer(tok_path, model)

    t0 = time.perf_counter()
    store = sim_hiors.open_store(cfg, work / "demos", AcceptanceConfig(), model)
    with sim_hiors.sim_robot(cfg, HumanConfig(drive_from_start=True), sim_hiors.DEMO_SEEDS) as env:
        sim_hiors.collect(env, build.hold_pose, None, store, episodes=cfg.demos, frames=None, seed=0, first_id=0)
    store.close()
    window = store.window("accepted")
    print(f"{cfg.demos} demos, {window.size} frames ({time.perf_counter() - t0:.0f} s)", flush=True)
    stats = norm_stats_from_windows([window], min_std=0.05)
    policy = build.make_policy(model, tok, stats, num_steps=cfg.num_denoise_steps)

    agent = sim_hiors.make_agent("sft", model, cfg.base_lr, checkpoints[-1])
    state = agent.init({"actor": pi0.init_params(model, jax.random.key(0))}, jax.random.PRNGKey(0))
    trainer = sim_hiors.Trainer(agent, state, model, tok, stats, cfg, 0, None)
    rows = []
    for updates in checkpoints:
        t0 = time.perf_counter()
        loss = trainer.train({"demo": window}, {"demo": 1.0}, updates - trainer.updates)["loss"]
        row = {"updates": updates, "loss": loss, "train_s": time.perf_counter() - t0}
        # The demos' own initial conditions (reset seeds DEMO_SEEDS, DEMO_SEEDS + 1, ...) and held-out ones.
        for name, first_seed in (("train", sim_hiors.DEMO_SEEDS), ("eval", sim_hiors.EVAL_SEEDS)):
            row[name] = sim_hiors.evaluate(cfg, policy, trainer.params, 1, jax.random.key(5), first_seed=first_seed)
        rows.append(row)
        scores = [f"{n}: success {row[n]['success@1']:.0%}, tcp error {row[n].get('tcp_error_m', 0):.3f} m"
                  for n in ("train", "eval")]  # fmt: skip
        print(f"updates {updates}: loss {loss:.4f} ({row['train_s']:.0f} s); " + "; ".join(scores), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="easy", choices=sorted(TASKS))
    p.add_argument("--demos", type=int, default=50)
    p.add_argument("--updates", default="1500,3000", help="comma-separated update counts to evaluate at")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--with-state", action="store_true", help="give the policy the robot state (openpi's PI0)")
    p.add_argument("--out", default="outputs/sim_base")
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
