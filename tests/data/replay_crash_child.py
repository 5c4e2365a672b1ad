"""Child process for the SIGKILL test: commits episodes back to back, announcing each commit on stdout."""

from __future__ import annotations

import sys

import numpy as np

from hiors_jax.data.replay import ReplayStore
from tests.data.replay_helpers import make_episode


def main(root: str, episodes: int, finalize_every: int) -> None:
    store = ReplayStore(root, fps=10, window_frames=200, image_size=(24, 32), horizon=10, finalize_every=finalize_every)
    first = store._last_episode.get("actor-0", -1) + 1
    print(f"started {first}", flush=True)
    rng = np.random.default_rng(first)
    for e in range(first, first + episodes):
        ep = make_episode(rng, 6, success=True, episode_id=e)
        for t in ep[:-1]:
            store.insert(t)
        print(f"committing {e}", flush=True)
        store.insert(ep[-1])  # the last transition commits the episode
        print(f"committed {e}", flush=True)
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
