"""Tiny model, parameters and hand-built batches for the agent and learner tests.

Batches are `hiors_jax.data.pipeline.Batch` built by hand: a model-ready `observation`, `actions`
(B, H, action_dim) normalised and padded, `action_is_pad` (B, H), `weight` (B,), and for SAC `reward`, `done`,
`next_observation`.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from hiors_jax.data.pipeline import Batch
from hiors_jax.models import config as model_config
from hiors_jax.models import pi0

ROBOT_DIM = 14


def tiny_model(**changes):
    defaults = dict(action_horizon=8, max_token_len=8)
    defaults.update(changes)
    return model_config.tiny_config(**defaults)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _params(config, seed):
    return pi0.init_params(config, jax.random.key(seed))


def tiny_params(config, seed=0):
    return _params(config, seed)


def random_observation(config, batch, rng):
    size = config.vision.image_size
    images = {k: rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32) for k in config.image_keys}
    tokens = rng.integers(3, config.vocab_size, (batch, config.max_token_len)).astype(np.int32)
    tmask = np.ones((batch, config.max_token_len), bool)
    tmask[:, config.max_token_len // 2 :] = rng.random((batch, config.max_token_len - config.max_token_len // 2)) < 0.5
    state = np.zeros((batch, config.action_dim), np.float32)
    state[:, :ROBOT_DIM] = rng.normal(size=(batch, ROBOT_DIM))
    return pi0.Observation(
        images=images,
        image_masks={k: np.ones(batch, bool) for k in config.image_keys},
        state=state,
        tokenized_prompt=tokens,
        tokenized_prompt_mask=tmask,
    )


def random_batch(config, batch=4, seed=0, sac=False):
    rng = np.random.default_rng(seed)
    actions = np.zeros((batch, config.action_horizon, config.action_dim), np.float32)
    actions[..., :ROBOT_DIM] = rng.normal(size=(batch, config.action_horizon, ROBOT_DIM))
    is_pad = np.zeros((batch, config.action_horizon), bool)
    is_pad[0, -3:] = True  # one sample whose chunk ran past its episode's end
    weight = np.ones(batch, np.float32)
    observation = random_observation(config, batch, rng)
    reward = rng.random(batch).astype(np.float32)
    done = rng.random(batch) < 0.3
    next_observation = random_observation(config, batch, rng) if sac else None
    return Batch(observation, actions, is_pad, weight, reward, done, next_observation)


def tree_equal(a, b) -> bool:
    """Bit-for-bit equality of two pytrees (structure, dtypes and values)."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        return False
    return all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )
