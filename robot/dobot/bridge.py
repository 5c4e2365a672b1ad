"""The robot-PC side: sends observations to DobotEnv over the websocket and executes the returned chunks.

Varied-frequency execution (Hi-ORS §2.5): the 50x14 chunk at 10 Hz is prefixed with the current state,
linearly interpolated 5x and streamed at 50 Hz; 20 chunk steps (2 s) are executed while the policy drives,
1 step (0.1 s) while the human teleoperates, so corrections are recorded densely. A 10 Hz recorder keeps
{state, flag, timestamp} records that travel with the next observation. Execution stops early when the
teleop flag flips or the episode gets a label, so the env hears about it at once.

Hardware (ROS topics, cameras) sits behind `RobotIO`; the simulated X-Trainer implements it too.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Protocol

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from robot.dobot import msgpack_numpy, protocol, teleop

log = logging.getLogger(__name__)


class RobotIO(Protocol):
    """What the bridge needs from a robot. `now` is the robot's clock (simulated time for the sim)."""

    realtime: bool  # True: the clock runs by itself (hardware); False: it advances only in tick()
    prompt: str

    def now(self) -> float: ...

    def read_state(self) -> np.ndarray: ...

    def read_images(self) -> dict[str, np.ndarray]: ...

    def teleop_flag(self) -> str | None: ...

    def command(self, joints14: np.ndarray) -> None: ...

    def tick(self) -> None:
        """Wait one control period (hardware: sleep to the 50 Hz grid; sim: advance the physics)."""

    def reset(self, reset_chunk: np.ndarray, seed: int | None) -> None:
        """Start a new episode (hardware: move to the reset pose and wait for the operator)."""

    def episode_label(self) -> tuple[str | None, str]:
        """A robot-side success/failure label (e.g. the sim's scripted human), or (None, "")."""


@dataclasses.dataclass
class BridgeConfig:
    uri: str = "ws://127.0.0.1:8080"
    api_key: str | None = None
    policy_steps: int = 20  # chunk steps executed per query while the policy drives
    teleop_steps: int = 1  # ... and while the human teleoperates
    interpolation: int = 5  # 10 Hz chunk -> 50 Hz commands
    control_hz: float = 50.0
    record_hz: float = 10.0
    max_state_chunk_len: int = 50
    reconnect_delay_s: float = 1.0  # first wait after a failed connection or an error from the env ...
    max_reconnect_delay_s: float = 5.0  # ... doubled on each further failure up to this; reset once connected
    open_timeout_s: float = 10.0
    max_reply_bytes: int = 1 << 20  # replies are ~3 KB of actions; anything near this is not the env

    def validate(self, horizon: int = protocol.ACTION_HORIZON) -> None:
        for field in ("policy_steps", "teleop_steps"):
            value = getattr(self, field)
            if not 1 <= value <= horizon:
                raise ValueError(f"BridgeConfig.{field} must be in [1, {horizon}], got {value}")
        for field in ("interpolation", "control_hz", "record_hz", "max_state_chunk_len", "reconnect_delay_s"):
            if getattr(self, field) <= 0:
                raise ValueError(f"BridgeConfig.{field} must be positive, got {getattr(self, field)}")
        if self.max_reconnect_delay_s < self.reconnect_delay_s:
            raise ValueError(
                f"BridgeConfig.max_reconnect_delay_s ({self.max_reconnect_delay_s}) must be >= "
                f"reconnect_delay_s ({self.reconnect_delay_s})"
            )


class EnvError(RuntimeError):
    """A text frame from the env: it turned our connection away or refused an observation."""


def interpolate_chunk(current: np.ndarray, actions: np.ndarray, factor: int) -> np.ndarray:
    """(H, D) chunk -> (H * factor, D) commands: the segment from each waypoint to the next, current state first.
    Row k*factor - 1 is exactly actions[k - 1]."""
    waypoints = np.vstack([current[None], actions]).astype(np.float64)
    fractions = np.arange(1, factor + 1, dtype=np.float64) / factor
    starts, deltas = waypoints[:-1], np.diff(waypoints, axis=0)
    out = starts[:, None, :] + fractions[None, :, None] * deltas[:, None, :]
    return out.reshape(-1, waypoints.shape[1])


