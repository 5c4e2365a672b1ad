"""wire="agentlace": byte-compatible with agentlace peers. The peers below follow agentlace's protocol as
documented in the reference (REQ/REP + PUB/SUB, one lz4(pickle) frame, the "hash" handshake, cursors by
store name), written for this test from that description."""

import hashlib
import pickle
import threading
import time

import lz4.frame
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transport_test_helpers import ListStore

from hiors_jax.transport import QueuedDataStore, TrainerClient, TrainerConfig, TrainerServer

HIL_SERL_HASH_PAYLOAD = (
    '{"port_number":5588,"broadcast_port":5589,"request_types":["send-stats"],'
    '"rate_limit":null,"version":"0.0.2","experimental_pipeline_port":null}'
)


def enc(obj):
    return lz4.frame.compress(pickle.dumps(obj))


def dec(frame):
    return pickle.loads(lz4.frame.decompress(frame))


class AgentlaceStyleActor:
    """REQ client + SUB with CONFLATE, as agentlace's TrainerClient sets them up."""

    def __init__(self, config, ctx):
        self.config = config
        self.req = ctx.socket(zmq.REQ)
        self.req.setsockopt(zmq.RCVTIMEO, 3000)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.connect(f"tcp://127.0.0.1:{config.port_number}")
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.CONFLATE, 1)
        self.sub.setsockopt(zmq.RCVTIMEO, 3000)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.connect(f"tcp://127.0.0.1:{config.broadcast_port}")

    def call(self, msg):
        self.req.send(enc(msg))
        return dec(self.req.recv())

    def handshake(self):
        reply = self.call({"type": "hash"})
        ours = hashlib.md5(pickle.dumps(self.config.to_json())).hexdigest()
        assert hashlib.md5(pickle.dumps(reply["payload"])).hexdigest() == ours, "Incompatible config"
        return reply

    def close(self):
        self.req.close(0)
        self.sub.close(0)


class AgentlaceStyleLearner:
    """REP server + PUB, dispatching requests as agentlace's TrainerServer does."""

    def __init__(self, config, ctx, request_types):
        self.config = config
        self.request_types = request_types
        self.rep = ctx.socket(zmq.REP)
        self.rep.setsockopt(zmq.RCVTIMEO, 100)
        self.rep.setsockopt(zmq.LINGER, 0)
        self.rep.bind(f"tcp://127.0.0.1:{config.port_number}")
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 3)
        self.pub.bind(f"tcp://127.0.0.1:{config.broadcast_port}")
        self.cursor = {"actor_env": -1}
        self.inserted = []
        self.requests = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop.is_set():
            try:
                msg = dec(self.rep.recv())
            except zmq.Again:
                continue
            self.rep.send(enc(self.handle(msg)))

    def handle(self, msg):
        if msg["type"] == "hash":
            return {"success": True, "payload": self.config.to_json()}
        if msg["type"] == "get_last_update_id":
            return {"success": True, "payload": self.cursor[msg["payload"]["store_name"]]}
        if msg["type"] == "datastore":
            self.inserted.extend(msg["payload"]["data"])
            self.cursor[msg["store_name"]] = msg["payload"]["last_id"]
            return {"success": True}
        if msg["type"] in self.request_types:
            self.requests.append(msg["payload"])
            return {}
        return {"success": False, "message": "Invalid type or payload"}

    def close(self):
        self.stop.set()
        self.thread.join()
        self.rep.close(0)
        self.pub.close(0)


def test_trainer_config_hash_payload_is_byte_identical():
    config = TrainerConfig(port_number=5588, broadcast_port=5589, request_types=["send-stats"])
    assert config.to_json() == HIL_SERL_HASH_PAYLOAD
    assert TrainerConfig().to_json().startswith('{"port_number":5555,"broadcast_port":5556,"request_types":[]')
    with pytest.raises(ValueError, match="port_number"):
        TrainerConfig(port_number=0)


def test_agentlace_actor_talks_to_our_server(trainer_config):
    stats = []
    server = TrainerServer(trainer_config, wire="agentlace", request_callback=lambda t, p: stats.append(p) or {})
    store = ListStore()
    server.register_data_store("actor_env", store)
    server.start(threaded=True)
    actor = AgentlaceStyleActor(trainer_config, zmq.Context.instance())
    try:
        assert actor.handshake() == {"success": True, "payload": trainer_config.to_json()}
        assert actor.call({"type": "get_last_update_id", "payload": {"store_name": "actor_env"}}) == {
            "success": True,
            "payload": -1,
        }
        data = [{"observations": np.full((8, 8, 3), i, np.uint8), "i": i} for i in range(3)]
        reply = actor.call({"type": "datastore", "store_name": "actor_env", "payload": {"data": data, "last_id": 2}})
        assert reply == {"success": True} and [d["i"] for d in store.items] == [0, 1, 2]
        assert actor.call({"type": "get_last_update_id", "payload": {"store_name": "actor_env"}})["payload"] == 2
        assert actor.call({"type": "get_last_update_id", "payload": {"store_name": "nope"}}) == {
            "success": False,
            "message": "Invalid datastore name",
        }
        assert actor.call({"type": "send-stats", "payload": {"r": 1.0}}) == {} and stats == [{"r": 1.0}]
        assert actor.call({"type": "bogus"}) == {"success": False, "message": "Invalid type or payload"}
        time.sleep(0.3)  # SUB connected
        params = {"actor": {"kernel": np.arange(6.0).reshape(2, 3)}}
        server.publish_network(params)
        np.testing.assert_array_equal(dec(actor.sub.recv())["actor"]["kernel"], params["actor"]["kernel"])
        # garbage does not kill the server
        actor.req.send(b"not lz4")
        assert actor.req.recv() and actor.handshake()
    finally:
        actor.close()
        server.stop()


