"""What every update rule returns: an `Agent` bundling its networks, state constructor and pure update."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from hiors_jax.agents.train_state import Network, TrainState, step_key

ALGORITHMS = ("hiors", "sft", "sac")


@dataclasses.dataclass(frozen=True, eq=False)
class Agent:
    """algorithm: its name; networks: name -> optimizer/mask; init(params, seed_key) -> TrainState, where params
    maps network names to trees; update(state, batch, key) -> (state, metrics), pure and jit-able;
    policy_params(state) -> the tree the actor runs (EMA when kept); batch_multiple: how many model batches one
    update consumes (SAC's critic minibatches), so loaders hand it batch_size * batch_multiple samples;
    partial_updates: named updates of some networks only, same signature (SAC's "critic" warm-up step)."""

    algorithm: str
    networks: dict[str, Network]
    init: Callable[..., TrainState]
    update: Callable[[TrainState, Any, jax.Array], tuple[TrainState, dict]]
    policy_params: Callable[[TrainState], Any]
    batch_multiple: int = 1
    partial_updates: dict[str, Callable] = dataclasses.field(default_factory=dict)

    def train_step(self, state: TrainState, batch) -> tuple[TrainState, dict]:
        """update() with the step's key drawn from the state, so resumed runs repeat uninterrupted ones."""
        return self.update(state, batch, step_key(state))


def policy_of(state: TrainState):
    return state.ema_params if state.ema_params is not None else state.params["actor"]
