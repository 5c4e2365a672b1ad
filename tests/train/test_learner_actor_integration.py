"""Learner and actor processes on localhost; the learner is SIGKILLed mid-run and restarted.

The actor process runs DobotEnv with the simulated X-Trainer (MuJoCo + scripted human). Every transition the actor
sent is in the replay exactly once, and the restarted learner resumes from the last checkpoint.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from hiors_jax.data.lerobot import LeRobotDataset
from hiors_jax.data.replay import ReplayStore

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]

pytestmark = pytest.mark.integration


def spawn(script, workdir, ports, log_name):
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    log = open(workdir / log_name, "ab")  # noqa: SIM115 (closed by the test)
    proc = subprocess.Popen([sys.executable, str(HERE / script), str(workdir), *map(str, ports)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    return proc, log


def checkpoint_steps(workdir):
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []


def wait_for(predicate, timeout, what, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for p in procs:
            assert p.poll() is None, f"process exited with {p.returncode} while waiting for {what}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_learner_sigkill_and_restart_loses_and_duplicates_nothing(tmp_path, free_ports):
    logs = []
    learner, log = spawn("integration_learner.py", tmp_path, free_ports, "learner.log")
    logs.append(log)
    actor, log = spawn("integration_actor.py", tmp_path, free_ports, "actor.log")
    logs.append(log)
    try:
        wait_for(lambda: any(s >= 10 for s in checkpoint_steps(tmp_path)), 400, "the learner's checkpoints",
                 [learner, actor])  # fmt: skip
        learner.send_signal(signal.SIGKILL)
        learner.wait(30)
        before_restart = checkpoint_steps(tmp_path)
        time.sleep(2)  # the actor keeps collecting (and spilling) while no learner is there
        learner, log = spawn("integration_learner.py", tmp_path, free_ports, "learner2.log")
        logs.append(log)
        wait_for(lambda: max(checkpoint_steps(tmp_path)) >= before_restart[-1] + 10, 400,
                 "the restarted learner's checkpoints", [learner, actor])  # fmt: skip
        (tmp_path / "stop_actor").touch()
        actor.wait(300)
        assert actor.returncode == 0
        learner.send_signal(signal.SIGTERM)
        learner.wait(120)
        assert learner.returncode == 0
    finally:
        for p in (learner, actor):
            if p.poll() is None:
                p.kill()
        for f in logs:
            f.close()
    result = json.loads((tmp_path / "actor_result.json").read_text())
    second_run = (tmp_path / "learner2.log").read_text()
    assert f"resumed_from {before_restart[-1]}" in second_run, second_run[-2000:]
    assert result["unacknowledged"] == 0 and result["sent"] > 0
    assert len(result["versions"]) > 1, "the actor ran several published policy versions"

    # Opening the store rolls forward anything saved but not yet published (there should be nothing left).
    ReplayStore(tmp_path / "replay", window_frames=500, image_size=(56, 56), horizon=10, use_videos=False).close()
    ds = LeRobotDataset(tmp_path / "replay" / "online")
    try:
        cols = ds.get_batch(np.arange(len(ds)))
    finally:
        ds.close()
    episode_ids = np.asarray(cols["complementary_info.episode_id"]).reshape(-1)
    assert len(episode_ids) == result["sent"], "every transition sent is in the replay, none twice"
    ids, counts = np.unique(episode_ids, return_counts=True)
    assert {int(i): int(c) for i, c in zip(ids, counts, strict=True)} == {
        int(k): v for k, v in result["episodes"].items()
    }  # each episode once, whole
    assert "success" in result["labels"], "the scripted human finished episodes, so the learner had accepted data"