class StateRecorder:
    """10 Hz {state, flag, timestamp} records on the robot's clock; drained into each observation."""

    def __init__(self, period_s: float, max_records: int):
        self.period = period_s
        self.max_records = max_records
        self._records: list[dict] = []
        self._next = None
        self._lock = threading.Lock()

    def poll(self, io: RobotIO) -> None:
        now = io.now()
        with self._lock:
            if self._next is not None and now + 1e-9 < self._next:
                return
            self._records.append(
                {
                    "state": np.asarray(io.read_state(), np.float32),
                    "server_teleoperation_flag": io.teleop_flag(),
                    "state_timestamp": float(now),
                }
            )
            # Stay on the grid; after a long gap (a blocked query) restart it rather than burst.
            self._next = (
                now + self.period if self._next is None or now - self._next > self.period else self._next + self.period
            )

    def drain(self) -> list[dict]:
        with self._lock:
            records, self._records = self._records, []
        if len(records) > self.max_records:
            log.warning("%d state records since the last query; sending the newest %d", len(records), self.max_records)
            records = records[-self.max_records :]
        return records

    def clear(self) -> None:
        with self._lock:
            self._records = []
            self._next = None


class Bridge:
    def __init__(self, io: RobotIO, config: BridgeConfig | None = None):
        self.io = io
        self.config = config or BridgeConfig()
        self.config.validate()
        self.recorder = StateRecorder(1.0 / self.config.record_hz, self.config.max_state_chunk_len)
        self.stop_event = threading.Event()
        self.queries = 0
        self.sessions = 0  # connections that got the env's metadata
        self.refusals: list[str] = []  # chunks not executed (refused by the env or by our own check)
        self.env_errors: list[str] = []  # text frames from the env
        self._delay = self.config.reconnect_delay_s
        self._recorder_thread: threading.Thread | None = None

    def observation(self) -> dict:
        label, reason = self.io.episode_label()
        msg = {
            "images": self.io.read_images(),
            "state": np.asarray(self.io.read_state(), np.float32),
            "prompt": self.io.prompt,
            "server_teleoperation_flag": self.io.teleop_flag(),
            "state_chunk": self.recorder.drain(),
        }
        if label is not None:
            msg["episode_label"] = label
            msg["episode_label_reason"] = reason
        return msg

    def execute(self, actions: np.ndarray, steps: int) -> None:
        """Stream the first `steps` chunk steps as interpolated commands on the control grid."""
        current = np.asarray(self.io.read_state(), np.float64)
        commands = interpolate_chunk(current, actions, self.config.interpolation)[: steps * self.config.interpolation]
        flag = self.io.teleop_flag()
        for q in commands:
            self.io.command(q)
            self.io.tick()
            if not self.io.realtime:
                self.recorder.poll(self.io)
            if self.io.teleop_flag() != flag or self.io.episode_label()[0] is not None:
                break  # tell the env now: it switches frequency or ends the episode

    def handle_reply(self, reply) -> None:
        if isinstance(reply, str):
            raise EnvError(f"error from the env: {reply}")
        if not isinstance(reply, dict) or "actions" not in reply:
            log.error("reply without 'actions' from the env (%s), holding pose", protocol.describe(reply))
            self.refusals.append(f"reply without 'actions': {protocol.describe(reply)}")
            return
        try:
            actions = protocol.check_action_chunk(reply["actions"])
        except protocol.InvalidAction as err:  # second line of defence: never execute a bad chunk
            log.error("refusing chunk from the env, holding pose: %s", err)
            self.refusals.append(str(err))
            return
        if reply.get("reset"):
            self.io.reset(actions, reply.get("seed"))
            self.recorder.clear()
            return
        if reply.get("refused"):
            log.error("the env refused the policy's chunk, holding pose: %s", reply["refused"])
            self.refusals.append(str(reply["refused"]))
            return
        steps = self.config.teleop_steps if teleop.is_teleop(self.io.teleop_flag()) else self.config.policy_steps
        self.execute(actions, steps)

    def run(self, max_queries: int | None = None) -> None:
        """Query/execute until stopped. A refused, failed or dropped connection is retried with exponential
        backoff (the robot holds its pose meanwhile); a wrong API key or a frame over the env's size limit stop
        it with an error, since retrying cannot help."""
        if self.io.realtime and self._recorder_thread is None:
            self._recorder_thread = threading.Thread(target=self._record_forever, name="state-recorder", daemon=True)
            self._recorder_thread.start()
        uri = self.config.uri
        while not self.stop_event.is_set():
            if max_queries is not None and self.queries >= max_queries:
                return
            sessions_before = self.sessions
            try:
                with self._connect() as ws:
                    self._session(ws, max_queries)
                continue
            except InvalidStatus as err:
                if err.response.status_code == 401:
                    raise PermissionError(f"the env at {uri} refused our API key") from err
                problem = f"the env at {uri} answered the handshake with HTTP {err.response.status_code}"
            except EnvError as err:
                problem = f"the env at {uri} turned us away: {err}"
            except msgpack_numpy.WireFormatError as err:
                problem = f"undecodable greeting from {uri}: {err}"
            except ConnectionClosed as err:
                close = err.rcvd or err.sent
                if close is not None and close.code == 1009:
                    raise ValueError(
                        f"the env at {uri} closed the connection because an observation frame was over its size "
                        f"limit ({close.reason}); send images at the env's image_size or raise its "
                        "DobotEnvConfig.max_frame_bytes"
                    ) from err
                problem = f"connection to the env at {uri} lost ({err})"
            except (OSError, TimeoutError) as err:
                if self.sessions == 0:
                    problem = f"waiting for the env at {uri} (never connected yet: {err or type(err).__name__})"
                elif self.sessions > sessions_before:
                    problem = f"connection to the env at {uri} lost ({err or type(err).__name__})"
                else:
                    problem = f"waiting for the env at {uri} to come back ({err or type(err).__name__})"
            self._back_off(problem)

    def _back_off(self, problem: str) -> None:
        log.warning("%s; retrying in %.3g s", problem, self._delay)
        self.stop_event.wait(self._delay)
        self._delay = min(2 * self._delay, self.config.max_reconnect_delay_s)

    def _connect(self) -> ClientConnection:
        headers = {"Authorization": f"Api-Key {self.config.api_key}"} if self.config.api_key else None
        return connect(
            self.config.uri,
            additional_headers=headers,
            compression=None,
            max_size=self.config.max_reply_bytes,
            open_timeout=self.config.open_timeout_s,
        )

    def _session(self, ws: ClientConnection, max_queries: int | None) -> None:
        metadata = ws.recv()
        if isinstance(metadata, str):  # e.g. "another robot is already connected"
            raise EnvError(metadata)
        metadata = msgpack_numpy.unpackb(metadata)
        self.sessions += 1
        self._delay = self.config.reconnect_delay_s
        log.info("connected to %s, server metadata %s", self.config.uri, metadata)
        while not self.stop_event.is_set():
            if max_queries is not None and self.queries >= max_queries:
                return
            ws.send(msgpack_numpy.packb(self.observation()))
            reply = ws.recv()
            self.queries += 1
            try:
                self.handle_reply(reply if isinstance(reply, str) else msgpack_numpy.unpackb(reply))
            except EnvError as err:  # the env refused this observation; the connection stays usable
                self.env_errors.append(str(err))
                self._back_off(str(err))
                continue
            except msgpack_numpy.WireFormatError as err:
                log.error("undecodable reply from the env (%s), holding pose", err)
                self.refusals.append(f"undecodable reply: {err}")
                continue
            self._delay = self.config.reconnect_delay_s

    def _record_forever(self) -> None:
        while not self.stop_event.is_set():
            self.recorder.poll(self.io)
            time.sleep(0.005)
