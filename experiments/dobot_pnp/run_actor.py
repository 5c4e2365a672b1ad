"""The actor role (and collect): the robot env (the X-Trainer's robot PC, or the simulated one in this process),
the policy the learner publishes, whole labelled episodes to the learner (or, collecting, into a local dataset)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pathlib
import sys
import threading
import time

from experiments.dobot_pnp import build
from experiments.dobot_pnp.settings import Settings
from hiors_jax.train.actor import Actor

log = logging.getLogger("experiments.dobot_pnp.actor")
FLUSH_TIMEOUT_S = 60.0


def label_source(s: Settings):
    from robot.dobot import labels

    if s.labels == "robot":
        return labels.RobotLabels()
    if s.labels == "keyboard":
        return labels.KeyboardLabels()
    from hiors_jax.models.reward_classifier import load_label_fn

    return labels.ClassifierLabels(load_label_fn(s.cfg.actor.classifier_path), s.cfg.actor.classifier_threshold)


def with_prompt(env, prompt: str):
    """Every observation carries `prompt` instead of the robot's (what the policy sees and the datasets keep)."""
    import gymnasium as gym

    class PromptOverride(gym.ObservationWrapper):
        def observation(self, observation):
            return {**observation, "prompt": prompt}

    return PromptOverride(env)


@contextlib.contextmanager
def robot_env(s: Settings, video_dir: pathlib.Path | None):
    """DobotEnv for the robot PC; with sim.enabled the simulated X-Trainer connects to it from a thread."""
    from robot.dobot.env import DobotEnv

    env = base = DobotEnv(s.env, labels=label_source(s))
    if s.cfg.model.prompt:
        env = with_prompt(env, s.cfg.model.prompt)
    sim = None
    try:
        if s.cfg.sim.enabled:
            from robot.sim.serve import start_in_thread

            sim = start_in_thread(dataclasses.replace(s.sim, uri=f"ws://127.0.0.1:{base.port}"))
        else:
            log.warning("waiting for the robot PC at ws://%s:%d", s.env.host, base.port)
        if video_dir is not None:
            from robot.dobot.video import EpisodeVideoWrapper

            yield EpisodeVideoWrapper(env, video_dir)
        else:
            yield env
    finally:
        base.close()  # first: the sim's thread waits on the env's reply, and a closed env ends that wait
        if sim is not None:
            sim.stop()


