"""Hi-ORS against its baselines on the simulated X-Trainer, reproducibly, on a CPU.

    python benchmarks/sim_hiors.py [--task easy] [--seeds 0,1,2] [--frames 400] [--out outputs/sim_hiors]
    python benchmarks/sim_hiors.py --quick            # smoke test: tiny budget, one seed, a few minutes

Pipeline per seed (everything seeded: sim initial conditions, model init, batches, policy noise):
1. Demos: the scripted teleoperator drives from reset (`HumanConfig(drive_from_start=True)`) through the real
   robot path (sim + robot-PC bridge over the websocket into `DobotEnv`, varied-frequency execution) and the
   episodes go through a `ReplayStore` (acceptance rules, targets relabelled from the recorded states).
2. SFT base policy: the `pi0_sim` PI0 preset trained from scratch on those demos (flow matching).
3. From the same base, each method runs the same number of rounds of: collect episodes (at least
   `frames_per_round` transitions) with the current params -> `updates_per_round` updates on uniform samples of
   the base demos plus everything the method kept -> evaluate. Methods:
   - `hiors`: the policy acts, the scripted human takes over a stalled or drifting policy and labels; accepted
     episodes (success label, short-episode and no-op filters) train the policy (Hi-ORS agent).
   - `hiors_no_takeover`: labels only (`HumanConfig(takeover=False)`): only the policy's own successes train.
   - `hiors_no_filters`: Hi-ORS with the short-episode and no-op filters off.
   - `sft`: behaviour cloning on more scripted demos, the same number of frames (SFT agent).
   - `sac`: SAC on PI0 (`agents/sac.py`, deterministic policy gradient through the sampler, critic over
     rewards from the labels) on a 50/50 mix of demos and every online transition, takeovers as in `hiors`.
   Frames = transitions (one per policy query, what the datasets count); robot seconds are reported as well.
4. Evaluation: success rate of the policy alone (the human never takes over, labels only) on a fixed set of
   initial conditions, after every round; at the end, test-time scaling: success within k = 1, 2, 3 attempts
   from the same initial condition.

Determinism: the original is asynchronous (actor and learner in parallel). Here collection and learning
alternate synchronously (K episodes with the current params -> M updates -> repeat), with the same agents,
replay store, acceptance rules, batch pipeline and actor loop the asynchronous system uses, so a run is a pure
function of its flags (up to floating-point reduction order of the CPU backend).

Sim note: the sim's clock stands still while the policy is queried, so a 1-step teleop query records a single
10 Hz state row, and the no-op filter (fewer than 2 rows = no motion) would drop every human step. On the real
robot the human keeps driving during the ~0.4 s query latency (several rows per teleop query). The benchmark
therefore executes 2 chunk steps per teleop query (`--teleop-steps 2`, 0.2 s, 2 rows), closer to the real
robot's 0.1 s + latency.

Measured (2026-12-03, 2 CPU cores, defaults, 3 seeds, benchmarks/results/sim_hiors_easy/): 76 min wall (a niced
test suite shared the cores for most of it; ~24 min per seed, the base ~5-7 min of it). SFT base 77 %; after 400
online frames, success of the policy alone on held-out targets (success within 1 / 3 trials): hiors 93 / 100 %,
sft 100 / 100 %, hiors_no_filters 97 / 100 %, hiors_no_takeover 73 / 77 % (it only keeps the policy's own
successes, which add nothing new), sac 0 % (its actor loss grows to 7-13 and the TCP ends ~10 cm away). The easy
task does not separate Hi-ORS from SFT: the base is already at 77 %. benchmarks/sim_base.py records why the task
box, the expert's orientation and the preset's missing state input are what they are.

Outputs under --out: `results.json`, `results.md` (the table), `success_vs_frames.png`, tensorboard event files
under `tensorboard/<method>/seed<k>/` (`eval/success` against frames, training losses against updates).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import sys
import time

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.dobot_pnp import build  # noqa: E402
from experiments.dobot_pnp import eval as eval_lib  # noqa: E402
from hiors_jax.agents import hiors, sac, sft  # noqa: E402
from hiors_jax.agents.train_state import OptimizerConfig, step_key  # noqa: E402
from hiors_jax.data.acceptance import AcceptanceConfig  # noqa: E402
from hiors_jax.data.pipeline import BatchLoader, PipelineConfig, finish_batch, norm_stats_from_windows  # noqa: E402
from hiors_jax.data.replay import ReplayStore  # noqa: E402
from hiors_jax.models import pi0, tokenizer  # noqa: E402
from hiors_jax.models.config import get_preset  # noqa: E402
from hiors_jax.train.actor import Actor  # noqa: E402
from hiors_jax.train.metrics import MetricsWriter  # noqa: E402
from hiors_jax.transport import ParamsSlot  # noqa: E402
from robot.dobot.env import DobotEnv, DobotEnvConfig  # noqa: E402
from robot.sim.human import HumanConfig  # noqa: E402
from robot.sim.serve import SimServeConfig, start_in_thread  # noqa: E402
from robot.sim.xtrainer import TASKS  # noqa: E402

ROBOT_DIMS = 14
NO_FILTERS = AcceptanceConfig(short_episode_max=0, noop_filter=False)
# Seed ranges of the sim's initial conditions: demos, collection (per method) and evaluation never overlap.
DEMO_SEEDS, COLLECT_SEEDS, EVAL_SEEDS = 100_000, 200_000, 900_000


@dataclasses.dataclass(frozen=True)
class Method:
    algorithm: str  # agent: hiors | sft | sac
    human: HumanConfig  # the scripted human while collecting
    acceptance: AcceptanceConfig = AcceptanceConfig()


METHODS = {
    "hiors": Method("hiors", HumanConfig()),
    "sft": Method("sft", HumanConfig(drive_from_start=True)),
    "sac": Method("sac", HumanConfig()),
    "hiors_no_takeover": Method("hiors", HumanConfig(takeover=False)),
    "hiors_no_filters": Method("hiors", HumanConfig(), NO_FILTERS),
}


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    task: str = "easy"
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] = tuple(METHODS)
    preset: str = "pi0_sim"
    camera_size: tuple[int, int] = (48, 64)  # (H, W) the sim renders (the X-Trainer's aspect ratio)
    demos: int = 50  # base demo episodes
    base_updates: int = 2500
    frames: int = 400  # online frame budget per method (transitions collected after the base demos)
    frames_per_round: int = 100
    updates_per_round: int = 250
    batch_size: int = 16
    base_lr: float = 1e-3
    online_lr: float = 2e-4
    sac_critic_warmup: int = 100
    eval_episodes: int = 10
    trials: int = 3
    teleop_steps: int = 2
    num_denoise_steps: int = 10
    out: str = "outputs/sim_hiors"

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"--task {self.task!r} is not one of {sorted(TASKS)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
        for name in ("demos", "base_updates", "frames", "frames_per_round", "updates_per_round", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.eval_episodes < 1 or self.trials < 1:
            raise ValueError("--eval-episodes and --trials must be >= 1")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")

    @property
    def rounds(self) -> int:
        return -(-self.frames // self.frames_per_round)


QUICK = dict(
    seeds=(0,),
    demos=6,
    base_updates=40,
    frames=40,
    frames_per_round=20,
    updates_per_round=10,
    batch_size=8,
    sac_critic_warmup=5,
    eval_episodes=2,
    trials=2,
    num_denoise_steps=3,
)


# ------------------------------------------------------------------------------------------------ policy
class KeyedPolicy:
    """The actor's policy function (experiments.dobot_pnp.build.make_policy) with fixed params, as the openpi
    `infer` interface the evaluation takes; the sampler's noise keys come from one seeded stream."""

    def __init__(self, policy, params, key):
        self.policy, self.params, self.key = policy, params, key

    def infer(self, obs: dict) -> dict:
        self.key, key = jax.random.split(self.key)
        return {"actions": self.policy(self.params, obs, key)}


