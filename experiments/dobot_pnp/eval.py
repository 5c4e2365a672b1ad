"""Evaluate a checkpoint: success rate, success within a trial budget of 1..k attempts, episode times, videos.

    python -m experiments.dobot_pnp.eval --config=configs/dobot_pnp.py:sim --checkpoint_path=PATH \
        [--config.eval.episodes=20] [--config.eval.trial_budget=3] [--config.eval.output=eval.json]

N = eval.episodes cases (initial conditions: case i resets with seed `seed + i`); each case gets up to
k = eval.trial_budget attempts from its initial condition and stops at its first success. "success@j" is the
fraction of cases solved within j attempts (the paper's test-time scaling, Hi-ORS §9.3); the success rate is
success@1. An attempt succeeds when the episode is labelled success and no human intervened (an assisted success
is reported as such, and counts as a failure).

Against the simulated robot (`sim.enabled`) the robot runs in this process and its scripted human only labels,
never takes over. Against the real robot the env listens on env.host:env.port for the robot PC; before each
attempt the operator sets up (or restores) the case's initial condition and presses Enter, then labels the attempt
as actor.labels says (keyboard by default: `s`/`f` + Enter). The policy gets the run's prompt (model.prompt; when
empty, the robot's), as the actor does. Results: a table on stdout and a JSON file (eval.output, default
<run>/eval/<checkpoint step or directory name>.json, rewritten after every attempt with `complete` false until the
end), and with eval.videos one mp4 per attempt beside it (<name>_videos/case<i>_try<j>.mp4).

Short episodes: the original drops episodes that end after <= 2 steps from its statistics. Here they are
counted and flagged (`short` in the table and the JSON): the labels are the human's (or the sim's) verdict, and a
good policy can finish within two 2-second queries (the sim's easy task takes one), so dropping them would bias
against fast policies and hide instant failures. `redo_short=True` restores the original's behaviour (such an
attempt is re-run and not counted, at most `max_redos` times per attempt), for operators who fear mis-keyed labels.
An attempt the robot's disconnection cut short is always re-run (the same limit applies).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

log = logging.getLogger("experiments.dobot_pnp.eval")

SHORT_EPISODE_QUERIES = 2  # the original's cut-off: episodes with <= 2 steps are not counted


# --------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Attempt:
    case: int
    attempt: int  # 1-based
    seed: int  # the reset seed: the case's initial condition
    label: str  # "success" / "failure" (the env's label; an unlabelled time-out is a failure)
    reason: str
    success: bool  # label success and no intervention
    episode_time_s: float  # robot time (the env's info["episode_time_s"])
    wall_time_s: float
    queries: int  # policy queries (env steps)
    interventions: int
    teleop_steps: int
    short: bool  # ended after <= short_queries queries
    clipped_values: int = 0  # action values the env clipped to the joint limits over the attempt
    video: str | None = None


@dataclasses.dataclass
class CaseResult:
    case: int
    seed: int
    attempts: list[Attempt]
    redone: list[Attempt] = dataclasses.field(default_factory=list)  # attempts re-run and not counted

    @property
    def solved_at(self) -> int | None:
        """The 1-based attempt that first succeeded, or None."""
        return next((a.attempt for a in self.attempts if a.success), None)


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


@dataclasses.dataclass
class EvalResults:
    cases: list[CaseResult]
    trial_budget: int
    seed: int
    short_queries: int = SHORT_EPISODE_QUERIES
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # checkpoint, task, config: copied to the JSON
    complete: bool = False  # every case ran to its end (False in the files written while evaluating)

    @property
    def attempts(self) -> list[Attempt]:
        return [a for c in self.cases for a in c.attempts]

    def success_within(self, budget: int) -> float:
        """Fraction of cases solved within `budget` attempts."""
        if not 1 <= budget <= self.trial_budget:
            raise ValueError(f"budget must be in [1, {self.trial_budget}], got {budget}")
        solved = [c.solved_at is not None and c.solved_at <= budget for c in self.cases]
        return float(np.mean(solved)) if solved else 0.0

    @property
    def success_rate(self) -> float:
        """First-attempt success rate (what the paper's learning curves report)."""
        return self.success_within(1)

    def summary(self) -> dict[str, Any]:
        attempts, first = self.attempts, [c.attempts[0] for c in self.cases if c.attempts]
        return {
            "cases": len(self.cases),
            "trial_budget": self.trial_budget,
            "success_rate": self.success_rate,
            "success_within": {str(k): self.success_within(k) for k in range(1, self.trial_budget + 1)},
            "attempts": len(attempts),
            "successes": sum(a.success for a in attempts),
            "assisted_successes": sum(a.label == "success" and not a.success for a in attempts),
            "short_episodes": sum(a.short for a in attempts),
            "redone_attempts": sum(len(c.redone) for c in self.cases),
            "mean_episode_time_s": _mean([a.episode_time_s for a in attempts]),
            "mean_success_time_s": _mean([a.episode_time_s for a in attempts if a.success]),
            "first_attempt_mean_episode_time_s": _mean([a.episode_time_s for a in first]),
            "mean_queries": _mean([a.queries for a in attempts]),
            "interventions": sum(a.interventions for a in attempts),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            **self.info,
            "complete": self.complete,
            "seed": self.seed,
            "short_episode_queries": self.short_queries,
            "summary": self.summary(),
            "per_case": [
                {
                    "case": c.case,
                    "seed": c.seed,
                    "solved_at": c.solved_at,
                    "attempts": [dataclasses.asdict(a) for a in c.attempts],
                    "redone": [dataclasses.asdict(a) for a in c.redone],
                }
                for c in self.cases
            ],
        }

    def write_json(self, path: str | pathlib.Path) -> pathlib.Path:
        """Written whole to a temporary file, then renamed: a reader never sees half a file."""
        path = pathlib.Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")
        tmp.replace(path)
        return path

    def table(self) -> str:
        """The per-case table, then the summary lines (success@k and episode times)."""
        k = self.trial_budget
        header = ["case", "seed", "solved"] + [f"try {j}" for j in range(1, k + 1)]
        rows = []
        for c in self.cases:
            cells = [str(c.case), str(c.seed), "-" if c.solved_at is None else f"@{c.solved_at}"]
            for j in range(k):
                cells.append(_attempt_cell(c.attempts[j]) if j < len(c.attempts) else "")
            rows.append(cells)
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
        s = self.summary()
        n = s["cases"]
        lines.append("")
        lines.append(
            f"success rate (first attempt): {_pct(s['success_rate'])} of {n} cases"
            + "".join(f" | success@{j}: {_pct(v)}" for j, v in s["success_within"].items())
        )
        lines.append(
            f"mean episode time (robot): {_secs(s['mean_episode_time_s'])} over {s['attempts']} attempts, "
            f"{_secs(s['mean_success_time_s'])} over the {s['successes']} successful"
        )
        notes = []
        if s["short_episodes"]:
            notes.append(f"{s['short_episodes']} short (<= {self.short_queries} queries, counted; marked *)")
        if s["assisted_successes"]:
            notes.append(f"{s['assisted_successes']} success(es) with a human intervention counted as failure")
        if s["redone_attempts"]:
            notes.append(f"{s['redone_attempts']} attempt(s) re-run and not counted")
        if notes:
            lines.append("; ".join(notes))
        return "\n".join(lines)


def _pct(value: float) -> str:
    return f"{100 * value:.0f}%"


def _secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} s"


