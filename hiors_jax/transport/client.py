"""`TrainerClient`: the actor end. agentlace's API; uploads are acknowledged, resent after failures and
deduplicated by the learner, so they survive restarts of either side.

One DEALER socket (it talks to our ROUTER and to agentlace's REP alike) guarded by a lock, a background
link thread for heartbeats and reconnection with exponential backoff, and an optional SUB thread that
reassembles versioned weight broadcasts and hands each complete tree to the user's callback.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from hiors_jax.transport import legacy
from hiors_jax.transport.codec import WireError
from hiors_jax.transport.config import TrainerConfig
from hiors_jax.transport.datastore import DataStoreBase, QueuedDataStore, Stream
from hiors_jax.transport.envelope import DEFAULT_MAX_MESSAGE_BYTES, MAGIC, AuthError, Envelope, normalize_key
from hiors_jax.transport.server import WIRES, _RateLimitedLog, set_keepalive
from hiors_jax.transport.weights import MAX_CHUNK_FRAME_BYTES, NetworkAssembler

log = logging.getLogger(__name__)


class IncompatibleConfigError(Exception):
    """The learner's TrainerConfig differs from ours (agentlace raises a plain Exception here)."""


def default_actor_id(name: str) -> str:
    return f"{name}@{socket.gethostname()}/{os.getpid()}-{secrets.token_hex(4)}"


