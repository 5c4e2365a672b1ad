"""Server and client in one process over real loopback sockets: delivery, dedup, multi-actor, restarts,
callback failures, authentication, fuzzed frames and weight broadcasts."""

import logging
import time

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transport_test_helpers import ListStore, RawPeer, free_ports

from hiors_jax.transport import (
    AuthError,
    IncompatibleConfigError,
    ParamsSlot,
    QueuedDataStore,
    TrainerClient,
    TrainerConfig,
    TrainerServer,
)
from hiors_jax.transport.envelope import MAGIC, Envelope

KEY = "a-shared-secret-of-32-characters"


def transition(i, actor="a"):
    return {
        "id": f"{actor}-{i}",
        "observations": {"cam_high": np.full((24, 32, 3), i % 255, np.uint8), "state": np.zeros(14, np.float32)},
        "actions": np.full((50, 14), i, np.float32),
    }


@pytest.fixture
def learner(trainer_config):
    servers = []

    def make(**kwargs):
        server = TrainerServer(trainer_config, **kwargs)
        store = ListStore()
        server.register_data_store("actor_env", store)
        server.start(threaded=True)
        servers.append(server)
        return server, store

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def actors(trainer_config):
    clients = []

    def make(stores, **kwargs):
        kwargs.setdefault("timeout_ms", 2000)
        client = TrainerClient("actor_env", "localhost", trainer_config, data_stores=stores, **kwargs)
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.stop()


