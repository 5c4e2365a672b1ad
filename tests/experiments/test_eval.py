"""The eval core against the real simulated X-Trainer (MuJoCo, DobotEnv, websocket bridge, scripted labeller)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from net_helpers import free_port

pytest.importorskip("mujoco", reason="the sim needs the `sim` extra (mujoco)")

from experiments.dobot_pnp import eval as eval_cmd  # noqa: E402
from robot.dobot.env import DobotEnvConfig  # noqa: E402
from robot.dobot.video import read_frames  # noqa: E402
from robot.sim import model as sim_model  # noqa: E402
from robot.sim.ik import ArmIK, rot_y  # noqa: E402
from robot.sim.serve import SimServeConfig  # noqa: E402

SIZE = (24, 32)
PROMPT = "pick up the cube and put it in the box"  # hiors_jax.demo's
HORIZON_S = 6.0  # the sim labels failure after 6 s of robot time: 3-4 policy queries of 2 s


@pytest.fixture(scope="module")
def sim():
    env_config = DobotEnvConfig(image_size=SIZE, robot_timeout_s=120.0)
    with eval_cmd.sim_robot_env(env_config, SimServeConfig(task="easy", horizon_s=HORIZON_S)) as (env, robot):
        yield env, robot
    assert robot.error is None


class HoldPolicy:
    """Stalls: commands the pose the robot is in. Records each attempt's first observation."""

    def __init__(self):
        self.first_obs = []
        self._fresh = False

    def reset(self):
        self._fresh = True

    def infer(self, obs):
        if self._fresh:
            self.first_obs.append({"state": obs["state"].copy(), "image": obs["images"]["cam_high"].copy()})
            self._fresh = False
        return {"actions": np.tile(obs["state"], (50, 1))}


class ReachOracle:
    """Solves the easy task by reading the simulator (the marker's position) and aiming the left TCP at it by IK,
    correcting the aim by the measured error at each query; with probability `skill` per attempt it does so,
    otherwise it holds the pose. The sim is blocked waiting for the chunk while `infer` reads it."""

    def __init__(self, sim, skill: float, seed: int):
        self.sim, self.skill, self.rng = sim, skill, np.random.default_rng(seed)
        self.ik = ArmIK(sim.model, "left")
        self.tries: list[bool] = []

    def reset(self):
        self.tries.append(bool(self.rng.random() < self.skill))
        self.aim = None

    def infer(self, obs):
        q = np.asarray(obs["state"], np.float64).copy()
        if self.tries[-1]:
            target = self.sim.target
            self.aim = target.copy() if self.aim is None else self.aim + 0.7 * (target - self.sim.tcp("left")[0])
            self.ik.data.qpos[:] = self.sim.data.qpos
            q[0:6], _ = self.ik.solve_goal(self.aim, rot_y(0.5), q[0:6])
            q[7:13] = sim_model.START_ARM_QPOS
        return {"actions": np.tile(q, (50, 1)).astype(np.float32)}


def test_a_stalled_policy_fails_every_attempt(sim, tmp_path):
    env, _ = sim
    policy = HoldPolicy()
    results = eval_cmd.evaluate(policy, env, cases=2, trial_budget=3, seed=7)
    assert [c.seed for c in results.cases] == [7, 8]
    assert all(len(c.attempts) == 3 and c.solved_at is None for c in results.cases)
    for a in results.attempts:
        assert a.label == "failure" and not a.success and "horizon" in a.reason, a
        assert a.episode_time_s == pytest.approx(HORIZON_S, abs=0.2)
        assert a.queries >= 3 and not a.short and a.interventions == 0  # the labeller never took over
    assert results.success_rate == 0.0
    assert [results.success_within(k) for k in (1, 2, 3)] == [0.0, 0.0, 0.0]
    # Each attempt of a case starts from the case's initial condition; the cases differ.
    firsts = policy.first_obs
    assert len(firsts) == 6
    for case in range(2):
        a, b, c = firsts[3 * case : 3 * case + 3]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["image"], c["image"])
    assert not np.array_equal(firsts[0]["image"], firsts[3]["image"])  # the marker moved

    path = results.write_json(tmp_path / "eval.json")
    data = json.loads(path.read_text())
    assert data["summary"]["success_within"] == {"1": 0.0, "2": 0.0, "3": 0.0}
    assert data["summary"]["mean_success_time_s"] is None
    assert data["summary"]["attempts"] == 6
    table = results.table()
    assert "success rate (first attempt): 0% of 2 cases" in table and "success@3: 0%" in table


