"""Factories shared by the roles and tools of the experiment: model, starting weights, tokenizer, normalisation,
the actor's policy function, the run's files, and policies loaded back from what a run wrote.

A run directory (`<output_dir>/<run_name>`) holds:
    config.json                 the resolved config the run started with
    tokenizer.model             the tiny presets' SentencePiece model (trained from the prompts; else model.tokenizer)
    assets/xtrainer/norm_stats.json   the state / action normalisation the learner and actors use
    checkpoints/<step>/         orbax: the whole TrainState + replay position + transport marks (resume from here)
    policy/                     the latest policy in openpi's layout (params/, assets/, tokenizer): eval, serve
    replay/online, replay/accepted   LeRobot datasets of everything received / the accepted episodes
    tensorboard/                learner scalars and the actors' episode stats
    videos/                     one mp4 per actor episode (actor.videos)
    logs/                       each process's log
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.dobot_pnp.settings import ConfigError, Settings
from hiors_jax.data.pipeline import DEFAULT_CAMERA_MAP  # the actor must feed cameras as the learner trained them
from hiors_jax.models import config as model_configs
from hiors_jax.models import pi0, preprocessing, tokenizer, weights
from hiors_jax.models.config import Pi0Config

log = logging.getLogger(__name__)

ASSET_ID = "xtrainer"
ROBOT_DIM = 14
# The tiny presets' tokenizer is trained on these (and the run's prompt), so every process of a run, on any
# machine, trains the same one: the X-Trainer task's prompt and the simulated tasks' (robot.sim.xtrainer.TASKS).
TINY_CORPUS = (
    "put the objects in the box",
    "raise the left hand to the green ball",
    "transfer the red cube to the left hand",
)


# ------------------------------------------------------------------------------------------------ model
def model_overrides(s: Settings) -> dict[str, Any]:
    changes: dict[str, Any] = {"action_horizon": int(s.cfg.model.action_horizon), "remat": s.cfg.model.remat}
    if s.cfg.model.max_token_len:
        changes["max_token_len"] = int(s.cfg.model.max_token_len)
    return changes


def model_config(s: Settings) -> Pi0Config:
    """The preset's config (random / safetensors init); openpi init reads the sizes from the checkpoint instead."""
    return model_configs.get_preset(s.cfg.model.preset, dtype=s.cfg.model.dtype, **model_overrides(s))


def initial_params(s: Settings, key: jax.Array) -> tuple[Pi0Config, dict]:
    """(config, float32 master params) from `model.init`: random, openpi:PATH or safetensors:PATH."""
    overrides = dict(model_overrides(s), compute_dtype=s.cfg.model.dtype)
    if s.init.kind == "openpi":
        from experiments.dobot_pnp.serve import exported_model_settings  # a policy this project exported

        overrides.update(exported_model_settings(s.init.path))
        config, params = pi0.load_openpi_params(s.init.path, dtype="float32", **overrides)
    elif s.init.kind == "safetensors":
        # PyTorch shapes do not say how fused projections split into heads: the preset's shapes do.
        config = model_config(s)
        expected = jax.eval_shape(lambda: pi0.init_params(config, jax.random.key(0)))
        params = weights.load_safetensors_params(s.init.path, dtype="float32", expected=expected)
        return config, params
    else:
        config = model_config(s)
        params = jax.jit(pi0.init_params, static_argnums=0)(config, key)
        return config, params
    log.info("model.init=%s: sizes read from the checkpoint (model.preset not used)", s.cfg.model.init)
    return config, params


# ------------------------------------------------------------------------------------------------ tokenizer
def tokenizer_path(s: Settings) -> pathlib.Path:
    """model.tokenizer, or the run's tiny tokenizer (trained once, atomically, from TINY_CORPUS + the prompt)."""
    if s.cfg.model.tokenizer:
        return pathlib.Path(s.cfg.model.tokenizer).expanduser()
    path = s.workdir / "tokenizer.model"
    if not path.is_file():
        tmp = path.with_name(f".tokenizer.{os.getpid()}.model")
        corpus = sorted({*TINY_CORPUS, s.cfg.model.prompt} - {""})
        vocab = min(model_config(s).vocab_size, 64)  # TINY_CORPUS alone supports ~100 pieces
        tokenizer.train_tiny_tokenizer(tmp, corpus, vocab_size=vocab)
        os.replace(tmp, path)
    return path


