"""The learner loop: batches in, jitted sharded updates, params out to actors, checkpoints, metrics.

It knows nothing of robots or PI0 internals: it gets an `Agent` (update rule), an initial `TrainState`, an
iterator of (batch, batch-metrics) pairs (the replay pipeline's prefetching `BatchLoader`), and optionally a
transport `TrainerServer` (to publish params and persist the transport marks) and a replay-stats function.

Never blocks on disk or network in steady state: batches are prefetched by the loader, params are cast to
bf16 on the device and handed to a publisher thread, checkpoints are written by a background worker (the
learner thread only copies the state to host memory when a checkpoint is due). With `ack="persist"` the
checkpoint worker runs inside `server.persist`, so actors forget transitions only once the replay holding them
and the checkpoint naming their marks are on disk.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from hiors_jax.agents import hiors, sac, sft
from hiors_jax.agents.base import ALGORITHMS, Agent
from hiors_jax.agents.train_state import TrainState, config_from_dict
from hiors_jax.models import sharding, trainable, weights
from hiors_jax.models.config import Pi0Config
from hiors_jax.train import mesh as mesh_lib
from hiors_jax.train.checkpoints import Checkpointer, PersistDeferred
from hiors_jax.train.metrics import MetricsWriter, StepTimer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """algorithm: hiors | sft | sac. batch_size: samples per model batch (global, over all devices).
    trainable: the model's named filter (models.trainable: all, lora, openpi_lora, action_expert, no_vision);
    freeze: regexes over parameter paths ("PaliGemma/img/.*") also kept fixed; each must match a parameter.
    actor_training_starts: SAC steps that train only the critic first. publish_every / checkpoint_every /
    log_every: in learner steps. mesh_data / mesh_fsdp: device mesh (-1 data: all devices left)."""

    algorithm: str = "hiors"
    max_steps: int = 100_000
    batch_size: int = 56
    trainable: str = "all"
    freeze: tuple[str, ...] = ()
    actor_training_starts: int = 0
    publish_every: int = 50
    publish_dtype: str = "bfloat16"
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    mesh_data: int = -1
    mesh_fsdp: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"learner.algorithm={self.algorithm!r} is not one of {ALGORITHMS}")
        for name in ("max_steps", "batch_size", "publish_every", "checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"learner.{name}={getattr(self, name)} must be positive")
        if not 0 <= self.actor_training_starts <= self.max_steps:
            raise ValueError(
                f"learner.actor_training_starts={self.actor_training_starts} must be in [0, max_steps={self.max_steps}]"
            )
        if self.publish_dtype not in ("bfloat16", "float32", "float16"):
            raise ValueError(f"learner.publish_dtype={self.publish_dtype!r} must be bfloat16, float16 or float32")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> LearnerConfig:
        return config_from_dict(cls, values, "learner")


def make_agent(cfg: LearnerConfig, model: Pi0Config, agent_cfg: Mapping[str, Any] | None, trainable: Any) -> Agent:
    """The update rule named by `cfg.algorithm`, its config checked against the run (schedule vs max_steps)."""
    if cfg.algorithm == "sac":
        agent_config = sac.SacConfig.from_dict(agent_cfg, "agent")
        agent_config.actor_optimizer.check_fits(cfg.max_steps, "agent.actor_optimizer")
        agent_config.critic_optimizer.check_fits(cfg.max_steps * agent_config.critic_steps, "agent.critic_optimizer")
        return sac.make_agent(model, agent_config, trainable)
    flow_config = hiors.FlowConfig.from_dict(agent_cfg, "agent")
    flow_config.optimizer.check_fits(cfg.max_steps, "agent.optimizer")
    make = hiors.make_agent if cfg.algorithm == "hiors" else sft.make_agent
    return make(model, flow_config, trainable)


def policy_trainable(cfg: LearnerConfig, model: Pi0Config, params):
    """The actor's trainable mask: the model's named filter (`learner.trainable`) minus `learner.freeze`."""
    try:
        named = trainable.trainable_mask(model, params, cfg.trainable)
    except ValueError as err:
        raise ValueError(f"learner.trainable={cfg.trainable!r}: {err}") from None
    frozen = trainable_mask(params, cfg.freeze)
    mask = named if frozen is True else jax.tree.map(lambda a, b: bool(a and b), named, frozen)
    if not any(jax.tree.leaves(mask)):
        raise ValueError(f"learner.trainable={cfg.trainable!r} with learner.freeze={list(cfg.freeze)} trains nothing")
    return mask


def model_param_rules(min_shard_bytes: int | None = None) -> dict:
    """Mesh rules for the "actor" network: the PI0 model's logical-axis rules (models.sharding)."""
    kwargs = {} if min_shard_bytes is None else {"min_shard_bytes": min_shard_bytes}
    return {"actor": lambda shapes, mesh: sharding.shardings_for(shapes, mesh, **kwargs)}


