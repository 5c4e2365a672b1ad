"""Train state, optimizers and learning-rate schedules shared by every update rule.

A `TrainState` holds one parameter tree and one optimizer state per *network* (``"actor"``, ``"critic"``, ...).
Each network has its own optax transform, so a step that updates one network leaves every other network's
parameters and optimizer moments untouched (hil-serl summed the updates of all its optimizers over the whole
tree, so zero gradients still moved "frozen" networks through Adam momentum). Inside a network a trainable mask
picks the leaves that move; the others get no optimizer state and a zero update.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("hiors_cosine", "warmup_cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW + global-norm clipping + a warmup/cosine schedule (defaults: Hi-ORS's actor optimizer).

    schedule:
      - "hiors_cosine": Hi-ORS / lerobot's `CosineDecayWithWarmup` multiplier: during warmup a linear ramp from
        peak/(W+1) to peak; then decay_lr + (peak - decay_lr) * 0.5 * (1 + cos(pi * min(s, D) / D)), with the
        cosine indexed from step 0 (not from the end of warmup), flat at decay_lr after D.
      - "warmup_cosine": openpi's `CosineDecaySchedule` (optax.warmup_cosine_decay_schedule, cosine after warmup,
        init value peak/(W+1)).
      - "constant": peak_lr throughout.
    Steps count this network's own updates (its optimizer's step counter).
    """

    peak_lr: float = 2.5e-5
    decay_lr: float = 2.5e-6
    warmup_steps: int = 100
    decay_steps: int = 500
    schedule: str = "hiors_cosine"
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 1e-10
    clip_grad_norm: float | None = 1.0

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optimizer.schedule={self.schedule!r} is not one of {SCHEDULES}")
        for name in ("peak_lr", "eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"optimizer.{name}={getattr(self, name)} must be positive")
        for name in ("decay_lr", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"optimizer.{name}={getattr(self, name)} must be >= 0")
        if self.warmup_steps < 0:
            raise ValueError(f"optimizer.warmup_steps={self.warmup_steps} must be >= 0")
        if self.schedule != "constant" and self.decay_steps <= 0:
            raise ValueError(f"optimizer.decay_steps={self.decay_steps} must be positive")
        for name in ("b1", "b2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"optimizer.{name}={getattr(self, name)} must be in [0, 1)")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"optimizer.clip_grad_norm={self.clip_grad_norm} must be positive or None")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, prefix: str = "optimizer") -> OptimizerConfig:
        try:
            return config_from_dict(cls, values, prefix)
        except ValueError as err:
            message = str(err)
            if message.startswith("optimizer."):
                message = prefix + message[len("optimizer") :]
            raise ValueError(message) from None

    def check_fits(self, max_steps: int, prefix: str = "optimizer") -> None:
        """A schedule longer than training never reaches its end: refuse it at start-up."""
        if self.schedule == "constant":
            return
        for name in ("warmup_steps", "decay_steps"):
            if getattr(self, name) > max_steps:
                raise ValueError(
                    f"{prefix}.{name}={getattr(self, name)} is longer than training (max_steps={max_steps})"
                )


def config_from_dict(cls, values: Mapping[str, Any] | None, prefix: str):
    """Build a frozen config dataclass from a mapping (e.g. an ml_collections ConfigDict), naming unknown keys."""
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{prefix}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    for f in dataclasses.fields(cls):
        if f.name in values and isinstance(values[f.name], list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    peak, warmup, decay = cfg.peak_lr, cfg.warmup_steps, cfg.decay_steps
    if cfg.schedule == "constant":
        return optax.constant_schedule(peak)
    if cfg.schedule == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=peak / (warmup + 1),
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=max(decay, warmup + 1),
            end_value=cfg.decay_lr,
        )
    alpha = cfg.decay_lr / peak

    def hiors_cosine(step):
        s = jnp.asarray(step, jnp.float32)
        start = 1.0 / (warmup + 1)
        ramp = (start - 1.0) * (1.0 - s / max(warmup, 1)) + 1.0
        cosine = 0.5 * (1.0 + jnp.cos(math.pi * jnp.minimum(s, decay) / decay))
        decayed = alpha + (1.0 - alpha) * cosine
        return peak * jnp.where(s < warmup, ramp, decayed)

    return hiors_cosine


def make_optimizer(cfg: OptimizerConfig, trainable: Any) -> optax.GradientTransformation:
    """AdamW (clipped by the global norm of the *trainable* gradients) on leaves where `trainable` is True.

    `trainable` is a bool pytree shaped like the params (or a single bool). Frozen leaves get a zero update and
    no optimizer state (optax.partition keeps state only for the leaves of each partition).
    """
    schedule = make_schedule(cfg)
    parts = []
    if cfg.clip_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    parts.append(
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mu_dtype=jnp.float32)
    )
    train = optax.chain(*parts)
    if trainable is True:
        return train
    labels = jax.tree.map(lambda t: "train" if t else "freeze", trainable)
    return optax.partition({"train": train, "freeze": optax.set_to_zero()}, labels)


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
    """What a network's optimizer needs outside the state (static): its transform, schedule and mask."""

    tx: optax.GradientTransformation
    schedule: optax.Schedule
    trainable: Any


def make_network(cfg: OptimizerConfig, trainable: Any = True) -> Network:
    frozen_mask = trainable if trainable is True else jax.tree.map(bool, trainable)
    return Network(tx=make_optimizer(cfg, frozen_mask), schedule=make_schedule(cfg), trainable=frozen_mask)


@flax.struct.dataclass
class TrainState:
    """Everything an update reads and writes, as one pytree (what checkpoints save).

    step: number of completed updates; key: the run's base PRNG key (raw uint32[2]); per-step keys are
    `fold_in(key, step)`, so a restored state draws the same randomness as an uninterrupted run.
    params / opt_state: per network. ema_params: exponential moving average of the policy params, or None.
    extra: non-trained trees an update needs (target critic, reference policy), or {}.
    """

    step: jax.Array
    key: jax.Array
    params: dict
    opt_state: dict
    ema_params: Any = None
    extra: dict = flax.struct.field(default_factory=dict)


def init_state(networks: Mapping[str, Network], params: Mapping[str, Any], seed_key, *, ema=False, extra=None):
    missing = sorted(set(networks) - set(params))
    if missing:
        raise ValueError(f"no parameters for network(s) {missing}")
    opt_state = {name: net.tx.init(params[name]) for name, net in networks.items()}
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        key=jnp.asarray(seed_key, jnp.uint32),
        params=dict(params),
        opt_state=opt_state,
        ema_params=jax.tree.map(jnp.copy, params["actor"]) if ema else None,
        extra=dict(extra or {}),
    )