def load_tokenizer(path: pathlib.Path, config: Pi0Config) -> tokenizer.PaligemmaTokenizer:
    tok = tokenizer.PaligemmaTokenizer(path, max_len=config.max_token_len)
    if tok.vocab_size > config.vocab_size:
        raise ConfigError(
            f"--config.model.tokenizer: {path} has {tok.vocab_size} pieces, more than the model's "
            f"{config.vocab_size} embedding rows"
        )
    return tok


# ------------------------------------------------------------------------------------------------ normalisation
def identity_stats(dim: int = ROBOT_DIM) -> dict[str, preprocessing.NormStats]:
    one = preprocessing.NormStats(mean=np.zeros(dim), std=np.ones(dim), q01=-np.ones(dim), q99=np.ones(dim))
    return {"state": one, "actions": one}


def norm_stats(s: Settings, windows: Mapping[str, Any] | None = None) -> dict[str, preprocessing.NormStats]:
    """model.norm_stats: auto (the init checkpoint's assets, else identity), identity, demos, or a file."""
    choice = s.cfg.model.norm_stats
    if choice == "identity":
        return identity_stats()
    if choice == "demos":
        from hiors_jax.data.pipeline import norm_stats_from_windows

        if not windows or "demo" not in windows:
            raise ConfigError("--config.model.norm_stats=demos: no demo window (data.demos) in this role")
        return norm_stats_from_windows([windows["demo"]], min_std=float(s.cfg.model.norm_min_std))
    if choice == "auto":
        if s.init.kind != "random":
            root = s.init.path if s.init.path.is_dir() else s.init.path.parent
            root = root.parent if root.name == "params" else root
            found = sorted((root / "assets").glob("*/norm_stats.json"))
            if len(found) == 1:
                log.info("norm stats from %s", found[0])
                return _checked_stats(preprocessing.load_norm_stats(found[0].parent), found[0])
            if found:
                raise ConfigError(
                    f"--config.model.norm_stats=auto: {root}/assets holds {len(found)} norm_stats.json; give one path"
                )
        return identity_stats()
    return _checked_stats(preprocessing.load_norm_stats(pathlib.Path(choice).expanduser()), choice)


def _checked_stats(stats: Mapping[str, preprocessing.NormStats], where) -> dict[str, preprocessing.NormStats]:
    for key in ("state", "actions"):
        if key not in stats:
            raise ConfigError(f"--config.model.norm_stats: {where} has no '{key}' stats (has {sorted(stats)})")
    return {"state": stats["state"], "actions": stats["actions"]}


# ------------------------------------------------------------------------------------------------ policy
Policy = Callable[[Any, Mapping[str, Any], jax.Array], np.ndarray]


def make_policy(
    config: Pi0Config,
    tok: tokenizer.PaligemmaTokenizer,
    stats: Mapping[str, preprocessing.NormStats],
    *,
    num_steps: int,
    prompt: str | None = None,
    camera_map: Mapping[str, str | None] = DEFAULT_CAMERA_MAP,
) -> Policy:
    """policy(params, obs, key) -> (horizon, robot dims) float32 chunk in robot units, for `train.actor.Actor`.

    obs is the robot protocol's (images {camera: uint8 HWC}, state (14,), prompt); a non-empty `prompt`
    overrides it.
    Params arrive as published (bfloat16 by default) and are cast to the model's dtype inside the jitted
    sampler, so every version reuses one compiled program.
    """
    dtype = jnp.dtype(config.dtype)
    size = config.vision.image_size
    action_stats = stats["actions"]

    @jax.jit
    def sample(params, observation, key):
        params = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
        noise = jax.random.normal(key, (1, config.action_horizon, config.action_dim))
        return pi0.sample_actions(config, params, observation, noise, num_steps=num_steps)

    def policy(params, obs, key) -> np.ndarray:
        frame = {"images": obs["images"], "state": obs["state"], "prompt": prompt or obs["prompt"]}
        inputs = preprocessing.make_observation_inputs(
            frame,
            camera_map=camera_map,
            tokenizer=tok,
            state_stats=stats["state"],
            use_quantiles=config.pi05,
            discrete_state=config.pi05,
            action_dim=config.action_dim,
            image_size=(size, size),
        )
        chunk = np.asarray(sample(params, pi0.Observation.from_dict(inputs), key))[0, :, : action_stats.dim]
        actions = preprocessing.unnormalize(chunk, action_stats, config.pi05).astype(np.float32)
        if not np.all(np.isfinite(actions)):
            raise FloatingPointError(f"the policy produced {int((~np.isfinite(actions)).sum())} non-finite actions")
        return actions

    return policy