def trainable_mask(params, freeze: tuple[str, ...], field: str = "learner.freeze"):
    """Bool tree: False where a parameter path fully matches one of the `freeze` regexes (True = trains)."""
    if not freeze:
        return True
    paths = list(weights.flatten_params(params))
    patterns = []
    for pattern in freeze:
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{field}: {pattern!r} is not a valid regex: {err}") from None
        if not any(compiled.fullmatch(p) for p in paths):
            raise ValueError(f"{field}: {pattern!r} names no parameter (paths look like {paths[0]!r})")
        patterns.append(compiled)
    frozen = {p: any(c.fullmatch(p) for c in patterns) for p in paths}
    if all(frozen.values()):
        raise ValueError(f"{field}={list(freeze)} freezes every parameter: nothing would train")
    return weights.unflatten_params({p: not f for p, f in frozen.items()})


class Publisher:
    """Sends params to actors from a thread; a newer version replaces one not yet sent (latest wins)."""

    def __init__(self, server, dtype: str):
        self._server, self._dtype = server, dtype
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="hiors-publisher", daemon=True)
        self.sent: list[int] = []
        self.errors = 0
        self._thread.start()

    def submit(self, version: int, params) -> None:
        # A device-side cast gives buffers this thread owns (the training state's are donated to the next step).
        cast = jax.tree.map(lambda x: x.astype(jnp.dtype(self._dtype)), params)
        try:
            self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put((version, cast))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            version, params = item
            try:
                self._server.publish_network(jax.device_get(params), version=version)
                self.sent.append(version)
            except Exception:  # a failed broadcast must not end training; the next one supersedes it
                self.errors += 1
                log.exception("publishing params version %d failed", version)

    def close(self) -> None:
        try:
            self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put(None)
        self._thread.join(timeout=30)