# ------------------------------------------------------------------------------------------------ robot
@contextlib.contextmanager
def sim_robot(cfg: BenchConfig, human: HumanConfig, first_seed: int):
    """The actor's DobotEnv with the simulated X-Trainer (sim + bridge in a thread) connected over loopback."""
    env = DobotEnv(DobotEnvConfig(port=0, image_size=cfg.camera_size, robot_timeout_s=120))
    robot = start_in_thread(
        SimServeConfig(
            task=cfg.task,
            uri=f"ws://127.0.0.1:{env.port}",
            image_size=cfg.camera_size,
            seed=first_seed,
            teleop_steps=cfg.teleop_steps,
            human=human,
        )
    )
    try:
        yield env
    finally:
        env.close()  # first: the bridge blocked on its reply then sees the connection end and stops at once
        robot.stop()


def open_store(cfg: BenchConfig, root: pathlib.Path, acceptance: AcceptanceConfig, model) -> ReplayStore:
    size = model.vision.image_size
    return ReplayStore(
        root,
        acceptance=acceptance,
        window_frames=20_000,  # more than any method collects
        image_size=(size, size),
        horizon=model.action_horizon,
        use_videos=False,  # PNG frames: lossless and cheap at these sizes
        spill_open=False,  # episodes arrive whole from the in-process actor
        finalize_every=1_000_000,  # publish once, at close()
    )


