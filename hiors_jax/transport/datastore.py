"""Data stores with agentlace's API; `QueuedDataStore` keeps every item until the learner has it.

agentlace's `QueuedDataStore` is a ring that silently overwrites items the learner never got. Here each
item gets a sequence id inside a *stream* (one run of one store, named by a random 63-bit run epoch) and
stays until the learner acknowledges it. The store is bounded: when `capacity` unacknowledged items are
held, `insert` blocks (backpressure) or, with `overflow="drop_oldest"`, drops the oldest with a warning
and a counter. With `spill_dir` every insert is first appended to a journal on disk, so a killed actor
loses nothing it inserted: the next process with the same `spill_dir` finds the old streams and resends
them under their original ids, and the learner drops what it already had. Journal records carry checksums:
a damaged one (bit rot, a zeroed page, a torn write) is quarantined under `spill_dir/quarantine/`, counted
and logged with its file and byte offset; its id is reported to the learner as skipped and every other item
is still delivered exactly once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiors_jax.transport import codec

log = logging.getLogger(__name__)

_MAGIC = b"HJR2"
_HEAD_FIELDS = struct.Struct("<4sQIIQI")  # magic, seq, header length, buffer count, body length, body CRC32
_CRC = struct.Struct("<I")
_HEAD = struct.Struct("<4sQIIQII")  # the fields above, then the CRC32 of those fields
_LEN = struct.Struct("<Q")


class QueueFullError(RuntimeError):
    """`insert` waited `insert_timeout` seconds and the store was still full of unacknowledged items."""


def new_epoch() -> int:
    return secrets.randbits(62) + 1


def approx_nbytes(obj: Any) -> int:
    """Payload size estimate used to cut uploads into bounded messages."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(approx_nbytes(v) for v in obj.values()) + 16 * len(obj)
    if isinstance(obj, list | tuple):
        return sum(approx_nbytes(v) for v in obj) + 8
    if isinstance(obj, str | bytes):
        return len(obj) + 8
    if hasattr(obj, "nbytes"):
        return int(obj.nbytes)
    return 16


class DataStoreBase:
    """agentlace's abstract store. Server-side stores (replay buffers) implement `insert` and `__len__`."""

    def __init__(self, capacity: int):
        self.capacity = capacity

    def latest_data_id(self) -> int:
        raise NotImplementedError

    def get_latest_data(self, from_id: int) -> list:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def insert(self, data: Any) -> Any:
        raise NotImplementedError

    def batch_insert(self, batch: Iterable[Any]) -> None:
        for data in batch:
            self.insert(data)


class CorruptRecord(Exception):
    """A journal record failed its checksum or could not be decoded (it has been quarantined)."""


@dataclass(frozen=True)
class QuarantinedSpan:
    """Bytes of a segment that hold no valid record, copied aside before the segment can be deleted."""

    segment: Path
    offset: int
    length: int
    reason: str
    copy: Path


