"""Freshness of authenticated messages: learner-issued sessions with a sliding anti-replay window.

A MAC proves who made a message, not when: a captured upload or request replayed later verifies as well
as the original did. So every safe-wire message except the one that opens a session names a session id
(`sid`, 16 random bytes the learner chose) and a counter (`rid`, increasing per client), both under the
MAC. The learner admits each (sid, rid) at most once and only for sessions it issued itself; replies echo
both, and the session-opening reply echoes the client's random nonce, so a client never takes an old reply
for a new one either.

Why sessions rather than timestamps or per-actor sequence numbers: a restarted learner starts with an empty
session table, so every message captured before the restart names an unknown session and is refused,
without clocks to keep in sync and without persisting a seen-set or counters next to the replay buffer
(a timestamp bound alone lets a replay in within the bound to a learner that just restarted and forgot what
it saw). The cost is one round trip when a client (re)connects. Opening a session has no effect besides a
table entry (bounded, least recently used evicted), so replaying that message achieves nothing: the session
it opens cannot be used without the key.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any

SESSION_ID_BYTES = 16
DEFAULT_WINDOW = 1024
DEFAULT_MAX_SESSIONS = 4096


class StaleMessage(Exception):
    """A message that is not fresh: unknown (or expired) session, counter already seen or too old."""


class ReplayWindow:
    """Accepts each counter once: anything above the highest seen, or within `size` below it and not yet seen
    (reordering, e.g. across a reconnect); refuses duplicates and counters older than the window (IPsec-style)."""

    def __init__(self, size: int = DEFAULT_WINDOW):
        self.size = size
        self.highest = 0
        self._seen = 0  # bit i set: counter `highest - i` was admitted

    def admit(self, counter: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            self._seen = ((self._seen << shift) | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.highest = counter
            return
        age = self.highest - counter
        if age >= self.size:
            raise StaleMessage(f"counter {counter} is older than the replay window (highest {self.highest})")
        if self._seen >> age & 1:
            raise StaleMessage(f"counter {counter} was already received (a replay or duplicate)")
        self._seen |= 1 << age


class SessionTable:
    """The learner's sessions: id -> ReplayWindow, least recently used evicted beyond `max_sessions`."""

    def __init__(self, max_sessions: int = DEFAULT_MAX_SESSIONS, window: int = DEFAULT_WINDOW):
        self.max_sessions = max_sessions
        self.window = window
        self._sessions: OrderedDict[bytes, ReplayWindow] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self) -> bytes:
        sid = os.urandom(SESSION_ID_BYTES)
        with self._lock:
            self._sessions[sid] = ReplayWindow(self.window)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return sid

    def admit(self, sid: Any, counter: Any) -> None:
        """Record (sid, counter) as used; raises StaleMessage if it is not fresh."""
        if not isinstance(sid, bytes) or len(sid) != SESSION_ID_BYTES:
            raise StaleMessage("message names no session (open one first)")
        if not isinstance(counter, int) or isinstance(counter, bool) or counter < 1:
            raise StaleMessage(f"bad message counter {counter!r}")
        with self._lock:
            window = self._sessions.get(sid)
            if window is None:
                raise StaleMessage("unknown session (the learner restarted, or the session expired)")
            self._sessions.move_to_end(sid)
            window.admit(counter)
