"""SAC-style actor-critic on PI0 (the RL baseline the Hi-ORS paper compares with).

Networks: "actor" (PI0 params) and "critic" (`models.critic.CriticEnsemble` over pooled PI0 prefix features,
the state and the flattened chunk of trained dims), each with its own optimizer; a Polyak-averaged target critic
and, with `distill_weight > 0`, a frozen copy of the initial policy live in `state.extra`.

Policy gradient: this is a **deterministic policy gradient** through the flow sampler (the actor's only
randomness is the sampler's initial noise, which it is differentiated through). PI0's Euler sampler has no
tractable log-probability, so there is no entropy term and no temperature: log-probs are off, which is what the
Hi-ORS original effectively did (it used log pi = 0 and drove a meaningless temperature to 0). Exploration
comes from the initial noise.

Losses:
  critic: y = r + reward_bias + discount * (1 - done) * min_e Q_target_e(s', pi(s')),  mean_e,b (Q_e(s, a) - y)^2
  actor:  -mean_b mean_e Q_e(s, pi(s)) + distill_weight * mean (pi(s) - pi_ref(s))^2   (same noise for both)
One update consumes `critic_steps` minibatches: a `lax.scan` of critic steps (update-to-data and critic/actor
ratio > 1 without leaving jit), then one actor step on the last minibatch. `critic_update` does only the critic
scan (the warm-up before the actor trains); it leaves the actor's params and optimizer state untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from hiors_jax.agents.base import Agent, policy_of
from hiors_jax.agents.hiors import action_dim_mask
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
from hiors_jax.models.critic import CriticEnsemble, init_critic

CRITIC_OPTIMIZER = OptimizerConfig(peak_lr=3e-4, schedule="constant")


@dataclasses.dataclass(frozen=True)
class SacConfig:
    discount: float = 0.97
    tau: float = 0.005
    reward_bias: float = 0.0
    critic_steps: int = 2
    ensemble_size: int = 2
    hidden_dims: tuple[int, ...] = (256, 256)
    num_sample_steps: int = 10
    trained_action_dims: int | tuple[int, ...] = 14
    distill_weight: float = 0.0
    ema_decay: float | None = None
    actor_optimizer: OptimizerConfig = OptimizerConfig()
    critic_optimizer: OptimizerConfig = CRITIC_OPTIMIZER

    def __post_init__(self):
        for name in ("actor_optimizer", "critic_optimizer"):
            if isinstance(getattr(self, name), Mapping):
                object.__setattr__(self, name, OptimizerConfig.from_dict(getattr(self, name), name))
        if not 0 <= self.discount <= 1:
            raise ValueError(f"sac.discount={self.discount} must be in [0, 1]")
        if not 0 < self.tau <= 1:
            raise ValueError(f"sac.tau={self.tau} must be in (0, 1]")
        for name in ("critic_steps", "ensemble_size", "num_sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"sac.{name}={getattr(self, name)} must be >= 1")
        if self.ensemble_size < 2:
            raise ValueError(f"sac.ensemble_size={self.ensemble_size} must be >= 2 (the target takes a minimum)")
        if self.distill_weight < 0:
            raise ValueError(f"sac.distill_weight={self.distill_weight} must be >= 0")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, prefix: str = "sac") -> SacConfig:
        return config_from_dict(cls, values, prefix)


def policy_features(model: Pi0Config, params, observation) -> jax.Array:
    """Mean of PI0's prefix embeddings (image tokens + prompt) over valid tokens: (B, vlm.width), no gradient.

    Cheap (no transformer pass) and shared by the critic and its target; the critic does not train PI0."""
    obs = pi0.prepare_observation(model, observation)
    tokens, mask, _ = pi0.embed_prefix(model, params, obs)
    w = mask.astype(jnp.float32)[..., None]
    pooled = jnp.sum(tokens.astype(jnp.float32) * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
    return jax.lax.stop_gradient(pooled)


def _trained(actions, dims: tuple[int, ...]):
    return actions[..., jnp.asarray(dims)]


def _split_minibatches(batch, n: int):
    def split(x):
        if x is None:
            return None
        if x.shape[0] % n:
            raise ValueError(f"SAC batch of {x.shape[0]} samples does not split into critic_steps={n} minibatches")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(split, batch)


def make_agent(model: Pi0Config, cfg: SacConfig | None = None, trainable: Any = True) -> Agent:
    cfg = cfg or SacConfig()
    mask = action_dim_mask(cfg.trained_action_dims, model.action_dim)
    dims = tuple(int(i) for i in jnp.nonzero(mask)[0])
    critic = CriticEnsemble(tuple(cfg.hidden_dims), cfg.ensemble_size)
    networks = {"actor": make_network(cfg.actor_optimizer, trainable), "critic": make_network(cfg.critic_optimizer)}

    def sample(params, obs, key):
        noise = jax.random.normal(key, (obs.state.shape[0], model.action_horizon, model.action_dim), jnp.float32)
        return pi0.sample_actions(model, params, obs, noise, cfg.num_sample_steps)

    def q_values(critic_params, features, obs, actions):
        state = jnp.asarray(obs.state, jnp.float32)
        state = jnp.pad(state, ((0, 0), (0, model.action_dim - state.shape[-1])))
        return critic.apply({"params": critic_params}, features, state, _trained(actions, dims))

    def init(params, seed_key) -> TrainState:
        actor = params["actor"]
        critic_params = params.get("critic")
        if critic_params is None:
            size = model.action_horizon * len(dims)
            critic_key = jax.random.fold_in(jnp.asarray(seed_key, jnp.uint32), 1)
            critic_params = init_critic(critic, critic_key, model.vlm.width, model.action_dim, size)
        extra = {"target_critic": jax.tree.map(jnp.copy, critic_params)}
        if cfg.distill_weight > 0:
            extra["reference_actor"] = jax.tree.map(jnp.copy, actor)
        return init_state(
            networks,
            {"actor": actor, "critic": critic_params},
            seed_key,
            ema=cfg.ema_decay is not None,
            extra=extra,
        )

    def critic_loss(critic_params, state: TrainState, batch, key):
        actor = state.params["actor"]
        next_actions = jax.lax.stop_gradient(sample(actor, batch.next_observation, key))
        next_q = q_values(
            state.extra["target_critic"], policy_features(model, actor, batch.next_observation),
            batch.next_observation, next_actions,
        )  # fmt: skip
        not_done = 1.0 - jnp.asarray(batch.done, jnp.float32)
        target = jnp.asarray(batch.reward, jnp.float32) + cfg.reward_bias + cfg.discount * not_done * next_q.min(0)
        target = jax.lax.stop_gradient(target)
        q = q_values(critic_params, policy_features(model, actor, batch.observation), batch.observation, batch.actions)
        loss = jnp.mean(jnp.square(q - target[None]))
        return loss, {"critic_loss": loss, "predicted_q": jnp.mean(q), "target_q": jnp.mean(target)}

    def critic_step(state: TrainState, batch, key):
        grads, info = jax.grad(critic_loss, has_aux=True)(state.params["critic"], state, batch, key)
        state, opt = apply_gradients(state, networks["critic"], "critic", grads)
        target = jax.tree.map(
            lambda t, p: (1 - cfg.tau) * t + cfg.tau * p, state.extra["target_critic"], state.params["critic"]
        )
        state = state.replace(extra={**state.extra, "target_critic": target})
        return state, {**info, **{f"critic_{k}": v for k, v in opt.items()}}

    def actor_loss(actor_params, state: TrainState, batch, key):
        actions = sample(actor_params, batch.observation, key)
        features = policy_features(model, actor_params, batch.observation)
        q = q_values(state.params["critic"], features, batch.observation, actions)
        q_loss = -jnp.mean(q)
        info = {"q_loss": q_loss}
        loss = q_loss
        if cfg.distill_weight > 0:
            reference = jax.lax.stop_gradient(sample(state.extra["reference_actor"], batch.observation, key))
            distill = jnp.mean(jnp.square(_trained(actions, dims) - _trained(reference, dims)))
            loss = loss + cfg.distill_weight * distill
            info["distill_loss"] = distill
        return loss, {**info, "actor_loss": loss}

    def actor_step(state: TrainState, batch, key):
        grads, info = jax.grad(actor_loss, has_aux=True)(state.params["actor"], state, batch, key)
        state, opt = apply_gradients(state, networks["actor"], "actor", grads)
        return state, {**info, **{f"actor_{k}": v for k, v in opt.items()}}

    def critic_scan(state: TrainState, batch, key):
        minibatches = _split_minibatches(batch, cfg.critic_steps)
        keys = jax.random.split(jax.random.fold_in(key, 0), cfg.critic_steps)
        state, infos = jax.lax.scan(lambda s, xs: critic_step(s, *xs), state, (minibatches, keys))
        last = jax.tree.map(lambda x: x[-1], minibatches)
        return state, jax.tree.map(jnp.mean, infos), last

    def critic_update(state: TrainState, batch, key):
        state, info, _ = critic_scan(state, batch, key)
        state = finish_step(state, None)
        return state, {**info, "critic_param_norm": tree_norm(state.params["critic"])}

    def update(state: TrainState, batch, key):
        state, info, last = critic_scan(state, batch, key)
        state, actor_info = actor_step(state, last, jax.random.fold_in(key, 1))
        state = finish_step(state, cfg.ema_decay)
        return state, {
            **info,
            **actor_info,
            "critic_param_norm": tree_norm(state.params["critic"]),
            "actor_param_norm": tree_norm(state.params["actor"]),
        }

    return Agent(
        algorithm="sac",
        networks=networks,
        init=init,
        update=update,
        policy_params=policy_of,
        batch_multiple=cfg.critic_steps,
        partial_updates={"critic": critic_update},
    )
