"""Configs of the Dobot X-Trainer pick-and-place experiment: `get_config(variant)`.

    python -m experiments.dobot_pnp --config=configs/dobot_pnp.py:<variant> [--config.section.field=value ...]

Variants:
  hiors    Hi-ORS on the real robot (the default): rejection sampling, flow matching on accepted episodes.
  sft      behaviour cloning on demo datasets (learner only, offline).
  sac      the RL baseline: SAC on PI0 (deterministic policy gradient through the sampler), demos + online 50/50.
  collect  teleoperated data collection into a LeRobot dataset (the human drives whole episodes).
  sim      learner, actor and simulated X-Trainer started by one command on one machine: tiny model, bounded run.
  sft_sim, sac_sim, collect_sim: those variants against the simulated X-Trainer with the tiny model.

Every field is documented in `DOCS` (printed by `--help`, tabled in the README). Values are checked at start-up
(experiments.dobot_pnp.settings) and a bad one fails naming its field.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

VARIANTS = ("hiors", "sft", "sac", "collect", "sim", "sft_sim", "sac_sim", "collect_sim")
ROLES = ("learner", "actor", "all")
PROMPT = "put the objects in the box"

# Field path -> what it means. Kept beside the defaults so `--help` and the README table cannot drift from them
# (tests/experiments/test_config_docs.py checks every field has an entry and the README lists them all).
DOCS = {
    "variant": "which experiment this config describes (hiors, sft, sac, collect, sim, *_sim); set by :<variant>",
    "role": "learner | actor | all (all: learner and actor as two processes on this machine)",
    "run_name": "name of the run; its files go to <output_dir>/<run_name>",
    "output_dir": "directory holding runs (tensorboard, checkpoints, replay datasets, videos, exported policy)",
    "checkpoint_path": "resume from this learner checkpoints directory (default: <run>/checkpoints when it exists)",
    "seed": "seed of everything random in the run (params init, batches, policy noise, sim resets)",
    "max_seconds": "stop the run (gracefully: final checkpoint, marks persisted) after this many seconds; 0: no limit",
    "log_level": "python logging level (DEBUG, INFO, WARNING, ERROR)",
    "model.preset": "PI0 preset: pi0, pi05, pi0_lora, pi05_lora, pi0_tiny, pi05_tiny, ... (models.config.PRESETS)",
    "model.init": "starting weights: random | openpi:PATH (openpi params dir) | safetensors:PATH (PyTorch PI0)",
    "model.dtype": "parameter / compute dtype: float32 or bfloat16",
    "model.action_horizon": "steps per action chunk (the X-Trainer's robot PC executes 20 of 50)",
    "model.max_token_len": "prompt tokens (0: the preset's)",
    "model.tokenizer": "PaliGemma SentencePiece model; empty: a tiny one trained on the prompts (tiny presets only)",
    "model.norm_stats": "state/action normalisation: auto (the init checkpoint's assets, else identity) | identity | "
    "demos (computed from data.demos; learner-only runs) | PATH to a norm_stats.json",
    "model.norm_min_std": "norm_stats=demos: floor of each dim's std (robot units); a dim the demos never move (the "
    "idle arm) would otherwise blow any later movement up to huge normalised values",
    "model.num_sample_steps": "Euler steps of the flow sampler when the actor queries the policy",
    "model.prompt": "task instruction given to the policy and written into datasets; empty: the one the robot sends",
    "model.remat": "activation rematerialisation per layer: none | dots | full",
    "learner.algorithm": "hiors | sft | sac (the update rule; set by the variant)",
    "learner.max_steps": "learner updates to run",
    "learner.batch_size": "samples per update, over all devices",
    "learner.trainable": "parameters trained: all | lora | openpi_lora | action_expert | no_vision",
    "learner.freeze": "regexes over parameter paths also kept fixed, e.g. ('PaliGemma/img/.*',)",
    "learner.actor_training_starts": "SAC: learner steps that train only the critic first",
    "learner.publish_every": "learner steps between params sent to actors",
    "learner.publish_dtype": "dtype of params sent to actors: bfloat16 | float16 | float32",
    "learner.checkpoint_every": "learner steps between orbax checkpoints (state + replay position + transport marks)",
    "learner.keep_checkpoints": "newest checkpoints kept on disk",
    "learner.log_every": "learner steps between tensorboard scalars",
    "learner.mesh_data": "devices on the data axis (-1: all left)",
    "learner.mesh_fsdp": "devices parameters are sharded over (fsdp axis)",
    "learner.min_accepted_frames": "frames the learner waits for in its training sources before the first update",
    "agent.trained_action_dims": "action dims in the loss: N (the first N) or a tuple of indices; 14 = both arms",
    "agent.mask_padding": "leave padded chunk steps (past the episode end) out of the loss",
    "agent.use_weights": "weight samples by their acceptance weight (Hi-ORS); False: every sample equally",
    "agent.ema_decay": "keep an EMA of the policy params (None: off)",
    "agent.optimizer.peak_lr": "peak learning rate (SAC: actor_optimizer / critic_optimizer)",
    "agent.optimizer.decay_lr": "learning rate at the end of the cosine",
    "agent.optimizer.warmup_steps": "linear warmup steps",
    "agent.optimizer.decay_steps": "cosine decay steps",
    "agent.optimizer.schedule": "hiors_cosine (lerobot's multiplier, Hi-ORS) | warmup_cosine (openpi) | constant",
    "agent.optimizer.b1": "AdamW beta1",
    "agent.optimizer.b2": "AdamW beta2",
    "agent.optimizer.eps": "AdamW epsilon",
    "agent.optimizer.weight_decay": "AdamW weight decay",
    "agent.optimizer.clip_grad_norm": "global gradient-norm clip (0: off)",
    "agent.discount": "SAC: reward discount",
    "agent.tau": "SAC: target critic Polyak rate",
    "agent.reward_bias": "SAC: added to every reward",
    "agent.critic_steps": "SAC: critic updates per actor update",
    "agent.ensemble_size": "SAC: critics in the ensemble (the target takes their minimum)",
    "agent.hidden_dims": "SAC: critic MLP widths",
    "agent.num_sample_steps": "SAC: Euler steps of the sampler the actor loss differentiates through",
    "agent.distill_weight": "SAC: weight of the MSE to the initial policy's actions (Q-chunking-style)",
    "agent.actor_optimizer": "SAC: the policy's optimizer (fields as agent.optimizer)",
    "agent.critic_optimizer": "SAC: the critic's optimizer (fields as agent.optimizer)",
    "pipeline.ratios": "share of each batch drawn from each source: accepted | online | demo",
    "pipeline.augment": "openpi's image augmentation (crop, rotate, colour jitter)",
    "pipeline.prefetch": "batches prepared ahead of the learner",
    "data.demos": "comma-separated LeRobot dataset roots used as the demo source",
    "data.demo_frames": "newest demo frames kept for sampling (0: all)",
    "replay.window_frames": "newest frames per source kept in memory for sampling",
    "replay.image_size": "(H, W) images are stored at for sampling (the model's input size)",
    "replay.use_videos": "store cameras as AV1 video in the LeRobot datasets (False: PNG frames)",
    "replay.finalize_every": "publish saved episodes into the dataset directories every N episodes",
    "replay.short_episode_max": "acceptance: episodes with <= this many transitions are dropped (short-episode filter)",
    "replay.noop_filter": "acceptance: drop non-terminal transitions whose recorded states barely move",
    "replay.noop_eps": "acceptance: the no-op filter's std threshold (radians)",
    "replay.noop_dims": "acceptance: state dims the no-op filter looks at (None: all)",
    "replay.threshold": "acceptance: episode score needed (label success = 1)",
    "transport.host": "the learner's address (actors connect to it; the learner binds on all interfaces)",
    "transport.port": "learner request port (actors push transitions)",
    "transport.broadcast_port": "learner broadcast port (params to actors)",
    "transport.auth_key": "shared key authenticating actor <-> learner messages; required beyond localhost",
    "transport.timeout_ms": "request timeout of the actor's client",
    "env.host": "address the actor's robot env listens on for the robot PC",
    "env.port": "port of the robot env (the robot PC connects here; 0: any free port, the sim is told)",
    "env.api_key": "key the robot PC must send; required when env.host is not localhost",
    "env.image_size": "(H, W) of camera images in observations",
    "env.max_episode_s": "robot time after which an unlabelled episode ends as a failure",
    "env.robot_timeout_s": "how long to wait for the robot (None: as long as it takes)",
    "sim.enabled": "run the simulated X-Trainer in the actor process instead of waiting for a real robot PC",
    "sim.task": "simulated task: easy (reach a marker) | transfer (cube hand-over, contact-rich)",
    "sim.horizon_s": "sim episode time before the scripted human labels failure (None: the task's)",
    "sim.render": "render cameras with MuJoCo (False: blank images, for speed in tests)",
    "sim.takeover": "the scripted human takes over a stalled or drifting policy (False: it only labels)",
    "sim.drive_from_start": "the scripted human drives whole episodes (data collection)",
    "sim.teleop_steps": "chunk steps (0.1 s each) the sim runs per query while the human drives; 2: the sim's clock "
    "stands still during a query, so 1 step would record one state row and the no-op filter would drop it (the "
    "real robot keeps moving during the query latency)",
    "sim.patience_s": "robot time the scripted human waits before judging the policy stalled (None: the task's)",
    "actor.actor_id": "this actor's name in transitions and datasets (one per actor machine)",
    "actor.episodes": "episodes the actor runs (0: until stopped)",
    "actor.labels": "who labels episodes: auto (robot when sim.enabled, else keyboard) | robot (the robot PC / the "
    "sim's scripted human) | keyboard (s / f + Enter) | classifier",
    "actor.classifier_path": "reward classifier directory (actor.labels=classifier)",
    "actor.classifier_threshold": "success when the classifier's probability exceeds this",
    "actor.videos": "write an mp4 per episode to <run>/videos",
    "actor.param_wait_s": "how long the actor waits for the learner's first params",
    "eval.episodes": "evaluation cases (initial conditions)",
    "eval.trial_budget": "attempts per case; success within 1..k attempts is reported (test-time scaling)",
    "eval.videos": "write an mp4 per evaluation episode",
    "eval.output": "JSON results file (default <run>/eval/<checkpoint step>.json)",
    "collect.episodes": "episodes to record",
    "collect.output": "dataset root (default <run>/demos); accepted/ under it is the demo dataset for sft / sac",
}


def _section(**values) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(values)


def _flow_agent(use_weights: bool = True, optimizer: ml_collections.ConfigDict | None = None):
    return _section(
        trained_action_dims=14,
        mask_padding=True,
        use_weights=use_weights,
        ema_decay=config_dict.placeholder(float),
        optimizer=optimizer or _optimizer(),
    )


def _optimizer(**changes) -> ml_collections.ConfigDict:
    values = dict(
        peak_lr=2.5e-5,
        decay_lr=2.5e-6,
        warmup_steps=100,
        decay_steps=500,
        schedule="hiors_cosine",
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        weight_decay=1e-10,
        clip_grad_norm=1.0,
    )
    values.update(changes)
    return _section(**values)


def _sac_agent() -> ml_collections.ConfigDict:
    return _section(
        discount=0.97,
        tau=0.005,
        reward_bias=0.0,
        critic_steps=2,
        ensemble_size=2,
        hidden_dims=(256, 256),
        num_sample_steps=10,
        trained_action_dims=14,
        distill_weight=0.0,
        ema_decay=config_dict.placeholder(float),
        actor_optimizer=_optimizer(),
        critic_optimizer=_optimizer(peak_lr=3e-4, schedule="constant"),
    )


def base_config() -> ml_collections.ConfigDict:
    """The real-robot Hi-ORS run (the paper's settings); variants change what differs."""
    c = ml_collections.ConfigDict()
    c.variant = "hiors"
    c.role = "all"
    c.run_name = "dobot_pnp"
    c.output_dir = "outputs"
    c.checkpoint_path = ""
    c.seed = 0
    c.max_seconds = 0.0
    c.log_level = "INFO"
    c.model = _section(
        preset="pi0",
        init="random",
        dtype="bfloat16",
        action_horizon=50,
        max_token_len=48,
        tokenizer="",
        norm_stats="auto",
        norm_min_std=0.05,
        num_sample_steps=10,
        prompt="",
        remat="full",
    )
    c.learner = _section(
        algorithm="hiors",
        max_steps=100_000,
        batch_size=56,
        trainable="all",
        freeze=(),
        actor_training_starts=0,
        publish_every=50,
        publish_dtype="bfloat16",
        checkpoint_every=500,
        keep_checkpoints=3,
        log_every=10,
        mesh_data=-1,
        mesh_fsdp=1,
        min_accepted_frames=10,
    )
    c.agent = _flow_agent()
    c.pipeline = _section(ratios=_section(accepted=1.0, online=0.0, demo=0.0), augment=True, prefetch=2)
    c.data = _section(demos="", demo_frames=0)
    c.replay = _section(
        window_frames=20_000,
        image_size=(224, 224),
        use_videos=True,
        finalize_every=1,
        short_episode_max=2,
        noop_filter=True,
        noop_eps=1e-3,
        noop_dims=config_dict.placeholder(tuple),
        threshold=1.0,
    )
    c.transport = _section(host="127.0.0.1", port=5488, broadcast_port=5489, auth_key="", timeout_ms=3000)
    c.env = _section(
        host="127.0.0.1",
        port=8080,
        api_key="",
        image_size=(224, 298),
        max_episode_s=60.0,
        robot_timeout_s=config_dict.placeholder(float),
    )
    c.sim = _section(
        enabled=False,
        task="easy",
        horizon_s=config_dict.placeholder(float),
        render=True,
        takeover=True,
        drive_from_start=False,
        teleop_steps=2,
        patience_s=config_dict.placeholder(float),
    )
    c.actor = _section(
        actor_id="actor-0",
        episodes=0,
        labels="auto",
        classifier_path="",
        classifier_threshold=0.75,
        videos=False,
        param_wait_s=600.0,
    )
    c.eval = _section(episodes=20, trial_budget=3, videos=True, output="")
    c.collect = _section(episodes=20, output="")
    return c


def get_config(variant: str = "hiors") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: configs/dobot_pnp.py:<variant> takes one of {VARIANTS}")
    base = "hiors" if variant == "sim" else variant.removesuffix("_sim")
    c = base_config()
    c.variant = variant
    c.run_name = f"dobot_pnp_{variant}"
    if base == "sft":
        # Behaviour cloning on demos, offline: no actors (the original's run_learner_sft.sh schedule).
        c.role = "learner"
        c.learner.algorithm = "sft"
        c.learner.checkpoint_every = 5000
        c.agent = _flow_agent(use_weights=False, optimizer=_optimizer(warmup_steps=1000, decay_steps=30_000))
        c.pipeline.ratios = _section(accepted=0.0, online=0.0, demo=1.0)
        c.model.norm_stats = "demos"
    elif base == "sac":
        c.learner.algorithm = "sac"
        c.learner.actor_training_starts = 150
        c.agent = _sac_agent()
        c.pipeline.ratios = _section(accepted=0.0, online=0.5, demo=0.5)
    elif base == "collect":
        # The human drives whole episodes with the leader arms; no learner, the policy is never trained.
        c.role = "actor"
        c.actor.episodes = 20
        c.sim.drive_from_start = True
    if variant.endswith("sim"):
        _make_sim(c, base)
    c.lock()
    return c


def _make_sim(c: ml_collections.ConfigDict, base: str) -> None:
    """Everything on one laptop: the tiny PI0, the simulated X-Trainer with its scripted human, a bounded run."""
    c.max_seconds = 240.0
    c.model.preset = "pi0_tiny"
    c.model.dtype = "float32"
    c.model.action_horizon = 50
    c.model.max_token_len = 16
    c.model.norm_stats = "identity"
    c.learner.max_steps = 2000
    c.learner.batch_size = 8
    c.learner.publish_every = 20
    c.learner.checkpoint_every = 100
    c.learner.log_every = 10
    c.learner.mesh_data = 1
    c.learner.min_accepted_frames = 20
    fast = _optimizer(peak_lr=3e-4, decay_lr=3e-5, warmup_steps=20, decay_steps=2000)
    if base == "sac":
        c.agent.actor_optimizer = fast
        c.agent.num_sample_steps = 3
        c.agent.hidden_dims = (64, 64)
        c.learner.actor_training_starts = 50
    else:
        c.agent.optimizer = fast
        # Sim episodes record ~12 state rows while the robot executes 20 of every chunk: train the padded tail (the
        # last recorded state, "stay there") as the original does, or most executed rows are never supervised.
        c.agent.mask_padding = False
    if base == "sft":
        c.learner.checkpoint_every = 100
    c.pipeline.augment = False
    c.replay.window_frames = 5000
    c.replay.image_size = (56, 56)
    c.replay.use_videos = False
    c.env.image_size = (56, 74)
    c.env.port = 0
    c.env.max_episode_s = 30.0
    c.sim.enabled = True
    c.sim.task = "easy"
    c.actor.labels = "robot"
    c.actor.videos = True
    c.transport.port = 5588
    c.transport.broadcast_port = 5589
    c.eval.episodes = 10
    c.collect.episodes = 10
