"""Versioned, chunked weight broadcasts: nested param dicts <-> bounded messages, and a swap-safe slot.

`chunk_messages` flattens a nested dict of arrays ('PaliGemma' / 'llm' / 'layers' / ... keys), optionally
casts floating leaves to bfloat16, and cuts the leaf bytes into messages of about `chunk_bytes` (a leaf
larger than that is split across messages). Pieces are views of the leaf memory, so nothing is copied on the
sending side beyond the optional cast. `NetworkAssembler` validates and reassembles one version at a time;
a leaf that arrived in a single piece is a zero-copy view of the received frame.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from hiors_jax.transport import codec
from hiors_jax.transport.codec import WireError

DEFAULT_CHUNK_BYTES = 64 << 20
SPLIT_BYTES = 1 << 30  # leaves up to 1 GiB (PI0's bf16 embedding: 1.05e9 bytes) travel as one frame
MAX_CHUNK_FRAME_BYTES = SPLIT_BYTES + (16 << 20)  # receivers' per-frame limit for weight messages
_LOW_PRECISION_FLOATS = {np.dtype(ml_dtypes.bfloat16)}


def is_float_dtype(dtype: np.dtype) -> bool:
    return dtype.kind == "f" or dtype in _LOW_PRECISION_FLOATS


def flatten_params(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise TypeError(f"param tree keys must be str, got {key!r} at {'/'.join(prefix) or '<root>'}")
            yield from flatten_params(value, (*prefix, key))
    else:
        yield prefix, tree


def unflatten_params(pairs: list[tuple[tuple[str, ...], Any]]) -> dict:
    root: dict = {}
    for path, leaf in pairs:
        node = root
        for key in path[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise WireError(f"param path {'/'.join(path)} collides with a leaf")
        if path[-1] in node:
            raise WireError(f"param path {'/'.join(path)} appears twice")
        node[path[-1]] = leaf
    return root


def leaf_to_host(leaf: Any, dtype: np.dtype | None) -> np.ndarray:
    """Cast (on device for jax arrays) then fetch to host as a C-contiguous numpy array."""
    if dtype is not None and hasattr(leaf, "dtype") and is_float_dtype(np.dtype(leaf.dtype)) and leaf.dtype != dtype:
        leaf = leaf.astype(dtype)
    arr = np.asarray(leaf, order="C")  # not ascontiguousarray: it turns a 0-d leaf (a temperature) into shape (1,)
    if arr.dtype == object:
        raise TypeError("param leaves must be numeric arrays")
    return arr


def chunk_messages(
    params: Mapping,
    version: int,
    publisher: int,
    dtype: Any = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    split_bytes: int = SPLIT_BYTES,
) -> list[dict]:
    """Messages of one broadcast: small leaves grouped into messages of about `chunk_bytes`, larger leaves
    one per message, leaves over `split_bytes` cut in pieces. Chunk 0 carries the leaf table."""
    target = np.dtype(dtype) if dtype is not None else None
    pairs = [(path, leaf_to_host(leaf, target)) for path, leaf in flatten_params(params)]
    if not pairs or pairs[0][0] == ():
        raise TypeError("publish_network expects a non-empty nested dict of arrays")
    table = [[list(path), codec.dtype_to_wire(a.dtype), list(a.shape)] for path, a in pairs]
    chunks: list[list] = [[]]
    room = chunk_bytes
    for index, (_, arr) in enumerate(pairs):
        raw = arr.reshape(-1).view(np.uint8)
        if raw.nbytes > room and chunks[-1]:
            chunks.append([])  # a leaf that does not fit starts a fresh message instead of straddling two
            room = chunk_bytes
        # Leaves travel whole (one zero-copy frame each side) unless they exceed split_bytes.
        for start in range(0, max(raw.nbytes, 1), split_bytes):
            if start:
                chunks.append([])
                room = chunk_bytes
            piece = raw[start : start + split_bytes]
            chunks[-1].append([index, start, piece])
            room -= piece.nbytes
        if room <= 0:
            chunks.append([])
            room = chunk_bytes
    if not chunks[-1]:
        chunks.pop()
    messages = []
    for i, pieces in enumerate(chunks):
        msg = {"t": "net", "pub": publisher, "v": version, "i": i, "n": len(chunks), "pieces": pieces}
        if i == 0:
            msg["table"] = table
        messages.append(msg)
    return messages


class NetworkAssembler:
    """Collects the chunks of the newest version and returns the nested tree once all have arrived."""

    def __init__(self, max_total_bytes: int = 64 << 30):
        self.max_total_bytes = max_total_bytes
        self._key: tuple[int, int] | None = None
        self._table: list | None = None
        self._chunks: dict[int, list] = {}
        self._count = 0
        self.completed: tuple[int, int] | None = None  # (publisher, version) last delivered
        self.abandoned = 0  # incomplete versions dropped (chunks lost to a full queue or a late join)

    def feed(self, msg: Any) -> tuple[int, dict] | None:
        if not isinstance(msg, dict) or msg.get("t") != "net":
            raise WireError("not a weight broadcast message")
        pub, version, i, n = msg.get("pub"), msg.get("v"), msg.get("i"), msg.get("n")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (pub, version, i, n)) or not 0 <= i < n:
            raise WireError(f"bad weight chunk header (pub={pub!r}, v={version!r}, i={i!r}, n={n!r})")
        key = (pub, version)
        if self.completed is not None and key[0] == self.completed[0] and version <= self.completed[1]:
            return None  # an old or duplicate version
        if key != self._key:
            # A different version started: whatever was incomplete is abandoned (a newer one supersedes it).
            if self._chunks:
                self.abandoned += 1
            self._key, self._table, self._chunks, self._count = key, None, {}, n
        if n != self._count:
            raise WireError(f"weight chunk count changed within version {version}")
        if "table" in msg:
            self._table = self._check_table(msg["table"])
        self._chunks[i] = msg.get("pieces")
        if len(self._chunks) < n or self._table is None:
            return None
        tree = self._assemble()
        self.completed = key
        self._key, self._table, self._chunks = None, None, {}
        return version, tree

    def _check_table(self, table: Any) -> list:
        if not isinstance(table, list) or not table:
            raise WireError("weight table missing or empty")
        out, total = [], 0
        for row in table:
            if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], list)):
                raise WireError(f"bad weight table row {row!r:.80}")
            path = row[0]
            if not path or not all(isinstance(k, str) for k in path):
                raise WireError(f"bad param path {path!r:.80}")
            dtype = codec.dtype_from_wire(row[1])
            shape = codec._shape_from_wire(row[2])
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            total += nbytes
            out.append((tuple(path), dtype, shape, nbytes))
        if total > self.max_total_bytes:
            raise WireError(f"weights of {total} bytes exceed the limit {self.max_total_bytes}")
        return out

    def _assemble(self) -> dict:
        pieces_by_leaf: dict[int, list] = {}
        for i in range(self._count):
            pieces = self._chunks[i]
            if not isinstance(pieces, list):
                raise WireError(f"weight chunk {i} has no piece list")
            for piece in pieces:
                if not (isinstance(piece, list) and len(piece) == 3 and isinstance(piece[2], np.ndarray)):
                    raise WireError(f"bad weight piece in chunk {i}")
                index, start, data = piece
                if not (isinstance(index, int) and 0 <= index < len(self._table) and isinstance(start, int)):
                    raise WireError(f"weight piece refers to leaf {index!r} / offset {start!r}")
                pieces_by_leaf.setdefault(index, []).append((start, data.reshape(-1).view(np.uint8)))
        pairs = []
        for index, (path, dtype, shape, nbytes) in enumerate(self._table):
            pieces = sorted(pieces_by_leaf.get(index, []), key=lambda p: p[0])
            if len(pieces) == 1 and pieces[0][0] == 0 and pieces[0][1].nbytes == nbytes:
                leaf = pieces[0][1].view(dtype).reshape(shape)  # zero-copy view of the received frame
            else:
                buf = np.empty(nbytes, np.uint8)
                pos = 0
                for start, data in pieces:
                    if start != pos or start + data.nbytes > nbytes:
                        raise WireError(f"weight leaf {'/'.join(path)} has a gap or overlap at byte {start}")
                    buf[start : start + data.nbytes] = data
                    pos += data.nbytes
                if pos != nbytes:
                    raise WireError(f"weight leaf {'/'.join(path)} got {pos} of {nbytes} bytes")
                leaf = buf.view(dtype).reshape(shape)
            pairs.append((path, leaf))
        return unflatten_params(pairs)


class ParamsSlot:
    """Holds the newest (version, params). Use `set` as the network callback and `get` once per inference:
    the tree a caller got stays whole and unchanged, so a swap lands between two inferences, never inside one."""

    def __init__(self, params: Any = None, version: int = -1):
        self._cond = threading.Condition()
        self._value = (version, params)

    def set(self, params: Any, version: int | None = None) -> None:
        with self._cond:
            self._value = (self._value[0] + 1 if version is None else version, params)
            self._cond.notify_all()

    def get(self) -> tuple[int, Any]:
        with self._cond:
            return self._value

    def wait_for(self, predicate: Callable[[int], bool], timeout: float) -> tuple[int, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self._value[0]), timeout=timeout):
                raise TimeoutError(f"no params satisfying the condition within {timeout}s (have v{self._value[0]})")
            return self._value
