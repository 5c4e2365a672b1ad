"""The config of a run, checked all at once at start-up and turned into the library's typed configs.

`Settings.from_config(cfg)` validates every section, whatever the role (a typo or a bad value in the learner's
section fails on the actor machine too, before anything starts); each error names the field as it is written
on the command line (`--config.learner.batch_size`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping
from typing import Any

from configs.dobot_pnp import ROLES, VARIANTS
from hiors_jax.agents import hiors, sac
from hiors_jax.data.acceptance import AcceptanceConfig
from hiors_jax.data.pipeline import PipelineConfig
from hiors_jax.models.config import PRESETS, REMAT_POLICIES
from hiors_jax.train.learner import LearnerConfig
from hiors_jax.transport import TrainerConfig
from robot.dobot.env import DobotEnvConfig
from robot.sim.human import HumanConfig
from robot.sim.serve import SimServeConfig

LABEL_SOURCES = ("auto", "robot", "keyboard", "classifier")
INIT_KINDS = ("random", "openpi", "safetensors")
DTYPES = ("float32", "bfloat16")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
REQUEST_TYPES = ["send-stats"]


class ConfigError(ValueError):
    """A config value that cannot run; the message starts with the field (`--config.section.field`)."""


def _fail(field: str, why: str) -> ConfigError:
    return ConfigError(f"--config.{field}: {why}")


def _section_error(section: str, err: Exception) -> ConfigError:
    text = str(err)
    if text.startswith(f"--config.{section}"):
        return ConfigError(text)
    if text.startswith(f"{section}."):
        return ConfigError(f"--config.{text}")
    return ConfigError(f"--config.{section}: {text}")


def _plain(value: Any) -> Any:
    """ConfigDict -> dicts, lists -> tuples (frozen dataclasses hash their fields)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class ModelInit:
    kind: str  # random | openpi | safetensors
    path: pathlib.Path | None

    @classmethod
    def parse(cls, text: str) -> ModelInit:
        kind, _, path = text.partition(":")
        if kind not in INIT_KINDS or (kind == "random") != (not path):
            raise _fail("model.init", f"{text!r} must be random, openpi:PATH or safetensors:PATH")
        if kind == "random":
            return cls("random", None)
        resolved = pathlib.Path(path).expanduser()
        if not resolved.exists():
            raise _fail("model.init", f"{resolved} does not exist")
        return cls(kind, resolved)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The typed, checked form of one run's config (cfg keeps the raw values for saving and printing)."""

    cfg: Any
    workdir: pathlib.Path
    init: ModelInit
    learner: LearnerConfig
    agent: Any  # hiors.FlowConfig | sac.SacConfig
    agent_dict: dict
    pipeline: PipelineConfig
    acceptance: AcceptanceConfig
    env: DobotEnvConfig
    sim: SimServeConfig
    transport: TrainerConfig
    labels: str

    @property
    def algorithm(self) -> str:
        return self.learner.algorithm

    @property
    def demos(self) -> list[pathlib.Path]:
        return [pathlib.Path(p.strip()).expanduser() for p in self.cfg.data.demos.split(",") if p.strip()]

    @property
    def auth_key(self) -> str | None:
        """transport.auth_key, else the per-run key `--config.role=all` gives its two processes."""
        return self.cfg.transport.auth_key or os.environ.get("HIORS_TRANSPORT_AUTH_KEY") or None

    @property
    def needs_actors(self) -> bool:
        """sft trains offline on demos; hiors and sac learn from what actors send."""
        return self.algorithm != "sft"

    @classmethod
    def from_config(cls, cfg) -> Settings:
        if cfg.variant not in VARIANTS:
            raise _fail("variant", f"{cfg.variant!r} is not one of {VARIANTS}")
        if cfg.role not in ROLES:
            raise _fail("role", f"{cfg.role!r} is not one of {ROLES}")
        if not cfg.run_name or "/" in cfg.run_name:
            raise _fail("run_name", f"{cfg.run_name!r} must be a non-empty name without '/'")
        if cfg.max_seconds < 0:
            raise _fail("max_seconds", f"must be >= 0 (0: no limit), got {cfg.max_seconds}")
        _check_model(cfg.model, uses_model=not cfg.variant.startswith("collect"))
        learner_values = _plain(cfg.learner)
        min_frames = learner_values.pop("min_accepted_frames")
        if min_frames < 1:
            raise _fail("learner.min_accepted_frames", f"must be >= 1, got {min_frames}")
        learner_values["seed"] = int(cfg.seed)
        try:
            learner = LearnerConfig.from_dict(learner_values)
        except ValueError as err:
            raise _section_error("learner", err) from None
        agent_dict = _plain(cfg.agent)
        _none_if_zero(agent_dict)
        try:
            if learner.algorithm == "sac":
                agent = sac.SacConfig.from_dict(agent_dict, "--config.agent")
                agent.actor_optimizer.check_fits(learner.max_steps, "agent.actor_optimizer")
            else:
                agent = hiors.FlowConfig.from_dict(agent_dict, "--config.agent")
                agent.optimizer.check_fits(learner.max_steps, "agent.optimizer")
        except (ValueError, TypeError) as err:
            raise _section_error("agent", err) from None
        pipeline = _pipeline(cfg, learner)
        acceptance = _acceptance(cfg.replay)
        env = _env(cfg.env, cfg.model.action_horizon)
        sim = _sim(cfg)
        transport = _transport(cfg.transport)
        labels = cfg.actor.labels
        if labels not in LABEL_SOURCES:
            raise _fail("actor.labels", f"{labels!r} is not one of {LABEL_SOURCES}")
        if labels == "auto":
            labels = "robot" if cfg.sim.enabled else "keyboard"
        if labels == "classifier" and not cfg.actor.classifier_path:
            raise _fail("actor.classifier_path", "actor.labels=classifier needs the classifier's directory")
        classifier = pathlib.Path(cfg.actor.classifier_path).expanduser()
        if labels == "classifier" and not (classifier / "reward_classifier.json").is_file():
            raise _fail("actor.classifier_path", f"{classifier} holds no reward_classifier.json (a trained classifier)")
        if not 0 < cfg.actor.classifier_threshold < 1:
            raise _fail("actor.classifier_threshold", f"must be in (0, 1), got {cfg.actor.classifier_threshold}")
        for field in ("actor.episodes", "collect.episodes", "eval.episodes", "eval.trial_budget"):
            section, name = field.split(".")
            value = cfg[section][name]
            minimum = 0 if field == "actor.episodes" else 1
            if value < minimum:
                raise _fail(field, f"must be >= {minimum}, got {value}")
        if cfg.actor.param_wait_s <= 0:
            raise _fail("actor.param_wait_s", f"must be positive, got {cfg.actor.param_wait_s}")
        if not cfg.actor.actor_id or "/" in cfg.actor.actor_id:
            raise _fail("actor.actor_id", f"{cfg.actor.actor_id!r} must be a non-empty name without '/'")
        workdir = pathlib.Path(cfg.output_dir).expanduser().resolve() / cfg.run_name
        settings = cls(
            cfg=cfg,
            workdir=workdir,
            init=ModelInit.parse(cfg.model.init),
            learner=learner,
            agent=agent,
            agent_dict=agent_dict,
            pipeline=pipeline,
            acceptance=acceptance,
            env=env,
            sim=sim,
            transport=transport,
            labels=labels,
        )
        settings._check_data_sources()
        return settings

    def _check_data_sources(self) -> None:
        ratios = self.pipeline.ratios
        if ratios.get("demo", 0) > 0:
            if not self.demos:
                raise _fail(
                    "data.demos", f"pipeline.ratios.demo={ratios['demo']} needs demo datasets (comma-separated)"
                )
            for root in self.demos:
                if not (root / "meta" / "info.json").is_file():
                    raise _fail("data.demos", f"{root} is not a LeRobot dataset (no meta/info.json)")
        if not self.needs_actors and (ratios.get("online", 0) or ratios.get("accepted", 0)):
            raise _fail("pipeline.ratios", "sft trains on demos only: set accepted and online to 0")
        if self.cfg.model.norm_stats == "demos" and not self.demos:
            raise _fail("model.norm_stats", "'demos' computes the stats from data.demos, which is empty")


