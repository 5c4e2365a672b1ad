"""Authenticated messages are fresh: traffic captured on the wire and replayed (to the same learner, to a
restarted learner process, on another connection, inside another actor's session), duplicated or reordered
frames, and replayed weight broadcasts have no effect. Only the session-opening message may be replayed,
and what it opens is useless without the key."""

import json
import signal
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_transport_processes import Peers, wait_for
from transport_peer import transition as peer_transition
from transport_test_helpers import ListStore, RawPeer, WireTap

from hiors_jax.transport import ParamsSlot, QueuedDataStore, TrainerClient, TrainerConfig, TrainerServer
from hiors_jax.transport.freshness import ReplayWindow, SessionTable, StaleMessage

KEY = "a-shared-secret-of-32-characters"


def transition(i):
    return {"id": f"a-{i}", "img": np.full((8, 8, 3), i, np.uint8), "actions": np.full((50, 14), i, np.float32)}


@pytest.fixture
def learner(trainer_config):
    calls = []
    server = TrainerServer(
        trainer_config, auth_key=KEY, request_callback=lambda kind, payload: calls.append(payload) or {"n": len(calls)}
    )
    store = ListStore()
    server.register_data_store("actor_env", store)
    server.start(threaded=True)
    yield server, store, calls
    server.stop()


def tapped_client(config, queue, **kwargs):
    """An actor whose traffic goes through a WireTap (127.0.0.2 -> the learner on 127.0.0.1)."""
    return TrainerClient(
        "actor_env", "127.0.0.2", config, data_stores={"actor_env": queue}, auth_key=KEY, timeout_ms=3000, **kwargs
    )


def test_captured_uploads_and_requests_replayed_to_the_same_learner_do_nothing(trainer_config, learner):
    server, store, calls = learner
    tap = WireTap(trainer_config.port_number)
    queue = QueuedDataStore(100)
    client = tapped_client(trainer_config, queue)
    try:
        for i in range(5):
            queue.insert(transition(i))
        assert client.update() and len(store) == 5
        assert client.request("send-stats", {"episode": 1}) == {"n": 1}
        captured = bytes(tap.captured[0])
        stale = server.stats.get("stale_messages", 0)
        # while the actor is still connected, on a new connection
        answer = WireTap.replay(captured, trainer_config.port_number)
        client.stop()
        WireTap.replay(captured, trainer_config.port_number)  # and after it left
        time.sleep(0.3)  # a request callback would run on the learner's worker thread
        assert [item["id"] for item in store.items] == [f"a-{i}" for i in range(5)]
        assert calls == [{"episode": 1}], "a replayed request must not run the callback again"
        assert b"already received" in answer, "the replay must reach the learner and be refused there"
        assert server.stats["stale_messages"] > stale
    finally:
        client.stop()
        tap.close()


@pytest.mark.integration
def test_captured_traffic_replayed_to_a_restarted_learner_process_does_nothing(tmp_path):
    """The reported attack: uploads captured on the wire, the learner restarts (ack="insert": its marks died
    with it), the capture is replayed. Before sessions, every upload was inserted again and every request
    callback ran again."""
    peers = Peers(tmp_path)
    requests_log = tmp_path / "requests.log"

    def start_learner(state):
        ready = tmp_path / f"ready-{state}"
        proc = peers.spawn(
            "learner", "--state", str(tmp_path / state), "--ready", str(ready), "--ack", "insert",
            "--auth-key", KEY, "--requests-log", str(requests_log),
        )  # fmt: skip
        wait_for(lambda: ready.exists() or proc.poll() is not None, 30, "learner start")
        assert proc.poll() is None, peers.logs()
        return proc

    def persisted(state):
        path = tmp_path / state
        return json.loads(path.read_text())["ids"] if path.exists() else []

    config = TrainerConfig(port_number=peers.port, broadcast_port=peers.bport, request_types=["send-stats"])
    tap = WireTap(peers.port)
    try:
        first = start_learner("first.json")
        queue = QueuedDataStore(100)
        client = tapped_client(config, queue)
        for i in range(10):
            queue.insert(peer_transition("a", i))
        assert client.update()
        assert client.request("send-stats", {"episode": 7}) == {"logged": True}
        wait_for(lambda: len(persisted("first.json")) == 10, 10, "the first learner to persist")
        client.stop()
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        restarted = start_learner("restarted.json")
        answer = WireTap.replay(bytes(tap.captured[0]), peers.port)
        time.sleep(0.5)  # two persist periods of the learner
        assert persisted("restarted.json") == [], "replayed uploads were inserted into the restarted learner"
        assert requests_log.read_text().splitlines() == ['{"episode": 7}'], "a replayed request ran again"
        assert b"unknown session" in answer, "the replay must reach the restarted learner and be refused there"
        assert restarted.poll() is None
    finally:
        tap.close()
        peers.cleanup()


def test_duplicated_frames_count_once(trainer_config, learner):
    server, store, calls = learner
    peer = RawPeer(trainer_config.port_number, KEY)
    try:
        actor = {"actor": "raw-actor"}
        upload = peer.frames(
            {"t": "upload", "store": "actor_env", "epoch": 1, "first": 0, "items": [transition(0)], **actor}
        )
        request = peer.frames({"t": "req", "type": "send-stats", "payload": {"once": True}, **actor})
        assert peer.exchange(upload)["ok"] and peer.exchange(request)["ok"]
        for frames in (upload, request, upload):
            reply = peer.exchange(frames)
            assert reply["ok"] is False and reply["stale"] and "already received" in reply["error"]
        time.sleep(0.2)
        assert len(store) == 1 and calls == [{"once": True}]
    finally:
        peer.close()


