"""agentlace-compatible actor <-> learner transport over ZeroMQ (safe by default, agentlace wire opt-in)."""

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
