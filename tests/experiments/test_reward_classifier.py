"""The reward classifier: frame labels, episode split, training on real LeRobot datasets (our replay's `online/`
written by the ReplayStore, and datasets written by lerobot itself), save/load, the CLI, and use as the actor's
label source (robot.dobot.ClassifierLabels).

The replay dataset's success is visible in the images: a bright square (the "object") moves along the top
camera's image; in a successful episode it sits in the "box" (bottom-right corner) for the last SUCCESS_FRAMES
frames, in a failed one it never gets there. Other cameras and the state are noise.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.dobot_pnp import train_reward_classifier as cli
from hiors_jax.data.classifier_frames import (
    NEGATIVE,
    POSITIVE,
    UNUSED,
    ClassifierDataError,
    LabelRule,
    episode_outcome,
    frame_labels,
    frame_times,
    load_frames,
    split_episodes,
)
from hiors_jax.data.replay import ReplayStore
from hiors_jax.models import reward_classifier as rc
from hiors_jax.models.preprocessing import resize_with_pad
from robot.dobot.labels import ClassifierLabels

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
HW = (24, 32)
SUCCESS_FRAMES = 3
LENGTH = 10


# --------------------------------------------------------------------------------------------------------
# A replay online/ dataset with visible success
# --------------------------------------------------------------------------------------------------------
def observation(rng: np.random.Generator, in_box: bool, progress: float = 0.5) -> dict:
    """An observation as DobotEnv gives it (the parts the classifier reads)."""
    images = {c: rng.integers(0, 60, (*HW, 3), dtype=np.uint8) for c in CAMERAS}
    if in_box:
        top, left = HW[0] - 8, HW[1] - 8
    else:  # anywhere in the left half, never the box
        top, left = int(rng.integers(0, HW[0] - 6)), int(progress * (HW[1] // 2 - 6))
    images["cam_high"][top : top + 6, left : left + 6] = (250, 230, 40)
    return {"images": images, "state": rng.standard_normal(14).astype(np.float32), "prompt": "put it in the box"}


def episode(rng, episode_id: int, outcome: str | None) -> list[dict]:
    """outcome "success" | "failure" | None (the robot dropped: truncated without a label)."""
    out = []
    for step in range(LENGTH):
        last = step == LENGTH - 1
        obs = observation(rng, outcome == "success" and step >= LENGTH - SUCCESS_FRAMES, step / (LENGTH - 1))
        out.append(
            {
                **obs,
                "action": rng.standard_normal((4, 14)).astype(np.float32),
                "reward": 1.0 if (last and outcome == "success") else 0.0,
                "done": last and outcome is not None,
                "truncated": last and outcome is None,
                "state_chunk": rng.standard_normal((4, 14)).astype(np.float32),
                "state_chunk_mask": np.ones(4, bool),
                "state_chunk_teleop": np.zeros(4, bool),
                "state_chunk_timestamp": 100.0 * episode_id + 2.0 * step + 0.5 * np.arange(4),
                "episode_id": episode_id,
                "actor_id": "actor-0",
                "policy_version": 0,
                "label": outcome if last else None,
            }
        )
    return out


def write_online(root: pathlib.Path, outcomes: list[str | None], seed: int = 0) -> pathlib.Path:
    """Episodes with these outcomes stored by a ReplayStore; returns its `online/` dataset root."""
    rng = np.random.default_rng(seed)
    store = ReplayStore(
        root,
        window_frames=64,
        image_size=(16, 16),
        horizon=4,
        use_videos=False,
        spill_open=False,
        fsync_open=False,
        image_stats_frames=2,
        finalize_every=len(outcomes),
    )
    with store:
        for i, outcome in enumerate(outcomes):
            for t in episode(rng, i, outcome):
                store.insert(t)
    return root / "online"


@pytest.fixture(scope="module")
def online(tmp_path_factory) -> pathlib.Path:
    """8 successes, 8 failures and one unlabelled (robot dropped) episode."""
    return write_online(tmp_path_factory.mktemp("replay"), ["success", "failure"] * 8 + [None])


@pytest.fixture(scope="module")
def trained(online, tmp_path_factory) -> tuple[pathlib.Path, str]:
    """The CLI run in a subprocess on the replay dataset, as a user runs it; (out dir, stdout)."""
    out = tmp_path_factory.mktemp("classifier") / "model"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable, "-m", "experiments.dobot_pnp.train_reward_classifier",
        f"--dataset={online}", f"--out={out}", "--steps=150", "--batch_size=16", "--image_size=24,32",
        "--eval_every=75", "--val_fraction=0.25", "--conv_features=8,16,16", "--lr=1e-3", "--use_state",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


# --------------------------------------------------------------------------------------------------------
# Labels and split
# --------------------------------------------------------------------------------------------------------
def test_success_episode_labels_last_frames_with_a_margin():
    rule = LabelRule(positive_frames=3, margin_frames=2)
    labels = frame_labels("success", np.zeros(10, bool), np.arange(10.0), 10.0, rule)
    assert labels.tolist() == [NEGATIVE] * 5 + [UNUSED] * 2 + [POSITIVE] * 3


def test_positive_seconds_widen_the_window_by_robot_time():
    # a teleoperated end: many frames in the last second
    times = np.array([0.0, 2.0, 4.0, 6.0, 6.1, 6.2, 6.3, 6.4, 6.5, 6.6])
    rule = LabelRule(positive_frames=1, positive_seconds=0.45, margin_frames=1)
    labels = frame_labels("success", np.zeros(10, bool), times, 6.7, rule)
    assert labels.tolist() == [NEGATIVE] * 5 + [UNUSED] + [POSITIVE] * 4


def test_failed_and_unlabelled_episodes():
    rule = LabelRule()
    assert (frame_labels("failure", np.zeros(6, bool), np.arange(6.0), 6.0, rule) == NEGATIVE).all()
    assert (frame_labels(None, np.zeros(6, bool), np.arange(6.0), 6.0, rule) == UNUSED).all()
    marked = np.zeros(8, bool)
    marked[2] = True  # the data marks a frame positive (next.reward after success): positive in any case
    assert frame_labels("success", marked, np.arange(8.0), 8.0, LabelRule(1, 0.0, 0))[[1, 2, 3, 7]].tolist() == [
        NEGATIVE, POSITIVE, NEGATIVE, POSITIVE,
    ]  # fmt: skip


def test_episode_outcome_sources():
    n = 5
    base = {"frame_index": np.arange(n)}
    reward = np.zeros((n, 1), np.float32)
    reward[-1] = 1.0
    # our replay: the last labelled frame decides, rewards mark per-frame positives
    codes = np.array([-1, -1, -1, -1, 0])
    assert episode_outcome({**base, "complementary_info.label": codes}, 0.5)[0] == "failure"
    assert episode_outcome({**base, "complementary_info.label": np.full(n, -1)}, 0.5)[0] is None
    outcome, markers, source = episode_outcome({**base, "next.reward": reward}, 0.5)
    assert (outcome, markers.tolist(), source) == ("success", [False] * 4 + [True], "next.reward")
    assert episode_outcome({**base, "next.reward": np.zeros((n, 1))}, 0.5)[0] == "failure"
    assert episode_outcome({**base, "next.success": np.eye(n, dtype=bool)[2]}, 0.5)[0] == "success"
    assert episode_outcome(base, 0.5)[0] == "success"  # a demonstration


def test_frame_times_use_the_robot_clock_when_recorded():
    n = 3
    stamps = np.array([[10.0, 10.5, 0.0], [0.0, 0.0, 0.0], [12.0, 12.5, 13.0]])
    mask = np.array([[True, True, False], [False, False, False], [True, True, True]])
    cols = {"frame_index": np.arange(n), "timestamp": np.arange(n) / 10.0}
    times, end = frame_times(
        {**cols, "complementary_info.state_chunk_timestamp": stamps, "complementary_info.state_chunk_mask": mask}, 10
    )
    assert times.tolist() == [10.0, 10.0, 12.0] and end == 13.0
    times, end = frame_times(cols, 10)
    assert np.allclose(times, [0.0, 0.1, 0.2]) and np.isclose(end, 0.3)


def test_split_is_by_episode_and_stratified():
    outcomes = ["success"] * 10 + ["failure"] * 5 + ["unlabelled"]
    held = split_episodes(outcomes, 0.2, seed=3)
    assert held[:10].sum() == 2 and held[10:15].sum() == 1 and not held[15]
    assert (split_episodes(outcomes, 0.2, seed=3) == held).all()
    assert not split_episodes(outcomes, 0.0, seed=3).any()
    assert not split_episodes(["success", "failure"], 0.5, seed=0).any()  # one of each stays in training


def test_replay_online_frames_are_labelled_by_the_episode_label(online):
    frames = load_frames([online], ["cam_high"], (12, 16), LabelRule(positive_frames=3, margin_frames=2))
    assert len(frames.episodes) == 17 and frames.episodes[-1].outcome is None
    assert [e.outcome for e in frames.episodes[:4]] == ["success", "failure", "success", "failure"]
    assert {e.outcome_source for e in frames.episodes} == {"complementary_info.label"}
    assert len(frames) == 16 * LENGTH  # the unlabelled episode is not loaded
    first = frames.label[frames.episode == 0]
    assert first.tolist() == [NEGATIVE] * 5 + [UNUSED] * 2 + [POSITIVE] * 3
    assert (frames.label[frames.episode == 1] == NEGATIVE).all()
    assert frames.images["cam_high"].shape == (len(frames), 12, 16, 3) and frames.state.shape == (len(frames), 14)


@pytest.mark.parametrize("name", ["ds_lerobot", "ds_v21"])
def test_datasets_written_by_lerobot(require_fixture, name):
    """lerobot's own v3.0 / v2.1 files (a video and a PNG camera): next.reward 1.0 on each episode's last frame."""
    root = require_fixture("lerobot", name)
    frames = load_frames([root], ["cam_high", "observation.images.cam_left_wrist"], (48, 64), LabelRule(2, 0.0, 1))
    expected = np.load(root / "expected.npz")
    assert [e.length for e in frames.episodes] == [40, 50, 60]
    assert {e.outcome for e in frames.episodes} == {"success"}
    assert frames.counts() == {"positive": 6, "negative": 141, "unused": 3}
    for camera in ("cam_high", "cam_left_wrist"):
        want = resize_with_pad(expected[f"observation.images.{camera}"], 48, 64)
        np.testing.assert_array_equal(frames.images[camera], want)
    np.testing.assert_array_equal(frames.state, expected["observation.state"])


# --------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------
def small_config(state_dim: int = 3, **kw) -> rc.ClassifierConfig:
    return rc.ClassifierConfig(
        cameras=("cam_high", "cam_left_wrist"),
        image_size=(16, 20),
        state_dim=state_dim,
        state_mean=(0.0, 1.0, 2.0)[:state_dim],
        state_std=(1.0, 2.0, 0.5)[:state_dim],
        conv_features=(4, 8),
        pool_grid=2,
        state_features=8,
        hidden=16,
        **kw,
    )


@pytest.mark.parametrize("state_dim", [3, 0])
def test_save_load_round_trip_gives_identical_logits(tmp_path, state_dim):
    config = small_config(state_dim)
    params = rc.init_params(config, jax.random.key(1))
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (5, 16, 20, 3), dtype=np.uint8) for c in config.cameras}
    state = rng.standard_normal((5, state_dim)).astype(np.float32)
    rc.save(tmp_path / "clf", config, params, {"note": "test"})
    config2, params2 = rc.load(tmp_path / "clf")
    assert config2 == config
    np.testing.assert_array_equal(rc.logits(config2, params2, images, state), rc.logits(config, params, images, state))
    # the label function sees one env observation at its own size and preprocesses it like training did
    obs = {"images": {c: rng.integers(0, 256, (24, 30, 3), dtype=np.uint8) for c in CAMERAS}, "state": np.ones(14)}
    if state_dim:
        obs["state"] = state[0]
    p = rc.load_label_fn(tmp_path / "clf")(obs)
    batch = {c: v[None] for c, v in rc.preprocess_images(config, obs["images"]).items()}
    assert isinstance(p, float)
    assert p == pytest.approx(float(jax.nn.sigmoid(rc.logits(config, params, batch, state[:1]))[0]), abs=1e-6)


def test_random_shift_crops_the_edge_padded_image():
    rng = np.random.default_rng(0)
    images = {"a": rng.integers(0, 256, (6, 8, 10, 3), dtype=np.uint8)}
    assert rc.random_shift(images, jax.random.key(0), 0)["a"] is images["a"]
    shifted = np.asarray(rc.random_shift(images, jax.random.key(0), 2)["a"])
    padded = np.pad(images["a"], ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    for i in range(6):  # every output is one of the 25 crops of its own padded image
        crops = [padded[i, y : y + 8, x : x + 10] for y in range(5) for x in range(5)]
        assert any((shifted[i] == c).all() for c in crops)
    assert any((shifted[i] != images["a"][i]).any() for i in range(6))


def test_load_refuses_what_is_not_a_classifier(tmp_path):
    with pytest.raises(FileNotFoundError, match="reward_classifier.json"):
        rc.load(tmp_path)
    config = small_config()
    rc.save(tmp_path / "a", config, rc.init_params(config, jax.random.key(0)))
    doc = json.loads((tmp_path / "a" / rc.CONFIG_FILE).read_text())
    doc["config"]["conv_features"] = [4, 8, 8]
    (tmp_path / "a" / rc.CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="parameter shapes"):
        rc.load(tmp_path / "a")
    with pytest.raises(ValueError, match="state_std"):
        small_config().__class__(cameras=("a",), state_dim=1, state_mean=(0.0,), state_std=(0.0,))
    fn_obs = {"images": {"cam_high": np.zeros((16, 20, 3), np.uint8)}, "state": np.zeros(3)}
    rc.save(tmp_path / "b", config, rc.init_params(config, jax.random.key(0)))
    with pytest.raises(KeyError, match="cam_left_wrist"):
        rc.load_label_fn(tmp_path / "b")(fn_obs)


# --------------------------------------------------------------------------------------------------------
# Training (CLI in a subprocess) and use as the actor's label source
# --------------------------------------------------------------------------------------------------------
def test_cli_trains_a_classifier_that_generalises_to_held_out_episodes(trained):
    out, stdout = trained
    assert "held-out metrics at threshold 0.75" in stdout and "precision" in stdout and "recall" in stdout
    report = json.loads((out / "metrics.json").read_text())
    held = report["held_out"]["frames"]
    # 2 successful + 2 failed episodes never seen in training (split by episode, stratified)
    assert report["data"]["held_out"]["successful_episodes"] == 2
    assert report["data"]["held_out"]["failed_episodes"] == 2
    assert report["data"]["unlabelled_episodes"] == 1
    train_eps = {(e["dataset"], e["episode_index"]) for e in report["data"]["held_out"]["which"]}
    assert len(train_eps) == 4
    assert held["positives"] == 2 * SUCCESS_FRAMES and held["negatives"] == 2 * (LENGTH - 5) + 2 * LENGTH
    assert held["balanced_accuracy"] > 0.8, held  # chance is 0.5
    assert held["recall"] > 0.6 and held["precision"] > 0.6, held
    assert report["held_out"]["episodes"]["false_success_rate"] == 0.0
    assert [h["step"] for h in report["history"]] == [75, 150]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    config, _ = rc.load(out)
    assert config.cameras == ("cam_high", "cam_left_wrist") and config.image_size == (24, 32)
    assert config.state_dim == 14 and len(config.state_std) == 14  # --use_state


def test_trained_classifier_labels_env_observations(trained):
    """The actor's label source: success once p > threshold, never on the failure-looking frames."""
    out, _ = trained
    labels = ClassifierLabels(rc.load_label_fn(out), threshold=0.75)
    rng = np.random.default_rng(123)
    not_done = [labels.poll(observation(rng, in_box=False, progress=p), {}) for p in np.linspace(0, 1, 10)]
    done = [labels.poll(observation(rng, in_box=True), {}) for _ in range(10)]
    assert sum(label == "success" for label, _ in not_done) <= 1
    assert sum(label == "success" for label, _ in done) >= 8
    assert "classifier p=" in next(reason for label, reason in done if label == "success")