def eventually(fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not (ok := fn()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return ok


def ids(store):
    return [item["id"] for item in store.items]


def test_upload_is_acknowledged_and_released(learner, actors):
    server, store = learner(auth_key=KEY)
    queue = QueuedDataStore(1000)
    client = actors({"actor_env": queue}, auth_key=KEY)
    for i in range(20):
        queue.insert(transition(i))
    assert client.update()
    assert ids(store) == [f"a-{i}" for i in range(20)]
    assert len(queue) == 0  # acknowledged items are forgotten
    assert store.items[3]["observations"]["cam_high"].dtype == np.uint8
    assert client.update() and len(store) == 20  # nothing new, nothing resent
    assert server.actors[client.actor_id]["items"] == 20
    assert server.live_actors(within_s=5) == [client.actor_id]


def test_uploads_are_cut_into_bounded_messages(learner, actors):
    server, store = learner()
    queue = QueuedDataStore(1000)
    client = actors({"actor_env": queue}, max_upload_bytes=20_000)
    for i in range(30):
        queue.insert(transition(i))
    assert client.update()
    assert ids(store) == [f"a-{i}" for i in range(30)] and client.stats["uploads"] >= 30 * 5000 // 20_000


def test_two_actors_share_a_store_without_collisions(learner, actors):
    _, store = learner()
    q1, q2 = QueuedDataStore(100), QueuedDataStore(100)
    c1, c2 = actors({"actor_env": q1}), actors({"actor_env": q2})
    for i in range(10):
        q1.insert(transition(i, "a"))
        q2.insert(transition(i, "b"))
        (c1 if i % 2 else c2).update()
    assert c1.update() and c2.update()
    assert sorted(ids(store)) == sorted([f"a-{i}" for i in range(10)] + [f"b-{i}" for i in range(10)])


def test_restarted_actor_is_not_skipped(learner, actors):
    """agentlace drops the first N items of a restarted actor; here a new run epoch starts fresh ids."""
    _, store = learner()
    first = QueuedDataStore(100)
    client = actors({"actor_env": first}, actor_id="robot-1")
    for i in range(10):
        first.insert(transition(i, "run1"))
    assert client.update()
    client.stop()
    second = QueuedDataStore(100)
    client2 = actors({"actor_env": second}, actor_id="robot-1")
    for i in range(5):
        second.insert(transition(i, "run2"))
    assert client2.update()
    assert ids(store) == [f"run1-{i}" for i in range(10)] + [f"run2-{i}" for i in range(5)]


def test_learner_restart_with_persisted_marks_neither_loses_nor_duplicates(trainer_config, actors, tmp_path):
    saved = {}

    def start_learner(restore):
        server = TrainerServer(trainer_config, ack="persist")
        store = ListStore()
        if restore:
            store.items = list(saved["items"])
            server.restore_marks(saved["marks"])
        server.register_data_store("actor_env", store)
        server.start(threaded=True)
        return server, store

    server, store = start_learner(False)
    queue = QueuedDataStore(1000)
    client = actors({"actor_env": queue}, heartbeat_interval=0.2)
    for i in range(10):
        queue.insert(transition(i))
    assert client.update()
    assert len(queue) == 10  # ack="persist": kept until the learner has saved them
    server.persist(lambda marks: saved.update(items=list(store.items), marks=marks))
    for i in range(10, 15):
        queue.insert(transition(i))
    assert client.update()  # 10..14 inserted but not persisted when the learner dies
    assert len(queue) == 5
    server.stop()
    server, store = start_learner(True)
    try:
        assert eventually(client.update)  # False while the socket reconnects, as a real actor would see
        assert ids(store) == [f"a-{i}" for i in range(15)]
        server.persist()
        deadline = time.monotonic() + 5
        while len(queue) and time.monotonic() < deadline:
            client.update()
            time.sleep(0.05)
        assert len(queue) == 0
    finally:
        server.stop()


def test_raising_callbacks_are_logged_and_the_server_keeps_serving(learner, actors, caplog):
    def bad_request(kind, payload):
        assert payload["ok"], "stats callback assertion, as in hil-serl"
        return {"seen": True}

    server, store = learner(request_callback=bad_request, data_callback=lambda name, payload: 1 / 0)
    queue = QueuedDataStore(100)
    client = actors({"actor_env": queue})
    reply = client.request("send-stats", {"ok": False})
    assert reply["success"] is False
    assert client.request("send-stats", {"ok": True}) == {"seen": True}
    queue.insert(transition(0))
    assert client.update() and ids(store) == ["a-0"]
    assert server.stats["callback_errors"] == 2 and "raised" in caplog.text
    assert client.request("unknown-type", {}) is None


@pytest.mark.parametrize(
    "error, traceback",
    [(KeyError("dones"), True), (ValueError("episode 3 is already committed"), False)],
    ids=["unexpected", "store-verdict"],
)
def test_poison_item_is_refused_loudly_and_the_stream_goes_on(trainer_config, actors, caplog, error, traceback):
    class PickyStore(ListStore):
        def insert(self, data):
            if data["id"] == "a-1":
                raise error
            super().insert(data)

    server = TrainerServer(trainer_config)
    store = PickyStore()
    server.register_data_store("actor_env", store)
    server.start(threaded=True)
    try:
        queue = QueuedDataStore(100)
        client = actors({"actor_env": queue})
        for i in range(3):
            queue.insert(transition(i))
        assert client.update()
        assert ids(store) == ["a-0", "a-2"]
        assert client.stats["rejected_items"] == 1 and server.stats["rejected_items"] == 1
        assert "could not insert item 1" in caplog.text and str(error) in caplog.text
        # An unexpected error keeps its traceback on the learner; the store's verdict on the data is its message.
        assert ("Traceback" in caplog.text) == traceback
    finally:
        server.stop()


def test_authentication_is_required_and_mismatches_are_clear(learner, actors, trainer_config):
    server, store = learner(auth_key=KEY)
    with pytest.raises(AuthError, match="same auth_key"):
        actors({"actor_env": QueuedDataStore(10)})
    with pytest.raises(AuthError):
        actors({"actor_env": QueuedDataStore(10)}, auth_key="a-different-secret-of-32-chars!!")
    assert server.stats["rejected_messages"] == 2 and len(store) == 0
    with pytest.raises(ValueError, match="requires auth_key"):
        TrainerServer(TrainerConfig(port_number=1, broadcast_port=2), bind_host="0.0.0.0")
    with pytest.raises(ValueError, match="allow_insecure"):
        TrainerServer(TrainerConfig(port_number=1, broadcast_port=2), bind_host="0.0.0.0", wire="agentlace")


def test_incompatible_config_and_missing_server(learner, trainer_config):
    learner()
    other = TrainerConfig(trainer_config.port_number, trainer_config.broadcast_port, ["other"])
    with pytest.raises(IncompatibleConfigError, match="Incompatible config"):
        TrainerClient("actor_env", "localhost", other, data_stores={})
    with pytest.raises(ConnectionError, match="Failed to connect"):
        TrainerClient("x", "localhost", TrainerConfig(1, 2), data_stores={}, timeout_ms=200)


def test_unreachable_learner_update_returns_false_then_recovers(trainer_config, actors):
    server = TrainerServer(trainer_config)
    store = ListStore()
    server.register_data_store("actor_env", store)
    server.start(threaded=True)
    queue = QueuedDataStore(100)
    client = actors({"actor_env": queue}, timeout_ms=300, heartbeat_interval=0.2, backoff=(0.05, 0.2))
    server.stop()
    queue.insert(transition(0))
    assert client.update() is False and not client.connected
    server = TrainerServer(trainer_config)
    server.register_data_store("actor_env", store)
    server.start(threaded=True)
    try:
        deadline = time.monotonic() + 10
        while not client.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.connected  # the link thread reconnected on its own
        assert client.update() and ids(store) == ["a-0"]
    finally:
        server.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=300), min_size=0, max_size=5), tag=st.booleans(), delim=st.booleans())
