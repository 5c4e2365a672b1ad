"""A learner SIGKILLed while committing an episode: earlier episodes stay readable and the next start recovers
or discards the partial one by itself (real subprocess, real SIGKILL, real LeRobot files).

Kills land at random moments of back-to-back commits, and exactly at each step of the LeRobot writer's
save/commit sequence (its HIORS_LEROBOT_CRASH_AT fault injection), in the online/ and the accepted/ commit.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hiors_jax.data.lerobot import LeRobotDataset
from hiors_jax.data.lerobot_commit import CRASH_ENV
from hiors_jax.data.replay import ReplayStore

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
CHILD = [sys.executable, "-m", "tests.data.replay_crash_child"]
LENGTH = 6  # transitions per episode (replay_crash_child)


def run_child(
    root, episodes: int, crash_at: str | None = None, kill_at_commit: int | None = None, delay=0.0, finalize_every=1
):
    """Run the child; SIGKILL it `delay` s after its `kill_at_commit`-th commit starts, or let the writer's
    fault injection kill it at `crash_at`. Returns (episode ids reported committed, returncode)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    proc = subprocess.Popen(
        [*CHILD, str(root), str(episodes), str(finalize_every)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    committed, seen = set(), 0
    try:
        for line in proc.stdout:
            kind, _, number = line.strip().partition(" ")
            if kind == "committed":
                committed.add(int(number))
            elif kind == "committing":
                seen += 1
                if seen == kill_at_commit:
                    time.sleep(delay)
                    proc.send_signal(signal.SIGKILL)
                    break
    finally:
        for line in proc.stdout.read().splitlines():  # a commit may have finished during the sleep
            kind, _, number = line.partition(" ")
            if kind == "committed":
                committed.add(int(number))
        proc.wait(timeout=60)
        proc.stdout.close()
    return committed, proc.returncode


def check_recovered(root, committed: set[int]) -> set[int]:
    """The next start recovers by itself: nothing partial left, every committed episode whole and readable,
    online/ and accepted/ in agreement (every episode here is a success). Returns the ids stored."""
    store = ReplayStore(root, fps=10, window_frames=200, image_size=(24, 32), horizon=10, use_videos=True)
    accepted_window = len(store.window("accepted"))
    store.close()
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"left behind {leftovers} (recovery log: {store.recovery_log})"
    stored = {}
    for name in ("online", "accepted"):
        ds = LeRobotDataset(root / name)
        batch = ds.get_batch(np.arange(len(ds)))  # every frame, videos decoded
        ids = batch["complementary_info.episode_id"].reshape(-1)
        stored[name] = set(ids.tolist())
        assert committed <= stored[name], f"{name}: lost {sorted(committed - stored[name])}"
        assert np.all(ds.meta.episodes.length == LENGTH), f"{name}: partial episode {ds.meta.episodes.length}"
        assert len(stored[name]) == len(ds.meta.episodes), f"{name}: an episode was stored twice"
        ds.close()
    assert stored["online"] == stored["accepted"]
    assert accepted_window == min(200, LENGTH * len(stored["accepted"]))
    return stored["online"]


@pytest.mark.integration
def test_sigkill_at_random_moments_while_committing(tmp_path):
    root = tmp_path / "replay"
    rng = np.random.default_rng(0)
    committed: set[int] = set()
    for round_ in range(3):
        # publishing every 2nd episode: kills land in saves, in publishes and between them
        delay = float(rng.uniform(0, 0.4))
        got, code = run_child(root, 50, kill_at_commit=2 if round_ == 0 else 1, delay=delay, finalize_every=2)
        assert code == -signal.SIGKILL
        committed |= got
        committed |= check_recovered(root, committed)  # a recovered partial commit counts from now on


# The writer's own tests kill it at every step; here: a saved-but-uncommitted, an assembled, a marked and a
# swapped commit of online/ (occurrence 1) and of accepted/ (occurrence 2), and a half-saved accepted/ episode.
CRASH_POINTS = ["save.journaled:1", "commit.assembled:1", "commit.marked:1", "save.data_written:2", "commit.swapped:2"]


@pytest.mark.integration
@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_sigkill_at_each_commit_step(tmp_path, crash_at):
    """Occurrence 1 is inside the online/ commit of the second episode, 2 inside its accepted/ commit."""
    root = tmp_path / "replay"
    first, code = run_child(root, 1)
    assert code == 0 and first == {0}
    got, code = run_child(root, 2, crash_at=crash_at)
    assert code == -signal.SIGKILL, f"the writer never reached {crash_at}"
    assert got == set()  # killed inside the first commit of this run
    stored = check_recovered(root, {0})
    assert stored in ({0}, {0, 1})
    # and the store goes on: the next episode commits next to what was recovered
    more, code = run_child(root, 1)
    assert code == 0 and more == {max(stored) + 1}
    check_recovered(root, stored | more)