class EpisodeCounter:
    """Episode ids must increase per actor across restarts: the next id is kept in a file next to the journal."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.next = int(path.read_text()) if path.is_file() else 0

    def advance(self, next_id: int) -> None:
        self.next = next_id
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(next_id))
        os.replace(tmp, self.path)


def _progress(total: int | None, position: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="episode", position=position, dynamic_ncols=True, desc="actor", file=sys.stderr)


def _episode_line(stats: dict, successes: int, done: int) -> str:
    takeover = f", {stats['interventions']} takeover(s)" if stats.get("interventions") else ""
    return (
        f"episode {stats['episode_id']}: {stats['label'] or 'no label'} after {stats['length']} queries"
        f"{takeover}, policy v{max(stats['policy_versions'], default=-1)}; {successes}/{done} successes"
    )


def run(s: Settings, stop: threading.Event, progress_position: int = 0) -> int:
    from hiors_jax.transport import ParamsSlot, QueuedDataStore, TrainerClient

    build.prepare_workdir(s)
    actor_id = s.cfg.actor.actor_id
    spill = s.workdir / "actor_spill" / actor_id
    spill.mkdir(parents=True, exist_ok=True)
    counter = EpisodeCounter(spill / "next_episode")
    queue = QueuedDataStore(50_000, spill_dir=spill)
    client = TrainerClient(
        "actor_env",
        s.cfg.transport.host,
        s.transport,
        data_stores={"actor_env": queue},
        wait_for_server=True,
        timeout_ms=int(s.cfg.transport.timeout_ms),
        auth_key=s.auth_key,
    )
    slot = ParamsSlot()
    client.recv_network_callback(slot.set, with_version=True)
    video_dir = s.workdir / "videos" / actor_id if s.cfg.actor.videos else None
    try:
        version = _wait_for_params(slot, s, stop)
        if version is None:
            return 0
        _, params = slot.get()
        config = build_actor_model(s, params)
        tok = build.load_tokenizer(build.tokenizer_path(s), config)
        policy = build.make_policy(config, tok, build.norm_stats(s), num_steps=int(s.cfg.model.num_sample_steps))
        with robot_env(s, video_dir) as env:
            actor = Actor(env, policy, slot, queue, client=client, actor_id=actor_id, seed=s.cfg.seed,
                          first_episode=counter.next)  # fmt: skip
            _loop(actor, s, stop, counter, progress_position)
        _flush(client, queue)
    finally:
        client.stop()
        queue.close()
    return 0


def build_actor_model(s: Settings, params):
    """The model config of the params the learner sent (sizes from their shapes, the rest from the config)."""
    from hiors_jax.models import pi0

    return pi0.infer_config(params, dtype=s.cfg.model.dtype, **build.model_overrides(s))


def _wait_for_params(slot, s: Settings, stop: threading.Event) -> int | None:
    deadline = time.monotonic() + float(s.cfg.actor.param_wait_s)
    log.warning("actor waiting for the learner's params at %s:%d", s.cfg.transport.host, s.transport.port_number)
    while not stop.is_set():
        try:
            return slot.wait_for(lambda v: v >= 0, timeout=0.5)[0]
        except TimeoutError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no params from the learner at {s.cfg.transport.host}:{s.transport.broadcast_port} within "
                f"{s.cfg.actor.param_wait_s:g} s (--config.actor.param_wait_s); is the learner running?"
            )
    return None


def _loop(actor: Actor, s: Settings, stop: threading.Event, counter: EpisodeCounter, position: int) -> None:
    total = int(s.cfg.actor.episodes) or None
    successes = done = 0
    with _progress(total, position) as bar:
        while not stop.is_set() and (total is None or done < total):
            stats = actor.run_episode()
            counter.advance(actor.episode_id)
            done += 1
            successes += stats["label"] == "success"
            bar.update(1)
            bar.set_postfix(success=f"{successes}/{done}", takeovers=stats["interventions"], refresh=False)
            log.info(_episode_line(stats, successes, done))


def _flush(client, queue) -> None:
    """Push what is queued; the learner acknowledges once it has persisted it (its next checkpoint)."""
    deadline = time.monotonic() + FLUSH_TIMEOUT_S
    while len(queue) and time.monotonic() < deadline:
        if not client.update():
            break  # the learner is gone (it stopped first): the journal keeps everything for the next run
        time.sleep(0.5)
    if len(queue):
        log.warning("%d transitions not yet acknowledged stay in the actor's journal for the next run", len(queue))


def collect(s: Settings, stop: threading.Event) -> int:
    """Teleoperated collection: the human drives whole episodes; they go into a local LeRobot dataset pair
    (online/ + accepted/ with relabelled targets: accepted/ is the demo dataset sft and sac read)."""
    from hiors_jax.data.replay import ReplayStore
    from hiors_jax.transport import ParamsSlot

    build.prepare_workdir(s)
    build.save_config(s)
    root = pathlib.Path(s.cfg.collect.output).expanduser() if s.cfg.collect.output else s.workdir / "demos"
    store = ReplayStore(
        root,
        acceptance=s.acceptance,
        window_frames=1,
        image_size=tuple(s.cfg.replay.image_size),
        horizon=int(s.cfg.model.action_horizon),
        target_dims=list(range(build.ROBOT_DIM)),
        use_videos=bool(s.cfg.replay.use_videos),
    )
    counter = EpisodeCounter(root / "next_episode")
    video_dir = s.workdir / "videos" / "collect" if s.cfg.actor.videos else None
    total, done, kept = int(s.cfg.collect.episodes), 0, 0
    try:
        with robot_env(s, video_dir) as env, _progress(total, 0) as bar:
            actor = Actor(env, build.hold_pose, ParamsSlot(None, 0), store, actor_id=s.cfg.actor.actor_id,
                          seed=s.cfg.seed, first_episode=counter.next)  # fmt: skip
            while not stop.is_set() and done < total:
                stats = actor.run_episode()
                counter.advance(actor.episode_id)
                done += 1
                kept += stats["label"] == "success"
                bar.update(1)
                bar.set_postfix(success=f"{kept}/{done}", refresh=False)
    finally:
        store.close()
    print(
        f"collect: {done} episodes ({kept} successes) in {root}/online; the accepted ones, with relabelled "
        f"targets, in {root}/accepted (train on them with --config.data.demos={root}/accepted)",
        flush=True,
    )
    return 0
