"""Shared helpers of the transport tests (imported by the tests and by the peer processes they start)."""

import pathlib
import socket
import sys
import threading

from hiors_jax.transport import DataStoreBase

# Peer processes import this module with only tests/transport on their path: net_helpers sits in tests/.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from net_helpers import free_ports  # noqa: E402, F401 (re-exported for the transport tests and peers)


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


class RawPeer:
    """A hand-driven safe-wire client: a DEALER socket that opens a session and sends chosen messages, so
    tests can capture, replay, duplicate and reorder exactly the frames they want."""

    def __init__(self, port: int, key, ctx=None):
        import os

        import zmq

        from hiors_jax.transport.envelope import Envelope

        self.envelope = Envelope(key)
        self.sock = (ctx or zmq.Context.instance()).socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.rid = 0
        nonce = os.urandom(16)
        reply = self.exchange(self.frames({"t": "session", "nonce": nonce}, session=False))
        assert reply["ok"] and reply["nonce"] == nonce, reply
        self.session = reply["session"]

    def frames(self, msg: dict, session: bool = True, rid: int | None = None) -> list[bytes]:
        """Signed frames of `msg` in this session, with the next counter (or `rid`)."""
        if rid is None:
            self.rid += 1
            rid = self.rid
        extra = {"sid": self.session} if session else {}
        return [bytes(f) for f in self.envelope.pack({**msg, "rid": rid, **extra})]

    def exchange(self, frames: list[bytes], timeout_ms: int = 3000) -> dict:
        from hiors_jax.transport.envelope import AuthError, Envelope

        self.sock.send_multipart([b"", *frames])
        assert self.sock.poll(timeout_ms), "no reply"
        reply = self.sock.recv_multipart()[1:]
        try:
            return self.envelope.unpack(reply)
        except AuthError:  # the learner's unsigned refusal of a message it could not authenticate
            refusal = Envelope(None).unpack(reply)
            assert refusal["auth"] is False
            return refusal

    def call(self, msg: dict) -> dict:
        return self.exchange(self.frames(msg))

    def close(self) -> None:
        self.sock.close(0)


class WireTap:
    """A TCP relay on `listen_host:port` -> `127.0.0.1:port` that records every byte each client sent: what an
    eavesdropper on the network captures. `replay(i, port)` sends connection i's bytes, verbatim, to a
    listener (ZeroMQ's NULL security has no per-connection secret, so the stream replays as it was)."""

    def __init__(self, port: int, listen_host: str = "127.0.0.2"):
        self.port = port
        self.captured: list[bytearray] = []
        self._listener = socket.create_server((listen_host, port))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.port))
            except OSError:
                client.close()
                continue
            record = bytearray()
            self.captured.append(record)
            for src, dst, rec in ((client, upstream, record), (upstream, client, None)):
                t = threading.Thread(target=self._pump, args=(src, dst, rec), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        src.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(1 << 16)
                except TimeoutError:
                    continue
                if not data:
                    break
                if record is not None:
                    record.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @staticmethod
    def replay(stream: bytes, port: int, linger_s: float = 5.0, quiet_s: float = 0.5) -> bytes:
        """Send `stream` to 127.0.0.1:port as one new connection; returns what came back, once the answers
        stopped for `quiet_s` (every replayed message has been answered) or after `linger_s`."""
        import time

        with socket.create_connection(("127.0.0.1", port)) as sock:
            # libzmq negotiates the ZMTP greeting in steps (signature, then the rest): send it as a client does
            for part in (stream[:10], stream[10:64]):
                sock.sendall(part)
                time.sleep(0.05)
            sock.sendall(stream[64:])
            sock.settimeout(0.1)
            got, deadline, last = bytearray(), time.monotonic() + linger_s, time.monotonic()
            while time.monotonic() < deadline:
                try:
                    data = sock.recv(1 << 16)
                except TimeoutError:
                    if len(got) > 64 and time.monotonic() - last > quiet_s:  # past the greeting, then quiet
                        break
                    continue
                except ConnectionResetError:
                    break
                if not data:
                    break
                got.extend(data)
                last = time.monotonic()
            return bytes(got)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for t in self._threads:
            t.join(timeout=2)
