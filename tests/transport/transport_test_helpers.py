"""Shared helpers of the transport tests (imported by the tests and by the peer processes they start)."""

import socket
import threading

from hiors_jax.transport import DataStoreBase


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class ListStore(DataStoreBase):
    """Learner-side store that keeps every inserted item (thread-safe, like hil-serl's stores)."""

    def __init__(self):
        super().__init__(capacity=0)
        self.items = []
        self._lock = threading.Lock()

    def insert(self, data):
        with self._lock:
            self.items.append(data)

    def __len__(self):
        with self._lock:
            return len(self.items)
