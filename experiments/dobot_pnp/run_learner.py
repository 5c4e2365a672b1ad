"""The learner role: replay store + transport server (hiors, sac) or demo datasets (sft) -> sharded updates ->
params to actors, orbax checkpoints, tensorboard, and the exported policy at the end."""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax

from experiments.dobot_pnp import build
from experiments.dobot_pnp.settings import ConfigError, Settings
from hiors_jax.data.pipeline import BatchLoader
from hiors_jax.data.replay import ReplayStore, window_from_dataset
from hiors_jax.train import learner as learner_lib
from hiors_jax.train.checkpoints import Checkpointer
from hiors_jax.train.metrics import MetricsWriter
from hiors_jax.transport import TrainerServer

log = logging.getLogger("experiments.dobot_pnp.learner")


def demo_window(s: Settings, directory: pathlib.Path, config):
    """The demo source: one LeRobot dataset (per-step actions or stored chunks) as a sampling window."""
    if len(s.demos) != 1:
        raise ConfigError(f"--config.data.demos: give exactly one demo dataset root, got {len(s.demos)}")
    capacity = int(s.cfg.data.demo_frames) or None
    return window_from_dataset(
        s.demos[0],
        directory,
        horizon=config.action_horizon,
        image_size=tuple(s.cfg.replay.image_size),
        capacity=capacity,
        action_dims=list(range(build.ROBOT_DIM)),
    )


class EpisodeStats:
    """The actors' per-episode stats (their `send-stats` requests) into tensorboard at the learner's latest step."""

    def __init__(self):
        self.metrics: MetricsWriter | None = None
        self._lock = threading.Lock()

    def __call__(self, request_type: str, payload: Any) -> dict:
        metrics = self.metrics
        if request_type == "send-stats" and isinstance(payload, dict) and metrics is not None:
            with self._lock:
                metrics.log(metrics.last_step, payload)
        return {}


def _wait_for_sources(s: Settings, replay: ReplayStore | None, windows: dict, stop: threading.Event) -> bool:
    """Block until every online source with a ratio > 0 holds learner.min_accepted_frames; False if stopped."""
    needed = [name for name in s.pipeline.ratios if name != "demo"]
    minimum = int(s.cfg.learner.min_accepted_frames)
    announced = False
    while not stop.is_set():
        if replay is not None and all(
            name in replay.windows and len(replay.windows[name]) >= minimum for name in needed
        ):
            windows.update({name: replay.window(name) for name in needed})
            return True
        if not announced:
            log.warning("learner waiting for %d frames in %s from the actors", minimum, needed)
            announced = True
        time.sleep(0.2)
    return False


def run(s: Settings, stop: threading.Event) -> int:
    build.prepare_workdir(s)
    build.save_config(s)
    key = jax.random.key(s.cfg.seed)
    config, params = build.initial_params(s, key)
    tok_path = build.tokenizer_path(s)
    tok = build.load_tokenizer(tok_path, config)
    windows: dict[str, Any] = {}
    if "demo" in s.pipeline.ratios or s.cfg.model.norm_stats == "demos":
        windows["demo"] = demo_window(s, s.workdir / "window" / "demo", config)
    stats = build.norm_stats(s, windows)
    build.save_run_stats(s, stats)

    trainable = learner_lib.policy_trainable(s.learner, config, params)
    agent = learner_lib.make_agent(s.learner, config, s.agent_dict, trainable)
    state = agent.init({"actor": params}, jax.random.PRNGKey(s.cfg.seed))
    del params
    restore = True
    if s.cfg.checkpoint_path:
        source = pathlib.Path(s.cfg.checkpoint_path).expanduser().resolve()
        if source != (s.workdir / "checkpoints").resolve():
            checkpointer = Checkpointer(source, save_every=s.learner.checkpoint_every)
            if checkpointer.latest_step() is None:
                raise ConfigError(f"--config.checkpoint_path: no checkpoint in {source}")
            state, meta = checkpointer.restore(state)
            checkpointer.close()
            log.warning("starting from %s step %d (a new run: replay and actors start fresh)", source, meta["step"])
            restore = False

    server = replay = None
    episode_stats = EpisodeStats()
    if s.needs_actors:
        replay = ReplayStore(
            s.workdir / "replay",
            acceptance=s.acceptance,
            window_frames=int(s.cfg.replay.window_frames),
            image_size=tuple(s.cfg.replay.image_size),
            horizon=config.action_horizon,
            target_dims=list(range(build.ROBOT_DIM)),
            use_videos=bool(s.cfg.replay.use_videos),
            finalize_every=int(s.cfg.replay.finalize_every),
        )
        local = s.cfg.transport.host in ("127.0.0.1", "localhost", "::1")
        server = TrainerServer(
            s.transport,
            request_callback=episode_stats,
            auth_key=s.auth_key,
            bind_host="127.0.0.1" if local else "0.0.0.0",
            ack="persist",
        )
        server.register_data_store("actor_env", replay)
        log.warning("learner listening on ports %d / %d", s.transport.port_number, s.transport.broadcast_port)

    loaders: list[BatchLoader] = []

    def batches() -> Iterator:
        if s.needs_actors and not _wait_for_sources(s, replay, windows, stop):
            return
        # SAC draws critic_steps model batches per update
        pipeline = dataclasses.replace(s.pipeline, batch_size=s.learner.batch_size * agent.batch_multiple)
        loaders.append(BatchLoader(windows, pipeline, config, tok, stats))
        yield from loaders[0]

    hooks = learner_lib.replay_hooks(replay) if replay is not None else (None, None)
    learner = learner_lib.Learner(
        s.learner,
        agent,
        state,
        batches(),
        workdir=s.workdir,
        server=server,
        replay_persist=hooks[0],
        replay_stats=hooks[1],
        restore=restore,
    )
    episode_stats.metrics = learner.metrics
    if server is not None:
        server.start(threaded=True)  # after the Learner restored the checkpoint's transport marks
    if learner.resumed_from is not None:
        log.warning("resumed from %s step %d", s.workdir / "checkpoints", learner.resumed_from)
    if learner.resumed_from is not None and learner.resumed_from >= s.learner.max_steps:
        log.warning("checkpoint step %d already reached learner.max_steps", learner.resumed_from)
    final = learner.state
    try:
        final = learner.run(stop)
    except StopIteration:  # stopped while waiting for the first data (run() has closed the learner)
        log.warning("stopped before any data arrived: nothing was trained")
    finally:
        for loader in loaders:
            loader.close()
        if server is not None:
            server.stop()
        if replay is not None:
            replay.close()  # publishes the saved episodes into the LeRobot datasets
    policy_dir = build.export_policy(s, config, learner.agent.policy_params(final), stats, tok_path)
    print(f"learner: stopped at step {int(final.step)}; policy exported to {policy_dir}", flush=True)
    return 0
