"""`TrainerServer`: the learner end. Requests and uploads on a ROUTER socket (REQ/REP pattern; agentlace's
REQ clients connect to it unchanged), weights on PUB.

Differences from agentlace that users can rely on:
* every upload is keyed by (actor id, run epoch, store, seq) and deduplicated in a `Ledger`, so restarts
  of either side and several actors on one store neither lose nor duplicate items;
* safe-wire messages are fresh: each names a learner-issued session and a counter under the MAC, admitted
  once (`freshness.py`), so a captured upload or request replayed to this learner or a restarted one, on
  any connection, has no effect;
* a malformed, oversized, unauthenticated or stale message, or a callback that raises, is logged and
  answered with an error; the server keeps serving;
* weights are versioned, optionally bf16, and chunked.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import zmq

from hiors_jax.transport import legacy
from hiors_jax.transport.codec import WireError
from hiors_jax.transport.config import TrainerConfig
from hiors_jax.transport.datastore import DataStoreBase, new_epoch
from hiors_jax.transport.envelope import DEFAULT_MAX_MESSAGE_BYTES, AuthError, Envelope, normalize_key
from hiors_jax.transport.freshness import DEFAULT_MAX_SESSIONS, SessionTable, StaleMessage
from hiors_jax.transport.ledger import Ledger
from hiors_jax.transport.weights import DEFAULT_CHUNK_BYTES, chunk_messages

log = logging.getLogger(__name__)

WIRES = ("safe", "agentlace")
_MAX_ID_LEN = 256


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind_allowed(host: str, key: bytes | None, allow_insecure: bool, wire: str) -> None:
    if is_loopback(host) or allow_insecure:
        return
    if wire == "agentlace":
        raise ValueError(
            f'binding wire="agentlace" to {host!r} exposes unauthenticated pickle to the network; '
            "pass allow_insecure=True if that network is trusted"
        )
    if key is None:
        raise ValueError(
            f"binding to {host!r} (beyond localhost) requires auth_key (shared with the actors), "
            "or allow_insecure=True to opt out explicitly"
        )


def bind_address(host: str, port: int) -> str:
    host = {"0.0.0.0": "*", "": "*", "localhost": "127.0.0.1"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def set_keepalive(sock: zmq.Socket) -> None:
    """Kernel-level liveness: a peer whose host vanished is dropped within about a minute."""
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)


def _bind(sock: zmq.Socket, address: str, wait_s: float = 3.0) -> None:
    """Bind, waiting briefly if a socket this process just closed still holds the port (zmq closes async)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            sock.bind(address)
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                sock.close(0)
                raise
            time.sleep(0.05)


