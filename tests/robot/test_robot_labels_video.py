"""Label sources (keys without stdin races, classifier, robot) and the episode-video tools."""

import io
import os
import time

import numpy as np
import pytest

from robot.dobot.labels import ClassifierLabels, KeyboardLabels, RobotLabels, StdinHub
from robot.dobot.video import VideoWriter, merge_timelapse, read_frames, tile_cameras


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_keyboard_labels_share_stdin_with_another_reader():
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(read_fd, "r")
    hub = StdinHub(stream)
    other_reader = hub.subscribe()  # e.g. a prompt elsewhere in the actor
    labels = KeyboardLabels(hub)
    labels.start_episode()
    os.write(write_fd, b"hello\n")
    os.write(write_fd, b"s\n")
    assert wait_for(lambda: labels.poll({}, {})[0]) == "success"
    assert other_reader.get(timeout=5) == "hello" and other_reader.get(timeout=5) == "s"  # nobody lost a line
    os.write(write_fd, b"F\n")
    label, reason = wait_for(lambda: (lambda r: r if r[0] else None)(labels.poll({}, {})))
    assert label == "failure" and "'f'" in reason
    os.write(write_fd, b"s\n")  # pressed between episodes: belongs to no episode
    wait_for(lambda: other_reader.qsize() >= 2)
    labels.start_episode()
    assert labels.poll({}, {}) == (None, "")
    os.close(write_fd)


def test_classifier_labels_threshold_and_bad_outputs():
    values = iter([0.2, float("nan"), 0.9])
    source = ClassifierLabels(lambda obs: next(values), threshold=0.75)
    assert source.poll({}, {})[0] is None
    assert source.poll({}, {})[0] is None
    label, reason = source.poll({}, {})
    assert label == "success" and "0.900" in reason
    with pytest.raises(ValueError, match="threshold"):
        ClassifierLabels(lambda obs: 0.0, threshold=1.5)


def test_robot_labels_pass_the_robot_side_label_through():
    assert RobotLabels().poll({}, {"episode_label": "failure", "episode_label_reason": "cube fell"}) == (
        "failure",
        "cube fell",
    )


def test_tile_and_video_round_trip(tmp_path):
    images = {
        "cam_high": np.full((6, 8, 3), 200, np.uint8),
        "cam_left_wrist": np.full((6, 8, 3), 50, np.uint8),
        "cam_right_wrist": np.full((4, 8, 3), 120, np.uint8),
    }
    tiled = tile_cameras(images)
    assert tiled.shape == (6, 24, 3)
    assert tiled[0, 0, 0] == 50 and tiled[0, 8, 0] == 200 and tiled[0, 16, 0] == 120 and tiled[5, 16, 0] == 0
    paths = []
    for n, value in ((5, 30), (4, 220)):
        writer = VideoWriter(tmp_path / f"ep{value}.mp4", fps=5)
        for _ in range(n):
            writer.write(np.full((17, 33, 3), value, np.uint8))  # odd sizes are padded for yuv420p
        writer.close()
        paths.append(writer.path)
    frames = list(read_frames(paths[0]))
    assert len(frames) == 5 and frames[0].shape == (18, 34, 3)
    assert abs(int(frames[0][5, 5, 0]) - 30) <= 6
    out = tmp_path / "lapse.mp4"
    assert merge_timelapse(paths, out, every=2) == 3 + 2
    merged = list(read_frames(out))
    assert len(merged) == 5 and abs(int(merged[-1][5, 5, 0]) - 220) <= 6
    with pytest.raises(ValueError, match="every"):
        merge_timelapse(paths, out, every=0)


def test_video_writer_refuses_mismatched_frames(tmp_path):
    writer = VideoWriter(tmp_path / "x.mp4")
    writer.write(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="differs"):
        writer.write(np.zeros((10, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="HxWx3"):
        writer.write(np.zeros((8, 8), np.uint8))
    writer.close()


def test_stdin_hub_shared_is_a_single_reader(monkeypatch):
    monkeypatch.setattr(StdinHub, "_shared", None)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert StdinHub.shared() is StdinHub.shared()