def test_budget_curve_of_a_sometimes_successful_policy(sim, tmp_path):
    env, robot = sim
    oracle = ReachOracle(robot.bridge.io.sim, skill=0.5, seed=3)
    results = eval_cmd.evaluate(oracle, env, cases=5, trial_budget=3, seed=0, video_dir=tmp_path / "videos")
    # Every attempt's outcome is the oracle's coin: tries succeed, holds fail, and a case stops at its success.
    coins = iter(oracle.tries)
    for case in results.cases:
        for a in case.attempts:
            assert a.success == next(coins), a
        assert [a.success for a in case.attempts[:-1]] == [False] * (len(case.attempts) - 1)
        assert len(case.attempts) == 3 or case.attempts[-1].success
    assert next(coins, None) is None
    curve = [results.success_within(k) for k in (1, 2, 3)]
    expected = [np.mean([c.solved_at is not None and c.solved_at <= k for c in results.cases]) for k in (1, 2, 3)]
    assert curve == expected
    assert curve[0] > 0 and curve == sorted(curve) and curve[-1] > curve[0]  # this seed's coins retry into success
    successes = [a for a in results.attempts if a.success]
    assert all(a.label == "success" and "policy in control" in a.reason for a in successes)
    assert all(a.episode_time_s < HORIZON_S for a in successes)
    summary = results.summary()
    assert summary["mean_success_time_s"] == pytest.approx(np.mean([a.episode_time_s for a in successes]))
    assert summary["mean_episode_time_s"] > summary["mean_success_time_s"]  # failures run to the horizon
    # The sim's easy task is done within one or two queries: short, flagged and counted.
    assert all(a.short for a in successes) and summary["short_episodes"] >= len(successes)

    # One video per attempt, named by case and attempt, one frame per observation.
    for a in results.attempts:
        assert a.video.endswith(f"case{a.case:03d}_try{a.attempt}.mp4")
        frames = list(read_frames(a.video))
        assert len(frames) == a.queries + 1 and frames[0].shape == (SIZE[0], 3 * SIZE[1], 3)
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == len(results.attempts)

    data = json.loads(results.write_json(tmp_path / "eval.json").read_text())
    assert data["summary"]["success_within"] == {str(k): v for k, v in zip((1, 2, 3), curve, strict=True)}
    assert [c["solved_at"] for c in data["per_case"]] == [c.solved_at for c in results.cases]
    table = results.table()
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["case", "seed", "solved"] and len(lines) >= 2 + len(results.cases)
    assert f"success@2: {100 * curve[1]:.0f}%" in table


class ScriptedEnv:
    """Stands in for the robot where the sim cannot go: episodes ending by a disconnection or a quick label."""

    def __init__(self, endings):
        self.endings = list(endings)  # per episode: (queries, label, disconnected)

    def reset(self, seed=None):
        self.left, self.label, self.lost = self.endings.pop(0)
        return {"state": np.zeros(14, np.float32)}, {}

    def step(self, actions):
        self.left -= 1
        if self.left:
            return {"state": np.zeros(14, np.float32)}, 0.0, False, False, {}
        info = {"label": self.label, "episode_time_s": 1.0, "robot_disconnected": self.lost, "interventions": 0}
        return {"state": np.zeros(14, np.float32)}, 0.0, not self.lost, self.lost, info


class ZeroPolicy:
    def infer(self, obs):
        return {"actions": np.zeros((50, 14), np.float32)}


