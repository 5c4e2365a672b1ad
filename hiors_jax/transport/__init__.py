"""agentlace-compatible actor <-> learner transport over ZeroMQ (safe by default, agentlace wire opt-in).

Learner::

    server = TrainerServer(TrainerConfig(5488, 5489, ["send-stats"]), request_callback=stats_cb,
                           auth_key=key, bind_host="0.0.0.0", ack="persist")
    server.restore_marks(checkpoint["marks"])           # after a restart, with the replay it was saved with
    server.register_data_store("actor_env", replay)     # any DataStoreBase with a thread-safe insert()
    server.start(threaded=True)
    server.publish_network(policy_params, dtype="bfloat16")         # versioned, chunked; returns the version
    server.persist(lambda marks: save_replay(replay, marks))        # replay + marks in one atomic checkpoint

Actor::

    queue = QueuedDataStore(50_000, spill_dir="/data/actor_journal")   # kept until the learner has it
    client = TrainerClient("actor_env", learner_ip, config, data_stores={"actor_env": queue},
                           auth_key=key, wait_for_server=True, timeout_ms=3000)
    slot = ParamsSlot()
    client.recv_network_callback(slot.set, with_version=True)
    version, params = slot.get()        # once per inference: a swap never lands inside one
    queue.insert(transition); client.update()

Every upload is keyed by (actor id, run epoch, store, seq): restarts of either side and several actors per
store neither lose nor duplicate transitions. With `auth_key` every message is authenticated and fresh: each
names a learner-issued session and a counter, admitted once, so captured traffic replayed later (to the
same or a restarted learner) does nothing. `wire="agentlace"` on both classes speaks agentlace's own
lz4+pickle protocol (unauthenticated; it warns) so unmodified agentlace peers can connect.
"""

from hiors_jax.transport.client import IncompatibleConfigError, TrainerClient
from hiors_jax.transport.codec import WireError
from hiors_jax.transport.config import TrainerConfig
from hiors_jax.transport.datastore import DataStoreBase, QueuedDataStore, QueueFullError
from hiors_jax.transport.envelope import AuthError
from hiors_jax.transport.ledger import Ledger
from hiors_jax.transport.server import TrainerServer
from hiors_jax.transport.weights import ParamsSlot

__all__ = [
    "AuthError",
    "DataStoreBase",
    "IncompatibleConfigError",
    "Ledger",
    "ParamsSlot",
    "QueueFullError",
    "QueuedDataStore",
    "TrainerClient",
    "TrainerConfig",
    "TrainerServer",
    "WireError",
]
