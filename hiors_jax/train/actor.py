"""The actor loop: run the latest policy in an env, ship whole labelled episodes to the learner.

It knows nothing of the robot or the model: it gets a gymnasium env whose observations follow the robot
protocol (images, state, prompt, state_chunk[_mask|_teleop|_timestamp], as `robot.dobot.DobotEnv` and the
simulated X-Trainer give them), a policy function `policy(params, obs, key) -> action chunk`, a `ParamsSlot`
the transport fills with published params, and a `QueuedDataStore` (+ `TrainerClient`) to send through.

- Params are read from the slot once per query, so a new version never lands inside one; every transition
  records the version that produced its action (`policy_version`).
- An episode is queued only when it has ended (terminated with a label, or truncated), all its transitions
  at once, then uploaded. With a `spill_dir` on the queue a learner restart loses nothing: transitions stay in
  the actor's journal until the learner has persisted them, and `client.update()` retries.
- A robot disconnect mid-episode ends the episode truncated (the env reports it) and the next reset waits for
  the robot; the loop carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)

Policy = Callable[[Any, Mapping[str, Any], jax.Array], np.ndarray]


def replay_transition(obs, action, reward, terminated, truncated, next_obs, info, *, episode_id, actor_id, version):
    """One policy step in the replay schema (`hiors_jax.data.replay`): observation o_t, the chunk sent, and
    the robot states recorded while it ran (they arrive with the next observation)."""
    label = info.get("label") if (terminated or truncated) else None
    return {
        "images": {k: np.asarray(v, np.uint8) for k, v in obs["images"].items()},
        "state": np.asarray(obs["state"], np.float32),
        "prompt": str(obs["prompt"]),
        "action": np.asarray(action, np.float32),
        "reward": float(reward),
        "done": bool(terminated),
        "truncated": bool(truncated) and not terminated,
        "state_chunk": np.asarray(next_obs["state_chunk"], np.float32),
        "state_chunk_mask": np.asarray(next_obs["state_chunk_mask"], bool),
        "state_chunk_teleop": np.asarray(next_obs["state_chunk_teleop"], bool),
        "state_chunk_timestamp": np.asarray(next_obs["state_chunk_timestamp"], np.float64),
        "episode_id": int(episode_id),
        "actor_id": str(actor_id),
        "policy_version": int(version),
        "label": label if label in ("success", "failure") else None,
    }


class Actor:
    """store_name: the learner's data store for transitions. first_episode: continue numbering after a restart
    (episode ids must increase per actor; pass e.g. the count kept in the spill dir or a timestamp)."""

    def __init__(
        self,
        env,
        policy: Policy,
        slot,
        queue,
        *,
        client=None,
        actor_id: str,
        seed: int = 0,
        first_episode: int = 0,
        to_transition=replay_transition,
        stats_request: str | None = "send-stats",
    ):
        self.env, self.policy, self.slot, self.queue, self.client = env, policy, slot, queue, client
        self.actor_id, self.to_transition, self.stats_request = actor_id, to_transition, stats_request
        self._key = jax.random.PRNGKey(seed)
        self.episode_id = first_episode
        self.sent_transitions = 0
        self.episodes: list[dict] = []

    def wait_for_params(self, timeout: float) -> int:
        version, _ = self.slot.wait_for(lambda v: v >= 0, timeout=timeout)
        if version < 0:
            raise TimeoutError(f"no policy params arrived from the learner within {timeout:g} s")
        return version

    def run_episode(self) -> dict:
        obs, info = self.env.reset()
        episode, versions = [], set()
        t0 = time.monotonic()
        while True:
            version, params = self.slot.get()  # once per query: a swap never lands inside one
            self._key, key = jax.random.split(self._key)
            action = np.asarray(self.policy(params, obs, key))
            next_obs, reward, terminated, truncated, info = self.env.step(action)
            episode.append(
                self.to_transition(
                    obs, action, reward, terminated, truncated, next_obs, info,
                    episode_id=self.episode_id, actor_id=self.actor_id, version=version,
                )
            )  # fmt: skip
            versions.add(version)
            obs = next_obs
            if terminated or truncated:
                break
        for transition in episode:  # the whole episode at once, after its label is known
            self.queue.insert(transition)
        self.sent_transitions += len(episode)
        stats = {
            "episode_id": self.episode_id,
            "length": len(episode),
            "label": episode[-1]["label"],
            "succeed": float(episode[-1]["label"] == "success"),
            "truncated": bool(episode[-1]["truncated"]),
            "robot_disconnected": bool(info.get("robot_disconnected", False)),
            "interventions": int(info.get("interventions", 0)),
            "policy_versions": sorted(versions),
            "seconds": time.monotonic() - t0,
        }
        self.episodes.append(stats)
        self.episode_id += 1
        if self.client is not None:
            self.client.update()  # False while the learner is away: the queue keeps the items and retries
            if self.stats_request:
                scalars = {k: v for k, v in stats.items() if isinstance(v, int | float | bool)}
                try:
                    self.client.request(self.stats_request, {"environment": {"episode": scalars}})
                except Exception:  # stats are best-effort; transitions are what must not be lost
                    log.warning("could not send episode stats", exc_info=True)
        return stats

    def run(self, episodes: int | None = None, stop: threading.Event | None = None) -> list[dict]:
        done = 0
        while (episodes is None or done < episodes) and not (stop is not None and stop.is_set()):
            self.run_episode()
            done += 1
        return self.episodes