def test_cli_refuses_to_overwrite_a_classifier(trained, capsys):
    out, _ = trained
    with pytest.raises(SystemExit) as exit_:
        cli.main([f"--dataset={out}", f"--out={out}"])
    assert exit_.value.code == 2 and "--overwrite" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------------
def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_no_positive_frames(tmp_path, capsys):
    root = write_online(tmp_path / "fail", ["failure", "failure"])
    code, err = run_cli(capsys, f"--dataset={root}", f"--out={tmp_path / 'o'}", "--steps=1")
    assert code == 1 and "no positive frames" in err and "complementary_info.label" in err


def test_no_negative_frames(tmp_path, capsys):
    root = write_online(tmp_path / "ok", ["success", "success"])
    code, err = run_cli(capsys, f"--dataset={root}", f"--out={tmp_path / 'o'}", "--steps=1", "--positive_frames=10")
    assert code == 1 and "no negative frames" in err


def test_missing_camera_names_it_and_lists_the_datasets_cameras(online, tmp_path, capsys):
    code, err = run_cli(capsys, f"--dataset={online}", f"--out={tmp_path / 'o'}", "--camera=cam_front")
    assert code == 1 and "--camera cam_front" in err and "observation.images.cam_high" in err


def test_missing_state_key(online, tmp_path, capsys):
    code, err = run_cli(
        capsys, f"--dataset={online}", f"--out={tmp_path / 'o'}", "--use_state", "--state_key=observation.joints"
    )
    assert code == 1 and "--state_key observation.joints" in err