def _attempt_cell(a: Attempt) -> str:
    mark = "ok" if a.success else ("assisted" if a.label == "success" else "fail")
    return f"{mark} {a.episode_time_s:.1f}s/{a.queries}q" + ("*" if a.short else "")


# --------------------------------------------------------------------------------------------------------
# The evaluation loop
# --------------------------------------------------------------------------------------------------------


def run_episode(policy, env, seed: int) -> tuple[dict, int, float, int]:
    """One episode from `env.reset(seed=seed)` until the env ends it: (final info, queries, wall seconds, action
    values the env clipped to the joint limits)."""
    reset = getattr(policy, "reset", None)
    if callable(reset):  # policies with per-episode state (action queues, an oracle's plan)
        reset()
    start = time.monotonic()
    obs, info = env.reset(seed=seed)
    queries = clipped = 0
    while True:
        actions = policy.infer(obs)["actions"]
        obs, _reward, terminated, truncated, info = env.step(actions)
        queries += 1
        clipped += int(info.get("clipped_values", 0))
        if terminated or truncated:
            return info, queries, time.monotonic() - start, clipped


def evaluate(
    policy,
    env,
    *,
    cases: int,
    trial_budget: int,
    seed: int = 0,
    video_dir: str | pathlib.Path | None = None,
    short_queries: int = SHORT_EPISODE_QUERIES,
    redo_short: bool = False,
    max_redos: int = 3,
    before_attempt: Callable[[int, int, int], None] | None = None,
    progress: Callable[[EvalResults, Attempt], None] | None = None,
    info: dict[str, Any] | None = None,
) -> EvalResults:
    """Run `cases` initial conditions (reset seeds seed, seed + 1, ...) with up to `trial_budget` attempts each.

    policy: openpi's policy interface, `policy.infer(obs)["actions"]` -> (horizon, 14) in robot units; an
    optional `policy.reset()` is called before every attempt. env: a gymnasium env ending each episode with
    `info["label"]`, `info["episode_time_s"]`, `info["interventions"]` (DobotEnv). video_dir: one mp4 per
    attempt, `case<i>_try<j>.mp4`. before_attempt(case, attempt, seed): called before each reset (the real
    robot's operator prompt). progress(results so far, attempt): called after each counted attempt (the CLI
    rewrites its JSON there, so an interrupted evaluation keeps what it measured; `complete` says whether it ran
    to the end).
    """
    for name, value, low in (("cases", cases, 1), ("trial_budget", trial_budget, 1), ("max_redos", max_redos, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if short_queries < 0:
        raise ValueError(f"short_queries must be >= 0, got {short_queries}")
    if video_dir is not None:
        from robot.dobot.video import EpisodeVideoWrapper

        video_dir = pathlib.Path(video_dir).expanduser()
        env = EpisodeVideoWrapper(env, video_dir)
    results = EvalResults([], trial_budget, seed, short_queries, dict(info or {}))
    for case in range(cases):
        case_seed = seed + case
        result = CaseResult(case, case_seed, [])
        results.cases.append(result)
        attempt, reruns = 1, 0
        while attempt <= trial_budget:
            if before_attempt is not None:
                before_attempt(case, attempt, case_seed)
            end, queries, wall, clipped = run_episode(policy, env, case_seed)
            record = Attempt(
                case=case,
                attempt=attempt,
                seed=case_seed,
                label=end.get("label") or "failure",
                reason=end.get("label_reason") or "",
                success=end.get("label") == "success" and int(end.get("interventions", 0)) == 0,
                episode_time_s=_episode_time(end),
                wall_time_s=wall,
                queries=queries,
                interventions=int(end.get("interventions", 0)),
                teleop_steps=int(end.get("teleop_steps", 0)),
                short=queries <= short_queries,
                clipped_values=clipped,
            )
            why_rerun = None
            if end.get("robot_disconnected"):
                why_rerun = "the robot disconnected"
            elif record.short and redo_short:
                why_rerun = f"ended after {queries} queries (<= {short_queries}; redo_short)"
            if why_rerun is not None:
                reruns += 1
                if reruns > max_redos:
                    raise RuntimeError(
                        f"case {case} attempt {attempt}: {why_rerun}, {reruns} times in a row (max_redos="
                        f"{max_redos}); stopping rather than reporting a biased success rate"
                    )
                log.warning("case %d attempt %d re-run, not counted: %s", case, attempt, why_rerun)
                record.reason = f"{record.reason} [re-run: {why_rerun}]".strip()
                record.video = _name_video(end.get("video_path"), f"case{case:03d}_try{attempt}_rerun{reruns}")
                result.redone.append(record)
                continue
            reruns = 0
            record.video = _name_video(end.get("video_path"), f"case{case:03d}_try{attempt}")
            result.attempts.append(record)
            if progress is not None:
                progress(results, record)
            if record.success:
                break
            attempt += 1
    results.complete = True
    return results


def _episode_time(info: dict) -> float:
    if "episode_time_s" not in info:
        raise KeyError(f"the env's final info has no 'episode_time_s' (robot time; DobotEnv sets it): {sorted(info)}")
    return float(info["episode_time_s"])


def _name_video(path: str | None, stem: str) -> str | None:
    """EpisodeVideoWrapper numbers episodes; the eval names them by case and attempt."""
    if path is None:
        return None
    src = pathlib.Path(path)
    dst = src.with_name(stem + src.suffix)
    src.replace(dst)
    return str(dst)


# --------------------------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sim_robot_env(env_config=None, sim_config=None) -> Iterator[tuple[Any, Any]]:
    """A DobotEnv (robot.dobot.env.DobotEnvConfig) with the simulated X-Trainer (robot.sim.serve.SimServeConfig)
    driving it from a thread of this process. Yields (env, robot); `robot.bridge.io.sim` is the simulator.

    For evaluation: the scripted human only labels (never takes over or drives), so every outcome is the
    policy's; the env listens on a free loopback port (an actor of a run may hold env.host:env.port); the sim
    renders at the env's image size.
    """
    from robot.dobot.env import DobotEnv, DobotEnvConfig
    from robot.sim.serve import SimServeConfig, start_in_thread

    env_config = dataclasses.replace(env_config or DobotEnvConfig(), host="127.0.0.1", port=0, api_key=None)
    sim_config = sim_config or SimServeConfig()
    human = dataclasses.replace(sim_config.human, takeover=False, drive_from_start=False)
    env = DobotEnv(env_config)
    robot = None
    try:
        robot = start_in_thread(
            dataclasses.replace(
                sim_config,
                uri=f"ws://127.0.0.1:{env.port}",
                api_key=None,
                image_size=tuple(env_config.image_size),
                human=human,
            )
        )
        yield env, robot
    finally:
        env.close()  # first: the robot thread waits on the env's reply until the connection closes
        if robot is not None:
            robot.stop()


class CheckpointPathError(ValueError):
    """A --checkpoint_path that is not something the eval can load; the message names the path."""


# --------------------------------------------------------------------------------------------------------
# Checkpoints -> policies (openpi's `infer(obs)["actions"]` interface)
# --------------------------------------------------------------------------------------------------------


def resolve_checkpoint(path: str | pathlib.Path) -> tuple[str, pathlib.Path]:
    """("policy" | "learner_step", directory) for what `--checkpoint_path` names.

    policy: openpi's layout (params/ + assets/<id>/norm_stats.json + a tokenizer *.model), what the learner
    exports to <run>/policy and `hiors_jax.demo` writes; its params/ item is accepted too. learner_step: an orbax
    step `<run>/checkpoints/<step>` (state/ + meta/); the checkpoints directory itself means its newest step.
    """
    given = pathlib.Path(path).expanduser()
    if not given.exists():
        raise CheckpointPathError(f"--checkpoint_path: {given} does not exist")
    if given.name == "params" and (given / "_METADATA").is_file():
        given = given.parent
    if (given / "params").is_dir():
        return "policy", given
    if (given / "state").is_dir():
        return "learner_step", given
    steps = sorted((int(p.name), p) for p in given.glob("*") if p.name.isdigit() and (p / "state").is_dir())
    if steps:
        log.info("--checkpoint_path: %s holds learner steps %s; evaluating the newest", given, [s for s, _ in steps])
        return "learner_step", steps[-1][1]
    raise CheckpointPathError(
        f"--checkpoint_path: {given} is neither a policy directory in openpi's layout (params/ + "
        "assets/<id>/norm_stats.json + a tokenizer *.model: <run>/policy, or what hiors_jax.demo writes) nor a "
        "learner checkpoint (<run>/checkpoints/<step> with state/, or <run>/checkpoints for the newest step)"
    )


class PromptedPolicy:
    """Gives the policy the run's prompt (the actor's model.prompt), whatever the robot sends."""

    def __init__(self, policy, prompt: str):
        self.policy, self.prompt = policy, prompt

    def infer(self, obs: dict) -> dict:
        return self.policy.infer({**obs, "prompt": self.prompt})


class LearnerStepPolicy:
    """A learner checkpoint step as an openpi policy: the run's config, tokenizer and norm stats beside it."""

    def __init__(self, step_dir: pathlib.Path, *, num_steps: int, seed: int):
        import jax

        from experiments.dobot_pnp import build

        config, self.params, stats, tok_path, self.prompt = build.load_run_policy(step_dir)
        tok = build.load_tokenizer(tok_path, config)
        self._policy = build.make_policy(config, tok, stats, num_steps=num_steps)
        self._jax, self._key = jax, jax.random.key(seed)

    def infer(self, obs: dict) -> dict:
        self._key, key = self._jax.random.split(self._key)
        return {"actions": self._policy(self.params, obs, key)}


def load_policy(path: str | pathlib.Path, *, num_steps: int, action_horizon: int, max_token_len: int, seed: int):
    """(policy, description) for `--checkpoint_path`; CheckpointPathError names the path when it is neither kind."""
    kind, directory = resolve_checkpoint(path)
    if kind == "policy":
        from experiments.dobot_pnp.serve import CheckpointError, CheckpointPolicy

        try:
            policy = CheckpointPolicy(
                directory,
                num_steps=num_steps,
                action_horizon=action_horizon,
                max_token_len=max_token_len,
                seed=seed,
            )
        except (CheckpointError, FileNotFoundError) as err:
            raise CheckpointPathError(f"--checkpoint_path: {directory}: {err}") from err
        return policy, {"checkpoint": str(directory), "checkpoint_kind": kind}
    try:
        policy = LearnerStepPolicy(directory, num_steps=num_steps, seed=seed)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise CheckpointPathError(f"--checkpoint_path: {directory}: {err}") from err
    step = int(directory.name) if directory.name.isdigit() else None
    return policy, {"checkpoint": str(directory), "checkpoint_kind": kind, "checkpoint_step": step}


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------

USAGE = """python -m experiments.dobot_pnp.eval --config=configs/dobot_pnp.py:<variant> [--checkpoint_path=PATH]
       [--config.eval.episodes=N] [--config.eval.trial_budget=K] [--config.eval.videos=False]
       [--config.eval.output=results.json] [--config.seed=S] [--config.sim.task=transfer] ...

--checkpoint_path: a policy directory in openpi's layout (<run>/policy, what the learner exports; or what
    `python -m hiors_jax.demo` writes), or a learner checkpoint (<run>/checkpoints/<step>, or <run>/checkpoints
    for its newest step). Default: <output_dir>/<run_name>/policy of the config's run.
--config: the run's config (configs/dobot_pnp.py:<variant>); every field can be overridden with
    --config.<section>.<field>=value. With sim.enabled the simulated X-Trainer runs in this process and its
    scripted human only labels (it never takes over); otherwise the env listens on env.host:env.port for the
    robot PC and the operator restores each case's initial condition, presses Enter, and labels the attempt.
"""
EVAL_FIELDS = (
    "eval.episodes",
    "eval.trial_budget",
    "eval.videos",
    "eval.output",
    "seed",
    "model.prompt",
    "model.num_sample_steps",
    "model.action_horizon",
    "model.max_token_len",
    "sim.enabled",
    "sim.task",
    "sim.horizon_s",
    "sim.render",
    "env.host",
    "env.port",
    "env.api_key",
    "env.image_size",
    "env.max_episode_s",
    "env.robot_timeout_s",
    "actor.labels",
    "output_dir",
    "run_name",
)


def help_text(argv: list[str]) -> str:
    """The usage, then the fields the eval reads with their values in the chosen variant."""
    from configs.dobot_pnp import DOCS
    from experiments.dobot_pnp.__main__ import _config_spec, _leaf_paths, _load_variant

    spec = _config_spec(argv)
    leaves = _leaf_paths(_load_variant(spec))
    width = max(len(f) for f in EVAL_FIELDS) + len("--config.")
    lines = [__doc__.split("\n\n")[0], "", f"usage: {USAGE}", f"config fields the eval reads ({spec}):"]
    for field in EVAL_FIELDS:
        lines.append(f"  {'--config.' + field:<{width}}  {leaves[field]!r:<14} {DOCS[field]}")
    return "\n".join(lines)


def split_checkpoint_flag(argv: list[str]) -> tuple[str, list[str]]:
    """(--checkpoint_path's value or "", the other arguments): the rest is the run's config and its overrides."""
    value, rest, i = "", [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--checkpoint_path="):
            value = arg.split("=", 1)[1]
        elif arg == "--checkpoint_path" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 1
        else:
            rest.append(arg)
        i += 1
    return value, rest


@contextlib.contextmanager
def settings_env(s) -> Iterator[Any]:
    """The env the config describes: the in-process sim (labeller only) when sim.enabled, else the robot PC's."""
    from robot.dobot.env import DobotEnv

    if s.cfg.sim.enabled:
        with sim_robot_env(s.env, s.sim) as (env, _robot):
            yield env
        return
    from experiments.dobot_pnp.run_actor import label_source

    env = DobotEnv(s.env, labels=label_source(s))
    print(f"waiting for the robot PC at ws://{s.env.host}:{env.port}", flush=True)
    try:
        yield env
    finally:
        env.close()


class OperatorPrompt:
    """Real robot: before each attempt the operator restores the case's initial condition and presses Enter.

    One subscription to the process's stdin hub (the label keys' reader too), made before the first episode;
    lines typed during an episode (label keys) are dropped before waiting, so they never confirm the next case.
    """

    def __init__(self, hub=None):
        from robot.dobot.labels import StdinHub

        self._lines = (hub or StdinHub.shared()).subscribe()

    def __call__(self, case: int, attempt: int, seed: int) -> None:
        while not self._lines.empty():
            self._lines.get_nowait()
        what = "set up" if attempt == 1 else "restore (as for its attempt 1)"
        print(f"\ncase {case} attempt {attempt}: {what} initial condition #{seed}, then press Enter", flush=True)
        self._lines.get()


def report_to(output: pathlib.Path) -> Callable[[EvalResults, Attempt], None]:
    """evaluate's progress callback: a line per attempt, and the JSON rewritten with the results so far."""

    def report(results: EvalResults, attempt: Attempt) -> None:
        _progress_line(attempt)
        results.write_json(output)

    return report


def _progress_line(a: Attempt) -> None:
    """One line per attempt as it ends."""
    outcome = (
        "success" if a.success else ("assisted success (counted as failure)" if a.label == "success" else "failure")
    )
    short = f", short (<= {SHORT_EPISODE_QUERIES} queries)" if a.short else ""
    print(
        f"case {a.case} attempt {a.attempt} (seed {a.seed}): {outcome} after {a.queries} queries, "
        f"{a.episode_time_s:.1f} s robot time{short} ({a.reason})",
        flush=True,
    )


def _setup_logging() -> None:
    """Warnings and up; an untrained policy's per-step clipping is counted per attempt (clipped_values) instead."""
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.addFilter(lambda record: not record.getMessage().startswith("clipped "))
    logging.getLogger().handlers[:] = [console]
    logging.getLogger().setLevel(logging.INFO)
    for noisy in ("absl", "jax._src", "orbax", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("robot.dobot.bridge").setLevel(logging.ERROR)  # the in-process sim's "connection lost" at exit


def main(argv: Sequence[str] | None = None) -> int:
    from experiments.dobot_pnp.__main__ import UsageError, parse
    from experiments.dobot_pnp.settings import ConfigError, Settings

    argv = list(sys.argv[1:] if argv is None else argv)
    checkpoint, argv = split_checkpoint_flag(argv)
    try:
        if any(a in ("-h", "--help", "--helpfull", "--helpshort") for a in argv):
            print(help_text(argv))
            return 0
        cfg = parse(argv)
        s = Settings.from_config(cfg)
        _setup_logging()
        policy, info = load_policy(
            checkpoint or s.workdir / "policy",
            num_steps=int(cfg.model.num_sample_steps),
            action_horizon=int(cfg.model.action_horizon),
            max_token_len=int(cfg.model.max_token_len),
            seed=int(cfg.seed),
        )
    except (UsageError, ConfigError, CheckpointPathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if cfg.model.prompt:  # the actor's prompt; empty: the one the robot sends (as the actor does)
        policy = PromptedPolicy(policy, cfg.model.prompt)
    step = info.get("checkpoint_step")
    label = str(step) if step is not None else pathlib.Path(info["checkpoint"]).name
    output = pathlib.Path(cfg.eval.output).expanduser() if cfg.eval.output else s.workdir / "eval" / f"{label}.json"
    video_dir = output.with_name(output.stem + "_videos") if cfg.eval.videos else None
    robot = f"sim ({cfg.sim.task})" if cfg.sim.enabled else "robot PC"
    info.update(
        variant=cfg.variant,
        robot=robot,
        prompt=cfg.model.prompt or "(the robot's)",
        config=json.loads(cfg.to_json_best_effort()),
    )
    print(
        f"evaluating {info['checkpoint']} on the {robot}: {cfg.eval.episodes} cases x up to "
        f"{cfg.eval.trial_budget} attempts, seeds {cfg.seed}..{cfg.seed + cfg.eval.episodes - 1}",
        flush=True,
    )
    with settings_env(s) as env:
        results = evaluate(
            policy,
            env,
            cases=int(cfg.eval.episodes),
            trial_budget=int(cfg.eval.trial_budget),
            seed=int(cfg.seed),
            video_dir=video_dir,
            before_attempt=None if cfg.sim.enabled else OperatorPrompt(),
            progress=report_to(output),
            info=info,
        )
    print()
    print(results.table())
    results.write_json(output)
    print(f"\nresults: {output}" + (f"\nvideos: {video_dir}" if video_dir else ""), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
