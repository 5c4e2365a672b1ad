"""Shared fixtures for the experiment tools: a tiny openpi-layout checkpoint written the way the demo writes one."""

from __future__ import annotations

import logging
import pathlib

import jax
import numpy as np
import pytest

from hiors_jax import demo
from hiors_jax.models import config as model_config
from hiors_jax.models import pi0, preprocessing, tokenizer

ROBOT_DIM = demo.ROBOT_DIM
PROMPTS = [demo.PROMPT, "fold the towel", "transfer the cube"]


def action_stats(scale: float = 1.0, shift: float = 0.0) -> preprocessing.NormStats:
    """Distinct per-joint statistics, so un-normalisation visibly moves every dimension."""
    mean = np.arange(ROBOT_DIM) * 0.25 - 1.0 + shift
    std = (0.5 + 0.1 * np.arange(ROBOT_DIM)) * scale
    return preprocessing.NormStats(mean=mean, std=std, q01=mean - 2 * std, q99=mean + 2 * std)


@pytest.fixture(autouse=True)
def restore_logging():
    """The commands' main() set up process-wide logging (root level and handlers, quiet loggers); tests call
    them in-process, so put it back for whatever test runs next."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lg in logging.root.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
            lg.setLevel(levels.get(name, logging.NOTSET))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> pathlib.Path:
    """params/ + assets/xtrainer (stats A) + assets/shifted (actions: 2x std, +100 mean) + tiny_tokenizer.model."""
    out = tmp_path_factory.mktemp("checkpoint") / "step_100"
    config = model_config.get_preset("pi0_tiny")
    params = jax.jit(pi0.init_params, static_argnums=0)(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    states = rng.normal(size=(500, ROBOT_DIM)) * 0.3
    q01, q99 = np.quantile(states, [0.01, 0.99], axis=0)
    state = preprocessing.NormStats(mean=states.mean(0), std=states.std(0), q01=q01, q99=q99)
    demo.write_checkpoint(out, params, {"state": state, "actions": action_stats()})
    shifted = {"state": state, "actions": action_stats(scale=2.0, shift=100.0)}
    preprocessing.save_norm_stats(out / "assets" / "shifted" / "norm_stats.json", shifted)
    tokenizer.train_tiny_tokenizer(out / "tiny_tokenizer.model", PROMPTS, vocab_size=64)
    return out


@pytest.fixture
def robot_frame():
    """An X-Trainer frame as the robot PC sends it: three uint8 224x298 cameras, 14-d state, prompt."""
    return demo.synthetic_robot_frame(np.random.default_rng(1))
