"""Learner-side record of what each upload stream has delivered: the exactly-once bookkeeping.

A stream is (actor id, run epoch, store name); its mark is the highest sequence id inserted so far (ids
arrive in order, so one integer per stream suffices). `accepted` marks move as items are inserted and
reject duplicates while the learner runs; `committed` marks are the ones that survive a learner restart
(saved atomically, alone or inside the learner's own replay checkpoint) and are what actors may forget.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

StreamKey = tuple[str, int, str]  # (actor_id, epoch, store_name)


class Ledger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.accepted: dict[StreamKey, int] = {}
        self.committed: dict[StreamKey, int] = {}

    def mark(self, key: StreamKey) -> int:
        with self._lock:
            return self.accepted.get(key, -1)

    def committed_mark(self, key: StreamKey) -> int:
        with self._lock:
            return self.committed.get(key, -1)

    def advance(self, key: StreamKey, mark: int, commit: bool) -> None:
        with self._lock:
            if mark > self.accepted.get(key, -1):
                self.accepted[key] = mark
            if commit and mark > self.committed.get(key, -1):
                self.committed[key] = mark

    def snapshot(self) -> list[list]:
        """JSON-able marks [[actor_id, epoch, store, mark], ...] of everything accepted so far."""
        with self._lock:
            return [[a, e, s, m] for (a, e, s), m in sorted(self.accepted.items())]

    def commit(self, marks: list[list]) -> None:
        with self._lock:
            for a, e, s, m in marks:
                key = (a, e, s)
                if m > self.committed.get(key, -1):
                    self.committed[key] = m

    def restore(self, marks: list[list]) -> None:
        """Load marks saved by `snapshot` (after a learner restart): they are both accepted and committed."""
        parsed = {}
        for row in marks:
            if not (isinstance(row, list | tuple) and len(row) == 4):
                raise ValueError(f"ledger row must be [actor_id, epoch, store, mark], got {row!r}")
            a, e, s, m = row
            if not (isinstance(a, str) and isinstance(e, int) and isinstance(s, str) and isinstance(m, int)):
                raise ValueError(f"ledger row has wrong types: {row!r}")
            parsed[(a, e, s)] = m
        with self._lock:
            self.accepted = dict(parsed)
            self.committed = dict(parsed)

    @staticmethod
    def save_marks(path: str | os.PathLike, marks: list[list]) -> None:
        """Write marks atomically (temp file, fsync, rename, fsync dir): a crash leaves the old or new file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"format": "hiors-transport-ledger-1", "marks": marks}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @staticmethod
    def load_marks(path: str | os.PathLike) -> list[list]:
        path = Path(path)
        if not path.exists():
            return []
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != "hiors-transport-ledger-1":
            raise ValueError(f"{path} is not a hiors transport ledger file")
        return data["marks"]
