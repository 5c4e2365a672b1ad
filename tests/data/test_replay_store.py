"""ReplayStore: episodes written to LeRobot datasets, read back, sampled; restarts, bad input, crash recovery."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hiors_jax.data.acceptance import AcceptanceConfig
from hiors_jax.data.chunks import relabel_from_states
from hiors_jax.data.lerobot import LeRobotDataset
from hiors_jax.data.replay import LABEL_CODES, ReplayStore, TransitionError

from .replay_helpers import CAMERAS, make_episode, make_transition

HORIZON = 10


def store(root, **kw):
    kw.setdefault("use_videos", False)  # PNG frames: lossless, so images must round-trip exactly
    return ReplayStore(
        root, fps=10, window_frames=kw.pop("window_frames", 100), image_size=(24, 32), horizon=HORIZON, **kw
    )


def episodes(rng):
    good = make_episode(rng, 5, success=True, episode_id=0)
    good[2]["state_chunk"][:, 2] = 0.0  # a no-op transition in the middle: dropped from accepted/
    good[3]["state_chunk_teleop"][:3] = True  # a human took over here
    bad = make_episode(rng, 4, success=False, episode_id=1)
    return good, bad


def read_all(root):
    ds = LeRobotDataset(root)
    try:
        return ds.get_batch(np.arange(len(ds)))
    finally:
        ds.close()


def test_written_read_back_and_sampled_are_the_same(tmp_path):
    rng = np.random.default_rng(0)
    good, bad = episodes(rng)
    s = store(tmp_path)
    for t in good + bad:
        s.insert(t)
    sent = good + bad
    online = read_all(tmp_path / "online")
    assert len(online["task"]) == 9
    for i, t in enumerate(sent):
        for cam in CAMERAS:
            np.testing.assert_array_equal(online[f"observation.images.{cam}"][i], t["images"][cam])
        np.testing.assert_array_equal(online["observation.state"][i], t["state"])
        np.testing.assert_array_equal(online["action"][i], t["action"])
        for key in ("state_chunk", "state_chunk_mask", "state_chunk_teleop", "state_chunk_timestamp"):
            np.testing.assert_array_equal(online[f"complementary_info.{key}"][i], t[key])
        assert online["complementary_info.state_chunk_timestamp"].dtype == np.float64
        assert float(online["next.reward"][i]) == t["reward"]
        assert bool(online["next.done"][i]) == t["done"] and bool(online["next.truncated"][i]) == t["truncated"]
        assert int(online["complementary_info.label"][i]) == LABEL_CODES[t["label"]]
        assert int(online["complementary_info.episode_id"][i]) == t["episode_id"]
        assert online["task"][i] == t["prompt"]

    # accepted/: the success only, its no-op transition dropped, targets relabelled over the kept transitions
    accepted = read_all(tmp_path / "accepted")
    keep = np.array([True, True, False, True, True])
    kept = [t for t, k in zip(good, keep, strict=True) if k]
    targets, is_pad = relabel_from_states(
        np.stack([t["state_chunk"] for t in kept]),
        np.stack([t["state_chunk_mask"] for t in kept]),
        np.zeros(len(kept)),
        HORIZON,
    )
    np.testing.assert_array_equal(accepted["action"], targets)
    np.testing.assert_array_equal(accepted["action_is_pad"], is_pad)
    np.testing.assert_array_equal(accepted["observation.state"], np.stack([t["state"] for t in kept]))
    np.testing.assert_array_equal(accepted["complementary_info.weight"].reshape(-1), 1.0)
    assert is_pad[-1].sum() == HORIZON - 6 and not is_pad[0].any()  # 6 rows left after the last observation
    assert s.stats()["acceptance/accepted"] == 1 and s.stats()["acceptance/rejected/below_threshold"] == 1
    assert s.stats()["acceptance/dropped/noop"] == 1 and s.stats()["acceptance/interventions"] == 1

    # the window serves exactly what is stored (images resized-with-pad at the window's size: here identity)
    win = s.window("accepted")
    got = win.gather(np.arange(len(win)), with_next=True)
    for cam in CAMERAS:
        np.testing.assert_array_equal(got["images"][cam], accepted[f"observation.images.{cam}"])
    np.testing.assert_array_equal(got["actions"], targets)
    np.testing.assert_array_equal(got["next_state"][:-1], got["state"][1:])

    # a restart refills both windows from disk with the same arrays
    s.close()
    s2 = store(tmp_path)
    for name in ("online", "accepted"):
        a, b = s.window(name), s2.window(name)
        assert len(a) == len(b)
        ga, gb = a.gather(np.arange(len(a)), True), b.gather(np.arange(len(b)), True)
        for key in ("state", "actions", "action_is_pad", "reward", "done", "truncated", "weight", "next_state"):
            np.testing.assert_array_equal(ga[key], gb[key], err_msg=f"{name}.{key}")
        for cam in CAMERAS:
            np.testing.assert_array_equal(ga["images"][cam], gb["images"][cam])
    # and resumes appending, refusing an episode id that was already committed
    with pytest.raises(TransitionError, match="episode_id.*already committed"):
        s2.insert(make_transition(rng, episode_id=1))
    for t in make_episode(rng, 3, success=True, episode_id=2):
        s2.insert(t)
    assert LeRobotDataset(tmp_path / "online").meta.total_episodes == 3


def test_bad_input_is_refused_and_nothing_is_lost(tmp_path):
    rng = np.random.default_rng(1)
    s = store(tmp_path)
    for t in make_episode(rng, 3, success=True, episode_id=5):
        s.insert(t)
    before = read_all(tmp_path / "online")
    s.insert(make_transition(rng, episode_id=6, step=0))
    bad_shape = make_transition(rng, episode_id=6, step=1)
    bad_shape["state"] = np.zeros(13, np.float32)
    nan_reward = make_transition(rng, episode_id=6, step=1, reward=float("nan"))
    wrong_camera = make_transition(rng, episode_id=6, step=1, hw=(20, 32))
    backwards = make_transition(rng, episode_id=4, step=0)
    for t, match in (
        (bad_shape, "'state'.*shape"),
        (nan_reward, "'reward'.*not finite"),
        (wrong_camera, "images.cam_high"),
        (backwards, "episode_id.*already committed"),
    ):
        with pytest.raises(TransitionError, match=match):
            s.insert(t)
    s.insert(make_transition(rng, episode_id=6, step=1, done=True, label="failure"))
    after = read_all(tmp_path / "online")
    assert len(after["task"]) == len(before["task"]) + 2  # the open episode kept both good transitions
    np.testing.assert_array_equal(after["observation.state"][:3], before["observation.state"])
    with pytest.raises(ValueError, match="unknown replay source 'demo'"):
        s.window("demo")


def test_an_abandoned_episode_is_kept_as_truncated(tmp_path):
    rng = np.random.default_rng(2)
    s = store(tmp_path)
    s.insert(make_transition(rng, episode_id=0, step=0))
    s.insert(make_transition(rng, episode_id=0, step=1))
    s.insert(make_transition(rng, episode_id=1, step=0))  # the actor restarted mid-episode
    online = read_all(tmp_path / "online")
    assert online["next.truncated"].reshape(-1).tolist() == [False, True]
    assert s.abandoned_episodes == 1 and s.open_transitions == 1
    current = make_transition(rng, episode_id=0, step=2, actor_id="actor-0")
    with pytest.raises(TransitionError, match="already committed"):
        s.insert(current)


def test_crash_between_online_and_accepted_is_caught_up(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    s = store(tmp_path)
    first = make_episode(rng, 4, success=True, episode_id=0)
    for t in first:
        s.insert(t)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed between the two commits")

    monkeypatch.setattr(ReplayStore, "_write_accepted", crash)
    second = make_episode(rng, 4, success=True, episode_id=1)
    with pytest.raises(KeyboardInterrupt):
        for t in second:
            s.insert(t)
    monkeypatch.undo()
    assert LeRobotDataset(tmp_path / "accepted").meta.total_episodes == 1
    s2 = store(tmp_path)
    accepted = LeRobotDataset(tmp_path / "accepted")
    assert accepted.meta.total_episodes == 2
    assert any("derived online episode 1" in line for line in s2.recovery_log)
    assert json.loads((tmp_path / "progress.json").read_text())["decided_online_episodes"] == 2
    # a third start does not derive it again
    s3 = store(tmp_path)
    assert LeRobotDataset(tmp_path / "accepted").meta.total_episodes == 2 and not s3.recovery_log


def test_schedule_and_window_capacity(tmp_path):
    rng = np.random.default_rng(4)
    acceptance = AcceptanceConfig(threshold=1.0, score="return", short_episode_max=1)
    s = store(tmp_path, acceptance=acceptance, window_frames=6)
    for e in range(3):
        for t in make_episode(rng, 4, success=True, episode_id=e, policy_version=e):
            s.insert(t)
    win = s.window("online")
    assert len(win) == 6 and win.frames_added == 12
    got = win.gather(np.arange(6))
    # the newest 6 frames: the last 2 of episode 1 and all of episode 2 (ring order aside)
    assert sorted(map(tuple, got["state"][:, :2].astype(int).tolist())) == [
        (1, 2),
        (1, 3),
        (2, 0),
        (2, 1),
        (2, 2),
        (2, 3),
    ]


def test_store_behind_the_real_transport(tmp_path):
    """Transitions travel actor -> learner over the real ZeroMQ transport into the store's insert; a bad one is
    refused back to the actor by name and the episode around it is still committed."""
    import socket

    from hiors_jax.transport import QueuedDataStore, TrainerClient, TrainerConfig, TrainerServer

    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    config = TrainerConfig(ports[0], ports[1], [])
    s = store(tmp_path)
    server = TrainerServer(config)
    server.register_data_store("actor_env", s)
    server.start(threaded=True)
    client = None
    try:
        queue = QueuedDataStore(100)
        client = TrainerClient("actor_env", "localhost", config, data_stores={"actor_env": queue}, timeout_ms=3000)
        rng = np.random.default_rng(5)
        sent = make_episode(rng, 4, success=True, episode_id=0)
        poison = make_transition(rng, episode_id=0, step=9, reward=float("nan"))
        for t in sent[:2] + [poison] + sent[2:]:
            queue.insert(t)
        assert client.update()
        assert server.stats["rejected_items"] == 1
        online = read_all(tmp_path / "online")
        np.testing.assert_array_equal(online["observation.state"], np.stack([t["state"] for t in sent]))
        for cam in CAMERAS:
            np.testing.assert_array_equal(online[f"observation.images.{cam}"][3], sent[3]["images"][cam])
        assert LeRobotDataset(tmp_path / "accepted").meta.total_episodes == 1
    finally:
        if client is not None:
            client.stop()
        server.stop()


def test_open_episodes_survive_a_restart(tmp_path, monkeypatch):
    """Transitions of an episode still open are spilled before insert returns: a restart reopens the episode
    (a torn last record, from a crash inside insert, is dropped) and the episode completes as sent."""
    rng = np.random.default_rng(6)
    sent = make_episode(rng, 5, success=True, episode_id=3)
    other = make_episode(rng, 2, success=True, episode_id=0, actor_id="actor-1")
    s = store(tmp_path)
    for t in sent[:3] + other[:1]:
        s.insert(t)
    assert s.open_transitions == 4 and s.unpersisted_transitions == 0
    spill = sorted((tmp_path / "open").glob("*.spill"))[0]
    with open(spill, "ab") as f:  # a record torn by a crash
        f.write((10_000).to_bytes(8, "little") + b"partial")
    s2 = store(tmp_path)  # the first store is simply abandoned, as a killed process would be
    assert s2.open_transitions == 4
    for t in sent[3:] + other[1:]:
        s2.insert(t)
    online = read_all(tmp_path / "online")
    assert online["complementary_info.episode_id"].reshape(-1).tolist() == [3] * 5 + [0] * 2
    np.testing.assert_array_equal(online["observation.state"][:5], np.stack([t["state"] for t in sent]))
    assert not list((tmp_path / "open").glob("*.spill"))
    # an episode whose last transition was spilled but not committed is committed at the next start
    third = make_episode(rng, 3, success=True, episode_id=4)
    s3 = store(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(ReplayStore, "_commit", lambda self, actor: None)  # "killed" right after the last spill
        for t in third:
            s3.insert(t)
    s4 = store(tmp_path)
    assert LeRobotDataset(tmp_path / "online").meta.total_episodes == 3 and s4.open_transitions == 0
    assert any("open episode 4" in line for line in s4.recovery_log)


def test_saved_episodes_published_in_batches_and_after_a_crash(tmp_path):
    """With finalize_every > 1 an ended episode is saved (journaled) at once and published later; a store that
    dies before publishing loses none of them: the next start publishes them."""
    rng = np.random.default_rng(7)
    s = store(tmp_path, finalize_every=3)
    for e in range(4):
        for t in make_episode(rng, 3, success=True, episode_id=e):
            s.insert(t)
    assert LeRobotDataset(tmp_path / "online").meta.total_episodes == 3  # published after the third
    assert s.online_frames == 12 and len(s.window("online")) == 12
    del s  # "crash": episode 3 is saved in the writer's journal, not published
    s2 = store(tmp_path, finalize_every=3)
    assert LeRobotDataset(tmp_path / "online").meta.total_episodes == 4
    assert LeRobotDataset(tmp_path / "accepted").meta.total_episodes == 4
    assert len(s2.window("online")) == 12
    with pytest.raises(TransitionError, match="already committed"):
        s2.insert(make_transition(rng, episode_id=3))
    for t in make_episode(rng, 3, success=True, episode_id=4):
        s2.insert(t)
    s2.close()
    assert LeRobotDataset(tmp_path / "online").meta.total_episodes == 5


def test_resent_transitions_of_a_reopened_episode_are_stored_once(tmp_path):
    """A learner killed while inserting an upload has spilled part of an episode whose transport marks were never
    persisted: the actor sends the whole episode again to the restarted learner. Each transition is stored once."""
    rng = np.random.default_rng(8)
    sent = make_episode(rng, 6, success=True, episode_id=2)
    s = store(tmp_path)
    for t in sent[:4]:
        s.insert(t)
    s2 = store(tmp_path)  # the first store is abandoned, as the killed learner's was
    assert s2.open_transitions == 4
    for t in sent:  # resent from the start of the episode (the restored marks are older than the spill)
        s2.insert(t)
    assert s2.resent_duplicates == 4 and s2.stats()["replay/resent_duplicates"] == 4
    online = read_all(tmp_path / "online")
    assert online["complementary_info.episode_id"].reshape(-1).tolist() == [2] * 6
    np.testing.assert_array_equal(online["observation.state"], np.stack([t["state"] for t in sent]))
    for cam in CAMERAS:
        np.testing.assert_array_equal(online[f"observation.images.{cam}"], np.stack([t["images"][cam] for t in sent]))


def test_learner_restart_from_older_marks_duplicates_nothing(tmp_path):
    """The real transport with ack="persist": marks persisted after 3 transitions, 2 more inserted (spilled), then the
    learner dies before its next checkpoint. The restarted learner restores the persisted marks, the actor resends
    what came after them, and the replay holds every transition exactly once."""
    import socket

    from hiors_jax.transport import QueuedDataStore, TrainerClient, TrainerConfig, TrainerServer

    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    config = TrainerConfig(ports[0], ports[1], [])
    rng = np.random.default_rng(9)
    sent = make_episode(rng, 7, success=True, episode_id=0)
    queue = QueuedDataStore(100, spill_dir=tmp_path / "actor_spill")
    clients, servers = [], []

    def learner():
        s = store(tmp_path / "replay")
        server = TrainerServer(config, ack="persist")
        server.register_data_store("actor_env", s)
        servers.append(server)
        return s, server

    try:
        s, server = learner()
        server.start(threaded=True)
        clients.append(TrainerClient("actor_env", "localhost", config, data_stores={"actor_env": queue},
                                     timeout_ms=3000))  # fmt: skip
        for t in sent[:3]:
            queue.insert(t)
        assert clients[0].update()
        marks = server.persist()  # the checkpoint's marks
        for t in sent[3:5]:
            queue.insert(t)
        assert clients[0].update()
        assert s.open_transitions == 5
        server.stop()  # "killed" before the next checkpoint: marks of the last 2 never persisted
        clients[0].stop()
        s2, server2 = learner()
        server2.restore_marks(marks)
        server2.start(threaded=True)
        clients.append(TrainerClient("actor_env", "localhost", config, data_stores={"actor_env": queue},
                                     timeout_ms=3000))  # fmt: skip
        for t in sent[5:]:
            queue.insert(t)
        assert clients[1].update()
        assert s2.resent_duplicates == 2, "the actor resent what the restored marks did not cover"
        online = read_all(tmp_path / "replay" / "online")
        np.testing.assert_array_equal(online["observation.state"], np.stack([t["state"] for t in sent]))
    finally:
        for c in clients:
            c.stop()
        for srv in servers:
            srv.stop()
