"""Where an episode's success/failure label comes from: the human's keys, the robot PC, or a learned classifier.

Each source answers `poll(obs, extras) -> (label | None, reason)` once per env step and is told when an
episode starts. stdin has exactly one reader, `StdinHub`, which hands every line to all of its
subscribers, so the label keys never race another stdin reader (a prompt, a debugger helper).
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import IO, Protocol

import numpy as np

log = logging.getLogger(__name__)


class LabelSource(Protocol):
    def start_episode(self) -> None: ...

    def poll(self, obs: dict, extras: dict) -> tuple[str | None, str]: ...


class RobotLabels:
    """Labels sent by the robot PC with the observation (the sim's scripted human uses this)."""

    def start_episode(self) -> None:
        pass

    def poll(self, obs: dict, extras: dict) -> tuple[str | None, str]:
        label = extras.get("episode_label")
        if label is None:
            return None, ""
        return label, extras.get("episode_label_reason") or "robot label (no reason given)"


class StdinHub:
    """The single reader of a text stream; every subscriber gets its own queue of lines."""

    _shared: StdinHub | None = None
    _shared_lock = threading.Lock()

    def __init__(self, stream: IO[str]):
        self._stream = stream
        self._subscribers: list[queue.Queue] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="stdin-hub", daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls) -> StdinHub:
        """The process-wide hub on sys.stdin (created on first use)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls(sys.stdin)
            return cls._shared

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue()
        with self._lock:
            self._subscribers.append(q)
        return q

    def _pump(self) -> None:
        for line in self._stream:
            with self._lock:
                for q in self._subscribers:
                    q.put(line.rstrip("\n"))


class KeyboardLabels:
    """The human types `s` (success) or `f` (failure) + Enter during an episode; other lines are ignored."""

    def __init__(self, hub: StdinHub | None = None, success_key: str = "s", failure_key: str = "f"):
        self._lines = (hub or StdinHub.shared()).subscribe()
        self._keys = {success_key: "success", failure_key: "failure"}
        print(f"label keys: '{success_key}'+Enter = success, '{failure_key}'+Enter = failure", file=sys.stderr)

    def start_episode(self) -> None:
        while True:  # keys pressed between episodes belong to no episode
            try:
                self._lines.get_nowait()
            except queue.Empty:
                return

    def poll(self, obs: dict, extras: dict) -> tuple[str | None, str]:
        while True:
            try:
                line = self._lines.get_nowait().strip().lower()
            except queue.Empty:
                return None, ""
            if line in self._keys:
                return self._keys[line], f"human pressed {line!r}"


class ClassifierLabels:
    """A learned reward classifier: success once p(success | obs) exceeds the threshold; never labels failure
    (the episode then ends by its step limit, as a failure)."""

    def __init__(self, success_probability: Callable[[dict], float], threshold: float = 0.75):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"classifier threshold must be in (0, 1), got {threshold}")
        self._fn = success_probability
        self._threshold = threshold

    def start_episode(self) -> None:
        pass

    def poll(self, obs: dict, extras: dict) -> tuple[str | None, str]:
        p = float(np.asarray(self._fn(obs)))
        if not np.isfinite(p):
            log.warning("reward classifier returned %r; ignoring it for this step", p)
            return None, ""
        if p > self._threshold:
            return "success", f"classifier p={p:.3f} > {self._threshold}"
        return None, ""
