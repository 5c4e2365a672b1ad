"""Device mesh and shardings: one jitted update for 1 CPU, N simulated CPU devices, N GPUs or several hosts.

The mesh has two axes: "data" (pure data parallelism) and "fsdp" (data parallelism with parameters and
optimizer state sharded across the axis, gathered by XLA where a layer needs them). The batch is split over
both axes (every device sees different samples); parameters of the PI0 network follow the model's logical-axis
rules when the model provides them (`param_rules`), and otherwise every large leaf is sharded along its largest
axis divisible by the fsdp size (small leaves are replicated). Optimizer moments take the sharding of the
parameter they track. This is JAX's current form of the original's "pmapped across GPUs": `jax.jit` with
explicit in/out shardings over a `Mesh`; XLA inserts the collectives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hiors_jax.agents.base import Agent
from hiors_jax.agents.train_state import TrainState, step_key

log = logging.getLogger(__name__)

DATA, FSDP = "data", "fsdp"
BATCH_AXES = (DATA, FSDP)
MIN_SHARD_SIZE = 4096  # elements; smaller leaves are replicated (gathering them would cost more than it saves)


def initialize_distributed(coordinator: str | None = None, num_processes: int = 1, process_id: int = 0) -> None:
    """Join a multi-host run (no-op for one process). Call before anything touches a device."""
    if num_processes > 1:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (default: all, on every host). data=-1: whatever fsdp leaves."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the {len(devices)} devices")
    if data == -1:
        data = len(devices) // fsdp
    if data < 1 or data * fsdp != len(devices):
        raise ValueError(f"mesh.data={data} x mesh.fsdp={fsdp} must equal the number of devices ({len(devices)})")
    return Mesh(np.asarray(devices).reshape(data, fsdp), (DATA, FSDP))


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
    shards = mesh.shape[DATA] * mesh.shape[FSDP]
    if batch_size <= 0 or batch_size % shards:
        raise ValueError(
            f"{field}={batch_size} must be a positive multiple of the batch shards "
            f"(mesh data={mesh.shape[DATA]} x fsdp={mesh.shape[FSDP]} = {shards})"
        )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data x fsdp; applies to every leaf of a batch pytree."""
    return NamedSharding(mesh, P(BATCH_AXES))


def fsdp_sharding(shapes, mesh: Mesh, min_size: int = MIN_SHARD_SIZE):
    """Shard each leaf of at least `min_size` elements along its largest axis divisible by the fsdp size."""
    n = mesh.shape[FSDP]

    def one(leaf):
        shape = tuple(np.shape(leaf))
        if n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
            return replicated(mesh)
        for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
            if shape[axis] % n == 0:
                spec = [None] * len(shape)
                spec[axis] = FSDP
                return NamedSharding(mesh, P(*spec))
        return replicated(mesh)

    return jax.tree.map(one, shapes)


ParamRules = Callable[[Any, Mesh], Any]  # (param shapes, mesh) -> NamedSharding tree


def state_shardings(agent: Agent, state_shapes: TrainState, mesh: Mesh, param_rules: Mapping[str, ParamRules] = None):
    """NamedSharding for every leaf of a TrainState (shapes from `jax.eval_shape`).

    param_rules: network name -> rule giving that network's param shardings (e.g. the model's logical-axis
    rules for "actor"); networks without one use `fsdp_sharding`. Optimizer moments follow their params;
    counters, step and key are replicated; EMA / reference policy follow the actor, the target critic the critic.
    """
    param_rules = dict(param_rules or {})
    rep = replicated(mesh)

    def params_sharding(name, shapes):
        rule = param_rules.get(name)
        return rule(shapes, mesh) if rule is not None else fsdp_sharding(shapes, mesh)

    params = {name: params_sharding(name, shapes) for name, shapes in state_shapes.params.items()}
    opt_state = {}
    for name, network in agent.networks.items():
        # Frozen leaves have no optimizer state (MaskedNode placeholders), which stay as they are.
        opt_state[name] = optax.tree_map_params(
            network.tx,
            lambda leaf, sharding: leaf if isinstance(leaf, optax.MaskedNode) else sharding,
            state_shapes.opt_state[name],
            params[name],
            transform_non_params=lambda _: rep,
            is_leaf=lambda x: isinstance(x, NamedSharding | optax.MaskedNode),
        )
    follows = {"reference_actor": "actor", "target_critic": "critic"}
    extra = {
        k: (params[follows[k]] if follows.get(k) in params else fsdp_sharding(v, mesh))
        for k, v in state_shapes.extra.items()
    }
    return TrainState(
        step=rep,
        key=rep,
        params=params,
        opt_state=opt_state,
        ema_params=None if state_shapes.ema_params is None else params["actor"],
        extra=extra,
    )


def global_batch(local_batch, sharding: NamedSharding):
    """A host's share of the batch -> one global jax.Array per leaf (on one host: the whole batch, split).
    Leaves already on devices (a loader that placed them) are only resharded if needed."""

    def one(x):
        if isinstance(x, jax.Array):
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(one, local_batch)


class ShardedUpdate:
    """An agent's update jitted over a mesh: `step(state, batch) -> (state, metrics)` with the state donated.

    `place(state)` puts a host/un-sharded state on the mesh (also what restored checkpoints need as a target);
    `partial(name)` gives the same for one of the agent's partial updates (SAC's critic-only step).
    """

    def __init__(self, agent: Agent, mesh: Mesh, state_shapes: TrainState, param_rules=None, donate: bool = True):
        self.agent, self.mesh = agent, mesh
        self.state_sharding = state_shardings(agent, state_shapes, mesh, param_rules)
        self.batch_sharding = batch_sharding(mesh)
        self._jitted: dict[str, Callable] = {}
        self._donate = (0,) if donate else ()
        self.step = self._jit("update", agent.update)

    def _jit(self, name: str, update) -> Callable:
        def step(state, batch):
            return update(state, batch, step_key(state))

        fn = jax.jit(
            step,
            in_shardings=(self.state_sharding, self.batch_sharding),
            out_shardings=(self.state_sharding, replicated(self.mesh)),
            donate_argnums=self._donate,
        )
        self._jitted[name] = fn
        return fn

    def partial(self, name: str) -> Callable:
        if name not in self._jitted:
            self._jit(name, self.agent.partial_updates[name])
        return self._jitted[name]

    def place(self, state: TrainState) -> TrainState:
        """A copy of `state` on the mesh: the update donates its input, so the caller's arrays stay valid."""
        return jax.device_put(state, self.state_sharding, may_alias=False)

    def abstract_state(self, state_shapes: TrainState) -> TrainState:
        """ShapeDtypeStructs carrying the shardings: a checkpoint restore target that restores in place."""
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes, self.state_sharding
        )

    def shard_batch(self, batch):
        return global_batch(batch, self.batch_sharding)