def test_empty_missing_and_non_lerobot_datasets(tmp_path, capsys, require_fixture):
    empty = tmp_path / "empty"
    shutil.copytree(require_fixture("lerobot", "ds_np", "meta"), empty / "meta")
    info = json.loads((empty / "meta" / "info.json").read_text())
    (empty / "meta" / "info.json").write_text(json.dumps({**info, "total_episodes": 0, "total_frames": 0}))
    code, err = run_cli(capsys, f"--dataset={empty}", f"--out={tmp_path / 'o'}")
    assert code == 1 and "empty" in err and str(empty) in err
    code, err = run_cli(capsys, f"--dataset={tmp_path / 'nowhere'}", f"--out={tmp_path / 'o'}")
    assert code == 1 and "no such directory" in err
    code, err = run_cli(capsys, f"--dataset={tmp_path}", f"--out={tmp_path / 'o'}")
    assert code == 1 and "not a LeRobot dataset" in err


def test_unlabelled_episodes_only(tmp_path):
    root = write_online(tmp_path / "none", [None])
    with pytest.raises(ClassifierDataError, match="has a success/failure label"):
        load_frames([root], ["cam_high"], (12, 16), LabelRule())


@pytest.mark.parametrize(
    "argv, names",
    [
        ([], "--dataset"),
        (["--dataset=x"], "--out"),
        (["--dataset=x", "--out=y", "--batch_size=7"], "--batch_size"),
        (["--dataset=x", "--out=y", "--steps=0"], "--steps"),
        (["--dataset=x", "--out=y", "--val_fraction=1"], "--val_fraction"),
        (["--dataset=x", "--out=y", "--threshold=1.5"], "--threshold"),
        (["--dataset=x", "--out=y", "--image_size=4"], "--image_size"),
        (["--dataset=x", "--out=y", "--positive_frames=0"], "--positive_frames"),
        (["--dataset=x", "--out=y", "--camera=cam_high,observation.images.cam_high"], "--camera"),
    ],
)
def test_bad_options_name_the_option(capsys, argv, names):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2 and names in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for action in cli.build_parser()._actions:
        for option in action.option_strings:
            assert option in text
        assert action.help, action.option_strings
    assert "ClassifierLabels" in text and "half positives" in text