def test_our_client_talks_to_an_agentlace_learner(trainer_config):
    learner = AgentlaceStyleLearner(trainer_config, zmq.Context.instance(), ["send-stats"])
    learner.cursor["actor_env"] = 41  # an earlier actor run already sent ids 0..41
    queue = QueuedDataStore(100)
    received = []
    client = TrainerClient(
        "actor_env",
        "localhost",
        trainer_config,
        data_stores={"actor_env": queue},
        wire="agentlace",
        timeout_ms=3000,
        max_upload_items=2,  # several datastore messages, each with its own last_id
    )
    try:
        client.recv_network_callback(received.append)
        for i in range(5):
            queue.insert({"i": i, "img": np.zeros((4, 4, 3), np.uint8)})
        assert client.update()
        # agentlace's own client would skip these 5 (ids 0..4 <= cursor 41); ours shifts them past the cursor
        assert [d["i"] for d in learner.inserted] == [0, 1, 2, 3, 4] and learner.cursor["actor_env"] == 46
        assert len(queue) == 0  # the learner confirmed each message
        queue.insert({"i": 5, "img": np.zeros((4, 4, 3), np.uint8)})
        assert client.update() and [d["i"] for d in learner.inserted][-1] == 5
        assert client.update() and len(learner.inserted) == 6
        assert client.request("send-stats", {"episode": 1}) == {} and learner.requests == [{"episode": 1}]
        deadline = time.monotonic() + 5
        while not received and time.monotonic() < deadline:
            learner.pub.send(enc({"w": np.ones(3)}))
            time.sleep(0.1)
        np.testing.assert_array_equal(received[0]["w"], np.ones(3))
    finally:
        client.stop()
        learner.close()


def test_agentlace_wire_end_to_end_between_our_peers(trainer_config, caplog):
    server = TrainerServer(trainer_config, wire="agentlace", request_callback=lambda t, p: {"echo": p})
    store = ListStore()
    server.register_data_store("actor_env", store)
    server.start(threaded=True)
    queue = QueuedDataStore(100)
    got = []
    client = TrainerClient("actor_env", "localhost", trainer_config, data_stores={"actor_env": queue}, wire="agentlace")
    try:
        assert "pickle" in caplog.text  # both ends warn that pickle runs code
        client.recv_network_callback(got.append)
        for i in range(4):
            queue.insert({"i": i})
        assert client.update() and [d["i"] for d in store.items] == [0, 1, 2, 3] and len(queue) == 0
        assert client.request("send-stats", 7) == {"echo": 7}
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            server.publish_network({"layer": {"w": np.full(4, 2.0)}})
            time.sleep(0.1)
        np.testing.assert_array_equal(got[-1]["layer"]["w"], np.full(4, 2.0))
    finally:
        client.stop()
        server.stop()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=st.one_of(st.binary(max_size=200), st.binary(max_size=50).map(lz4.frame.compress)))
def test_fuzzed_agentlace_frames_do_not_stop_the_server(agentlace_server, frame):
    actor = agentlace_server
    actor.req.send(frame)
    assert isinstance(dec(actor.req.recv()), dict)
    assert actor.call({"type": "hash"})["success"] is True


@pytest.fixture(scope="module")
def agentlace_server():
    from transport_test_helpers import free_ports

    port, bport = free_ports(2)
    config = TrainerConfig(port_number=port, broadcast_port=bport)
    server = TrainerServer(config, wire="agentlace")
    server.register_data_store("actor_env", ListStore())
    server.start(threaded=True)
    actor = AgentlaceStyleActor(config, zmq.Context.instance())
    yield actor
    actor.close()
    server.stop()


def test_safe_server_names_an_agentlace_peer_in_its_rejection(trainer_config, caplog):
    server = TrainerServer(trainer_config)
    server.start(threaded=True)
    actor = AgentlaceStyleActor(trainer_config, zmq.Context.instance())
    try:
        actor.req.send(enc({"type": "hash"}))
        assert actor.req.poll(3000)
        actor.req.recv_multipart()
        assert server.stats["rejected_messages"] == 1 and 'wire="agentlace"' in caplog.text
    finally:
        actor.close()
        server.stop()