def test_fuzzed_frames_are_rejected_and_the_server_keeps_serving(fuzz_server, frames, tag, delim):
    server, port, sock, peer = fuzz_server
    if tag and frames:
        frames[0] = MAGIC
    sock.send_multipart(([b""] if delim else []) + (frames or [b"lone"]))
    if sock.poll(200):
        sock.recv_multipart()
    before = server.stats["rejected_messages"]
    reply = peer.call({"t": "ping"})  # a well-formed message on the same connection is still served
    assert reply["ok"] and server.stats["rejected_messages"] == before


@pytest.fixture(scope="module")
def fuzz_server():

    port, bport = free_ports(2)
    server = TrainerServer(TrainerConfig(port, bport), auth_key=KEY, max_message_bytes=4096)
    server.register_data_store("actor_env", ListStore())
    server.start(threaded=True)
    peer = RawPeer(port, KEY)
    yield server, port, peer.sock, peer
    peer.close()
    server.stop()


def test_oversized_truncated_and_forged_messages_are_logged(fuzz_server, caplog):
    server, _, sock, _ = fuzz_server
    caplog.set_level(logging.WARNING)
    before = server.stats["rejected_messages"]
    good = Envelope(KEY).pack({"t": "upload", "rid": 1, "x": np.zeros(1000, np.float32)})
    for frames in (
        [*good[:-1], b"\x00" * 3000, b"\x00" * 3000],
        good[:-1],
        [MAGIC, b"", good[2]],
        [MAGIC, b"\x00" * 32, good[2]],
    ):
        time.sleep(1.01)  # the rejection log is rate-limited to one line per second per reason
        sock.send_multipart([b"", *frames])
        assert sock.poll(2000)
        assert Envelope(None).unpack(sock.recv_multipart()[1:])["ok"] is False
    assert server.stats["rejected_messages"] == before + 4
    assert "exceeds the limit" in caplog.text and "not authenticated" in caplog.text and "MAC" in caplog.text


def test_weights_broadcast_versions_chunks_and_late_joiners(trainer_config, learner, actors):
    server, _ = learner(auth_key=KEY, chunk_bytes=50_000)
    params = {"PaliGemma": {"llm": {"layers": {"w": np.random.default_rng(0).standard_normal((300, 100))}}}}
    v1 = server.publish_network(params, dtype="bfloat16")  # before any actor exists
    slot = ParamsSlot()
    client = actors({}, auth_key=KEY, max_message_bytes=30_000)  # weights are bounded by max_network_bytes
    client.recv_network_callback(slot.set, with_version=True)
    version, tree = slot.wait_for(lambda v: v >= v1, timeout=10)  # fetched on connect, not via PUB timing
    assert tree["PaliGemma"]["llm"]["layers"]["w"].dtype.name == "bfloat16"
    in_use = tree["PaliGemma"]["llm"]["layers"]["w"].astype(np.float32)  # an inference holding v1
    tree_v1 = tree
    time.sleep(0.3)  # SUB connected
    params2 = {"PaliGemma": {"llm": {"layers": {"w": np.ones((300, 100), np.float32)}}}}
    v2 = server.publish_network(params2)
    version, tree = slot.wait_for(lambda v: v >= v2, timeout=10)
    np.testing.assert_array_equal(tree["PaliGemma"]["llm"]["layers"]["w"], params2["PaliGemma"]["llm"]["layers"]["w"])
    assert client.network_version == v2
    # the tree an inference already holds is never modified by a later broadcast
    np.testing.assert_array_equal(tree_v1["PaliGemma"]["llm"]["layers"]["w"].astype(np.float32), in_use)


def test_unencodable_callback_reply_is_reported_not_fatal(learner, actors):
    learner(request_callback=lambda kind, payload: {"handle": object()})
    client = actors({})
    reply = client.request("send-stats", {})
    assert reply["success"] is False and "could not be encoded" in reply["message"]
    assert client.request("send-stats", {}) is not None  # still serving


def test_frame_over_the_socket_limit_drops_only_that_peer(trainer_config, actors):
    server = TrainerServer(trainer_config, max_message_bytes=1 << 20)
    server.register_data_store("actor_env", ListStore())
    server.start(threaded=True)
    try:
        attacker = zmq.Context.instance().socket(zmq.DEALER)
        attacker.setsockopt(zmq.LINGER, 0)
        attacker.connect(f"tcp://127.0.0.1:{trainer_config.port_number}")
        attacker.send_multipart([b"", b"x" * (4 << 20)])  # libzmq refuses the frame and drops the connection
        assert not attacker.poll(500)
        attacker.close(0)
        queue = QueuedDataStore(10)
        client = actors({"actor_env": queue})
        queue.insert(transition(0))
        assert client.update() and server.data_store("actor_env").items[0]["id"] == "a-0"
    finally:
        server.stop()


