"""`python -m experiments.dobot_pnp` end to end, as a user runs it: real processes, sockets, MuJoCo, orbax and
LeRobot files. One chain, each step using what the previous one wrote: collect demos -> SFT on them -> Hi-ORS
from the SFT policy (learner + actor + simulated robot, then resumed) -> SAC on demos + online data -> the start
scripts on "two machines" -> the trained policy served to openpi_client."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from contextlib import closing

import numpy as np
import pytest
from net_helpers import free_ports

from experiments.dobot_pnp import build
from hiors_jax.data.lerobot import LeRobotDataset

pytestmark = pytest.mark.integration
ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC = "configs/dobot_pnp.py"
# Small and fast everywhere: cameras at 32x42 into 32x32 model windows, short checkpoints so resumes are cheap.
SMALL = [
    "--config.env.image_size=(32, 42)",
    "--config.replay.image_size=(32, 32)",
    "--config.learner.log_every=5",
    "--config.learner.checkpoint_every=10",
    "--config.learner.publish_every=5",
    "--config.learner.min_accepted_frames=5",
]


def command(variant: str, out: pathlib.Path, *overrides: str, timeout: float = 400) -> subprocess.CompletedProcess:
    port, bport = free_ports(2)
    argv = [sys.executable, "-m", "experiments.dobot_pnp", f"--config={SPEC}:{variant}",
            f"--config.output_dir={out}", f"--config.transport.port={port}",
            f"--config.transport.broadcast_port={bport}", *SMALL, *overrides]  # fmt: skip
    env = dict(os.environ, MUJOCO_GL="egl", PYTHONPATH=str(ROOT))
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{variant} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def scalars(logdir: pathlib.Path, tag: str) -> list[tuple[int, float]]:
    from experiments.plot_run import read_scalars

    series = read_scalars(logdir).get(tag)
    return [] if series is None else list(zip(series.steps.tolist(), series.values.tolist(), strict=True))


def checkpoint_steps(run: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def demos(out) -> pathlib.Path:
    command("collect_sim", out, "--config.collect.episodes=3")
    root = out / "dobot_pnp_collect_sim" / "demos"
    with closing(LeRobotDataset(root / "accepted")) as accepted:
        assert accepted.meta.total_episodes == 3  # the scripted human drives from the start: every one succeeds
        assert accepted.features["action"]["shape"] == [50, 14]  # relabelled targets: 50 recorded states
    return root / "accepted"


@pytest.fixture(scope="module")
def sft_policy(out, demos) -> pathlib.Path:
    proc = command("sft_sim", out, f"--config.data.demos={demos}", "--config.learner.max_steps=20",
                   "--config.agent.optimizer.decay_steps=20")  # fmt: skip
    run = out / "dobot_pnp_sft_sim"
    assert "stopped at step 20" in proc.stdout
    assert checkpoint_steps(run)[-1] == 20
    losses = scalars(run / "tensorboard", "training/loss")
    assert len(losses) >= 3 and all(np.isfinite(v) for _, v in losses)
    assert (run / "policy" / "params").is_dir() and (run / "policy" / "tokenizer.model").is_file()
    return run / "policy"


def test_hiors_sim_from_the_sft_policy_then_resumed(out, sft_policy):
    first = command("sim", out, f"--config.model.init=openpi:{sft_policy}", "--config.learner.max_steps=20",
                    "--config.agent.optimizer.decay_steps=20", "--config.max_seconds=300",
                    "--config.actor.videos=True")  # fmt: skip
    run = out / "dobot_pnp_sim"
    assert "learner: stopped at step 20" in first.stdout
    for where in ("tensorboard", "checkpoints", "policy", "replay/online", "replay/accepted"):
        assert where in first.stdout  # the summary tells the user where things are
    assert checkpoint_steps(run)[-1] == 20
    with closing(LeRobotDataset(run / "replay" / "online")) as online:
        online_episodes, online_frames = online.meta.total_episodes, online.meta.total_frames
    with closing(LeRobotDataset(run / "replay" / "accepted")) as acc:
        assert online_episodes >= 1 and acc.meta.total_episodes >= 1
        assert acc.meta.total_frames <= online_frames
    assert list((run / "videos" / "actor-0").glob("episode_*.mp4"))
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["init"] == f"openpi:{sft_policy}"
    assert scalars(run / "tensorboard", "training/loss")
    assert scalars(run / "tensorboard", "environment/episode/length")  # the actor's stats, logged by the learner
    # The same command again resumes: the learner restores step 20 and trains on to the new max_steps.
    second = command("sim", out, f"--config.model.init=openpi:{sft_policy}", "--config.learner.max_steps=30",
                     "--config.agent.optimizer.decay_steps=20", "--config.max_seconds=300")  # fmt: skip
    assert "learner: stopped at step 30" in second.stdout
    assert "resumed from" in (run / "logs" / "learner.log").read_text()
    config, params, stats, tok, prompt = build.load_run_policy(run / "checkpoints" / "30")
    assert config.action_horizon == 50 and stats["actions"].dim == 14 and tok.is_file()


def test_sac_sim_on_demos_and_online_data(out, demos):
    command("sac_sim", out, f"--config.data.demos={demos}", "--config.learner.max_steps=10",
            "--config.learner.actor_training_starts=5", "--config.agent.actor_optimizer.decay_steps=10",
            "--config.agent.actor_optimizer.warmup_steps=2", "--config.max_seconds=400")  # fmt: skip
    run = out / "dobot_pnp_sac_sim"
    assert checkpoint_steps(run)[-1] == 10
    assert scalars(run / "tensorboard", "training/critic_loss")


def test_start_scripts_run_learner_and_actor_as_two_machines(out, tmp_path):
    port, bport = free_ports(2)
    common = [f"--config.output_dir={tmp_path}", f"--config.transport.port={port}", *SMALL,
              f"--config.transport.broadcast_port={bport}", "--config.transport.auth_key=secret-of-24-characters",
              "--config.learner.max_steps=10", "--config.agent.optimizer.decay_steps=10",
              "--config.agent.optimizer.warmup_steps=2",
              "--config.max_seconds=240"]  # fmt: skip
    env = dict(os.environ, MUJOCO_GL="egl", PYTHONPATH=str(ROOT), VARIANT="sim", PYTHON=sys.executable)
    learner = subprocess.Popen(["scripts/start_learner.sh", *common], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    actor = subprocess.Popen(["scripts/start_actor.sh", "--config.transport.host=127.0.0.1", *common], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        learner_out, _ = learner.communicate(timeout=400)
        assert learner.returncode == 0, learner_out[-4000:]
        assert "learner: stopped at step 10" in learner_out
    finally:
        actor.terminate()
        actor_out, _ = actor.communicate(timeout=200)
    assert actor.returncode == 0, actor_out[-4000:]
    assert "success" in actor_out  # its progress bar counted labelled episodes


def test_the_trained_policy_serves_openpi_clients(out, sft_policy):
    pytest.importorskip("openpi_client")
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    (port,) = free_ports(1)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen([sys.executable, "-m", "experiments.dobot_pnp.serve", f"--checkpoint_path={sft_policy}",
                               f"--port={port}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # the server loads and compiles before it listens
        while server.poll() is None and time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        assert server.poll() is None, server.communicate()[0][-3000:]
        client = WebsocketClientPolicy(host="127.0.0.1", port=port)
        rng = np.random.default_rng(0)
        obs = {
            "images": {cam: rng.integers(0, 256, (32, 42, 3), dtype=np.uint8)
                       for cam in ("cam_high", "cam_left_wrist", "cam_right_wrist")},
            "state": np.zeros(14, np.float32),
            "prompt": "raise the left hand to the green ball",
        }  # fmt: skip
        actions = client.infer(obs)["actions"]
        assert actions.shape == (50, 14) and np.all(np.isfinite(actions))
    finally:
        server.terminate()
        server.wait(timeout=60)