def test_disconnected_and_short_attempts_are_rerun_or_flagged():
    env = ScriptedEnv([(2, None, True), (5, "failure", False), (1, "success", False)])
    results = eval_cmd.evaluate(ZeroPolicy(), env, cases=1, trial_budget=2)
    (case,) = results.cases
    assert [a.label for a in case.redone] == ["failure"] and "robot disconnected" in case.redone[0].reason
    assert [(a.attempt, a.success, a.short) for a in case.attempts] == [(1, False, False), (2, True, True)]
    assert results.success_within(2) == 1.0 and results.success_rate == 0.0

    env = ScriptedEnv([(1, "success", False), (4, "failure", False)])
    results = eval_cmd.evaluate(ZeroPolicy(), env, cases=1, trial_budget=1, redo_short=True)
    assert [a.queries for a in results.cases[0].redone] == [1] and results.cases[0].attempts[0].queries == 4

    env = ScriptedEnv([(1, "success", False)] * 3)
    with pytest.raises(RuntimeError, match="max_redos=2"):
        eval_cmd.evaluate(ZeroPolicy(), env, cases=1, trial_budget=1, redo_short=True, max_redos=2)


@pytest.mark.parametrize("field", ["cases", "trial_budget"])
def test_bad_counts_name_the_field(field):
    kwargs = {"cases": 1, "trial_budget": 1, field: 0}
    with pytest.raises(ValueError, match=field):
        eval_cmd.evaluate(ZeroPolicy(), ScriptedEnv([]), **kwargs)


def test_checkpoint_paths_resolve_or_fail_naming_the_path(tmp_path):
    policy = tmp_path / "run" / "policy"
    (policy / "params").mkdir(parents=True)
    (policy / "params" / "_METADATA").write_text("{}")
    assert eval_cmd.resolve_checkpoint(policy) == ("policy", policy)
    assert eval_cmd.resolve_checkpoint(policy / "params") == ("policy", policy)
    checkpoints = tmp_path / "run" / "checkpoints"
    for step in (100, 1000, 200):
        (checkpoints / str(step) / "state").mkdir(parents=True)
    assert eval_cmd.resolve_checkpoint(checkpoints / "200") == ("learner_step", checkpoints / "200")
    assert eval_cmd.resolve_checkpoint(checkpoints) == ("learner_step", checkpoints / "1000")  # the newest
    for bad, why in ((tmp_path / "run", "is neither"), (tmp_path / "missing", "does not exist")):
        with pytest.raises(eval_cmd.CheckpointPathError, match="is neither|does not exist") as err:
            eval_cmd.resolve_checkpoint(bad)
        assert str(err.value).startswith(f"--checkpoint_path: {bad} ") and why in str(err.value)


@pytest.fixture
def demo_checkpoint(tiny_checkpoint, tmp_path):
    """What `python -m hiors_jax.demo` writes: pi0_tiny params/, one assets/<id>/norm_stats.json, a tokenizer
    (the session's tiny checkpoint, less its second asset dir)."""
    import shutil

    out = shutil.copytree(tiny_checkpoint, tmp_path / "demo_checkpoint")
    shutil.rmtree(out / "assets" / "shifted")
    return out


ROOT = eval_cmd.pathlib.Path(__file__).resolve().parents[2]
CONFIG = f"--config={ROOT / 'configs' / 'dobot_pnp.py'}:sim"


