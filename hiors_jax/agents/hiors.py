"""Hi-ORS improvement step: reward-weighted flow matching on accepted samples.

Loss (openpi conventions, t = 1 is noise): x_t = t * noise + (1 - t) * actions, target u = noise - actions,
per element (v_theta(x_t, t) - u)^2, summed over the trained action dims and valid (not padded) chunk steps,
weighted per sample by `batch.weight` (the acceptance rules' weight: 1 for an accepted sample, 0 for a rejected
one, or a graded weight), and divided by the total weight of the elements used. With binary weights this is the
released Hi-ORS objective E[loss | accepted]; unlike the original it can skip the padded tail of a chunk
(`mask_padding`) and trains the dims named in the config (all robot dims by default, not just the left arm).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from hiors_jax.agents.base import Agent, policy_of
from hiors_jax.agents.train_state import (
    OptimizerConfig,
    TrainState,
    apply_gradients,
    config_from_dict,
    finish_step,
    init_state,
    make_network,
    tree_norm,
)
from hiors_jax.models import pi0
from hiors_jax.models.config import Pi0Config


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """trained_action_dims: an int N (the first N dims, e.g. 14 for the X-Trainer) or explicit indices.
    mask_padding: leave `action_is_pad` steps out of the loss. use_weights: weight samples by `batch.weight`
    (Hi-ORS); False trains on every sample equally (SFT). ema_decay: keep an EMA of the policy (None: off)."""

    trained_action_dims: int | tuple[int, ...] = 14
    mask_padding: bool = True
    use_weights: bool = True
    ema_decay: float | None = None
    optimizer: OptimizerConfig = OptimizerConfig()

    def __post_init__(self):
        if isinstance(self.optimizer, Mapping):
            object.__setattr__(self, "optimizer", OptimizerConfig.from_dict(self.optimizer))
        dims = self.trained_action_dims
        if isinstance(dims, int):
            if dims <= 0:
                raise ValueError(f"trained_action_dims={dims} must be positive")
        elif not dims or len(set(dims)) != len(dims) or min(dims) < 0:
            raise ValueError(f"trained_action_dims={dims} must be non-empty, unique and non-negative")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay} must be in (0, 1) or None")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, prefix: str = "agent") -> FlowConfig:
        return config_from_dict(cls, values, prefix)


def action_dim_mask(dims: int | tuple[int, ...], action_dim: int) -> jax.Array:
    """(action_dim,) float mask of the trained dims, checked against the model's padded action width."""
    indices = tuple(range(dims)) if isinstance(dims, int) else tuple(dims)
    if max(indices) >= action_dim:
        raise ValueError(f"trained_action_dims={dims} reaches past the model's action_dim={action_dim}")
    return jnp.zeros((action_dim,), jnp.float32).at[jnp.asarray(indices)].set(1.0)


def flow_matching_loss(model: Pi0Config, cfg: FlowConfig, params, batch, key) -> tuple[jax.Array, dict]:
    actions = jnp.asarray(batch.actions, jnp.float32)
    bsz, horizon, width = actions.shape
    if width != model.action_dim:
        raise ValueError(f"batch.actions has {width} dims; the pipeline pads them to action_dim={model.action_dim}")
    noise, time = pi0.sample_noise_and_time(key, actions.shape)
    t = time[:, None, None]
    x_t = t * noise + (1 - t) * actions
    v_t = pi0.predict_velocity(model, params, batch.observation, x_t, time)
    per_element = jnp.square(v_t.astype(jnp.float32) - (noise - actions))
    step_w = jnp.ones((bsz, horizon), jnp.float32)
    if cfg.mask_padding:
        step_w = step_w * (~jnp.asarray(batch.action_is_pad, bool)).astype(jnp.float32)
    sample_w = jnp.asarray(batch.weight, jnp.float32) if cfg.use_weights else jnp.ones((bsz,), jnp.float32)
    dim_w = action_dim_mask(cfg.trained_action_dims, model.action_dim)
    w = sample_w[:, None, None] * step_w[:, :, None] * dim_w
    total = jnp.sum(w)
    loss = jnp.sum(w * per_element) / jnp.maximum(total, 1e-12)
    return loss, {"loss": loss, "sample_weight": jnp.sum(sample_w), "pad_fraction": 1.0 - jnp.mean(step_w)}


def make_agent(
    model: Pi0Config, cfg: FlowConfig | None = None, trainable: Any = True, *, algorithm: str = "hiors"
) -> Agent:
    """The Hi-ORS agent over one network, "actor" (the PI0 params); `trainable` is a bool mask over them."""
    cfg = cfg or FlowConfig()
    action_dim_mask(cfg.trained_action_dims, model.action_dim)  # fail at start-up, not inside jit
    networks = {"actor": make_network(cfg.optimizer, trainable)}

    def init(params, seed_key) -> TrainState:
        params = params if "actor" in params else {"actor": params}
        return init_state(networks, params, seed_key, ema=cfg.ema_decay is not None)

    def update(state: TrainState, batch, key) -> tuple[TrainState, dict]:
        grad_fn = jax.value_and_grad(lambda p: flow_matching_loss(model, cfg, p, batch, key), has_aux=True)
        (_, info), grads = grad_fn(state.params["actor"])
        state, opt_info = apply_gradients(state, networks["actor"], "actor", grads)
        state = finish_step(state, cfg.ema_decay)
        return state, {**info, **opt_info, "param_norm": tree_norm(state.params["actor"])}

    return Agent(algorithm=algorithm, networks=networks, init=init, update=update, policy_params=policy_of)