class _RateLimitedLog:
    """Logs at most one line per reason per second, with a count of the suppressed ones."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, reason: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(reason, (0.0, 0))
        if now - last >= 1.0:
            suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
            self._log.warning(msg + suffix, *args)
            self._last[reason] = (now, 0)
        else:
            self._last[reason] = (last, suppressed + 1)


class TrainerServer:
    def __init__(
        self,
        config: TrainerConfig,
        data_callback: Callable[[str, dict], None] | None = None,
        request_callback: Callable[[str, Any], Any] | None = None,
        log_level: int = logging.INFO,
        *,
        wire: str = "safe",
        auth_key: bytes | str | None = None,
        bind_host: str = "127.0.0.1",
        allow_insecure: bool = False,
        ack: str = "insert",
        ledger_path: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        pub_hwm: int = 1024,
        retain_latest_network: bool = True,
        context: zmq.Context | None = None,
    ):
        """ack="insert": an upload is acknowledged (and the actor forgets it) once inserted; "persist": only
        after `persist()` has saved it with the learner's replay (and the marks with it), so a learner crash
        loses nothing. `ledger_path`: a marks file written by `persist()` and loaded here.
        `retain_latest_network`: keep the newest broadcast (references, no copy) for actors that connect later.
        """
        if wire not in WIRES:
            raise ValueError(f"wire must be one of {WIRES}, got {wire!r}")
        if ack not in ("insert", "persist"):
            raise ValueError(f"ack must be 'insert' or 'persist', got {ack!r}")
        if config.experimental_pipeline_port is not None:
            raise ValueError("experimental_pipeline_port (agentlace PUSH/PULL) is not supported; leave it None")
        key = normalize_key(auth_key)
        if wire == "agentlace":
            if key is not None:
                raise ValueError('wire="agentlace" has no authentication; auth_key cannot be used with it')
            legacy.warn_pickle("TrainerServer")
        check_bind_allowed(bind_host, key, allow_insecure, wire)
        log.setLevel(log_level)
        self.config = config
        self.wire = wire
        self.ack = ack
        self.data_callback = data_callback
        self.request_callback = request_callback
        self.ledger_path = ledger_path
        self.max_message_bytes = max_message_bytes
        self.chunk_bytes = chunk_bytes
        self.retain_latest_network = retain_latest_network
        self.run_id = new_epoch()
        self._config_json = config.to_json()
        self._envelope = Envelope(key, max_message_bytes=max_message_bytes)
        self._stores: dict[str, DataStoreBase] = {}
        self.last_update_id_map: dict[str, int] = {}  # agentlace cursor (wire="agentlace" only)
        self.ledger = Ledger()
        self._sessions = SessionTable(max_sessions=max_sessions)
        if ledger_path is not None:
            self.ledger.restore(Ledger.load_marks(ledger_path))
        self._ingest_lock = threading.RLock()
        self._pub_lock = threading.Lock()
        self._net_lock = threading.Lock()
        self._latest_network: list[dict] = []  # chunks of the newest broadcast, for late joiners
        self._version = 0
        self._request_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hiors-trainer-requests")
        self._deferred: queue.SimpleQueue = queue.SimpleQueue()  # (identity, reply frames) from the worker
        self._requests_in_flight = 0
        self._stop = threading.Event()
        self._served = threading.Event()  # set while no serve loop is running
        self._served.set()
        self._thread: threading.Thread | None = None
        self._limited = _RateLimitedLog()
        self.stats: dict[str, int] = {
            "rejected_messages": 0,
            "callback_errors": 0,
            "rejected_items": 0,
            "skipped_items": 0,
            "stale_messages": 0,
        }
        self.actors: dict[str, dict[str, Any]] = {}
        self._ctx = context or zmq.Context.instance()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)  # libzmq drops a peer sending a bigger frame
        set_keepalive(self._router)
        _bind(self._router, bind_address(bind_host, config.port_number))
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        # Queued chunks pin their (zero-copy) arrays: bound the queue per subscriber (a few PI0 versions at the
        # default chunk size; agentlace's 3 for its single-frame broadcasts) and let TCP keepalive drop dead
        # subscribers so their queues are freed.
        self._pub.setsockopt(zmq.SNDHWM, pub_hwm if wire == "safe" else 3)
        set_keepalive(self._pub)
        try:
            _bind(self._pub, bind_address(bind_host, config.broadcast_port))
        except zmq.ZMQError:
            self._router.close(0)
            raise

    # ---- agentlace API -------------------------------------------------------------------------------
    def register_data_store(self, name: str, data_store: DataStoreBase) -> None:
        self._stores[name] = data_store
        self.last_update_id_map[name] = -1

    def data_store(self, name: str) -> DataStoreBase:
        return self._stores[name]

    def store_names(self) -> list[str]:
        return list(self._stores)

    def start(self, threaded: bool = False) -> None:
        if threaded:
            self._thread = threading.Thread(target=self._serve, name="hiors-trainer-server", daemon=True)
            self._thread.start()
        else:
            self._serve()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self._served.wait(timeout=5):  # start(threaded=False) runs the loop in the caller's thread
            log.warning("server loop did not stop within 5 s")
        self._request_worker.shutdown(wait=False, cancel_futures=True)
        with self._pub_lock:
            self._router.close(0)
            self._pub.close(0)

    def publish_network(self, params: Any, *, version: int | None = None, dtype: Any = None) -> int:
        """Broadcast params (a nested dict of arrays; numpy or jax). Returns the version number sent.

        Arrays are sent without copying: do not modify numpy leaves in place after publishing them."""
        with self._pub_lock:
            self._version = self._version + 1 if version is None else int(version)
            if self.wire == "agentlace":
                self._pub.send(legacy.encode(params), copy=False)
                return self._version
            messages = chunk_messages(params, self._version, self.run_id, dtype=dtype, chunk_bytes=self.chunk_bytes)
            for msg in messages:
                self._pub.send_multipart(self._envelope.pack(msg), copy=False)
            if self.retain_latest_network:
                with self._net_lock:
                    self._latest_network = messages
            return self._version

    def live_actors(self, within_s: float = 10.0) -> list[str]:
        """Actors heard from (upload, heartbeat or request) in the last `within_s` seconds."""
        now = time.time()
        return [a for a, info in list(self.actors.items()) if now - info.get("last_seen", 0.0) <= within_s]

    # ---- persistence hook ----------------------------------------------------------------------------
    def persist(self, save_fn: Callable[[list], None] | None = None) -> list:
        """Pause inserts, call `save_fn(marks)` (save the replay buffer together with these marks, atomically),
        write `ledger_path` if set, then acknowledge everything covered to the actors. Returns the marks."""
        with self._ingest_lock:
            marks = self.ledger.snapshot()
            if save_fn is not None:
                save_fn(marks)
            if self.ledger_path is not None:
                Ledger.save_marks(self.ledger_path, marks)
            self.ledger.commit(marks)
            return marks

    def restore_marks(self, marks: list) -> None:
        """Load marks saved with the replay buffer (after a learner restart), before `start`."""
        with self._ingest_lock:
            self.ledger.restore(marks)

    # ---- serving ---------------------------------------------------------------------------------------
    def _serve(self) -> None:
        self._served.clear()
        try:
            self._serve_loop()
        finally:
            self._served.set()

    def _serve_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                self._send_deferred_replies()
                if not poller.poll(5 if self._requests_in_flight else 100):
                    continue
                frames = self._router.recv_multipart(copy=False)
            except zmq.ZMQError as exc:
                if self._stop.is_set():
                    break
                log.error("server socket error: %s", exc)
                continue
            try:
                self._handle(frames)
            except Exception:  # the loop must survive anything
                log.exception("unexpected error while handling a message")

    def _handle(self, frames: list) -> None:
        identity = frames[0].bytes
        if len(frames) < 2 or len(frames[1]) != 0:
            self._reject("envelope", "message without the empty delimiter frame (not a REQ/DEALER peer)")
            return
        body = frames[2:]
        if self.wire == "agentlace":
            reply = [self._handle_legacy(body)]
        else:
            reply = self._handle_safe(body, identity)
        if reply is not None:
            self._router.send_multipart([identity, b"", *reply], copy=False)

    def _defer_request(self, identity: bytes, msg: dict) -> None:
        """Run the request callback (wandb logging and the like) on a worker so uploads are not held up."""

        def run() -> None:
            reply = self._request(msg.get("type"), msg.get("payload"))
            self._deferred.put((identity, self._pack_reply(reply, msg)))

        self._requests_in_flight += 1
        self._request_worker.submit(run)

    def _send_deferred_replies(self) -> None:
        while not self._deferred.empty():
            identity, frames = self._deferred.get_nowait()
            self._requests_in_flight -= 1
            self._router.send_multipart([identity, b"", *frames], copy=False)

    def _reject(self, reason: str, detail: str) -> None:
        self.stats["rejected_messages"] += 1
        self._limited.warning(reason, "rejected message: %s", detail)

    def _handle_safe(self, body: list, identity: bytes) -> list | None:
        try:
            msg = self._envelope.unpack(body)
        except AuthError as exc:
            self._reject("auth", str(exc))
            return self._envelope.pack_unsigned_error("unauthenticated: " + str(exc))
        except WireError as exc:
            self._reject("malformed", str(exc))
            return self._envelope.pack_unsigned_error("malformed: " + str(exc))
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
            self._reject("invalid", "message is not a dict with a string 't' field")
            return self._pack_reply({"ok": False, "error": "message is not a dict with a string 't' field"}, {})
        try:
            if msg["t"] == "session":
                return self._pack_reply(self._open_session(msg), msg)
            # Freshness before anything else: a replayed or duplicated message has no effect at all.
            self._sessions.admit(msg.get("sid"), msg.get("rid"))
        except StaleMessage as exc:
            self.stats["stale_messages"] += 1
            self._reject("stale", f"stale message ({msg['t']!r}): {exc}")
            return self._pack_reply({"ok": False, "error": f"stale: {exc}", "stale": True}, msg)
        except WireError as exc:
            self._reject("invalid", str(exc))
            return self._pack_reply({"ok": False, "error": str(exc)}, msg)
        try:
            if msg["t"] == "req" and self.request_callback is not None:
                self._seen(msg.get("actor"))
                self._defer_request(identity, msg)
                return None
            reply = self._dispatch(msg)
        except WireError as exc:
            self._reject("invalid", str(exc))
            reply = {"ok": False, "error": str(exc)}
        return self._pack_reply(reply, msg)

    def _pack_reply(self, reply: dict, msg: dict) -> list:
        """Sign `reply`, bound to the request it answers (its session and counter) and to this learner run."""
        reply.update(run=self.run_id, rid=msg.get("rid"), sid=msg.get("sid"))
        try:
            return self._envelope.pack(reply)
        except WireError as exc:  # e.g. a request callback returned an object msgpack cannot carry
            log.error("reply to %r could not be encoded: %s", msg.get("t"), exc)
            error = f"reply could not be encoded: {exc}"
            return self._envelope.pack(
                {"ok": False, "error": error, "run": self.run_id, "rid": msg.get("rid"), "sid": msg.get("sid")}
            )

    def _open_session(self, msg: dict) -> dict:
        nonce = msg.get("nonce")
        if not isinstance(nonce, bytes) or not 16 <= len(nonce) <= 64:
            raise WireError("session request needs a random nonce of 16..64 bytes")
        return {"ok": True, "session": self._sessions.open(), "nonce": nonce, "network": self._network_info()}

    def _dispatch(self, msg: dict) -> dict:
        kind = msg["t"]
        if kind == "upload":
            return self._upload(msg)
        if kind == "ping":  # heartbeat; with "streams" it also reports their marks
            self._seen(msg.get("actor"))
            reply = {"ok": True, "network": self._network_info()}
            if "streams" in msg and isinstance(msg.get("actor"), str):
                reply["marks"] = self._marks(msg["actor"], msg["streams"])
            return reply
        if kind == "hello":
            return self._hello(msg)
        if kind == "req":
            return self._request(msg.get("type"), msg.get("payload"))
        if kind == "net_get":
            return self._net_get(msg)
        raise WireError(f"unknown message type {kind!r}")

    def _seen(self, actor: Any) -> None:
        if isinstance(actor, str) and len(actor) <= _MAX_ID_LEN:
            info = self.actors.setdefault(actor, {"items": 0, "uploads": 0})
            info["last_seen"] = time.time()

    def _hello(self, msg: dict) -> dict:
        if msg.get("config") != self._config_json:
            return {"ok": False, "error": "incompatible config", "config": self._config_json}
        actor = msg.get("actor")
        streams = msg.get("streams", [])
        if not isinstance(actor, str) or not 0 < len(actor) <= _MAX_ID_LEN or not isinstance(streams, list):
            raise WireError("hello needs an actor id string and a list of streams")
        self._seen(actor)
        marks = self._marks(actor, streams)
        return {"ok": True, "marks": marks, "network": self._network_info()}

    def _network_info(self) -> list:
        """[chunk count, version] of the newest retained broadcast ([0, None] when there is none)."""
        with self._net_lock:
            chunks = self._latest_network
        return [len(chunks), chunks[0]["v"] if chunks else None]

    def _marks(self, actor: str, streams: Any) -> list[list[int]]:
        """[accepted, committed] per [store, epoch, actor_id] row."""
        if not isinstance(streams, list) or len(streams) > 10_000:
            raise WireError("streams must be a list")
        marks = []
        for row in streams:
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[1], int)):
                raise WireError(f"bad stream entry {row!r:.80}")
            key = (row[2] if isinstance(row[2], str) else actor, row[1], row[0])
            marks.append([self.ledger.mark(key), self.ledger.committed_mark(key)])
        return marks

    def _upload(self, msg: dict) -> dict:
        store_name, actor, epoch = msg.get("store"), msg.get("actor"), msg.get("epoch")
        first, items, released = msg.get("first"), msg.get("items"), msg.get("released", -1)
        if not isinstance(actor, str) or not 0 < len(actor) <= _MAX_ID_LEN:
            raise WireError("upload needs an actor id string")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (epoch, first, released)) or first < 0:
            raise WireError("upload needs integer epoch, first and released fields")
        if not isinstance(items, list):
            raise WireError("upload items must be a list")
        skipped = msg.get("skipped", [])
        count = len(items) + (len(skipped) if isinstance(skipped, list) else 0)
        if not (
            isinstance(skipped, list)
            and all(isinstance(s, int) and not isinstance(s, bool) and first <= s < first + count for s in skipped)
            and len(set(skipped)) == len(skipped)
        ):
            raise WireError("upload 'skipped' must list distinct ids within the upload's range")
        if store_name not in self._stores:
            return {"ok": False, "error": f"Invalid datastore name {store_name!r}"}
        self._seen(actor)
        key = (actor, epoch, store_name)
        store = self._stores[store_name]
        rejected: list[list] = []
        with self._ingest_lock:
            mark = self.ledger.mark(key)
            if first > mark + 1:
                if first != released + 1:
                    return {"ok": False, "error": "gap", "accepted": mark, "committed": self.ledger.committed_mark(key)}
                log.warning(
                    "actor %s store %s epoch %d: items %d..%d were acknowledged to an earlier learner run that did "
                    "not persist them (use ack='persist' with persist() to keep them across restarts)",
                    actor, store_name, epoch, mark + 1, first - 1,
                )  # fmt: skip
            skip = max(0, mark + 1 - first)
            missing = set(skipped)
            pending = iter(items)
            inserted = []
            for seq in range(first, first + count):
                item = None if seq in missing else next(pending)
                if seq <= mark:
                    continue  # a duplicate: inserted before
                if seq in missing:
                    # The actor's journal record was corrupt (quarantined there, with file and offset).
                    self.stats["skipped_items"] += 1
                    log.error(
                        "actor %s store %s epoch %d: item %d was lost to a corrupt journal record on the "
                        "actor (quarantined there); the stream continues",
                        actor,
                        store_name,
                        epoch,
                        seq,
                    )
                else:
                    try:
                        store.insert(item)
                        inserted.append(item)
                    except Exception as exc:
                        # A poison item must not stall the stream: refuse it loudly on both ends and go on.
                        # A ValueError is the store's own verdict on the data (its message says what is wrong,
                        # e.g. a resend of an episode it already committed): no traceback for that.
                        self.stats["rejected_items"] += 1
                        log.error("store %r rejected item %d from actor %s: %s", store_name, seq, actor, exc,
                                  exc_info=not isinstance(exc, ValueError))  # fmt: skip
                        rejected.append([seq, f"{type(exc).__name__}: {exc}"])
                self.ledger.advance(key, seq, commit=self.ack == "insert")
            info = self.actors[actor]
            info["items"] += len(inserted)
            info["uploads"] += 1
            accepted, committed = self.ledger.mark(key), self.ledger.committed_mark(key)
        if inserted and self.data_callback is not None:
            payload = {"data": inserted, "last_id": accepted, "actor_id": actor, "epoch": epoch}
            self._call_safely(self.data_callback, store_name, payload)
        reply = {"ok": True, "accepted": accepted, "committed": committed, "rejected": rejected}
        reply["duplicates"] = min(skip, count)
        return reply

    def _request(self, kind: Any, payload: Any) -> dict:
        if not isinstance(kind, str) or kind not in self.config.request_types:
            return {"ok": False, "error": f"Invalid type or payload: request type {kind!r} is not configured"}
        if self.request_callback is None:
            return {"ok": True, "payload": {}}
        result = self._call_safely(self.request_callback, kind, payload)
        if result is _FAILED:
            return {"ok": False, "error": "request callback raised (see the learner's log)"}
        return {"ok": True, "payload": result}

    def _net_get(self, msg: dict) -> dict:
        index = msg.get("i")
        with self._net_lock:
            chunks = self._latest_network
        if not isinstance(index, int) or not 0 <= index < len(chunks):
            raise WireError(f"no network chunk {index!r} (have {len(chunks)})")
        return {"ok": True, "chunk": chunks[index]}

    def _call_safely(self, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            self.stats["callback_errors"] += 1
            log.exception("callback %s raised; the server keeps serving", getattr(fn, "__name__", fn))
            return _FAILED

    # ---- agentlace wire ------------------------------------------------------------------------------
    def _handle_legacy(self, body: list) -> bytes:
        if len(body) != 1:
            self._reject("malformed", f"agentlace message must be one frame, got {len(body)}")
            return legacy.encode({"success": False, "message": "Invalid type or payload"})
        try:
            msg = legacy.decode(body[0].buffer, self.max_message_bytes)
        except WireError as exc:
            self._reject("malformed", str(exc))
            return legacy.encode({"success": False, "message": "Invalid type or payload"})
        try:
            return legacy.encode(self._dispatch_legacy(msg))
        except Exception:
            self.stats["callback_errors"] += 1
            log.exception("error while handling an agentlace request; the server keeps serving")
            return legacy.encode({"success": False, "message": "server error (see the learner's log)"})

    def _dispatch_legacy(self, msg: Any) -> Any:
        """Request handling of agentlace's TrainerServer, reply for reply."""
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "hash":
            return {"success": True, "payload": self._config_json}
        if kind == "get_last_update_id":
            name = (msg.get("payload") or {}).get("store_name")
            if name not in self._stores:
                return {"success": False, "message": "Invalid datastore name"}
            return {"success": True, "payload": self.last_update_id_map[name]}
        if kind == "datastore":
            name = msg.get("store_name")
            if name not in self._stores:
                return {"success": False, "message": "Invalid datastore name"}
            payload = msg["payload"]
            with self._ingest_lock:
                self._stores[name].batch_insert(payload["data"])
            if self.data_callback is not None:
                self._call_safely(self.data_callback, name, payload)
            self.last_update_id_map[name] = payload["last_id"]
            return {"success": True}
        if kind in self.config.request_types:
            if self.request_callback is None:
                return {}
            result = self._call_safely(self.request_callback, kind, msg.get("payload"))
            return {"success": False, "message": "request callback raised"} if result is _FAILED else result
        return {"success": False, "message": "Invalid type or payload"}


_FAILED = object()