def collect(env, policy, params, store, *, episodes: int | None, frames: int | None, seed: int, first_id: int):
    """Run the actor loop (hiors_jax.train.actor.Actor) into `store` until `episodes` or `frames` are reached."""
    actor = Actor(env, policy, ParamsSlot(params, 0), store, actor_id="sim", seed=seed, first_episode=first_id)
    sent = 0
    while (episodes is not None and len(actor.episodes) < episodes) or (frames is not None and sent < frames):
        stats = actor.run_episode()
        sent += stats["length"]
    return actor.episodes


def evaluate(cfg: BenchConfig, policy, params, trials: int, key, first_seed: int = EVAL_SEEDS) -> dict:
    """experiments.dobot_pnp.eval on the sim: the policy alone (the human only labels) from the fixed evaluation
    initial conditions (reset seeds first_seed, first_seed + 1, ...), up to `trials` attempts each; success@k =
    solved within k attempts. For the easy task also the median distance (m) of the left TCP to the target when
    the first attempts ended (how close the misses are)."""
    env_config = DobotEnvConfig(image_size=cfg.camera_size, robot_timeout_s=120)
    sim_config = SimServeConfig(task=cfg.task, image_size=cfg.camera_size, teleop_steps=cfg.teleop_steps)
    errors = []
    with eval_lib.sim_robot_env(env_config, sim_config) as (env, robot):

        def progress(_results, attempt) -> None:  # the sim is idle: the bridge waits for the env's next reply
            if cfg.task == "easy" and attempt.attempt == 1:
                errors.append(robot.bridge.io.sim.left_tcp_error())

        results = eval_lib.evaluate(
            KeyedPolicy(policy, params, key),
            env,
            cases=cfg.eval_episodes,
            trial_budget=trials,
            seed=first_seed,
            progress=progress,
        )
    out = {f"success@{k}": results.success_within(k) for k in range(1, trials + 1)}
    if errors:
        out["tcp_error_m"] = float(np.median(errors))
    return out


