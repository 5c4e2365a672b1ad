"""Evaluate a checkpoint: success rate, success within a trial budget of 1..k attempts, episode times, videos.

    python -m experiments.dobot_pnp.eval --config=configs/dobot_pnp.py:sim --checkpoint_path=PATH \
        [--config.eval.episodes=20] [--config.eval.trial_budget=3] [--config.eval.output=eval.json]

N cases (initial conditions: case i resets with seed `eval.seed + i`); each case gets up to k attempts from its
initial condition and stops at its first success. "success@j" is the fraction of cases solved within j attempts
(the paper's test-time scaling, Hi-ORS §9.3); the success rate is success@1. An attempt succeeds when the episode
is labelled success and no human intervened (an assisted success is reported as such, and counts as a failure).

Against the simulated robot (`sim.enabled`) the robot runs in this process and its scripted human only labels,
never takes over. Against the real robot the env listens for the robot PC and the operator labels each attempt
with `s`/`f` + Enter, restoring the case's initial condition before each attempt.

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
import math
import pathlib
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


def run_episode(policy, env, seed: int) -> tuple[dict, int, float]:
    """One episode from `env.reset(seed=seed)` until the env ends it: (final info, queries, wall seconds)."""
    reset = getattr(policy, "reset", None)
    if callable(reset):  # policies with per-episode state (action queues, an oracle's plan)
        reset()
    start = time.monotonic()
    obs, info = env.reset(seed=seed)
    queries = 0
    while True:
        actions = policy.infer(obs)["actions"]
        obs, _reward, terminated, truncated, info = env.step(actions)
        queries += 1
        if terminated or truncated:
            return info, queries, time.monotonic() - start


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
    progress: Callable[[Attempt], None] | None = None,
    info: dict[str, Any] | None = None,
) -> EvalResults:
    """Run `cases` initial conditions (reset seeds seed, seed + 1, ...) with up to `trial_budget` attempts each.

    policy: openpi's policy interface, `policy.infer(obs)["actions"]` -> (horizon, 14) in robot units; an
    optional `policy.reset()` is called before every attempt. env: a gymnasium env ending each episode with
    `info["label"]`, `info["episode_time_s"]`, `info["interventions"]` (DobotEnv). video_dir: one mp4 per
    attempt, `case<i>_try<j>.mp4`. before_attempt(case, attempt, seed): called before each reset (the real
    robot's operator prompt). progress(attempt): called after each counted attempt.
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
            end, queries, wall = run_episode(policy, env, case_seed)
            record = Attempt(
                case=case,
                attempt=attempt,
                seed=case_seed,
                label=end.get("label") or "failure",
                reason=end.get("label_reason") or "",
                success=end.get("label") == "success" and int(end.get("interventions", 0)) == 0,
                episode_time_s=float(end.get("episode_time_s", math.nan)),
                wall_time_s=wall,
                queries=queries,
                interventions=int(end.get("interventions", 0)),
                teleop_steps=int(end.get("teleop_steps", 0)),
                short=queries <= short_queries,
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
                progress(record)
            if record.success:
                break
            attempt += 1
    return results


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
def sim_robot_env(
    task: str = "easy",
    image_size: tuple[int, int] = (224, 298),
    *,
    horizon_s: float | None = None,
    max_episode_s: float | None = 60.0,
    robot_timeout_s: float = 120.0,
) -> Iterator[tuple[Any, Any]]:
    """A DobotEnv on a free loopback port with the simulated X-Trainer driving it from a thread of this process.

    The scripted human only labels (never takes over), so every outcome is the policy's. Yields (env, robot);
    `robot.bridge.io.sim` is the simulator (tests' oracle policies read it).
    """
    from robot.dobot.env import DobotEnv, DobotEnvConfig
    from robot.sim.human import HumanConfig
    from robot.sim.serve import SimServeConfig, start_in_thread

    config = DobotEnvConfig(
        port=0, image_size=tuple(image_size), max_episode_s=max_episode_s, robot_timeout_s=robot_timeout_s
    )
    env = DobotEnv(config)
    try:
        robot = start_in_thread(
            SimServeConfig(
                task=task,
                uri=f"ws://127.0.0.1:{env.port}",
                image_size=tuple(image_size),
                horizon_s=horizon_s,
                human=HumanConfig(takeover=False),
            )
        )
        try:
            yield env, robot
        finally:
            robot.stop()
    finally:
        env.close()