def test_ledger_path_dedups_resends_after_a_learner_restart(trainer_config, actors, tmp_path):
    ledger = tmp_path / "ledger.json"
    store = ListStore()  # stands in for a replay buffer the learner reloads from its own checkpoint

    def start():
        server = TrainerServer(trainer_config, ack="persist", ledger_path=str(ledger))
        server.register_data_store("actor_env", store)
        server.start(threaded=True)
        return server

    server = start()
    queue = QueuedDataStore(100)
    client = actors({"actor_env": queue})
    for i in range(6):
        queue.insert(transition(i))
    assert client.update() and len(queue) == 6
    server.stop()  # died before persist(): nothing committed, the actor still holds all six
    server = start()
    try:
        assert eventually(client.update)
        assert ids(store) == [f"a-{i}" for i in range(6)] * 2  # the first run's inserts were never persisted
        store.items = store.items[6:]  # what a learner reloading its last checkpoint would hold
        server.persist()
        assert eventually(lambda: client.update() and len(queue) == 0)
    finally:
        server.stop()
    server = start()  # a third run loads the ledger file: a resend of old items is recognised and dropped
    try:
        assert server.ledger.committed_mark((client.actor_id, queue.epoch, "actor_env")) == 5
        resend = {"t": "upload", "store": "actor_env", "actor": client.actor_id, "epoch": queue.epoch}
        reply = client._call({**resend, "first": 4, "released": -1, "items": [transition(4), transition(5)]})
        assert reply["ok"] and reply["duplicates"] == 2 and ids(store) == [f"a-{i}" for i in range(6)]
    finally:
        server.stop()


def test_a_broadcast_with_lost_chunks_is_fetched_whole(learner, actors):
    from hiors_jax.transport.weights import chunk_messages

    server, _ = learner(auth_key=KEY)
    slot = ParamsSlot()
    client = actors({}, auth_key=KEY)
    client.recv_network_callback(slot.set, with_version=True)
    time.sleep(0.3)  # SUB connected
    rng = np.random.default_rng(0)
    v2 = chunk_messages(
        {"a": {"w": rng.standard_normal(5000)}, "b": rng.standard_normal(5000)}, 2, server.run_id, chunk_bytes=8000
    )
    v3 = chunk_messages(
        {"a": {"w": rng.standard_normal(5000)}, "b": rng.standard_normal(5000)}, 3, server.run_id, chunk_bytes=8000
    )
    assert len(v2) == 2
    server._latest_network = v2  # what publish_network retains
    server._pub.send_multipart(server._envelope.pack(v2[0]))  # v2's second chunk is "lost" on PUB
    server._pub.send_multipart(server._envelope.pack(v3[0]))  # a newer version starts: v2 is abandoned...
    version, tree = slot.wait_for(lambda v: v >= 2, timeout=10)  # ...and fetched whole over request/reply
    assert version == 2
    np.testing.assert_array_equal(tree["b"], v2[1]["pieces"][0][2].view(np.float64))


def test_a_full_store_is_drained_even_when_the_inserting_thread_is_the_uploader(learner, actors):
    """hil-serl calls update() from the env loop; if insert() blocks there, the link thread must upload."""
    _, store = learner()
    queue = QueuedDataStore(3, insert_timeout=10)
    actors({"actor_env": queue}, heartbeat_interval=0.2)
    for i in range(10):  # never calls update(): only the background link can free room
        queue.insert(transition(i))
    assert eventually(lambda: len(store) >= 7)
    assert ids(store)[:7] == [f"a-{i}" for i in range(7)]


def test_a_slow_request_callback_does_not_hold_up_uploads(learner, actors):
    import threading

    released = threading.Event()

    def slow_stats(kind, payload):  # e.g. a wandb log that stalls
        assert released.wait(10)
        return {"logged": payload}

    _, store = learner(request_callback=slow_stats)
    a, queue_b = actors({}), QueuedDataStore(10)
    b = actors({"actor_env": queue_b})
    replies = []
    requester = threading.Thread(target=lambda: replies.append(a.request("send-stats", {"ep": 1})))
    requester.start()
    time.sleep(0.2)  # the request is now inside the callback
    queue_b.insert(transition(0, "b"))
    assert b.update() and ids(store) == ["b-0"]  # served while the callback is still running
    released.set()
    requester.join(timeout=5)
    assert replies == [{"logged": {"ep": 1}}]