class TrainerClient:
    def __init__(
        self,
        name: str,
        server_ip: str,
        config: TrainerConfig,
        data_store: DataStoreBase | None = None,
        data_stores: dict[str, DataStoreBase] | None = None,
        log_level: int = logging.INFO,
        wait_for_server: bool = False,
        timeout_ms: int = 800,
        *,
        wire: str = "safe",
        auth_key: bytes | str | None = None,
        actor_id: str | None = None,
        max_upload_bytes: int = 4 << 20,
        max_upload_items: int = 4096,
        upload_window: int = 4,
        heartbeat_interval: float = 2.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_network_bytes: int = 64 << 30,
        context: zmq.Context | None = None,
    ):
        if wire not in WIRES:
            raise ValueError(f"wire must be one of {WIRES}, got {wire!r}")
        key = normalize_key(auth_key)
        if wire == "agentlace":
            if key is not None:
                raise ValueError('wire="agentlace" has no authentication; auth_key cannot be used with it')
            legacy.warn_pickle("TrainerClient")
        log.setLevel(log_level)
        self.name = name
        self.config = config
        self.wire = wire
        self.server_ip = "127.0.0.1" if server_ip == "localhost" else server_ip
        self.timeout_ms = int(timeout_ms)
        self.actor_id = actor_id or default_actor_id(name)
        self.max_upload_bytes = max_upload_bytes
        self.max_upload_items = max_upload_items
        self.upload_window = max(1, int(upload_window))
        self.heartbeat_interval = heartbeat_interval
        self.backoff = backoff
        self.max_message_bytes = max_message_bytes
        self.max_network_bytes = max_network_bytes
        self.data_stores: dict[str, DataStoreBase] = dict(data_stores or {})
        if data_store is not None:
            self.data_stores[name] = data_store
        self._config_json = config.to_json()
        self._envelope = Envelope(key, max_message_bytes=max_message_bytes)
        # weight chunks carry whole leaves (up to 1 GiB each); they are bounded by max_network_bytes instead
        self._net_envelope = Envelope(key, max_message_bytes=max_network_bytes)
        self._ctx = context or zmq.Context.instance()
        self._sock_lock = threading.RLock()
        self._update_lock = threading.Lock()
        self._sock: zmq.Socket | None = None
        self._rid = 0
        self._session: bytes | None = None  # learner-issued; every message names it (see freshness.py)
        self._sent_in: dict[int, bytes | None] = {}  # rid -> session it was sent in, until answered
        self._publisher: int | None = None  # learner run whose broadcasts we accept (learned in a fresh reply)
        self._network_floor = 0  # broadcasts older than the newest the learner had when we joined are stale
        self._network_refetch = threading.Event()
        self._limited = _RateLimitedLog(log)  # one line per second for chunk-by-chunk refusals
        self._server_run: int | None = None
        self._cursors: dict[tuple[str, int], int] = {}  # (store, epoch) -> next seq to send
        self._legacy_offsets: dict[str, int] = {}
        self._last_ok = 0.0
        self._last_request_time = 0.0
        self.connected = False
        self.stats: dict[str, int] = {
            "uploaded_items": 0,
            "uploads": 0,
            "timeouts": 0,
            "rejected_items": 0,
            "stale_broadcasts": 0,
        }
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._network_cb: Callable | None = None
        self._assembler = NetworkAssembler(max_total_bytes=max_network_bytes)
        self._assembler_lock = threading.Lock()
        self.network_version: int | None = None
        self._network_with_version = False
        self._pending_network: tuple[int, int | None] = (0, None)
        self._new_socket()

        while True:
            try:
                ok = self._handshake()
            except (IncompatibleConfigError, WireError, ConnectionError):  # AuthError is a WireError
                self._close_socket()
                raise
            if ok:
                break
            if not wait_for_server:
                self._close_socket()
                hint = "" if wire == "agentlace" else ' (if the learner runs agentlace itself, pass wire="agentlace")'
                raise ConnectionError(f"Failed to connect to server at {self.server_ip}:{config.port_number}{hint}")
            log.warning("Failed to connect to server at %s:%d, retrying...", self.server_ip, config.port_number)
            time.sleep(2.0)
        self.update()
        self._spawn(self._link_loop, "hiors-client-link")

    # ---- socket plumbing -----------------------------------------------------------------------------
    def _new_socket(self) -> None:
        with self._sock_lock:
            self._close_socket()
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a learner that is not connected
            set_keepalive(sock)
            sock.setsockopt(zmq.RECONNECT_IVL, int(self.backoff[0] * 1000))
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, int(self.backoff[1] * 1000))
            sock.setsockopt(zmq.MAXMSGSIZE, max(self.max_message_bytes, MAX_CHUNK_FRAME_BYTES))
            sock.setsockopt(zmq.SNDTIMEO, self.timeout_ms)
            sock.connect(f"tcp://{self.server_ip}:{self.config.port_number}")
            self._sock = sock

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def _fail(self) -> None:
        """A request went unanswered: replace the socket so a late reply can never be taken for a later one."""
        self.stats["timeouts"] += 1
        self.connected = False
        self._sent_in.clear()
        self._new_socket()

    def _send_frames(self, frames: list) -> bool:
        with self._sock_lock:
            if self._sock is None:
                self._new_socket()
            try:
                self._sock.send_multipart([b"", *frames], copy=False)
                return True
            except zmq.ZMQError as exc:  # EAGAIN after SNDTIMEO: no learner connected
                log.debug("send failed: %s", exc)
                self._fail()
                return False

    def _recv_frames(self, timeout_ms: int) -> list | None:
        with self._sock_lock:
            deadline = time.monotonic() + timeout_ms / 1000
            try:
                while (remaining := deadline - time.monotonic()) > 0:
                    if self._sock.poll(int(remaining * 1000) + 1, zmq.POLLIN):
                        reply = self._sock.recv_multipart(copy=False)
                        if reply and len(reply[0]) == 0:
                            return reply[1:]
                        log.warning("dropping a reply without the empty delimiter frame")
            except zmq.ZMQError as exc:
                log.debug("receive failed: %s", exc)
            self._fail()
            return None

    def _exchange(self, frames: list, timeout_ms: int) -> list | None:
        with self._sock_lock:
            if not self._send_frames(frames):
                return None
            return self._recv_frames(timeout_ms)

    def _send(self, msg: dict) -> int | None:
        """Send a safe-wire request in the current session (opened first if needed); returns its id (None when
        it could not be sent)."""
        with self._sock_lock:
            if self._session is None and not self._open_session():
                return None
            self._rid += 1
            if not self._send_frames(self._envelope.pack({**msg, "rid": self._rid, "sid": self._session})):
                return None
            self._sent_in[self._rid] = self._session
            return self._rid

    def _open_session(self) -> bool:
        """Ask the learner for a fresh session; its reply must echo our random nonce (so it is not a replay)."""
        with self._sock_lock:
            nonce = os.urandom(16)
            self._rid += 1
            rid = self._rid
            if not self._send_frames(self._envelope.pack({"t": "session", "nonce": nonce, "rid": rid})):
                return False
            self._sent_in[rid] = None
            reply = self._receive(rid)
            if reply is None:
                return False
            if not reply.get("ok"):
                raise ConnectionError(f"learner refused to open a session: {reply.get('error')}")
            session = reply.get("session")
            if reply.get("nonce") != nonce or not isinstance(session, bytes):
                self._fail()
                raise WireError("session reply does not answer our request (replayed or forged)")
            self._session = session
            if reply.get("run") != self._publisher:  # a (re)started learner: its broadcasts from now on
                self._publisher = reply.get("run")
                info = reply.get("network")
                self._network_floor = info[1] if isinstance(info, list) and len(info) == 2 and info[1] else 0
                self._network_refetch.set()  # its newest weights, without waiting for the next publish
            return True

    def _receive(self, rid: int, timeout_ms: int | None = None, envelope: Envelope | None = None) -> dict | None:
        """The reply to request `rid` (requests are answered in order). None on timeout."""
        with self._sock_lock:
            session = self._sent_in.pop(rid, None)
            frames = self._recv_frames(timeout_ms or self.timeout_ms)
            if frames is None:
                return None
            try:
                reply = (envelope or self._envelope).unpack(frames)
            except AuthError as exc:
                refusal = _unsigned_refusal(frames)
                if refusal:
                    raise AuthError(
                        f"learner refused our message: {refusal} (are both sides using the same auth_key?)"
                    ) from exc
                raise AuthError(f"reply from the learner failed authentication: {exc}") from exc
            if not isinstance(reply, dict):
                raise WireError("learner reply is not a dict")
            if reply.get("auth") is False:
                error = str(reply.get("error"))
                if error.startswith("unauthenticated"):
                    raise AuthError(f"learner refused our message: {error} (are both sides using the same auth_key?)")
                raise WireError(f"learner refused our message: {error}")
            if reply.get("rid") != rid or reply.get("sid") != session:
                self._fail()
                raise WireError(f"reply {reply.get('rid')!r} does not answer request {rid} of this session")
            if reply.get("stale"):
                # The learner did not act on the message (it restarted, or the session expired): open a new
                # session and re-synchronise; callers resend.
                log.warning("learner refused a message as stale (%s); opening a new session", reply.get("error"))
                self._session = None
                self._server_run = None
            self.connected = True
            self._last_ok = time.monotonic()
            self._note_network(reply)
            run = reply.get("run")
            if self._server_run is not None and run != self._server_run:
                log.warning("learner restarted (run %s -> %s); re-synchronising uploads", self._server_run, run)
                self._server_run = None  # forces a new handshake before the next upload
            return reply

    def _call(self, msg: dict, timeout_ms: int | None = None, envelope: Envelope | None = None) -> dict | None:
        with self._sock_lock:
            for _ in range(2):  # a stale reply means the learner did not act on it: once more in a new session
                rid = self._send(msg)
                reply = None if rid is None else self._receive(rid, timeout_ms, envelope)
                if reply is None or not reply.get("stale"):
                    return reply
            return reply

    def _legacy_call(self, msg: dict) -> Any:
        with self._sock_lock:
            frames = self._exchange([legacy.encode(msg)], self.timeout_ms)
            if frames is None:
                return None
            if len(frames) != 1:
                log.error("agentlace reply has %d frames, expected 1", len(frames))
                return None
            try:
                reply = legacy.decode(frames[0].buffer, self.max_message_bytes)
            except WireError as exc:
                log.error("unreadable agentlace reply: %s", exc)
                return None
            self.connected = True
            self._last_ok = time.monotonic()
            return reply

    # ---- handshake -------------------------------------------------------------------------------------
    def _handshake(self) -> bool:
        if self.wire == "agentlace":
            reply = self._legacy_call({"type": "hash"})
            if reply is None:
                return False
            if not (isinstance(reply, dict) and reply.get("success")) or reply.get("payload") != self._config_json:
                raise IncompatibleConfigError(f"Incompatible config: server {reply!r}, client {self._config_json}")
            return True
        streams = self._all_streams()
        rows = [[name, s.epoch, s.bind(self.actor_id)] for name, s in streams]
        self._session = None  # a new session per handshake: nothing sent before it can be replayed into it
        reply = self._call({"t": "hello", "config": self._config_json, "actor": self.actor_id, "streams": rows})
        if reply is None:
            return False
        if not reply.get("ok"):
            if reply.get("error") == "incompatible config":
                raise IncompatibleConfigError(
                    f"Incompatible config with server: server {reply.get('config')}, client {self._config_json}"
                )
            raise ConnectionError(f"learner refused the handshake: {reply.get('error')}")
        marks = reply.get("marks")
        if not isinstance(marks, list) or len(marks) != len(streams):
            raise WireError("handshake reply has a bad marks list")
        for (name, stream), (accepted, committed) in zip(streams, marks, strict=True):
            self._cursors[(name, stream.epoch)] = accepted + 1
            stream.release(committed)
        self._server_run = reply.get("run")
        self._note_network(reply)
        return True

    def _all_streams(self) -> list[tuple[str, Stream]]:
        out = []
        for name, store in self.data_stores.items():
            if not isinstance(store, QueuedDataStore):
                raise TypeError(f"data store {name!r} must be a QueuedDataStore on the actor side")
            out.extend((name, s) for s in store.streams())
        return out

    # ---- agentlace API ---------------------------------------------------------------------------------
    def update(self) -> bool:
        """Upload everything not yet acknowledged, synchronously. True when all of it was accepted."""
        with self._update_lock:
            if self.wire == "agentlace":
                return all(self._legacy_update(name, store) for name, store in self.data_stores.items())
            try:
                return self._update_safe()
            except (WireError, ConnectionError) as exc:
                log.error("upload failed: %s", exc)
                return False

    def _update_safe(self) -> bool:
        # A ping first: a restarted learner is noticed even when nothing new is queued, so items it lost
        # (acknowledged by its predecessor but not persisted) are resent now.
        held = [(name, s) for name, s in self._all_streams() if len(s)]
        rows = [[name, s.epoch, s.bind(self.actor_id)] for name, s in held]
        reply = self._call({"t": "ping", "actor": self.actor_id, "streams": rows})
        if reply is None:
            return False
        if self._server_run is None:
            if not self._handshake():
                return False
        elif isinstance(reply.get("marks"), list) and len(reply["marks"]) == len(held):
            for (_, stream), (_, committed) in zip(held, reply["marks"], strict=True):
                stream.release(int(committed))  # what the learner has persisted since the last upload
        for name, stream in self._all_streams():
            outcome = self._upload_stream(name, stream)
            if outcome == "restarted":  # the learner restarted between two uploads
                return self._handshake() and self._update_safe()
            if outcome != "done":
                return False
        return True

    def _upload_stream(self, name: str, stream: Stream) -> str:
        """Send the stream's unacknowledged items, keeping `upload_window` messages in flight so that encoding,
        transfer and the learner's inserts overlap. Every reply carries the learner's authoritative mark."""
        key = (name, stream.epoch)
        inflight: deque[int] = deque()
        next_seq = self._cursors.get(key, 0)
        with self._sock_lock:
            while True:
                while len(inflight) < self.upload_window:
                    first, items, skipped = stream.pending(next_seq, self.max_upload_items, self.max_upload_bytes)
                    if not items and not skipped:
                        break
                    msg = {
                        "t": "upload",
                        "store": name,
                        "actor": stream.bind(self.actor_id),
                        "epoch": stream.epoch,
                        "first": first,
                        "released": stream.first_seq - 1,
                        "items": items,
                    }
                    if skipped:  # ids whose journal records were corrupt (quarantined): the learner passes them
                        msg["skipped"] = skipped
                    rid = self._send(msg)
                    if rid is None:
                        return "failed"
                    inflight.append(rid)
                    next_seq = first + len(items) + len(skipped)
                if not inflight:
                    return "done"
                reply = self._receive(inflight.popleft())
                if reply is None:
                    return "failed"
                if self._server_run is None:
                    while inflight:  # collect the answers still due, then resynchronise
                        if self._receive(inflight.popleft()) is None:
                            return "failed"
                    return "restarted"
                if not reply.get("ok") and reply.get("error") != "gap":
                    log.error("learner refused an upload to %r: %s", name, reply.get("error"))
                    return "failed"
                for seq, why in reply.get("rejected", []):
                    self.stats["rejected_items"] += 1
                    log.error("learner's store %r could not insert item %d (%s); it is dropped", name, seq, why)
                accepted = int(reply["accepted"])
                previous = self._cursors.get(key, 0)
                self._cursors[key] = accepted + 1
                stream.release(int(reply["committed"]))
                if reply.get("ok"):
                    self.stats["uploaded_items"] += max(0, accepted + 1 - previous)
                    self.stats["uploads"] += 1
                else:  # a gap: the learner has less than we assumed; resend from its mark
                    while inflight:
                        if self._receive(inflight.popleft()) is None:
                            return "failed"
                    next_seq = self._cursors[key]

    def _legacy_update(self, name: str, store: DataStoreBase) -> bool:
        reply = self._legacy_call({"type": "get_last_update_id", "payload": {"store_name": name}})
        if not (isinstance(reply, dict) and reply.get("success")):
            if reply is not None:
                log.error("agentlace server refused store %r: %s", name, reply.get("message"))
            return False
        cursor = int(reply["payload"])
        stream = store.current if isinstance(store, QueuedDataStore) else None
        if name not in self._legacy_offsets:
            # agentlace keys its cursor by store name only; a new actor run would otherwise have its first
            # `cursor + 1` items skipped. Shift this run's ids past the cursor instead.
            first = stream.first_seq if stream is not None else 0
            self._legacy_offsets[name] = max(0, cursor + 1 - first)
        offset = self._legacy_offsets[name]
        next_local = cursor - offset + 1
        while True:
            if stream is not None:
                # bounded messages, and last_id taken from what is actually sent (agentlace reads
                # latest_data_id() after collecting the batch, so an insert in between is skipped for good)
                first, batch, skipped = stream.pending(next_local, self.max_upload_items, self.max_upload_bytes)
                last_local = first + len(batch) + len(skipped) - 1
            else:
                batch, skipped, last_local = store.get_latest_data(next_local - 1), [], store.latest_data_id()
            if not batch and not skipped:
                return True
            payload = {"data": batch, "last_id": last_local + offset}
            reply = self._legacy_call({"type": "datastore", "store_name": name, "payload": payload})
            if not (isinstance(reply, dict) and reply.get("success")):
                if reply is not None:
                    log.error("agentlace server refused data for %r: %s", name, reply.get("message"))
                return False
            if stream is not None:
                stream.release(last_local)
            self.stats["uploaded_items"] += len(batch)
            if stream is None:
                return True
            next_local = last_local + 1

    def request(self, request_type: str, payload: Any) -> Any:
        """Call the learner's request callback. None when the type is not configured or the learner is away."""
        if request_type not in self.config.request_types:
            log.warning("request type %r is not in config.request_types; not sent", request_type)
            return None
        if self.config.rate_limit is not None:
            now = time.monotonic()
            if now - self._last_request_time < 1.0 / self.config.rate_limit:
                log.warning("request %r dropped by rate_limit=%s", request_type, self.config.rate_limit)
                return None
            self._last_request_time = now
        if self.wire == "agentlace":
            return self._legacy_call({"type": request_type, "payload": payload})
        reply = self._call({"t": "req", "type": request_type, "payload": payload, "actor": self.actor_id})
        if reply is None:
            return None
        if not reply.get("ok"):
            return {"success": False, "message": reply.get("error")}
        return reply.get("payload")

    def recv_network_callback(self, callback: Callable, *, with_version: bool = False) -> None:
        """Call `callback(params)` (or `callback(params, version)`) on a background thread for every complete
        broadcast. On connect the newest published weights are fetched, so a late actor does not wait for
        the next publish."""
        first = self._network_cb is None
        self._network_cb = callback
        self._network_with_version = with_version
        if first:
            self._spawn(self._network_loop, "hiors-client-network")

    def start_async_update(self, interval: float = 10.0) -> None:
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.update()
                except Exception:
                    log.exception("background update failed")

        self._spawn(loop, "hiors-client-update")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._sock_lock:
            self._close_socket()

    # ---- background threads ------------------------------------------------------------------------------
    def _spawn(self, target: Callable, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _link_loop(self) -> None:
        """Heartbeats while idle; after a failure, retries with exponential backoff and re-handshakes. Also
        uploads on its own while an `insert` is blocked on a full store: the thread that would call update()
        may be the one waiting (hil-serl calls update() from its env loop)."""
        delay = self.backoff[0]
        while not self._stop.wait(delay if not self.connected else self.heartbeat_interval / 2):
            if self._inserts_blocked():
                ok = self._try_update()
                delay = self.backoff[0] if ok else min(delay * 2, self.backoff[1])
                continue
            if self.wire != "safe" or (self.connected and time.monotonic() - self._last_ok < self.heartbeat_interval):
                continue
            try:
                reply = self._call({"t": "ping", "actor": self.actor_id})
                if reply is not None and self._server_run is None and self._update_lock.acquire(blocking=False):
                    try:  # the learner restarted: learn its marks now rather than at the next update()
                        self._handshake()
                    finally:
                        self._update_lock.release()
            except (WireError, ConnectionError) as exc:
                log.error("heartbeat failed: %s", exc)
                reply = None
            delay = self.backoff[0] if reply is not None else min(delay * 2, self.backoff[1])

    def _inserts_blocked(self) -> bool:
        return any(getattr(store, "blocked_inserts", 0) for store in self.data_stores.values())

    def _try_update(self) -> bool:
        if not self._update_lock.acquire(blocking=False):
            return True  # an update is already running
        self._update_lock.release()
        return self.update()

    def _network_loop(self) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        set_keepalive(sub)
        if self.wire == "agentlace":
            sub.setsockopt(zmq.RCVHWM, 3)
            sub.setsockopt(zmq.CONFLATE, 1)
        else:
            sub.setsockopt(zmq.RCVHWM, 0)
            sub.setsockopt(zmq.MAXMSGSIZE, MAX_CHUNK_FRAME_BYTES)
        sub.connect(f"tcp://{self.server_ip}:{self.config.broadcast_port}")
        if self.wire == "safe":
            self._network_refetch.set()
        try:
            while not self._stop.is_set():
                if self.wire == "safe" and self._network_refetch.is_set():
                    self._network_refetch.clear()
                    try:  # a ping first: its reply names the learner's newest version now
                        if self._call({"t": "ping", "actor": self.actor_id}) is not None:
                            self._fetch_latest_network()
                    except (WireError, ConnectionError) as exc:
                        log.warning("could not fetch the latest weights: %s", exc)
                if not sub.poll(100, zmq.POLLIN):
                    continue
                frames = sub.recv_multipart(copy=False)
                try:
                    if self.wire == "agentlace":
                        self._deliver(legacy.decode(frames[0].buffer, self.max_network_bytes), None)
                    else:
                        abandoned = self._assembler.abandoned
                        self._feed_network(self._net_envelope.unpack(frames))
                        if self._assembler.abandoned != abandoned:  # chunks were lost: pull the newest whole
                            log.warning("an incomplete weight broadcast was dropped; fetching the newest one")
                            if self._call({"t": "ping", "actor": self.actor_id}) is not None:
                                self._fetch_latest_network()
                except WireError as exc:
                    log.warning("rejected a weight broadcast message: %s", exc)
        finally:
            sub.close(0)

    def _note_network(self, reply: dict) -> None:
        info = reply.get("network")
        if isinstance(info, list) and len(info) == 2 and isinstance(info[0], int):
            self._pending_network = (info[0], info[1])

    def _fetch_latest_network(self) -> None:
        """Pull the newest retained broadcast chunk by chunk over request/reply (on connect, and whenever
        a broadcast arrived incomplete), so weights do not depend on PUB timing or queue limits."""
        count, version = self._pending_network
        done = self._assembler.completed
        if not count or (done is not None and done[0] == self._publisher and version <= done[1]):
            return
        try:
            for index in range(count):
                timeout = max(self.timeout_ms, 30_000)
                reply = self._call({"t": "net_get", "i": index}, timeout_ms=timeout, envelope=self._net_envelope)
                if reply is None or not reply.get("ok"):
                    log.warning("could not fetch the latest weights (chunk %d); waiting for the next broadcast", index)
                    return
                self._feed_network(reply["chunk"])
        except (WireError, ConnectionError) as exc:
            log.warning("could not fetch the latest weights: %s", exc)

    def _feed_network(self, msg: Any) -> None:
        # Weights are fresh only from the learner run we hold a session with (learned from a reply that echoed
        # our nonce), and no older than what that learner had when we joined: a replayed broadcast of an
        # earlier run or version cannot roll the policy back.
        if isinstance(msg, dict) and self.wire == "safe":
            version = msg.get("v")
            if msg.get("pub") != self._publisher or not isinstance(version, int) or version < self._network_floor:
                self.stats["stale_broadcasts"] += 1
                self._limited.warning(
                    "stale-broadcast",
                    "ignored a weight broadcast chunk from run %s v%s (not fresh)",
                    msg.get("pub"),
                    version,
                )
                return
        with self._assembler_lock:
            done = self._assembler.feed(msg)
        if done is not None:
            self._deliver(done[1], done[0])

    def _deliver(self, params: Any, version: int | None) -> None:
        self.network_version = version
        try:
            if self._network_with_version:
                self._network_cb(params, version)
            else:
                self._network_cb(params)
        except Exception:
            log.exception("network callback raised; keeping the receiver running")


def _unsigned_refusal(frames: list) -> str | None:
    """The error text of an unsigned refusal from the learner, if that is what `frames` is."""
    try:
        if len(frames) == 3 and bytes(frames[0].buffer) == MAGIC and len(frames[1]) == 0:
            reply = Envelope(None).unpack(frames)
            if isinstance(reply, dict) and reply.get("auth") is False:
                return str(reply.get("error"))
    except WireError:
        return None
    return None
