"""Message envelope for the safe wire format: version tag, HMAC over every frame, size limits.

A message is the ZeroMQ multipart `[MAGIC, mac, header, *buffers]`. `mac` is empty when no key is
configured; otherwise it is an HMAC-SHA256 over the frame count, every frame's length and the HMAC-SHA256 of
each 16 MiB segment of every frame (header and buffers), so segments can be hashed in parallel and nothing
can be added, dropped, reordered or altered without the key. Receivers check the tag, the sizes and the MAC before
the header is parsed, so an unauthenticated peer never reaches msgpack.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hiors_jax.transport import codec
from hiors_jax.transport.codec import WireError

MAGIC = b"HJX1"
MAC_BYTES = 32
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30
DEFAULT_MAX_FRAMES = 1 << 16
_PARALLEL_HASH_BYTES = 8 << 20  # messages above this are hashed on the pool
_SEGMENT_BYTES = 16 << 20

_hash_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class AuthError(WireError):
    """The message's MAC is missing or wrong: the peer does not hold our key."""


def _pool() -> ThreadPoolExecutor:
    global _hash_pool
    with _pool_lock:
        if _hash_pool is None:
            _hash_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="hiors-transport-hmac")
        return _hash_pool


def normalize_key(key: bytes | str | None) -> bytes | None:
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError("auth_key must be at least 16 bytes (use secrets.token_hex(32) to make one)")
    return key


def _digest(key: bytes, data: Any) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def compute_mac(key: bytes, frames: Sequence[Any]) -> bytes:
    """HMAC over the frame count, each frame's length and the HMACs of its 16 MiB segments. Segments are
    hashed on a thread pool when there is enough data (hashlib releases the GIL), so big weight frames are
    signed and checked at several GB/s on a many-core learner rather than one core's ~1 GB/s."""
    views = [f if isinstance(f, memoryview) else memoryview(f) for f in frames]
    views = [v if v.format == "B" and v.ndim == 1 else v.cast("B") for v in views]
    segments = [[v[s : s + _SEGMENT_BYTES] for s in range(0, max(len(v), 1), _SEGMENT_BYTES)] for v in views]
    flat = [seg for segs in segments for seg in segs]
    if len(flat) > 1 and sum(len(v) for v in views) >= _PARALLEL_HASH_BYTES:
        digests = iter(_pool().map(lambda seg: _digest(key, seg), flat))
    else:
        digests = iter([_digest(key, seg) for seg in flat])
    outer = hmac.new(key, MAGIC + struct.pack("<Q", len(frames)), hashlib.sha256)
    for view, segs in zip(views, segments, strict=True):
        outer.update(struct.pack("<QQ", len(view), len(segs)))
        for _ in segs:
            outer.update(next(digests))
    return outer.digest()


class Envelope:
    """Packs objects into signed multipart messages and unpacks them with every check applied."""

    def __init__(
        self,
        key: bytes | str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_frames: int = DEFAULT_MAX_FRAMES,
    ):
        self.key = normalize_key(key)
        self.max_message_bytes = int(max_message_bytes)
        self.max_frames = int(max_frames)

    def pack(self, obj: Any) -> list[Any]:
        header, buffers = codec.encode(obj)
        body = [header, *buffers]
        mac = compute_mac(self.key, body) if self.key is not None else b""
        return [MAGIC, mac, *body]

    def pack_unsigned_error(self, message: str) -> list[Any]:
        """Reply for peers we cannot authenticate: carries no MAC, so a client knows it was refused."""
        header, _ = codec.encode({"ok": False, "error": message, "auth": False})
        return [MAGIC, b"", header]

    def unpack(self, frames: Sequence[Any]) -> Any:
        """Frames are bytes, memoryviews or zmq.Frame objects (their .buffer is used without a copy)."""
        if len(frames) < 3:
            raise WireError(f"message has {len(frames)} frame(s); expected tag, mac and header")
        if len(frames) > self.max_frames:
            raise WireError(f"message has {len(frames)} frames, limit is {self.max_frames}")
        views = [f.buffer if hasattr(f, "buffer") else memoryview(f) for f in frames]
        total = sum(v.nbytes for v in views)
        if total > self.max_message_bytes:
            raise WireError(f"message of {total} bytes exceeds the limit of {self.max_message_bytes}")
        if bytes(views[0]) != MAGIC:
            raise WireError(f"unknown protocol tag {bytes(views[0][:16])!r} (expected {MAGIC!r})")
        body = views[2:]
        if self.key is not None:
            mac = bytes(views[1])
            if len(mac) != MAC_BYTES:
                raise AuthError("message is not authenticated (no MAC); the peer has no key or a different one")
            if not hmac.compare_digest(mac, compute_mac(self.key, body)):
                raise AuthError("message MAC does not match: wrong key, or frames altered or truncated")
        elif views[1].nbytes not in (0, MAC_BYTES):
            raise WireError("malformed MAC frame")
        return codec.decode(body[0], body[1:])