def hold_pose(params, obs, key) -> np.ndarray:
    """The collect variant's "policy": keep the current pose; the human drives with the leader arms."""
    return np.tile(np.asarray(obs["state"], np.float32), (50, 1))


# ------------------------------------------------------------------------------------------------ run files
def prepare_workdir(s: Settings) -> pathlib.Path:
    s.workdir.mkdir(parents=True, exist_ok=True)
    (s.workdir / "logs").mkdir(exist_ok=True)
    return s.workdir


def save_config(s: Settings) -> pathlib.Path:
    path = s.workdir / "config.json"
    tmp = path.with_name(f".config.{os.getpid()}.json")
    tmp.write_text(s.cfg.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def save_run_stats(s: Settings, stats: Mapping[str, preprocessing.NormStats]) -> pathlib.Path:
    return preprocessing.save_norm_stats(s.workdir / "assets" / ASSET_ID / "norm_stats.json", stats)


def export_policy(s: Settings, config: Pi0Config, params, stats, tok_path: pathlib.Path) -> pathlib.Path:
    """<run>/policy in openpi's layout (params/, assets/xtrainer/norm_stats.json, the tokenizer beside them),
    written to a fresh directory and swapped in, so a reader never sees half a policy. policy.json beside them
    holds the run, the prompt and the model settings the params' shapes do not tell (serve.CheckpointPolicy)."""
    from hiors_jax.train.checkpoints import export_policy as write

    final = s.workdir / "policy"
    tmp = s.workdir / f".policy.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp, params, stats, ASSET_ID)
    shutil.copyfile(tok_path, tmp / "tokenizer.model")
    info = {"run": str(s.workdir), "prompt": s.cfg.model.prompt, "model": {"state_input": config.state_input}}
    (tmp / "policy.json").write_text(json.dumps(info))
    old = s.workdir / f".policy.old.{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


# ------------------------------------------------------------------------------------------------ loading back
def policy_params_from_checkpoint(step_dir: pathlib.Path) -> dict:
    """The policy params (EMA when the run kept one) of a learner checkpoint `<run>/checkpoints/<step>`."""
    import orbax.checkpoint as ocp

    step_dir = pathlib.Path(step_dir)
    if not (step_dir / "state").is_dir():
        raise FileNotFoundError(f"{step_dir} is not a learner checkpoint step (no state/ item)")
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(step_dir / "state")
    ema = state.get("ema_params")  # the EMA is of the policy (actor) params alone
    return ema if ema else state["params"]["actor"]


def load_run_policy(path: str | os.PathLike) -> tuple[Pi0Config, dict, dict, pathlib.Path, str | None]:
    """(config, params, norm stats, tokenizer path, prompt) of a learner checkpoint step `<run>/checkpoints/<step>`,
    with the run's files beside it. (An openpi-layout policy dir loads through serve.CheckpointPolicy.)"""
    path = pathlib.Path(path).expanduser().resolve()
    if not ((path / "state").is_dir() and path.parent.name == "checkpoints"):
        raise FileNotFoundError(f"{path} is not a learner checkpoint step (<run>/checkpoints/<step> with state/)")
    run = path.parent.parent
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    model = cfg.get("model", {})
    params = policy_params_from_checkpoint(path)
    overrides = {"action_horizon": model.get("action_horizon", 50)}
    if model.get("max_token_len"):
        overrides["max_token_len"] = model["max_token_len"]
    config = pi0.infer_config(params, dtype=model.get("dtype", "float32"), **overrides)
    stats = preprocessing.load_norm_stats(run / "assets" / ASSET_ID)
    tok = pathlib.Path(model["tokenizer"]) if model.get("tokenizer") else run / "tokenizer.model"
    return config, params, _checked_stats(stats, run), tok, model.get("prompt")