def _none_if_zero(agent: dict) -> None:
    """`clip_grad_norm=0` switches clipping off (flags cannot easily write None)."""
    for value in agent.values():
        if isinstance(value, dict):
            if value.get("clip_grad_norm") == 0:
                value["clip_grad_norm"] = None


def _check_model(model, uses_model: bool) -> None:
    if model.preset not in PRESETS:
        raise _fail("model.preset", f"{model.preset!r} is not one of {sorted(PRESETS)}")
    if model.dtype not in DTYPES:
        raise _fail("model.dtype", f"{model.dtype!r} is not one of {DTYPES}")
    if model.remat not in REMAT_POLICIES:
        raise _fail("model.remat", f"{model.remat!r} is not one of {REMAT_POLICIES}")
    for name in ("action_horizon", "num_sample_steps"):
        if model[name] < 1:
            raise _fail(f"model.{name}", f"must be >= 1, got {model[name]}")
    if model.norm_min_std < 0:
        raise _fail("model.norm_min_std", f"must be >= 0, got {model.norm_min_std}")
    if model.max_token_len < 0:
        raise _fail("model.max_token_len", f"must be >= 0 (0: the preset's), got {model.max_token_len}")
    if model.tokenizer and not pathlib.Path(model.tokenizer).expanduser().is_file():
        raise _fail("model.tokenizer", f"{model.tokenizer} is not a file")
    if uses_model and not model.tokenizer and "tiny" not in model.preset:
        raise _fail("model.tokenizer", f"preset {model.preset!r} needs the PaliGemma tokenizer model (a path)")
    stats = model.norm_stats
    if stats not in ("auto", "identity", "demos") and not pathlib.Path(stats).expanduser().exists():
        raise _fail("model.norm_stats", f"{stats!r} is not auto, identity, demos or an existing norm_stats.json")
    if model.prompt and not model.prompt.strip():
        raise _fail("model.prompt", "must be empty (the robot's prompt) or a non-blank instruction")


