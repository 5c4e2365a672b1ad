"""The dataset viewer on a dataset our writer made and on the lerobot fixtures: frames, layout, cursor, values."""

from __future__ import annotations

import base64
import json
import pathlib
import re
import shutil
import subprocess

import av
import numpy as np
import pytest
from PIL import Image

from experiments import visualize_dataset as viz
from hiors_jax.data.lerobot import LeRobotDataset, LeRobotDatasetWriter

H, W = 32, 48
LENGTHS = (12, 9)
STATE_NAMES = ["left_joint", "left_gripper", "right_joint", "right_gripper"]


def camera_image(episode: int, frame: int, shift: int) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.zeros((H, W, 3), np.uint8)
    image[..., 0] = (xx * 5 + frame * 9 + shift) % 256
    image[..., 1] = np.minimum(yy * 7 + episode * 40, 255)
    image[..., 2] = 100 + shift
    return image


def state_of(episode: int, frame: int) -> np.ndarray:
    return np.array([np.sin(frame / 3), frame / 10, -frame / 5, episode + 0.5], np.float32)


def action_of(episode: int, frame: int) -> np.ndarray:
    return np.array([100 * episode + frame, -frame, 0.25 * frame], np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer") / "tiny_ds"
    features = {
        "observation.state": {"dtype": "float32", "shape": [4], "names": STATE_NAMES},
        "action": {"dtype": "float32", "shape": [3], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "observation.images.top": {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]},
        "observation.images.wrist": {"dtype": "image", "shape": [H, W, 3], "names": ["height", "width", "channels"]},
    }
    writer = LeRobotDatasetWriter(root, 10, features)
    for e, length in enumerate(LENGTHS):
        for f in range(length):
            frame = {
                "observation.state": state_of(e, f),
                "action": action_of(e, f),
                "next.reward": float(f == length - 1),
                "observation.images.top": camera_image(e, f, 0),
                "observation.images.wrist": camera_image(e, f, 60),
            }
            writer.add_frame(frame, task=f"task {e}")
        writer.save_episode()
    writer.finalize()
    return root


def decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def cursor_columns(frames: list[np.ndarray], top: int) -> list[float]:
    """Where each frame's cursor is: the dark vertical line that the other frames lack at that column."""
    dark = np.stack([(f[top:].max(axis=-1) < 60).sum(axis=0) for f in frames])  # (frames, columns)
    extra = dark - dark.min(axis=0)
    return [float(np.argmax(row)) if row.max() > 40 else float("nan") for row in extra]


def test_mp4_shows_each_frame_of_the_episode_with_moving_cursor(dataset, tmp_path):
    out = tmp_path / "ep1.mp4"
    assert viz.main([str(dataset), "--episode", "1", "--out", str(out), "--height", "96"]) == 0
    frames = decode(out)
    assert len(frames) == LENGTHS[1]
    ds = LeRobotDataset(dataset, episodes=[1])
    layout = viz.Layout(ds, viz.camera_keys(ds), 96, list(viz.DEFAULT_KEYS), 220)
    ds.close()
    assert frames[0].shape == (layout.height, layout.width, 3)
    for f in (0, 4, 8):
        for key, shift, (h, w), (x, y) in zip(layout.cameras, (0, 60), layout.sizes, layout.positions, strict=True):
            expected = np.asarray(Image.fromarray(camera_image(1, f, shift)).resize((w, h), Image.BILINEAR))
            shown = frames[f][y + 18 : y + h, x : x + w]  # below the camera's name label
            assert psnr(shown, expected[18:]) > 28, (key, f)
    columns = cursor_columns(frames, layout.charts_top)
    assert all(b > a for a, b in zip(columns, columns[1:], strict=False)), columns


def test_html_holds_the_episode_values_video_and_charts(dataset, tmp_path):
    out = tmp_path / "ep0.html"
    assert (
        viz.main([str(dataset), "--episode", "0", "--out", str(out), "--keys", "action,observation.state,reward"]) == 0
    )
    page = out.read_text()
    payload = json.loads(re.search(r'id="episode-data">(.*?)</script>', page, re.S).group(1))
    n = LENGTHS[0]
    assert payload["frames"] == n and payload["fps"] == 10 and payload["tasks"] == ["task 0"] * n
    np.testing.assert_allclose(payload["timestamps"], np.arange(n) / 10, atol=1e-6)
    np.testing.assert_array_equal(payload["values"]["action"], [action_of(0, f) for f in range(n)])
    np.testing.assert_array_equal(payload["values"]["observation.state"], [state_of(0, f) for f in range(n)])
    np.testing.assert_array_equal(np.ravel(payload["values"]["next.reward"]), np.arange(n) == n - 1)
    assert payload["names"]["observation.state"] == STATE_NAMES
    # one polyline per dimension, one cursor per chart
    assert page.count('class="series"') == 3 + 4 + 1 and page.count('class="cursor"') == 3
    video = base64.b64decode(re.search(r'src="data:video/mp4;base64,([^"]+)"', page).group(1))
    (tmp_path / "embedded.mp4").write_bytes(video)
    assert len(decode(tmp_path / "embedded.mp4")) == n


def test_lerobot_fixture_episode(require_fixture, tmp_path):
    root = require_fixture("lerobot", "ds_lerobot")
    assert viz.main([str(root), "--episode", "1", "--format", "html", "--out", str(tmp_path / "e1.html")]) == 0
    page = (tmp_path / "e1.html").read_text()
    payload = json.loads(re.search(r'id="episode-data">(.*?)</script>', page, re.S).group(1))
    actions = np.asarray(payload["values"]["action"])
    assert actions.shape == (50, 14)
    np.testing.assert_array_equal(actions, np.repeat(1000 + np.arange(50)[:, None], 14, axis=1).astype(float))
    expected = np.load(root / "expected.npz")
    rows = expected["episode_index"] == 1
    np.testing.assert_array_equal(payload["values"]["observation.state"], expected["observation.state"][rows])
    assert set(payload["tasks"]) == {"pick the cube"}
    out = tmp_path / "e1.mp4"
    assert viz.main([str(root), "--episode", "1", "--out", str(out), "--cameras", "cam_high"]) == 0
    frames = decode(out)
    assert len(frames) == 50


def test_lerobot_v21_fixture_episode(require_fixture, tmp_path):
    root = require_fixture("lerobot", "ds_v21")
    out = tmp_path / "e2.mp4"
    assert viz.main([str(root), "--episode", "2", "--out", str(out), "--keys", "action"]) == 0
    assert len(decode(out)) == 60


@pytest.mark.parametrize(
    "argv, names",
    [
        (["{root}", "--episode", "5"], "--episode"),
        (["{root}"], "--episode"),
        (["{missing}", "--episode", "0"], "root"),
        (["{root}", "--episode", "0", "--keys", "nope"], "--keys"),
        (["{root}", "--episode", "0", "--keys", "observation.images.top"], "--keys"),
        (["{root}", "--episode", "0", "--cameras", "side"], "--cameras"),
        (["{root}", "--episode", "0", "--out", "x.html", "--format", "mp4"], "--out"),
        (["{root}", "--episode", "0", "--format", "gif"], "--format"),
        (["{root}", "--episode", "0", "--height", "0"], "--height"),
    ],
)
def test_bad_arguments_name_the_option(dataset, tmp_path, capsys, argv, names):
    argv = [a.format(root=dataset, missing=tmp_path / "missing") for a in argv]
    with pytest.raises(SystemExit) as exit_:
        viz.main(argv)
    assert exit_.value.code == 2
    assert names in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        viz.main(["--help"])
    out = capsys.readouterr().out
    declared = {s for a in viz.build_parser()._actions for s in a.option_strings if s != "-h"}
    for option in declared:
        assert option in out
    assert {"--episode", "--out", "--format", "--cameras", "--keys", "--height", "--chart_height", "--fps"} <= declared


def test_default_output_name(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert viz.main([str(dataset), "--episode", "1", "--format", "html"]) == 0
    assert (tmp_path / "tiny_ds_episode_1.html").is_file()


def test_html_cursor_and_values_follow_playback(dataset, tmp_path):
    """The page's own script, run by node under a minimal DOM: the cursor and printed values track the video."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the page script cannot be run")
    out = tmp_path / "ep0.html"
    assert viz.main([str(dataset), "--episode", "0", "--out", str(out)]) == 0
    harness = pathlib.Path(__file__).with_name("html_page_harness.js")
    times = [0.0, 0.5, 0.55, 5.0]  # fps 10: frames 0, 5, 5, and past the end (clamped to the last, 11)
    result = subprocess.run([node, str(harness), str(out), json.dumps(times)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    frames = [int(re.match(r"frame (\d+)", s["text"]).group(1)) for s in shown]
    assert frames == [0, 5, 5, LENGTHS[0] - 1]
    xs = [s["x"][0] for s in shown]
    assert xs[0] < xs[1] == xs[2] < xs[3]
    assert all(len(set(s["x"])) == 1 and len(s["x"]) == 2 for s in shown)  # both charts' cursors agree
    assert "action: 0=5.0000  1=-5.0000  2=1.2500" in shown[1]["text"]
    assert "left_joint=" in shown[1]["text"] and "task: task 0" in shown[1]["text"]
