"""Learner checkpoints (orbax CheckpointManager) and policy export in openpi's layout.

A checkpoint step holds two items: ``state``, the whole `TrainState` (params and optimizer state of every
network, step, PRNG key, EMA, target/reference trees; the schedule position is each optimizer's step counter),
and ``meta``, JSON: transport marks, replay position and anything else the learner passes. A step directory
appears only once both are complete (orbax finalises it atomically), so a killed learner restarts from the last
whole checkpoint.

Saving: the learner thread copies the state to host memory (the only blocking part) and a background worker
writes it. With a transport server in `ack="persist"` mode the worker runs inside `server.persist(...)`: inserts
pause, the replay is made durable with the marks, the checkpoint is written with the same marks, and only then
are the actors told they may forget those transitions.
"""

from __future__ import annotations

import concurrent.futures
import logging
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hiors_jax.models import preprocessing, weights

log = logging.getLogger(__name__)


class PersistDeferred(Exception):
    """Raised by a replay_persist hook that cannot make everything received durable right now: the checkpoint
    is written without new transport marks (actors keep those transitions until a later persist)."""


class Checkpointer:
    """save_every: save when `step % save_every == 0` (and on `force`); keep: newest steps kept on disk."""

    def __init__(self, directory, *, save_every: int, keep: int = 3, background: bool = True):
        if save_every <= 0:
            raise ValueError(f"checkpoint.save_every={save_every} must be positive")
        if keep <= 0:
            raise ValueError(f"checkpoint.keep={keep} must be positive")
        self.directory = pathlib.Path(directory).expanduser().resolve()
        self.save_every = save_every
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )
        self._worker = concurrent.futures.ThreadPoolExecutor(1, "hiors-checkpoint") if background else None
        self._pending: concurrent.futures.Future | None = None

    # ---- saving -----------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return step > 0 and step % self.save_every == 0

    def save(
        self,
        step: int,
        state,
        meta: Mapping[str, Any] | None = None,
        *,
        persist: Callable[[Callable[[list], None]], Any] | None = None,
        replay_persist: Callable[[list], Mapping[str, Any] | None] | None = None,
    ) -> concurrent.futures.Future | None:
        """Start saving `state` at `step`. Returns a future (None when saving in the foreground).

        persist: the transport server's `persist` (called with a save function that receives the marks);
        replay_persist(marks) -> replay position: makes the replay durable, called first inside persist.
        A save still running from the previous call is waited for first (a slow disk slows the learner down
        rather than piling up host copies of the state).
        """
        self.wait()
        host_state = jax.device_get(state)
        meta = dict(meta or {}, step=int(step))

        def write(full: dict) -> None:
            self._manager.save(
                int(step),
                args=ocp.args.Composite(state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(full)),
                force=True,
            )
            self._manager.wait_until_finished()

        def write_with_marks(marks: list) -> None:
            full = dict(meta, transport_marks=marks)
            if replay_persist is not None:
                full["replay"] = replay_persist(marks)  # may raise PersistDeferred: nothing written yet
            write(full)

        def job() -> None:
            if persist is None:
                write(meta)
                return
            try:
                persist(write_with_marks)
            except PersistDeferred as why:
                log.info("checkpoint %d written without transport marks: %s", step, why)
                write(meta)

        if self._worker is None:
            job()
            return None
        self._pending = self._worker.submit(job)
        return self._pending

    def wait(self) -> None:
        """Block until the running save (if any) is on disk; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    # ---- restoring --------------------------------------------------------------------------------------
    def latest_step(self) -> int | None:
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return list(self._manager.all_steps())

    def restore(self, target, step: int | None = None) -> tuple[Any, dict]:
        """Restore (state, meta) into the structure of `target` (a TrainState of arrays or ShapeDtypeStructs;
        a `sharding` on a leaf places it there). step None: the latest."""
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(_abstract, target)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        return restored["state"], dict(restored["meta"])

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._worker is not None:
                self._worker.shutdown(wait=True)
            self._manager.close()


def _abstract(leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return leaf
    return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=getattr(leaf, "sharding", None))


def export_policy(
    directory,
    params,
    norm_stats: Mapping[str, preprocessing.NormStats],
    asset_id: str,
    *,
    dtype=None,
    overwrite: bool = True,
) -> pathlib.Path:
    """Write `params/` (openpi's orbax params item) and `assets/<asset_id>/norm_stats.json`, the layout
    `pi0.load_openpi_params` and openpi's policy server read. dtype: e.g. "bfloat16" to halve the size."""
    directory = pathlib.Path(directory).expanduser()
    host = jax.device_get(params)
    if dtype is not None:
        host = jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.dtype(dtype)), host)
    weights.save_params_tree(directory / "params", host, overwrite=overwrite)
    preprocessing.save_norm_stats(directory / "assets" / asset_id / "norm_stats.json", norm_stats)
    return directory