class _Journal:
    """Append-only segment files holding one stream's items; a segment is deleted once fully acknowledged.

    Each record is `head | body`: head = magic, seq, header length, buffer count, body length, body CRC32 and
    a CRC32 of the head itself; body = msgpack header, buffer lengths, buffers. A record that fails a check
    (bit flips, a zeroed region, a garbage length, a torn tail) is copied to `quarantine_dir`, counted and
    logged with its file and byte offset, and reading resynchronises at the next valid record, so one bad
    record costs that record only.
    """

    def __init__(
        self, directory: Path, fsync: bool, segment_bytes: int, quarantine_dir: Path, quarantined: list[QuarantinedSpan]
    ):
        self.dir = directory
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.quarantine_dir = quarantine_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index: dict[int, tuple[Path, int]] = {}
        self.segments: dict[Path, int] = {}  # path -> last seq written to it
        self.first_seq: int | None = None  # lowest seq the surviving segments may hold (from their names)
        self.quarantined = quarantined  # shared with the store: every span its journals found
        self._fds: dict[Path, int] = {}
        self._writer: Any = None
        self._writer_path: Path | None = None
        self._scan()

    def _scan(self) -> None:
        for path in sorted(self.dir.glob("seg-*.log")):
            data = path.read_bytes()
            offset, last, bad_from = 0, -1, None
            while offset < len(data):
                record = _parse_record(data, offset)
                if isinstance(record, str):  # not a valid record here: find the next one
                    if bad_from is None:
                        bad_from, reason = offset, record
                    found = data.find(_MAGIC, offset + 1)
                    offset = len(data) if found < 0 else found
                    continue
                if bad_from is not None:
                    self._quarantine(path, data[bad_from:offset], bad_from, reason)
                    bad_from = None
                seq, end = record
                self.index[seq] = (path, offset)
                last = max(last, seq)
                offset = end
            if bad_from is not None:
                self._quarantine(path, data[bad_from:], bad_from, reason + " (at the end of the file)")
            self.segments[path] = last
            first = _segment_first_seq(path)
            if first is not None:
                self.first_seq = first if self.first_seq is None else min(self.first_seq, first)

    def _quarantine(self, path: Path, raw: bytes, offset: int, reason: str) -> None:
        """Copy `raw` (found at byte `offset` of `path`) aside, count it and say where it was."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        copy = self.quarantine_dir / f"{self.dir.name}-{path.name}@{offset}.bad"
        copy.write_bytes(raw)
        self.quarantined.append(QuarantinedSpan(path, offset, len(raw), reason, copy))
        log.error(
            "journal %s: bytes %d..%d hold no valid record (%s); quarantined to %s, the other records are kept",
            path, offset, offset + len(raw), reason, copy,
        )  # fmt: skip

    def append(self, seq: int, item: Any) -> None:
        header, buffers = codec.encode(item)
        if self._writer is None or self._writer.tell() >= self.segment_bytes:
            self._rotate(seq)
        offset = self._writer.tell()
        lens = b"".join(_LEN.pack(len(b)) for b in buffers)
        crc = zlib.crc32(lens, zlib.crc32(header))
        for b in buffers:
            crc = zlib.crc32(b, crc)
        body_len = len(header) + len(lens) + sum(len(b) for b in buffers)
        self._writer.write(_pack_head(seq, len(header), len(buffers), body_len, crc))
        self._writer.write(header)
        self._writer.write(lens)
        for b in buffers:
            self._writer.write(b)
        self._writer.flush()  # in the OS page cache now: survives SIGKILL of this process
        if self.fsync:
            os.fsync(self._writer.fileno())
        self.index[seq] = (self._writer_path, offset)
        self.segments[self._writer_path] = seq

    def _rotate(self, seq: int) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer_path = self.dir / f"seg-{seq:012d}.log"
        self._writer = open(self._writer_path, "ab")  # noqa: SIM115 (kept open across appends)
        self.segments[self._writer_path] = seq - 1

    def read(self, seq: int) -> Any:
        """The item stored under `seq`; raises CorruptRecord (after quarantining it) if it no longer checks."""
        path, offset = self.index[seq]
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        head = os.pread(fd, _HEAD.size, offset)
        parsed = _parse_head(head, 0, len(head))
        if isinstance(parsed, str):
            return self._corrupt(seq, path, offset, head, parsed)
        _, header_len, nbuf, body_len, crc = parsed
        body = os.pread(fd, body_len, offset + _HEAD.size)
        if len(body) != body_len or zlib.crc32(body) != crc:
            return self._corrupt(seq, path, offset, head + body, "body checksum mismatch")
        view = memoryview(body)
        lens = [_LEN.unpack_from(view, header_len + i * _LEN.size)[0] for i in range(nbuf)]
        pos = header_len + nbuf * _LEN.size
        buffers = []
        for n in lens:
            buffers.append(view[pos : pos + n])
            pos += n
        try:
            return codec.decode(view[:header_len], buffers)
        except codec.WireError as exc:
            return self._corrupt(seq, path, offset, head + body, f"undecodable item: {exc}")

    def _corrupt(self, seq: int, path: Path, offset: int, data: bytes, reason: str) -> Any:
        self.index.pop(seq, None)
        self._quarantine(path, data, offset, f"record {seq}: {reason}")
        raise CorruptRecord(f"journal {path}: record {seq} at byte {offset}: {reason}")

    def release(self, first: int, upto: int) -> None:
        for seq in range(first, upto + 1):
            self.index.pop(seq, None)
        for path, last in list(self.segments.items()):
            if last <= upto and path != self._writer_path:
                fd = self._fds.pop(path, None)
                if fd is not None:
                    os.close(fd)
                path.unlink(missing_ok=True)
                del self.segments[path]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def remove(self) -> None:
        self.close()
        for path in self.dir.glob("*"):
            path.unlink(missing_ok=True)
        self.dir.rmdir()


def _pack_head(seq: int, header_len: int, nbuf: int, body_len: int, body_crc: int) -> bytes:
    fields = _HEAD_FIELDS.pack(_MAGIC, seq, header_len, nbuf, body_len, body_crc)
    return fields + _CRC.pack(zlib.crc32(fields))


def _parse_head(data: bytes, offset: int, size: int) -> tuple[int, int, int, int, int] | str:
    """(seq, header length, buffer count, body length, body CRC) of the head at `offset`, or why it is not one."""
    if offset + _HEAD.size > size:
        return "incomplete record head"
    magic, seq, header_len, nbuf, body_len, body_crc, head_crc = _HEAD.unpack_from(data, offset)
    if magic != _MAGIC:
        return "no record marker"
    if zlib.crc32(data[offset : offset + _HEAD_FIELDS.size]) != head_crc:
        return "record head checksum mismatch"
    if header_len + nbuf * _LEN.size > body_len:
        return "inconsistent record lengths"
    return seq, header_len, nbuf, body_len, body_crc


def _parse_record(data: bytes, offset: int) -> tuple[int, int] | str:
    """(seq, end offset) of the valid record at `offset`, or the reason there is none."""
    head = _parse_head(data, offset, len(data))
    if isinstance(head, str):
        return head
    seq, _, _, body_len, body_crc = head
    start = offset + _HEAD.size
    end = start + body_len
    if end > len(data):
        return f"record {seq} is cut short ({len(data) - start} of {body_len} body bytes)"
    if zlib.crc32(memoryview(data)[start:end]) != body_crc:
        return f"record {seq}: body checksum mismatch"
    return seq, end


def _segment_first_seq(path: Path) -> int | None:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return None


class Stream:
    """Consecutive items `first_seq..next_seq-1` of one store run; ids are never reused."""

    def __init__(self, store: QueuedDataStore, epoch: int, journal: _Journal | None, actor_id: str | None):
        self.store = store
        self.epoch = epoch
        self.journal = journal
        self.actor_id = actor_id
        self.items: deque[Any] = deque()  # in-memory items when there is no journal
        self.first_seq = 0
        self.next_seq = 0
        self.recovered = False
        if journal is not None and journal.index:
            # Records below the oldest valid one but inside a surviving segment were quarantined (or already
            # acknowledged): starting at the segment's first seq lets the learner skip past them.
            self.first_seq = min(min(journal.index), journal.first_seq if journal.first_seq is not None else 1 << 62)
            self.next_seq = max(journal.index) + 1
            self.recovered = True

    def __len__(self) -> int:
        return self.next_seq - self.first_seq

    def bind(self, actor_id: str) -> str:
        """Record which actor uploads this stream (kept in the journal so a restart reuses the same key)."""
        with self.store._cond:
            if self.actor_id is None:
                self.actor_id = actor_id
                if self.journal is not None:
                    meta = self.journal.dir / "meta.json"
                    tmp = meta.with_suffix(".tmp")
                    tmp.write_text(json.dumps({"actor_id": actor_id, "epoch": self.epoch}))
                    os.replace(tmp, meta)
            return self.actor_id

    def _get(self, seq: int) -> Any:
        """The item `seq`; raises CorruptRecord if its journal record is missing or bad (quarantined)."""
        if self.journal is not None:
            if seq not in self.journal.index:
                raise CorruptRecord(f"record {seq} was quarantined")
            return self.journal.read(seq)
        return self.items[seq - self.first_seq]

    def pending(self, from_seq: int, max_items: int, max_bytes: int) -> tuple[int, list[Any], list[int]]:
        """Up to `max_items` consecutive ids from `max(from_seq, first kept)`, cut at about `max_bytes`:
        (first id, the items, the ids among them whose journal records were quarantined and have no item)."""
        with self.store._cond:
            start = max(from_seq, self.first_seq)
            stop = min(self.next_seq, start + max_items)
            out, skipped, size = [], [], 0
            for seq in range(start, stop):
                try:
                    item = self._get(seq)
                except CorruptRecord:
                    skipped.append(seq)
                    continue
                out.append(item)
                size += approx_nbytes(item)
                if size >= max_bytes:
                    break
            return start, out, skipped

    def release(self, upto: int) -> int:
        """Forget items up to `upto` (the learner has them durably). Returns how many were freed."""
        with self.store._cond:
            upto = min(upto, self.next_seq - 1)
            freed = max(0, upto + 1 - self.first_seq)
            if freed:
                if self.journal is not None:
                    self.journal.release(self.first_seq, upto)
                else:
                    for _ in range(freed):
                        self.items.popleft()
                self.first_seq = upto + 1
                self.store._cond.notify_all()
            if self.recovered and len(self) == 0 and self.journal is not None:
                self.journal.remove()
                self.store._streams.remove(self)
            return freed

    def _append(self, item: Any) -> int:
        seq = self.next_seq
        if self.journal is not None:
            self.journal.append(seq, item)
        else:
            self.items.append(item)
        self.next_seq += 1
        return seq


class QueuedDataStore(DataStoreBase):
    """Actor-side store: agentlace's API, plus acknowledged delivery, backpressure and an optional journal.

    overflow: "block" (default) makes `insert` wait for acknowledgements (`insert_timeout` seconds at most,
    None = forever, then QueueFullError); "drop_oldest" keeps agentlace's ring behaviour but logs and counts
    every dropped item (`dropped`).
    """

    def __init__(
        self,
        capacity: int,
        *,
        overflow: str = "block",
        insert_timeout: float | None = None,
        spill_dir: str | os.PathLike | None = None,
        fsync: bool = False,
        segment_bytes: int = 64 << 20,
    ):
        super().__init__(capacity)
        if not isinstance(capacity, int) or capacity <= 0:
            raise ValueError(f"QueuedDataStore capacity must be a positive int, got {capacity!r}")
        if overflow not in ("block", "drop_oldest"):
            raise ValueError(f"QueuedDataStore overflow must be 'block' or 'drop_oldest', got {overflow!r}")
        self.overflow = overflow
        self.insert_timeout = insert_timeout
        self.dropped = 0
        self.blocked_inserts = 0
        self._cond = threading.Condition(threading.RLock())
        self._streams: list[Stream] = []
        self._quarantined: list[QuarantinedSpan] = []  # corrupt journal spans found, in order
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._lock_fd: int | None = None
        if self.spill_dir is not None:
            self.spill_dir.mkdir(parents=True, exist_ok=True)
            # One process per spill_dir: a second one would "recover" streams that are still being written.
            self._lock_fd = os.open(self.spill_dir / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                os.close(self._lock_fd)
                raise RuntimeError(f"spill_dir {self.spill_dir} is in use by another QueuedDataStore") from exc
            for sub in sorted(self.spill_dir.glob("epoch-*")):
                journal = _Journal(sub, fsync, segment_bytes, self.spill_dir / "quarantine", self._quarantined)
                if not journal.index:
                    journal.remove()
                    continue
                meta = sub / "meta.json"
                actor = json.loads(meta.read_text())["actor_id"] if meta.exists() else None
                epoch = int(sub.name.split("-", 1)[1])
                self._streams.append(Stream(self, epoch, journal, actor))
                log.info("recovered %d unacknowledged items of run epoch %d from %s", len(journal.index), epoch, sub)
        epoch = new_epoch()
        journal = None
        if self.spill_dir is not None:
            journal = _Journal(
                self.spill_dir / f"epoch-{epoch}",
                fsync,
                segment_bytes,
                self.spill_dir / "quarantine",
                self._quarantined,
            )
        self.current = Stream(self, epoch, journal, None)
        self._streams.append(self.current)

    @property
    def epoch(self) -> int:
        return self.current.epoch

    def streams(self) -> list[Stream]:
        with self._cond:
            return list(self._streams)

    def insert(self, data: Any) -> int:
        """Add one item; returns its sequence id. Blocks while the store is full (see `overflow`)."""
        with self._cond:
            if self.overflow == "block":
                deadline = None if self.insert_timeout is None else time.monotonic() + self.insert_timeout
                while len(self) >= self.capacity:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise QueueFullError(
                            f"QueuedDataStore full: {len(self)} items not yet acknowledged by the learner "
                            f"(capacity {self.capacity}); is the learner reachable?"
                        )
                    self.blocked_inserts += 1  # lets the client's link thread upload on our behalf
                    try:
                        self._cond.wait(timeout=remaining if remaining is not None else 1.0)
                    finally:
                        self.blocked_inserts -= 1
            else:
                while len(self) >= self.capacity:
                    oldest = next(s for s in self._streams if len(s))
                    oldest.release(oldest.first_seq)
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        log.warning("QueuedDataStore full: dropped %d unacknowledged item(s) so far", self.dropped)
            return self.current._append(data)

    @property
    def quarantined(self) -> list[QuarantinedSpan]:
        """Every journal span found corrupt (bad checksum, garbage, torn tail) since this store opened; each
        one is copied under `spill_dir/quarantine/` and logged with its file and byte offset."""
        with self._cond:
            return list(self._quarantined)

    def latest_data_id(self) -> int:
        return self.current.next_seq - 1

    def get_latest_data(self, from_id: int) -> list:
        """Items of this run with id > from_id that are still held (agentlace semantics)."""
        stream = self.current
        with self._cond:
            _, items, _ = stream.pending(from_id + 1, max(0, stream.next_seq - from_id - 1), 1 << 62)
            return items

    def __len__(self) -> int:
        with self._cond:
            return sum(len(s) for s in self._streams)

    def close(self) -> None:
        with self._cond:
            for s in self._streams:
                if s.journal is not None:
                    s.journal.close()
            if self.spill_dir is not None and self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