# ------------------------------------------------------------------------------------------------ training
def make_agent(algorithm: str, model, lr: float, steps: int):
    opt = OptimizerConfig(peak_lr=lr, decay_lr=lr / 10, warmup_steps=min(100, steps // 10), decay_steps=steps,
                          schedule="warmup_cosine")  # fmt: skip
    if algorithm == "sac":
        return sac.make_agent(model, sac.SacConfig(actor_optimizer=opt, discount=0.97, num_sample_steps=5))
    # The padded tail of a target repeats the episode's last recorded state: "stay there". The sim's episodes
    # end a few rows after the goal is reached while the robot executes 20 rows of every chunk, so the tail is
    # trained on, as the original does (masking it leaves the executed rows past an episode's end unsupervised).
    flow = hiors.FlowConfig(trained_action_dims=ROBOT_DIMS, mask_padding=False, optimizer=opt)
    return (hiors.make_agent if algorithm == "hiors" else sft.make_agent)(model, flow)


class Trainer:
    """Synchronous learner: M jitted updates on batches drawn (in this thread) from the replay windows."""

    def __init__(self, agent, state, model, tok, stats, cfg: BenchConfig, seed: int, writer: MetricsWriter | None):
        self.agent, self.state, self.model, self.tok, self.stats, self.cfg = agent, state, model, tok, stats, cfg
        self.seed, self.writer, self.updates = seed, writer, 0
        self._step = jax.jit(agent.train_step, donate_argnums=0)
        self._partial = {k: jax.jit(f, donate_argnums=0) for k, f in agent.partial_updates.items()}
        self._key = jax.random.key(seed)

    def train(self, windows: dict, ratios: dict, updates: int, critic_only: int = 0) -> dict:
        config = PipelineConfig(
            batch_size=self.cfg.batch_size * self.agent.batch_multiple,
            ratios=ratios,
            augment=False,
            with_next=self.agent.algorithm == "sac",
            seed=self.seed * 1_000_003 + self.updates,
        )
        loader = BatchLoader(windows, config, self.model, self.tok, self.stats)
        losses = []
        for i in range(updates):
            arrays, _ = loader.next_host()
            self._key, key = jax.random.split(self._key)
            batch = finish_batch(key, arrays, False)
            if self.agent.algorithm == "sac" and self.updates < critic_only:  # critic warm-up (SAC)
                self.state, info = self._partial["critic"](self.state, batch, step_key(self.state))
            else:
                self.state, info = self._step(self.state, batch)
            self.updates += 1
            if self.updates % 25 == 0 or i == updates - 1:
                info = jax.device_get(info)
                losses.append(float(info.get("loss", info.get("critic_loss", np.nan))))
                if self.writer is not None:
                    self.writer.log(self.updates, info, "training")
        loader.close()
        return {"loss": losses[-1] if losses else float("nan")}

    @property
    def params(self):
        return self.agent.policy_params(self.state)


def uniform_ratios(windows: dict) -> dict:
    """Sample every stored frame with equal probability (the union of the sources)."""
    return {name: float(len(w)) for name, w in windows.items() if len(w)}


# ------------------------------------------------------------------------------------------------ one seed
def run_seed(cfg: BenchConfig, seed: int, work: pathlib.Path, tb: pathlib.Path, log) -> dict:
    model = get_preset(cfg.preset)
    prompt = TASKS[cfg.task].prompt
    tok_path = tokenizer.train_tiny_tokenizer(work / "tokenizer.model", sorted({*build.TINY_CORPUS, prompt}), 64)
    tok = build.load_tokenizer(tok_path, model)
    results: dict = {"methods": {}}

    # 1. demos
    t0 = time.perf_counter()
    demo_store = open_store(cfg, work / "demos", AcceptanceConfig(), model)
    with sim_robot(cfg, HumanConfig(drive_from_start=True), DEMO_SEEDS + 1000 * seed) as env:
        demo_eps = collect(
            env, build.hold_pose, None, demo_store, episodes=cfg.demos, frames=None, seed=seed, first_id=0
        )
    demo_store.close()
    demo_window = demo_store.window("accepted")
    base_frames = sum(e["length"] for e in demo_eps)
    stats = norm_stats_from_windows([demo_window], min_std=0.05)  # the idle right arm: see its docstring
    results["demos"] = {"episodes": len(demo_eps), "frames": base_frames,
                        "successes": sum(e["label"] == "success" for e in demo_eps)}  # fmt: skip
    log(f"seed {seed}: {len(demo_eps)} demos, {base_frames} frames, {len(demo_window)} kept "
        f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip

    # 2. SFT base
    t0 = time.perf_counter()
    policy = build.make_policy(model, tok, stats, num_steps=cfg.num_denoise_steps)
    base_agent = make_agent("sft", model, cfg.base_lr, cfg.base_updates)
    params0 = pi0.init_params(model, jax.random.key(seed))
    base_writer = MetricsWriter(tb / "base" / f"seed{seed}")
    base = Trainer(base_agent, base_agent.init({"actor": params0}, jax.random.PRNGKey(seed)), model, tok, stats,
                   cfg, seed, base_writer)  # fmt: skip
    base.train({"demo": demo_window}, {"demo": 1.0}, cfg.base_updates)
    base_params = jax.device_get(base.params)
    base_eval = evaluate(cfg, policy, base_params, 1, jax.random.key(seed + 7))
    base_writer.log(base_frames, base_eval, "eval")
    base_writer.close()
    results["base"] = {"success": base_eval["success@1"], "tcp_error_m": base_eval.get("tcp_error_m"),
                       "seconds": time.perf_counter() - t0}  # fmt: skip
    log(f"seed {seed}: SFT base after {cfg.base_updates} updates: success {base_eval['success@1']:.2f}, tcp error "
        f"{base_eval.get('tcp_error_m', float('nan')):.3f} m "
        f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip

    # 3. methods from the same base
    for m_index, name in enumerate(cfg.methods):
        method = METHODS[name]
        t0 = time.perf_counter()
        writer = MetricsWriter(tb / name / f"seed{seed}")
        writer.log(base_frames, {"success": base_eval["success@1"]}, "eval")
        total_updates = cfg.rounds * cfg.updates_per_round
        agent = make_agent(method.algorithm, model, cfg.online_lr, total_updates)
        trainer = Trainer(agent, agent.init({"actor": base_params}, jax.random.PRNGKey(seed)), model, tok, stats,
                          cfg, seed * 100 + m_index, writer)  # fmt: skip
        store = open_store(cfg, work / name, method.acceptance, model)
        curve = [{"frames": base_frames, "online_frames": 0, "success": base_eval["success@1"],
                  "tcp_error_m": base_eval.get("tcp_error_m")}]  # fmt: skip
        online, episodes = 0, []
        with sim_robot(cfg, method.human, COLLECT_SEEDS + 10_000 * seed + 1000 * m_index) as env:
            for r in range(cfg.rounds):
                acting = build.hold_pose if name == "sft" else policy
                eps = collect(env, acting, trainer.params, store, episodes=None, frames=cfg.frames_per_round,
                              seed=seed * 1000 + r, first_id=len(episodes))  # fmt: skip
                episodes += eps
                online += sum(e["length"] for e in eps)
                windows = {"demo": demo_window}
                if name == "sac":
                    windows["online"] = store.window("online")
                    ratios = {"demo": 0.5, "online": 0.5}
                else:
                    with contextlib.suppress(ValueError):
                        windows["accepted"] = store.window("accepted")
                    ratios = uniform_ratios(windows)
                loss = trainer.train(windows, ratios, cfg.updates_per_round, critic_only=cfg.sac_critic_warmup)
                ev = evaluate(cfg, policy, trainer.params, 1, jax.random.key(seed * 7919 + r))
                point = {"frames": base_frames + online, "online_frames": online, "success": ev["success@1"],
                         "loss": loss["loss"], "accepted_episodes": store.counters.accepted,
                         "episodes": len(episodes)}  # fmt: skip
                curve.append(point)
                point["tcp_error_m"] = ev.get("tcp_error_m")
                writer.log(point["frames"], {"success": ev["success@1"], **ev}, "eval")
                writer.log(point["frames"], store.stats(), "replay")
                log(f"seed {seed} {name} round {r + 1}/{cfg.rounds}: frames {point['frames']}, "
                    f"success {ev['success@1']:.2f} (tcp error {ev.get('tcp_error_m', float('nan')):.3f} m), "
                    f"accepted {store.counters.accepted}/{len(episodes)} episodes, "
                    f"loss {loss['loss']:.4f} ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        final = evaluate(cfg, policy, trainer.params, cfg.trials, jax.random.key(seed * 31 + 5))
        writer.log(curve[-1]["frames"], final, "test_time_scaling")
        writer.close()
        counters = store.counters.as_dict()
        store.close()
        results["methods"][name] = {
            "curve": curve,
            "final": final,
            "online_frames": online,
            "episodes": len(episodes),
            "collect_successes": int(sum(e["label"] == "success" for e in episodes)),
            "interventions": int(sum(e["interventions"] for e in episodes)),
            "acceptance": counters,
            "seconds": time.perf_counter() - t0,
        }
    return results


# ------------------------------------------------------------------------------------------------ report
def summarise(cfg: BenchConfig, per_seed: dict[int, dict]) -> dict:
    summary = {}
    for name in cfg.methods:
        runs = [per_seed[s]["methods"][name] for s in per_seed]
        curves = np.array([[p["success"] for p in r["curve"]] for r in runs])
        frames = np.mean([[p["frames"] for p in r["curve"]] for r in runs], axis=0).tolist()
        online = np.mean([[p["online_frames"] for p in r["curve"]] for r in runs], axis=0)
        entry = {
            "frames": frames,
            "online_frames": online.tolist(),
            "success_mean": curves.mean(0).tolist(),
            "success_std": curves.std(0).tolist(),
            "tcp_error_m": np.mean(
                [[np.nan if p.get("tcp_error_m") is None else p["tcp_error_m"] for p in r["curve"]] for r in runs],
                axis=0,
            ).tolist(),
            "base_frames": [per_seed[s]["demos"]["frames"] for s in per_seed],
        }
        for k in range(1, cfg.trials + 1):
            vals = [r["final"][f"success@{k}"] for r in runs]
            entry[f"success@{k}"] = (float(np.mean(vals)), float(np.std(vals)))
        entry["accepted_episodes"] = float(np.mean([r["acceptance"]["accepted"] for r in runs]))
        entry["episodes"] = float(np.mean([r["episodes"] for r in runs]))
        entry["interventions"] = float(np.mean([r["interventions"] for r in runs]))
        entry["seconds"] = float(np.mean([r["seconds"] for r in runs]))
        summary[name] = entry
    return summary


def markdown(cfg: BenchConfig, summary: dict, per_seed: dict, wall_s: float) -> str:
    base = np.mean([per_seed[s]["base"]["success"] for s in per_seed])
    demos = np.mean([per_seed[s]["demos"]["frames"] for s in per_seed])
    lines = [
        f"# Hi-ORS on the simulated X-Trainer: task `{cfg.task}`, seeds {list(cfg.seeds)}",
        "",
        f"SFT base: {cfg.demos} scripted demos ({demos:.0f} frames), {cfg.base_updates} updates, success "
        f"{100 * base:.0f}%. Then {cfg.rounds} rounds x (>= {cfg.frames_per_round} frames collected, "
        f"{cfg.updates_per_round} updates); evaluation: policy alone, {cfg.eval_episodes} fixed initial conditions.",
        "",
        "| method | online frames | success@1 | "
        + " | ".join(f"success@{k}" for k in range(2, cfg.trials + 1))
        + " | accepted / episodes | interventions | minutes per method and seed |",
        "|---|---|---|" + "---|" * (cfg.trials - 1) + "---|---|---|",
    ]
    for name, e in summary.items():
        cells = [
            f"{100 * e[f'success@{k}'][0]:.0f} ± {100 * e[f'success@{k}'][1]:.0f}%" for k in range(1, cfg.trials + 1)
        ]
        lines.append(
            f"| {name} | {e['online_frames'][-1]:.0f} | "
            + " | ".join(cells)
            + f" | {e['accepted_episodes']:.1f} / {e['episodes']:.1f} | {e['interventions']:.1f} | "
            f"{e['seconds'] / 60:.1f} |"
        )
    lines += [
        "",
        "Success of the policy alone after each round (mean over seeds) @ frames (demos + online)"
        + (" (median distance of the left TCP to the target at the end, easy task)" if cfg.task == "easy" else "")
        + ":",
        "",
    ]
    rounds = len(summary[cfg.methods[0]]["frames"])
    lines.append("| method | base | " + " | ".join(f"round {r}" for r in range(1, rounds)) + " |")
    lines.append("|---|" + "---|" * rounds)
    for name, e in summary.items():
        cells = [
            f"{100 * v:.0f}% @ {f:.0f}" + (f" ({100 * d:.0f} cm)" if np.isfinite(d) else "")
            for v, f, d in zip(e["success_mean"], e["frames"], e["tcp_error_m"], strict=True)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Wall time: {wall_s / 60:.1f} min on {os.cpu_count()} CPU cores.", ""]
    return "\n".join(lines)


def plot(cfg: BenchConfig, summary: dict, path: pathlib.Path) -> None:
    """Success against frames, success within k trials, and (easy task) the TCP's distance to the target."""
    from PIL import Image, ImageDraw

    from experiments import charts

    panels = 3 if cfg.task == "easy" else 2
    image = Image.new("RGB", (480 * panels, 480), charts.BACKGROUND)
    draw = ImageDraw.Draw(image)
    curves, scaling, distance = [], [], []
    ks = np.arange(1, cfg.trials + 1, dtype=float)
    for i, (name, e) in enumerate(summary.items()):
        x, c = np.array(e["frames"], float), charts.colour(i)
        curves.append(charts.Series(x, 100 * np.array(e["success_mean"]), name, c))
        scaling.append(charts.Series(ks, np.array([100 * e[f"success@{int(k)}"][0] for k in ks]), name, c))
        distance.append(charts.Series(x, 100 * np.array(e["tcp_error_m"], float), name, c))
    charts.draw_chart(draw, (0, 0, 480, 480), curves, title=f"{cfg.task}: success (%), policy alone",
                      x_label="frames (demos + online)", ylim=(-5, 105))  # fmt: skip
    charts.draw_chart(draw, (480, 0, 960, 480), scaling, title="success (%) within k trials",
                      x_label="trial budget k", xlim=(0.8, cfg.trials + 0.2), ylim=(-5, 105))  # fmt: skip
    if panels == 3:
        charts.draw_chart(draw, (960, 0, 1440, 480), distance, title="TCP to target at the end (cm, median)",
                          x_label="frames (demos + online)")  # fmt: skip
    image.save(path)


def run(cfg: BenchConfig, log=print) -> dict:
    out = pathlib.Path(cfg.out)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out / "tensorboard", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    per_seed = {}
    for seed in cfg.seeds:
        per_seed[seed] = run_seed(cfg, seed, work / f"seed{seed}", out / "tensorboard", log)
    summary = summarise(cfg, per_seed)
    wall = time.perf_counter() - start
    report = {"config": dataclasses.asdict(cfg), "summary": summary, "per_seed": per_seed, "wall_s": wall}
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "results.md").write_text(markdown(cfg, summary, per_seed, wall))
    plot(cfg, summary, out / "success_vs_frames.png")
    log(f"wrote {out / 'results.md'}, {out / 'success_vs_frames.png'}, {out / 'results.json'} ({wall / 60:.1f} min)")
    return report


def parse_args(argv=None) -> BenchConfig:
    d = BenchConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default=d.task, choices=sorted(TASKS))
    p.add_argument("--seeds", default=",".join(map(str, d.seeds)), help="comma-separated run seeds")
    p.add_argument("--methods", default=",".join(d.methods), help=f"comma-separated, from {list(METHODS)}")
    p.add_argument("--frames", type=int, default=d.frames, help="online frame budget per method")
    p.add_argument("--frames-per-round", type=int, default=d.frames_per_round)
    p.add_argument("--updates-per-round", type=int, default=d.updates_per_round)
    p.add_argument("--demos", type=int, default=d.demos, help="scripted demo episodes for the SFT base")
    p.add_argument("--base-updates", type=int, default=d.base_updates)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--eval-episodes", type=int, default=d.eval_episodes)
    p.add_argument("--trials", type=int, default=d.trials, help="largest trial budget of the test-time scaling")
    p.add_argument("--teleop-steps", type=int, default=d.teleop_steps)
    p.add_argument("--preset", default=d.preset)
    p.add_argument("--out", default=d.out)
    p.add_argument("--quick", action="store_true", help="smoke test: one seed, tiny budgets")
    a = p.parse_args(argv)
    values = dict(
        task=a.task,
        seeds=tuple(int(s) for s in a.seeds.split(",") if s),
        methods=tuple(m for m in a.methods.split(",") if m),
        frames=a.frames,
        frames_per_round=a.frames_per_round,
        updates_per_round=a.updates_per_round,
        demos=a.demos,
        base_updates=a.base_updates,
        batch_size=a.batch_size,
        eval_episodes=a.eval_episodes,
        trials=a.trials,
        teleop_steps=a.teleop_steps,
        preset=a.preset,
        out=a.out,
    )
    if a.quick:
        values.update(QUICK)
    try:
        return BenchConfig(**values)
    except ValueError as err:
        p.error(str(err))


def main(argv=None) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    cfg = parse_args(argv)
    print(f"sim Hi-ORS benchmark: {cfg}", flush=True)
    run(cfg, log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