def step_key(state: TrainState) -> jax.Array:
    return jax.random.fold_in(state.key, state.step)


def apply_gradients(state: TrainState, network: Network, name: str, grads) -> tuple[TrainState, dict]:
    """One optimizer step of network `name` only. Returns the new state and {grad_norm, lr, update_norm}."""
    params, opt_state = state.params[name], state.opt_state[name]
    updates, new_opt_state = network.tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    count = optimizer_count(new_opt_state) - 1
    info = {
        "grad_norm": optax.tree.norm(masked(grads, network.trainable)),
        "update_norm": optax.tree.norm(updates),
        "lr": network.schedule(count),
    }
    state = state.replace(params={**state.params, name: new_params}, opt_state={**state.opt_state, name: new_opt_state})
    return state, info


def optimizer_count(opt_state) -> jax.Array:
    """The step counter of the (first) Adam moment estimator in an optax state: this network's update count."""
    leaves = [
        s.count
        for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
        if isinstance(s, optax.ScaleByAdamState)
    ]
    if not leaves:
        raise ValueError("optimizer state has no Adam counter")
    return leaves[0]


def masked(tree, mask):
    if mask is True:
        return tree
    return jax.tree.map(lambda x, m: x if m else jnp.zeros_like(x), tree, mask)


def update_ema(ema, params, decay: float):
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)


def finish_step(state: TrainState, ema_decay: float | None) -> TrainState:
    """Advance the step counter and the policy EMA (after all networks of this update have stepped)."""
    if state.ema_params is not None and ema_decay is not None:
        state = state.replace(ema_params=update_ema(state.ema_params, state.params["actor"], ema_decay))
    return state.replace(step=state.step + 1)


def tree_norm(tree) -> jax.Array:
    return optax.tree.norm(tree)


Loss = Callable[..., tuple[jax.Array, dict]]
