"""DobotEnv: the actor's gymnasium env for a Dobot X-Trainer (or the sim), served over openpi's websocket protocol.

The robot PC is the websocket client: it sends an observation, blocks for a 50x14 chunk of absolute joint
targets, executes part of it and sends the next observation. The env is the server, so one step is
"reply to the pending observation with the chunk, wait for the next observation".

Actor loop: `obs, info = env.reset(); while not done: obs, r, term, trunc, info = env.step(policy(obs))`,
with the episode's label and teleop statistics in `info`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import http
import ipaddress
import logging
import queue
import threading
import time
from typing import Any

import gymnasium as gym
import numpy as np
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from robot.dobot import msgpack_numpy, protocol
from robot.dobot.labels import LabelSource, RobotLabels

log = logging.getLogger(__name__)

# The X-Trainer's joint ranges belong in the deployment config; these defaults only refuse the absurd.
DEFAULT_JOINT_LOW = (-np.pi,) * 6 + (0.0,) + (-np.pi,) * 6 + (0.0,)
DEFAULT_JOINT_HIGH = (np.pi,) * 6 + (1.0,) + (np.pi,) * 6 + (1.0,)
# The original Hi-ORS reset pose (joint radians + normalised gripper), left arm then right arm.
DEFAULT_RESET_POSE = (-1.4143, -0.0075, -1.6047, 0.0571, 1.5477, 0.2087, 1.0) + (
    1.4781,
    0.0584,
    1.4880,
    0.0044,
    -1.5682,
    0.1090,
    1.0,
)


FRAME_MARGIN = 16  # frames may be this many times the configured observation's size (see max_frame_bytes)


def is_loopback(host: str) -> bool:
    """True when `host` only listens on this machine ("" and "0.0.0.0" mean every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname other than localhost may resolve to a public interface


@dataclasses.dataclass
class DobotEnvConfig:
    host: str = "127.0.0.1"  # the robot PC is another machine: listen on its network with an api_key
    port: int = 8080  # 0 picks a free port (see DobotEnv.port)
    api_key: str | None = None  # when set, robots must send `Authorization: Api-Key <key>`
    # Listening beyond localhost without an api_key is refused: any machine on the network could take the
    # robot's slot and feed the actor observations and success labels. True accepts that (logged loudly).
    allow_no_api_key: bool = False
    image_size: tuple[int, int] = (224, 298)  # (H, W) of every camera image in the observation
    max_state_chunk_len: int = 50
    action_horizon: int = 50
    # An episode that gets no label ends as a failure after this much robot time (the state records' clock;
    # the env's clock when the robot sends none). Counted in time, not queries: a teleop query covers 0.1 s
    # of robot time and a policy query 2 s, so a query count fits one of them only.
    max_episode_s: float | None = 60.0
    max_episode_steps: int | None = None  # optional limit on queries per episode as well
    # Largest websocket frame accepted; None: FRAME_MARGIN x an observation at image_size with a full state_chunk.
    # Larger frames are refused from their header (close 1009) before their payload is read.
    max_frame_bytes: int | None = None
    joint_low: tuple[float, ...] = DEFAULT_JOINT_LOW
    joint_high: tuple[float, ...] = DEFAULT_JOINT_HIGH
    reset_pose: tuple[float, ...] = DEFAULT_RESET_POSE
    robot_timeout_s: float | None = None  # how long to wait for the robot (None: as long as it takes)

    def validate(self) -> None:
        def fail(field: str, why: str):
            raise ValueError(f"DobotEnvConfig.{field}: {why}")

        if not 0 <= self.port < 65536:
            fail("port", f"must be in [0, 65535], got {self.port}")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            fail("image_size", f"must be (H, W) with both >= 8, got {self.image_size}")
        for field in ("max_state_chunk_len", "action_horizon"):
            if getattr(self, field) < 1:
                fail(field, f"must be >= 1, got {getattr(self, field)}")
        for field in ("max_episode_steps", "max_frame_bytes"):
            if getattr(self, field) is not None and getattr(self, field) < 1:
                fail(field, f"must be >= 1 or None, got {getattr(self, field)}")
        if self.max_episode_s is not None and not self.max_episode_s > 0:
            fail("max_episode_s", f"must be positive or None, got {self.max_episode_s}")
        if self.api_key is not None and not self.api_key:
            fail("api_key", "must be a non-empty string or None")
        if self.api_key is None and not is_loopback(self.host) and not self.allow_no_api_key:
            fail(
                "api_key",
                f"listening on {self.host!r} (beyond localhost) without an API key would let any machine on the "
                "network connect as the robot and feed the actor observations and labels; set api_key (the robot "
                "PC sends it with --api-key / HIORS_ROBOT_API_KEY), listen on 127.0.0.1, or set "
                "allow_no_api_key=True to accept the risk",
            )
        low, high, pose = (np.asarray(v, np.float64) for v in (self.joint_low, self.joint_high, self.reset_pose))
        for field, arr in (("joint_low", low), ("joint_high", high), ("reset_pose", pose)):
            if arr.shape != (protocol.STATE_DIM,) or not np.all(np.isfinite(arr)):
                fail(field, f"must be {protocol.STATE_DIM} finite numbers, got {arr.tolist()}")
        if np.any(low >= high):
            fail("joint_high", f"must exceed joint_low in every dim, got low={low.tolist()} high={high.tolist()}")
        if np.any(pose < low) or np.any(pose > high):
            fail("reset_pose", "must lie within [joint_low, joint_high]")
        if self.robot_timeout_s is not None and self.robot_timeout_s <= 0:
            fail("robot_timeout_s", f"must be positive or None, got {self.robot_timeout_s}")


class RobotTimeout(TimeoutError):
    pass


@dataclasses.dataclass
class _Incoming:
    obs: dict
    extras: dict
    reply: concurrent.futures.Future


_DISCONNECTED = object()


class DobotEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, config: DobotEnvConfig | None = None, labels: LabelSource | None = None):
        self.config = config or DobotEnvConfig()
        self.config.validate()
        self.labels = labels or RobotLabels()
        self._spec = protocol.ObservationSpec(tuple(self.config.image_size), self.config.max_state_chunk_len)
        self.max_frame_bytes = self.config.max_frame_bytes or FRAME_MARGIN * self._spec.nominal_frame_bytes()
        self._low = np.asarray(self.config.joint_low, np.float32)
        self._high = np.asarray(self.config.joint_high, np.float32)
        self.action_space = gym.spaces.Box(
            np.tile(self._low, (self.config.action_horizon, 1)), np.tile(self._high, (self.config.action_horizon, 1))
        )
        self.observation_space = self._make_observation_space()
        self._inbox: queue.Queue = queue.Queue()
        self._pending: _Incoming | None = None
        self._connected = threading.Event()
        self._active: ServerConnection | None = None
        self._episode: dict[str, Any] = {}
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._server_ready = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._serve_forever, name="dobot-env-ws", daemon=True)
        self._thread.start()
        self.port = self._server_ready.result(timeout=10)
        h, w = self.config.image_size
        log.info(
            "DobotEnv listening on %s:%d (%s), frames up to %d bytes (%s)",
            self.config.host,
            self.port,
            "API key required" if self.config.api_key else "no API key",
            self.max_frame_bytes,
            self._frame_limit_origin(),
        )
        if self.config.api_key is None and not is_loopback(self.config.host):
            log.warning(
                "DobotEnv listens on %s:%d WITHOUT an API key (allow_no_api_key=True): any machine that can reach "
                "this port can connect as the robot",
                self.config.host,
                self.port,
            )

    # -- gymnasium API --------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        reset_chunk = np.tile(np.asarray(self.config.reset_pose, np.float32), (self.config.action_horizon, 1))
        while True:
            if self._pending is None:
                self._pending, _ = self._receive()
            self._reply(self._pending, {"actions": reset_chunk, "reset": True, "seed": seed})
            self._pending, disconnected = self._receive()
            if not disconnected:
                break
            log.warning("robot reconnected during reset; resetting again")
        self.labels.start_episode()
        self._episode = {
            "steps": 0,
            "interventions": 0,
            "teleop_steps": 0,
            "was_teleop": self._pending.obs["teleop"],
            "wall_start": time.monotonic(),
            "robot_start": None,
            "robot_last": None,
        }
        self._advance_clock(self._pending.obs)
        return self._pending.obs, self._info(self._pending, label=None, reason="", error=None, clipped=0, lost=False)

    def step(self, action):
        if self._pending is None:
            raise RuntimeError("DobotEnv.step called before reset()")
        error, clipped = None, 0
        try:
            chunk = protocol.check_action_chunk(action, self.config.action_horizon, protocol.STATE_DIM)
            chunk, clipped = protocol.clip_to_limits(chunk, self._low, self._high)
            reply = {"actions": chunk}
            if clipped:
                log.warning("clipped %d action values to the joint limits", clipped)
        except protocol.InvalidAction as err:
            error = str(err)
            log.error("refused action chunk, the robot holds its pose: %s", error)
            hold = np.tile(self._pending.obs["state"], (self.config.action_horizon, 1))
            reply = {"actions": hold, "refused": error}
        self._reply(self._pending, reply)
        self._pending, lost = self._receive()
        obs, ep = self._pending.obs, self._episode
        ep["steps"] += 1
        if obs["teleop"]:
            ep["teleop_steps"] += 1
        chunk_flags = obs["state_chunk_teleop"][obs["state_chunk_mask"]]
        flags = np.concatenate([[ep["was_teleop"]], chunk_flags, [obs["teleop"]]])
        ep["interventions"] += int(np.count_nonzero(flags[1:] & ~flags[:-1]))
        ep["was_teleop"] = bool(obs["teleop"])
        self._advance_clock(obs)
        label, reason = (None, "") if lost else self.labels.poll(obs, self._pending.extras)
        terminated = label is not None
        limit = None if terminated or lost else self._limit_reached()
        truncated = not terminated and (lost or limit is not None)
        if limit is not None:
            label, reason = "failure", limit
        reward = 1.0 if label == "success" else 0.0
        info = self._info(self._pending, label=label, reason=reason, error=error, clipped=clipped, lost=lost)
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pending is not None:
            self._pending.reply.cancel()
        self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout=5)

    # -- internals ------------------------------------------------------------------------------------------
    def _advance_clock(self, obs: dict) -> None:
        stamps = obs["state_chunk_timestamp"][obs["state_chunk_mask"]]
        if len(stamps):
            if self._episode["robot_start"] is None:
                self._episode["robot_start"] = float(stamps[0])
            self._episode["robot_last"] = float(stamps[-1])

    def episode_time_s(self) -> float:
        """Robot time since the episode's first state record (the env's clock if the robot sent none yet)."""
        ep = self._episode
        if not ep:
            return 0.0
        if ep["robot_start"] is None:
            return time.monotonic() - ep["wall_start"]
        return ep["robot_last"] - ep["robot_start"]

    def _limit_reached(self) -> str | None:
        """Why the episode ends unlabelled now, or None."""
        steps, seconds = self.config.max_episode_steps, self.config.max_episode_s
        if steps is not None and self._episode["steps"] >= steps:
            return f"no success within {steps} steps (DobotEnvConfig.max_episode_steps)"
        if seconds is not None and self.episode_time_s() >= seconds:
            return f"no success within {seconds:g} s of robot time (DobotEnvConfig.max_episode_s)"
        return None

    def _frame_limit_origin(self) -> str:
        if self.config.max_frame_bytes is not None:
            return "DobotEnvConfig.max_frame_bytes"
        h, w = self.config.image_size
        return (
            f"DobotEnvConfig.max_frame_bytes=None: {FRAME_MARGIN} x the {self._spec.nominal_frame_bytes()}-byte "
            f"observation of 3 cameras at {h}x{w} with {self.config.max_state_chunk_len} state records"
        )

    def _info(self, incoming: _Incoming, *, label, reason, error, clipped, lost) -> dict:
        ep = self._episode
        obs = incoming.obs
        return {
            "label": label,
            "label_reason": reason,
            "success": label == "success",
            "episode_steps": ep.get("steps", 0),
            "episode_time_s": self.episode_time_s(),
            "teleop": bool(obs["teleop"]),
            "teleop_records": int(np.count_nonzero(obs["state_chunk_teleop"] & obs["state_chunk_mask"])),
            "teleop_steps": ep.get("teleop_steps", 0),
            "interventions": ep.get("interventions", 0),
            "clipped_values": clipped,
            "action_error": error,
            "robot_disconnected": lost,
            "state_chunk_dropped": incoming.extras["state_chunk_dropped"],
        }

    def _reply(self, incoming: _Incoming, message: dict) -> None:
        if not incoming.reply.done():
            incoming.reply.set_result(msgpack_numpy.packb(message))

    def _receive(self) -> tuple[_Incoming, bool]:
        """Next observation; the flag says whether the robot dropped (and came back) on the way."""
        deadline = None if self.config.robot_timeout_s is None else time.monotonic() + self.config.robot_timeout_s
        lost = False
        while True:
            timeout = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise RobotTimeout(
                        f"no observation from the robot within {self.config.robot_timeout_s} s "
                        f"(listening on port {self.port}; connected: {self._connected.is_set()})"
                    ) from None
                continue
            if item is _DISCONNECTED:
                if not lost:
                    log.error("robot connection dropped; waiting for it to reconnect on port %d", self.port)
                lost = True
                continue
            return item, lost

    def _make_observation_space(self) -> gym.spaces.Dict:
        h, w = self.config.image_size
        n = self.config.max_state_chunk_len
        image = gym.spaces.Box(0, 255, (h, w, 3), np.uint8)
        return gym.spaces.Dict(
            {
                "images": gym.spaces.Dict({k: image for k in protocol.CAMERA_KEYS}),
                "state": gym.spaces.Box(-np.inf, np.inf, (protocol.STATE_DIM,), np.float32),
                "prompt": gym.spaces.Text(max_length=1024),
                "teleop": gym.spaces.MultiBinary(1),
                "state_chunk": gym.spaces.Box(-np.inf, np.inf, (n, protocol.STATE_DIM), np.float32),
                "state_chunk_mask": gym.spaces.MultiBinary(n),
                "state_chunk_teleop": gym.spaces.MultiBinary(n),
                "state_chunk_timestamp": gym.spaces.Box(-np.inf, np.inf, (n,), np.float64),
            }
        )

    # -- websocket server (its own thread and event loop) -----------------------------------------------------
    def _serve_forever(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except Exception as err:  # start-up failures (port in use) surface in the constructor
            if not self._server_ready.done():
                self._server_ready.set_exception(err)
            else:
                log.exception("websocket server stopped")
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        async with serve(
            self._handle,
            self.config.host,
            self.config.port,
            compression=None,
            max_size=self.max_frame_bytes,
            process_request=self._authorise,
        ) as server:
            self._server_ready.set_result(server.sockets[0].getsockname()[1])
            await self._stop_event.wait()

    def _authorise(self, connection: ServerConnection, request):
        if self.config.api_key is None:
            return None
        header = request.headers.get("Authorization", "")
        expected = f"Api-Key {self.config.api_key}"
        if hmac.compare_digest(header.encode(), expected.encode()):
            return None
        log.warning("refused a robot connection from %s: missing or wrong API key", connection.remote_address)
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong Authorization: Api-Key header\n")

    async def _handle(self, ws: ServerConnection) -> None:
        if self._active is not None:
            await ws.send(f"another robot ({self._active.remote_address}) is already connected to this env")
            await ws.close(1013, "busy")
            return
        self._active = ws
        self._connected.set()
        log.info("robot connected from %s", ws.remote_address)
        try:
            await ws.send(msgpack_numpy.packb({}))
            async for message in ws:
                if isinstance(message, str):
                    await ws.send("malformed message: expected a binary msgpack observation, got a text frame")
                    continue
                try:
                    obs, extras = protocol.decode_observation(message, self._spec)
                except Exception as err:  # anything the robot sent that we cannot use is reported back to it
                    reason = str(err) or type(err).__name__
                    log.error("malformed observation from the robot: %s", reason)
                    await ws.send(f"malformed message: {reason}")
                    continue
                incoming = _Incoming(obs, extras, concurrent.futures.Future())
                self._inbox.put(incoming)
                if not await self._wait_for_reply(ws, incoming):
                    return
        except ConnectionClosed as err:
            if err.sent is not None and err.sent.code == 1009:
                log.error(
                    "closed the robot connection: it sent a frame over the %d-byte limit (%s)",
                    self.max_frame_bytes,
                    self._frame_limit_origin(),
                )
        finally:
            self._active = None
            self._connected.clear()
            self._inbox.put(_DISCONNECTED)
            log.info("robot disconnected")

    async def _wait_for_reply(self, ws: ServerConnection, incoming: _Incoming) -> bool:
        """Send the actor's reply; False when the robot went away first (the slot is freed at once, not at the
        actor's next step) or the env closed."""
        reply = asyncio.wrap_future(incoming.reply)
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            await asyncio.wait({reply, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not reply.done():
            reply.cancel()  # also cancels incoming.reply, so the actor's _reply skips it
            return False
        if reply.cancelled():
            return False
        await ws.send(reply.result())
        return True