def run_cli(*args, timeout=240):
    import os
    import subprocess
    import sys

    root = ROOT
    env = {**os.environ, "PYTHONPATH": str(root), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    cmd = [sys.executable, "-m", "experiments.dobot_pnp.eval", CONFIG, *args]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_evaluates_a_demo_checkpoint_on_the_sim(demo_checkpoint, tmp_path):
    out = tmp_path / "results" / "eval.json"
    proc = run_cli(
        f"--checkpoint_path={demo_checkpoint}",
        "--config.eval.episodes=2",
        "--config.eval.trial_budget=2",
        f"--config.eval.output={out}",
        "--config.env.image_size=(24, 32)",
        "--config.sim.horizon_s=4.0",
        f"--config.model.prompt={PROMPT}",  # one the checkpoint's tiny tokenizer was trained on
        f"--config.output_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["checkpoint"] == str(demo_checkpoint) and data["checkpoint_kind"] == "policy" and data["complete"]
    assert data["robot"] == "sim (easy)" and data["config"]["eval"]["episodes"] == 2 and data["prompt"] == PROMPT
    cases = data["per_case"]
    assert [c["seed"] for c in cases] == [0, 1]
    attempts = [a for c in cases for a in c["attempts"]]
    assert all(a["label"] in ("success", "failure") and a["interventions"] == 0 for a in attempts)
    assert all(0 < a["episode_time_s"] <= 4.0 + 0.2 for a in attempts)
    summary = data["summary"]
    assert summary["attempts"] == len(attempts)
    solved = [c["solved_at"] for c in cases]
    assert summary["success_within"] == {str(k): np.mean([s is not None and s <= k for s in solved]) for k in (1, 2)}
    # The table, then where the results and videos went.
    assert "case  seed  solved  try 1" in proc.stdout
    assert f"success rate (first attempt): {100 * summary['success_rate']:.0f}% of 2 cases" in proc.stdout
    assert f"results: {out}" in proc.stdout
    videos = sorted(p.name for p in (out.parent / "eval_videos").glob("*.mp4"))
    assert videos == sorted(f"case{a['case']:03d}_try{a['attempt']}.mp4" for a in attempts)


def test_cli_bad_checkpoint_path_names_the_path(tmp_path, capsys):
    missing = tmp_path / "no_such_run" / "policy"
    assert eval_cmd.main([CONFIG, f"--checkpoint_path={missing}"]) == 2
    assert f"--checkpoint_path: {missing} does not exist" in capsys.readouterr().err
    assert eval_cmd.main([CONFIG, f"--checkpoint_path={tmp_path}"]) == 2
    assert f"--checkpoint_path: {tmp_path} is neither" in capsys.readouterr().err


def test_a_learner_checkpoint_step_acts_like_its_exported_policy(demo_checkpoint, tmp_path, robot_frame):
    """<run>/checkpoints/<step> (orbax TrainState + the run's config, norm stats and tokenizer) and the same
    params exported in openpi's layout give the same actions for the same seed."""
    import shutil

    import jax.numpy as jnp

    from experiments.dobot_pnp import build
    from hiors_jax.agents.train_state import TrainState
    from hiors_jax.models import pi0, preprocessing
    from hiors_jax.train.checkpoints import Checkpointer

    config, params = pi0.load_openpi_params(demo_checkpoint)
    run = tmp_path / "run"
    state = TrainState(step=jnp.int32(40), key=jnp.zeros(2, jnp.uint32), params={"actor": params}, opt_state={})
    checkpointer = Checkpointer(run / "checkpoints", save_every=20, background=False)
    checkpointer.save(40, state)
    checkpointer.close()
    stats = preprocessing.load_norm_stats(demo_checkpoint / "assets" / "xtrainer")
    preprocessing.save_norm_stats(run / "assets" / build.ASSET_ID / "norm_stats.json", stats)
    shutil.copyfile(demo_checkpoint / "tiny_tokenizer.model", run / "tokenizer.model")
    model = {"action_horizon": config.action_horizon, "max_token_len": config.max_token_len, "dtype": "float32"}
    (run / "config.json").write_text(json.dumps({"model": model}))

    step_policy, info = eval_cmd.load_policy(
        run / "checkpoints", num_steps=3, action_horizon=50, max_token_len=0, seed=5
    )
    assert info == {
        "checkpoint": str(run / "checkpoints" / "40"),
        "checkpoint_kind": "learner_step",
        "checkpoint_step": 40,
    }
    dir_policy, info = eval_cmd.load_policy(demo_checkpoint, num_steps=3, action_horizon=50, max_token_len=0, seed=5)
    assert info["checkpoint_kind"] == "policy"
    frame = {**robot_frame, "prompt": PROMPT}
    for _ in range(2):  # the same noise stream too
        ours, theirs = step_policy.infer(frame)["actions"], dir_policy.infer(frame)["actions"]
        assert ours.shape == (50, 14)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_real_robot_path_with_the_sim_as_robot_pc_and_operator_confirmations(demo_checkpoint, tmp_path):
    """sim.enabled=False: the env listens for a robot PC (here the sim as its own process, labelling only) and the
    operator confirms every attempt's initial condition with Enter before it starts."""
    import os
    import subprocess
    import sys

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    robot = subprocess.Popen(
        [sys.executable, "-m", "robot.sim.serve", "--task=easy", f"--port={port}", "--no-takeover", "--horizon=4",
         "--height=24", "--width=32"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out = tmp_path / "eval.json"
    cmd = [sys.executable, "-m", "experiments.dobot_pnp.eval", CONFIG, f"--checkpoint_path={demo_checkpoint}",
           "--config.sim.enabled=False", "--config.actor.labels=robot", f"--config.env.port={port}",
           "--config.env.image_size=(24, 32)", "--config.eval.episodes=2", "--config.eval.trial_budget=2",
           "--config.eval.videos=False", f"--config.eval.output={out}", f"--config.model.prompt={PROMPT}"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    confirmations, lines = 0, []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "press Enter" in line:
                confirmations += 1
                proc.stdin.write("\n")
                proc.stdin.flush()
        assert proc.wait(timeout=120) == 0, "".join(lines)
    finally:
        for p in (proc, robot):
            if p.poll() is None:
                p.kill()
                p.wait()
    data = json.loads(out.read_text())
    assert data["robot"] == "robot PC" and "videos" not in "".join(lines)
    assert confirmations == data["summary"]["attempts"] >= 2
    assert any("case 0 attempt 1: set up initial condition #0" in line for line in lines)
    for attempt in (a for c in data["per_case"] for a in c["attempts"]):
        assert attempt["label"] in ("success", "failure") and attempt["episode_time_s"] <= 4.2


@pytest.mark.integration
def test_eval_of_what_the_sim_command_produced(tmp_path):
    """The README's flow: the sim Hi-ORS run, then the eval on its exported policy (the default path) and on its
    newest learner checkpoint."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    run_args = [CONFIG, f"--config.output_dir={tmp_path}", "--config.learner.checkpoint_every=10"]
    train = subprocess.run(
        [sys.executable, "-m", "experiments.dobot_pnp", *run_args, "--config.max_seconds=60"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    run = tmp_path / "dobot_pnp_sim"
    steps = sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit())
    assert steps and (run / "policy" / "params").is_dir()
    for extra, name in (([], "policy"), ([f"--checkpoint_path={run / 'checkpoints'}"], str(steps[-1]))):
        proc = run_cli(*run_args[1:], "--config.eval.episodes=2", "--config.eval.trial_budget=2", *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        data = json.loads((run / "eval" / f"{name}.json").read_text())
        assert data["summary"]["cases"] == 2 and "success rate (first attempt)" in proc.stdout
        assert len(list((run / "eval" / f"{name}_videos").glob("*.mp4"))) == data["summary"]["attempts"]


def test_an_interrupted_evaluation_keeps_what_it_measured(tmp_path, capsys):
    class DyingEnv(ScriptedEnv):
        def reset(self, seed=None):
            if not self.endings:
                raise ConnectionError("robot PC gone")
            return super().reset(seed)

    out = tmp_path / "eval.json"
    env = DyingEnv([(3, "failure", False), (4, "success", False)])
    with pytest.raises(ConnectionError):
        eval_cmd.evaluate(ZeroPolicy(), env, cases=2, trial_budget=2, progress=eval_cmd.report_to(out))
    data = json.loads(out.read_text())
    assert data["complete"] is False
    assert [(a["attempt"], a["label"]) for a in data["per_case"][0]["attempts"]] == [(1, "failure"), (2, "success")]
    assert "case 0 attempt 2 (seed 0): success after 4 queries" in capsys.readouterr().out

    results = eval_cmd.evaluate(ZeroPolicy(), ScriptedEnv([(3, "success", False)]), cases=1, trial_budget=1)
    assert results.to_json()["complete"] is True