class Learner:
    """Runs `agent` from `state` (or the latest checkpoint under workdir/checkpoints) to `cfg.max_steps`.

    batches: iterator of (Batch, metrics dict) holding batch_size * agent.batch_multiple samples; it is first
    advanced in `run()`, after the initial params were published (so it may wait for the actors' first data).
    server: a TrainerServer (publish + persist marks); replay_persist(marks) -> replay position (JSON) and
    replay_stats() -> dict: optional hooks into the replay store. param_rules: mesh rules per network.
    """

    def __init__(
        self,
        cfg: LearnerConfig,
        agent: Agent,
        state: TrainState,
        batches: Iterator,
        *,
        workdir,
        mesh=None,
        server=None,
        replay_persist: Callable[[list], Any] | None = None,
        replay_stats: Callable[[], Mapping[str, Any]] | None = None,
        param_rules=None,
        metrics: MetricsWriter | None = None,
        restore: bool = True,
    ):
        self.cfg, self.agent, self.batches = cfg, agent, batches
        self.mesh = mesh or mesh_lib.make_mesh(cfg.mesh_data, cfg.mesh_fsdp)
        mesh_lib.check_batch_size(cfg.batch_size, self.mesh, "learner.batch_size")
        self.server, self.replay_persist, self.replay_stats = server, replay_persist, replay_stats
        shapes = jax.eval_shape(lambda: state)
        rules = model_param_rules() if param_rules is None else param_rules
        self.sharded = mesh_lib.ShardedUpdate(agent, self.mesh, shapes, rules)
        self.checkpointer = Checkpointer(
            f"{workdir}/checkpoints", save_every=cfg.checkpoint_every, keep=cfg.keep_checkpoints
        )
        self.resumed_from = None
        if restore and self.checkpointer.latest_step() is not None:
            state, meta = self.checkpointer.restore(self.sharded.abstract_state(shapes))
            self.resumed_from = int(meta["step"])
            if server is not None and meta.get("transport_marks") is not None:
                server.restore_marks(meta["transport_marks"])
            log.info("resumed from checkpoint step %d", self.resumed_from)
        else:
            state = self.sharded.place(state)
        self.state = state
        self.metrics = metrics or MetricsWriter(
            f"{workdir}/tensorboard", progress_total=cfg.max_steps, initial_step=int(state.step)
        )
        self.publisher = Publisher(server, cfg.publish_dtype) if server is not None else None
        if self.publisher is not None:  # actors need a policy before they can collect the first data
            self.publisher.submit(int(state.step), agent.policy_params(state))
        self.timer = StepTimer()

    def _save(self, step: int) -> None:
        persist = self.server.persist if self.server is not None and self.server.ack == "persist" else None
        self.checkpointer.save(step, self.state, {"algorithm": self.cfg.algorithm}, persist=persist,
                               replay_persist=self.replay_persist)  # fmt: skip

    def run(self, stop: threading.Event | None = None) -> TrainState:
        """Train to max_steps, or until `stop` is set (then a final checkpoint is saved, marks persisted)."""
        cfg = self.cfg
        step = int(self.state.step)
        samples = cfg.batch_size * self.agent.batch_multiple
        saved = step
        try:
            while step < cfg.max_steps and not (stop is not None and stop.is_set()):
                t0 = time.perf_counter()
                batch, batch_metrics = next(self.batches)
                _check_batch(batch, samples)
                batch = self.sharded.shard_batch(batch)
                t1 = time.perf_counter()
                update = self.sharded.step
                if cfg.algorithm == "sac" and step < cfg.actor_training_starts:
                    update = self.sharded.partial("critic")
                self.state, info = update(self.state, batch)
                step += 1
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    info = jax.device_get(info)  # waits for the step: compute time is measured here
                    t2 = time.perf_counter()
                    self.timer.add(t1 - t0, t2 - t1, samples)
                    self._log(step, info, batch_metrics)
                else:
                    self.timer.add(t1 - t0, time.perf_counter() - t1, samples)
                if self.publisher is not None and step % cfg.publish_every == 0:
                    self.publisher.submit(step, self.agent.policy_params(self.state))
                if self.checkpointer.due(step) or step == cfg.max_steps:
                    self._save(step)
                    saved = step
            if step < cfg.max_steps and step != saved:  # stopped early: keep what was trained
                self._save(step)
            self.checkpointer.wait()
            return self.state
        finally:
            self.close()

    def _log(self, step: int, info: Mapping[str, Any], batch_metrics: Mapping[str, Any] | None) -> None:
        rates = self.timer.rates()
        self.metrics.log(step, info, "training")
        self.metrics.log(step, rates, "timer")
        if batch_metrics:
            self.metrics.log(step, batch_metrics, "batch")
        if self.replay_stats is not None:
            self.metrics.log(step, self.replay_stats())
        if self.server is not None:
            self.metrics.log(step, {"live_actors": len(self.server.live_actors()), **self.server.stats}, "transport")
        loss = info.get("loss", info.get("critic_loss"))
        self.metrics.progress(step, {"loss": float(loss)} if loss is not None else None)

    def close(self) -> None:
        try:
            self.checkpointer.close()
        finally:
            if self.publisher is not None:
                self.publisher.close()
            self.metrics.close()


def _check_batch(batch, samples: int) -> None:
    got = jax.tree.leaves(batch)[0].shape[0]
    if got != samples:
        raise ValueError(
            f"the batch source gave {got} samples; this learner needs learner.batch_size x the agent's batches per "
            f"update = {samples} (set pipeline.batch_size to match)"
        )


def replay_hooks(store) -> tuple[Callable[[list], dict], Callable[[], dict]]:
    """(replay_persist, replay_stats) for a `data.replay.ReplayStore`.

    The store saves each episode when its last transition arrives and spills open episodes to disk; should any
    accepted transition still be only in memory (spill_open=False), marks are not persisted (the checkpoint is
    written without new marks and the next one tries again): an acknowledged transition is always on disk.
    """

    def persist(marks: list) -> dict:
        pending = store.unpersisted_transitions
        if pending:
            raise PersistDeferred(f"{pending} transitions of open episodes are not on disk yet")
        return {"online_frames": int(store.online_frames), **store.counters.as_dict()}

    return persist, store.stats
