"""Message envelope for the safe wire format: version tag, a keyed MAC over every frame, size limits.

A message is the ZeroMQ multipart `[MAGIC, mac, header, *buffers]`. `mac` is empty when no key is
configured; otherwise it is `nonce | tag`: a fresh random 16-byte nonce, and the Poly1305 tag of the frame
count, every frame's length and every frame's bytes under the one-time key HMAC-SHA256(shared key, nonce).
Nothing can be added, dropped, reordered or altered without the shared key. Poly1305 (OpenSSL, via
`cryptography`) runs at several GB/s where HMAC-SHA256 manages about 1 GB/s, so authenticating multi-GB
weight broadcasts costs little. Receivers check the tag, sizes and MAC before parsing the header, so an
unauthenticated peer never reaches msgpack. A MAC alone does not make a message fresh: replays are refused
one level up, by the learner's sessions and anti-replay windows (`freshness.py`), on the fields this MAC
covers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from hiors_jax.transport import codec
from hiors_jax.transport.codec import WireError

MAGIC = b"HJX1"
NONCE_BYTES = 16
MAC_BYTES = NONCE_BYTES + 16
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30
DEFAULT_MAX_FRAMES = 1 << 16
_KEY_LABEL = b"hiors-transport/poly1305-key/"
_LZ4_MAGIC = b"\x04\x22\x4d\x18"
_AGENTLACE_HINT = ' (this looks like an agentlace peer: use wire="agentlace" on both ends)'


class AuthError(WireError):
    """The message's MAC is missing or wrong: the peer does not hold our key."""


def is_agentlace_frame(frame: Any) -> bool:
    """agentlace messages are single LZ4 frames, which start with the LZ4 frame magic number."""
    data = frame.buffer if hasattr(frame, "buffer") else frame
    return bytes(data[:4]) == _LZ4_MAGIC


def normalize_key(key: bytes | str | None) -> bytes | None:
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes) or len(key) < 16:
        raise ValueError("auth_key must be at least 16 bytes (use secrets.token_hex(32) to make one)")
    return key


def _authenticator(key: bytes, nonce: bytes, frames: Sequence[Any]) -> Poly1305:
    mac = Poly1305(hmac.new(key, _KEY_LABEL + nonce, hashlib.sha256).digest())
    mac.update(MAGIC + struct.pack("<Q", len(frames)))
    for frame in frames:
        mac.update(struct.pack("<Q", len(frame)))
        mac.update(frame)
    return mac


def sign(key: bytes, frames: Sequence[Any]) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _authenticator(key, nonce, frames).finalize()


def verify(key: bytes, mac: bytes, frames: Sequence[Any]) -> None:
    if len(mac) != MAC_BYTES:
        raise AuthError("message is not authenticated (no MAC); the peer has no key or a different one")
    try:
        _authenticator(key, mac[:NONCE_BYTES], frames).verify(mac[NONCE_BYTES:])
    except InvalidSignature:
        raise AuthError("message MAC does not match: wrong key, or frames altered or truncated") from None


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
        mac = sign(self.key, body) if self.key is not None else b""
        return [MAGIC, mac, *body]

    def pack_unsigned_error(self, message: str) -> list[Any]:
        """Reply for peers we cannot authenticate: carries no MAC, so a client knows it was refused."""
        header, _ = codec.encode({"ok": False, "error": message, "auth": False})
        return [MAGIC, b"", header]

    def unpack(self, frames: Sequence[Any]) -> Any:
        """Frames are bytes, memoryviews or zmq.Frame objects (their .buffer is used without a copy)."""
        if len(frames) < 3:
            hint = (
                ' (an agentlace peer: use wire="agentlace" on both ends)'
                if frames and is_agentlace_frame(frames[0])
                else ""
            )
            raise WireError(f"message has {len(frames)} frame(s); expected tag, mac and header{hint}")
        if len(frames) > self.max_frames:
            raise WireError(f"message has {len(frames)} frames, limit is {self.max_frames}")
        views = [f.buffer if hasattr(f, "buffer") else memoryview(f) for f in frames]
        total = sum(v.nbytes for v in views)
        if total > self.max_message_bytes:
            raise WireError(f"message of {total} bytes exceeds the limit of {self.max_message_bytes}")
        if bytes(views[0]) != MAGIC:
            hint = _AGENTLACE_HINT if is_agentlace_frame(views[0]) else ""
            raise WireError(f"unknown protocol tag {bytes(views[0][:16])!r}, expected {MAGIC!r}{hint}")
        body = views[2:]
        if self.key is not None:
            verify(self.key, bytes(views[1]), body)
        elif views[1].nbytes not in (0, MAC_BYTES):
            raise WireError("malformed MAC frame")
        return codec.decode(body[0], body[1:])