def test_reordered_frames_are_each_accepted_once(trainer_config, learner):
    _, _, calls = learner
    peer = RawPeer(trainer_config.port_number, KEY)
    try:
        frames = [peer.frames({"t": "req", "type": "send-stats", "payload": i}) for i in range(4)]
        for i in (2, 0, 3, 1):  # delivered out of order (e.g. across a reconnect)
            assert peer.exchange(frames[i])["ok"]
        for i in (1, 3):
            assert peer.exchange(frames[i])["stale"]
        time.sleep(0.2)
        assert sorted(calls) == [0, 1, 2, 3]
    finally:
        peer.close()


def test_one_actors_messages_cannot_be_replayed_by_or_for_another(trainer_config, learner):
    server, store, _ = learner
    a, b = RawPeer(trainer_config.port_number, KEY), RawPeer(trainer_config.port_number, KEY)
    try:
        msg = {"t": "upload", "store": "actor_env", "actor": "A", "epoch": 1, "first": 0, "items": [transition(0)]}
        upload_a = a.frames(msg)
        assert a.exchange(upload_a)["ok"]
        assert b.exchange(upload_a)["stale"]  # A's frames on B's connection
        # moving A's message into B's session means changing the session id under A's MAC: refused
        forged = [upload_a[0], upload_a[1], upload_a[2].replace(a.session, b.session), *upload_a[3:]]
        assert forged[2] != upload_a[2] and b.exchange(forged)["auth"] is False
        assert [item["id"] for item in store.items] == ["a-0"]
    finally:
        a.close()
        b.close()


def test_a_message_without_a_session_is_refused(trainer_config, learner):
    server, store, _ = learner
    peer = RawPeer(trainer_config.port_number, KEY)
    try:
        msg = {"t": "upload", "store": "actor_env", "actor": "A", "epoch": 1, "first": 0, "items": [transition(0)]}
        reply = peer.exchange(peer.frames(msg, session=False))
        assert reply["stale"] and "no session" in reply["error"] and len(store) == 0
    finally:
        peer.close()


def test_actor_reconnects_transparently_after_a_learner_restart(trainer_config):
    """Sessions die with the learner: the actor's next message is refused as stale, it opens a new session
    and resends, so nothing is lost (exactly-once is kept by the ledger as before)."""
    queue = QueuedDataStore(100)
    stores = []

    def start():
        server = TrainerServer(trainer_config, auth_key=KEY)
        stores.append(ListStore())
        server.register_data_store("actor_env", stores[-1])
        server.start(threaded=True)
        return server

    server = start()
    client = TrainerClient(
        "actor_env", "localhost", trainer_config, data_stores={"actor_env": queue}, auth_key=KEY, timeout_ms=2000
    )
    try:
        queue.insert(transition(0))
        assert client.update()
        server.stop()
        server = start()
        queue.insert(transition(1))
        deadline = time.monotonic() + 10
        while not client.update() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [item["id"] for item in stores[-1].items] == ["a-1"] and len(queue) == 0
        assert client.request("send-stats", {}) is not None
    finally:
        client.stop()
        server.stop()


def test_replayed_weight_broadcasts_cannot_roll_an_actor_back(trainer_config):
    def publish(server, value, version=None):
        return server.publish_network({"w": np.full(8, float(value))}, version=version)

    server = TrainerServer(trainer_config, auth_key=KEY)
    server.start(threaded=True)
    publish(server, 1)
    old_run = [server._envelope.pack(m) for m in server._latest_network]  # as an eavesdropper recorded them
    server.stop()
    server = TrainerServer(trainer_config, auth_key=KEY)  # the learner restarted: a new run, versions from 1
    server.start(threaded=True)
    publish(server, 2, version=3)
    publish(server, 3, version=5)
    older_version = [server._envelope.pack(m) for m in server._latest_network]
    publish(server, 4, version=6)
    slot = ParamsSlot()
    client = TrainerClient("actor_env", "localhost", trainer_config, data_stores={}, auth_key=KEY)
    try:
        client.recv_network_callback(slot.set, with_version=True)
        version, tree = slot.wait_for(lambda v: v >= 6, timeout=10)  # fetched on joining
        time.sleep(0.3)  # SUB connected
        for frames in (*old_run, *older_version):
            server._pub.send_multipart(frames)  # replayed into the actor's subscription
        time.sleep(0.5)
        version, tree = slot.get()
        assert version == 6 and tree["w"][0] == 4.0
        assert client.stats.get("stale_broadcasts", 0) >= 1  # the other run's broadcast was named and dropped
    finally:
        client.stop()
        server.stop()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 80), max_size=60), st.sampled_from([1, 4, 16, 64]))
def test_replay_window_accepts_each_counter_at_most_once(counters, size):
    window, seen, highest = ReplayWindow(size), set(), 0
    for n in counters:
        fresh = n not in seen and n > highest - size  # the model: new, and not older than the window
        try:
            window.admit(n)
            accepted = True
        except StaleMessage:
            accepted = False
        assert accepted == fresh, (n, sorted(seen), highest)
        if accepted:
            seen.add(n)
            highest = max(highest, n)


def test_session_table_is_bounded_and_evicts_the_least_recently_used():
    table = SessionTable(max_sessions=2, window=8)
    a, b = table.open(), table.open()
    table.admit(a, 1)  # a is now the most recently used
    c = table.open()  # evicts b
    table.admit(a, 2)
    table.admit(c, 1)
    with pytest.raises(StaleMessage, match="unknown session"):
        table.admit(b, 1)
    with pytest.raises(StaleMessage, match="no session"):
        table.admit(None, 1)
    with pytest.raises(StaleMessage, match="counter"):
        table.admit(a, 0)
