"""agentlace's own wire format, for talking to unmodified agentlace peers: one frame of lz4(pickle(obj)).

Unpickling runs code chosen by whoever can reach the port, so this is opt-in (`wire="agentlace"`) and
every endpoint that enables it logs a warning. Decompression is bounded so a small frame cannot expand
into an unbounded allocation.
"""

from __future__ import annotations

import logging
import pickle
from typing import Any

from hiors_jax.transport.codec import WireError

log = logging.getLogger(__name__)

PICKLE_WARNING = (
    'wire="agentlace" unpickles every message it receives: anyone who can reach this port can run code '
    "in this process. Use it only on a trusted network, to talk to unmodified agentlace peers."
)


def _lz4_frame() -> Any:
    try:
        import lz4.frame
    except ImportError as exc:  # only wire="agentlace" needs it
        raise ImportError('wire="agentlace" needs the lz4 package: pip install lz4') from exc
    return lz4.frame


def warn_pickle(role: str) -> None:
    _lz4_frame()  # fail at construction, not at the first message
    log.warning("%s: %s", role, PICKLE_WARNING)


def encode(obj: Any) -> bytes:
    return _lz4_frame().compress(pickle.dumps(obj))


def decode(frame: bytes | memoryview, max_bytes: int) -> Any:
    if len(frame) > max_bytes:
        raise WireError(f"agentlace frame of {len(frame)} bytes exceeds the limit of {max_bytes}")
    lz4_frame = _lz4_frame()
    try:
        data = bytes(frame)
        size = lz4_frame.get_frame_info(data)["content_size"]  # agentlace's frames record it
        if size > max_bytes:
            raise WireError(f"agentlace frame expands to {size} bytes, over the limit of {max_bytes}")
        if size:
            raw = lz4_frame.decompress(data)
        else:  # size not recorded: expand piecewise and stop at the limit
            decompressor, parts, total = lz4_frame.LZ4FrameDecompressor(), [], 0
            while not decompressor.eof:
                part = decompressor.decompress(data if not parts else b"", max_length=min(64 << 20, max_bytes + 1))
                total += len(part)
                if total > max_bytes or (not part and not decompressor.eof):
                    raise WireError(f"agentlace frame is truncated or expands beyond {max_bytes} bytes")
                parts.append(part)
            raw = b"".join(parts)
        if size and len(raw) != size:
            raise WireError("agentlace frame is truncated")
        return pickle.loads(raw)
    except WireError:
        raise
    except Exception as exc:
        raise WireError(f"malformed agentlace frame: {type(exc).__name__}: {exc}") from exc