def _pipeline(cfg, learner: LearnerConfig) -> PipelineConfig:
    ratios = {k: float(v) for k, v in _plain(cfg.pipeline.ratios).items()}
    if any(v < 0 for v in ratios.values()) or not any(v > 0 for v in ratios.values()):
        raise _fail("pipeline.ratios", f"must be >= 0 with at least one > 0, got {ratios}")
    try:
        return PipelineConfig(
            batch_size=learner.batch_size,
            ratios={k: v for k, v in ratios.items() if v > 0},
            augment=bool(cfg.pipeline.augment),
            with_next=learner.algorithm == "sac",
            use_quantiles=cfg.model.preset.startswith("pi05"),
            discrete_state=cfg.model.preset.startswith("pi05"),
            prefetch=int(cfg.pipeline.prefetch),
            seed=int(cfg.seed),
        )
    except ValueError as err:
        raise _section_error("pipeline", err) from None


def _acceptance(replay) -> AcceptanceConfig:
    if replay.window_frames < 1:
        raise _fail("replay.window_frames", f"must be >= 1, got {replay.window_frames}")
    if len(replay.image_size) != 2 or min(replay.image_size) < 8:
        raise _fail("replay.image_size", f"must be (H, W) with both >= 8, got {replay.image_size}")
    if replay.finalize_every < 1:
        raise _fail("replay.finalize_every", f"must be >= 1, got {replay.finalize_every}")
    try:
        return AcceptanceConfig(
            threshold=float(replay.threshold),
            short_episode_max=int(replay.short_episode_max),
            noop_eps=float(replay.noop_eps),
            noop_dims=None if replay.noop_dims is None else tuple(replay.noop_dims),
            noop_filter=bool(replay.noop_filter),
        )
    except (ValueError, TypeError) as err:
        raise ConfigError(f"--config.replay: {err}".replace("acceptance.", "replay.")) from None


def _env(env, action_horizon: int) -> DobotEnvConfig:
    config = DobotEnvConfig(
        host=env.host,
        port=int(env.port),
        api_key=env.api_key or None,
        image_size=tuple(env.image_size),
        action_horizon=int(action_horizon),
        max_episode_s=float(env.max_episode_s) if env.max_episode_s else None,
        robot_timeout_s=env.robot_timeout_s,
    )
    try:
        config.validate()
    except ValueError as err:
        raise ConfigError(str(err).replace("DobotEnvConfig.", "--config.env.")) from None
    if env.host not in LOCAL_HOSTS and not env.api_key:
        raise _fail("env.api_key", f"env.host={env.host!r} listens beyond localhost: set an api_key for the robot PC")
    return config


def _sim(cfg) -> SimServeConfig:
    from robot.sim.xtrainer import TASKS

    sim = cfg.sim
    if sim.task not in TASKS:
        raise _fail("sim.task", f"{sim.task!r} is not one of {sorted(TASKS)}")
    if sim.horizon_s is not None and sim.horizon_s <= 0:
        raise _fail("sim.horizon_s", f"must be positive or None, got {sim.horizon_s}")
    human = HumanConfig(takeover=bool(sim.takeover), drive_from_start=bool(sim.drive_from_start),
                        patience_s=sim.patience_s)  # fmt: skip
    try:
        human.validate()
    except ValueError as err:
        raise ConfigError(str(err).replace("HumanConfig.", "--config.sim.")) from None
    if not 1 <= sim.teleop_steps <= 50:
        raise _fail("sim.teleop_steps", f"must be in [1, 50], got {sim.teleop_steps}")
    return SimServeConfig(
        task=sim.task,
        teleop_steps=int(sim.teleop_steps),
        image_size=tuple(cfg.env.image_size),
        api_key=cfg.env.api_key or None,
        seed=int(cfg.seed),
        human=human,
        render=bool(sim.render),
        horizon_s=sim.horizon_s,
    )


def _transport(transport) -> TrainerConfig:
    try:
        config = TrainerConfig(int(transport.port), int(transport.broadcast_port), list(REQUEST_TYPES))
    except ValueError as err:
        raise ConfigError(
            str(err).replace("TrainerConfig.port_number", "--config.transport.port")
            .replace("TrainerConfig.broadcast_port", "--config.transport.broadcast_port")
            .replace("TrainerConfig.", "--config.transport.")
        ) from None  # fmt: skip
    if transport.timeout_ms < 1:
        raise _fail("transport.timeout_ms", f"must be >= 1, got {transport.timeout_ms}")
    if transport.auth_key and len(transport.auth_key.encode()) < 16:
        raise _fail(
            "transport.auth_key", "must be at least 16 bytes (python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    if transport.host not in LOCAL_HOSTS and not transport.auth_key:
        raise _fail("transport.auth_key", f"the learner at {transport.host!r} is not local: set a shared auth_key")
    return config
