"""Serve a trained PI0 / PI0.5 checkpoint over openpi's websocket policy protocol.

    python -m experiments.dobot_pnp.serve --checkpoint_path=PATH [--port=8000] [--host=localhost] [--api_key=KEY]

Any `openpi_client` robot then runs the checkpoint: `WebsocketClientPolicy(host, port).infer(obs)["actions"]`.
The checkpoint is openpi's layout: a directory holding `params/` (orbax) and `assets/<asset_id>/norm_stats.json`
(what `python -m hiors_jax.demo` and the learner write). The wire is openpi's: a metadata map is sent on connect,
then each binary msgpack-numpy observation gets one reply `{"actions": float32 (horizon, robot dims),
"policy_timing": {...}, "server_timing": {...}}`, with actions un-normalised to robot units. An observation the
policy cannot use is answered with a text frame naming the field, then the connection is closed with code 1011
(as openpi does); other clients are unaffected. `GET /healthz` answers 200.

Observation (the X-Trainer robot PC's, also openpi's ALOHA format): `images` {camera: uint8 HWC or CHW, any size},
`state` (robot dims,) in robot units, `prompt` str (optional when --prompt is given); other keys are ignored.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hmac
import http
import json
import logging
import pathlib
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

log = logging.getLogger("experiments.dobot_pnp.serve")

# The X-Trainer's cameras (robot PC names) for the model's three image slots; same as hiors_jax.demo's.
XTRAINER_CAMERA_MAP = {
    "base_0_rgb": "cam_high",
    "left_wrist_0_rgb": "cam_left_wrist",
    "right_wrist_0_rgb": "cam_right_wrist",
}
CLOSE_INTERNAL_ERROR = 1011


class ObservationError(ValueError):
    """An observation the policy cannot use; the message names the field."""


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be served; the message names the option or file."""


# --------------------------------------------------------------------------------------------------------
# The policy: checkpoint -> jitted sampler, observation -> action chunk in robot units
# --------------------------------------------------------------------------------------------------------


# Model settings a policy exported by this project records in policy.json (the params' shapes do not tell them).
EXPORTED_MODEL_SETTINGS = {"state_input": bool}


def exported_model_settings(checkpoint: pathlib.Path) -> dict:
    """The `model` settings of the checkpoint's policy.json ({} for openpi's checkpoints, which have none).
    `checkpoint` is the policy directory or its params/ item, as pi0.load_openpi_params takes either."""
    checkpoint = pathlib.Path(checkpoint)
    if checkpoint.name == "params" and (checkpoint / "_METADATA").is_file():
        checkpoint = checkpoint.parent
    path = checkpoint / "policy.json"
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text()).get("model", {})
    except (json.JSONDecodeError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a JSON object ({err})") from None
    if not isinstance(settings, dict):
        raise CheckpointError(f"{path}: 'model' must be an object, got {type(settings).__name__}")
    for key, value in settings.items():
        kind = EXPORTED_MODEL_SETTINGS.get(key)
        if kind is None:
            raise CheckpointError(f"{path}: unknown model setting {key!r} (known: {sorted(EXPORTED_MODEL_SETTINGS)})")
        if not isinstance(value, kind):
            raise CheckpointError(f"{path}: model.{key} must be {kind.__name__}, got {value!r}")
    return settings


def find_asset_dir(checkpoint: pathlib.Path, asset_id: str | None) -> pathlib.Path:
    assets = checkpoint / "assets"
    if asset_id is not None:
        path = assets / asset_id
        if not (path / "norm_stats.json").is_file():
            raise CheckpointError(f"--asset_id={asset_id}: {path / 'norm_stats.json'} not found")
        return path
    found = sorted(p.parent for p in assets.glob("*/norm_stats.json"))
    if len(found) != 1:
        names = [p.name for p in found]
        raise CheckpointError(
            f"--asset_id: {assets} holds {len(found)} norm_stats.json ({names}); "
            + ("pass --asset_id to choose one" if found else "a checkpoint needs assets/<asset_id>/norm_stats.json")
        )
    return found[0]


def find_tokenizer(checkpoint: pathlib.Path, tokenizer: pathlib.Path | None) -> pathlib.Path:
    """--tokenizer, else the one SentencePiece model saved beside params/ (the demo's tiny_tokenizer.model)."""
    if tokenizer is not None:
        if not tokenizer.is_file():
            raise CheckpointError(f"--tokenizer: {tokenizer} is not a file")
        return tokenizer
    found = sorted(checkpoint.glob("*.model"))
    if len(found) != 1:
        raise CheckpointError(
            f"--tokenizer: not given and {checkpoint} holds {len(found)} SentencePiece models (*.model) "
            f"{[p.name for p in found]}; pass --tokenizer=/path/to/paligemma_tokenizer.model"
        )
    return found[0]


def _to_hwc(image: Any, camera: str) -> np.ndarray:
    """The robot PC sends HWC or CHW uint8 (openpi's ALOHA clients send CHW); the model pipeline takes HWC."""
    if not isinstance(image, np.ndarray):
        raise ObservationError(f"images.{camera} must be a uint8 array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ObservationError(f"images.{camera} must be uint8 (0..255), got {image.dtype} {image.shape}")
    if image.ndim != 3 or 3 not in (image.shape[0], image.shape[-1]):
        raise ObservationError(f"images.{camera} must be HWC or CHW with 3 channels, got shape {image.shape}")
    if image.shape[-1] != 3:
        image = np.transpose(image, (1, 2, 0))
    if 0 in image.shape:
        raise ObservationError(f"images.{camera} is empty: shape {image.shape}")
    return image


class CheckpointPolicy:
    """An openpi-layout checkpoint as an openpi `BasePolicy`: `infer(obs) -> {"actions", "policy_timing"}`.

    The sampler is jitted once for the checkpoint's fixed input shapes (cameras are resized with pad to the model
    resolution, prompts padded to max_token_len), so every observation reuses the compiled program.
    """

    def __init__(
        self,
        checkpoint_path: str | pathlib.Path,
        *,
        asset_id: str | None = None,
        tokenizer_path: str | pathlib.Path | None = None,
        camera_map: Mapping[str, str | None] = XTRAINER_CAMERA_MAP,
        num_steps: int = 10,
        default_prompt: str | None = None,
        action_horizon: int = 50,
        max_token_len: int = 0,
        dtype: str | None = None,
        prompt_format: str = "openpi",
        seed: int = 0,
    ):
        import jax

        from hiors_jax.models import pi0, preprocessing, tokenizer

        self._jax, self._pi0, self._pre = jax, pi0, preprocessing
        checkpoint = pathlib.Path(checkpoint_path).expanduser()
        if checkpoint.name == "params" and (checkpoint / "_METADATA").is_file():
            checkpoint = checkpoint.parent  # the params/ item itself was given; assets/ sit beside it
        if not (checkpoint / "params").is_dir():
            raise CheckpointError(f"--checkpoint_path: {checkpoint} has no params/ directory (openpi layout)")
        if num_steps < 1:
            raise CheckpointError(f"--num_steps must be >= 1, got {num_steps}")
        asset_dir = find_asset_dir(checkpoint, asset_id)
        norm = preprocessing.load_norm_stats(asset_dir)
        for key in ("state", "actions"):
            if key not in norm:
                raise CheckpointError(f"{asset_dir / 'norm_stats.json'} has no '{key}' stats (has {sorted(norm)})")
        overrides = {"action_horizon": action_horizon}
        if max_token_len:
            overrides["max_token_len"] = max_token_len
        overrides.update(exported_model_settings(checkpoint))
        self.config, self.params = pi0.load_openpi_params(checkpoint, dtype=dtype, **overrides)
        if norm["actions"].dim > self.config.action_dim or norm["state"].dim > self.config.action_dim:
            raise CheckpointError(
                f"{asset_dir / 'norm_stats.json'}: state/actions stats have {norm['state'].dim}/{norm['actions'].dim} "
                f"dims, more than the model's action_dim={self.config.action_dim}"
            )
        tok_path = find_tokenizer(checkpoint, None if tokenizer_path is None else pathlib.Path(tokenizer_path))
        self.tokenizer = tokenizer.PaligemmaTokenizer(
            tok_path, max_len=self.config.max_token_len, prompt_format=prompt_format
        )
        if self.tokenizer.vocab_size > self.config.vocab_size:
            raise CheckpointError(
                f"--tokenizer: {tok_path} has {self.tokenizer.vocab_size} pieces, more than the model's "
                f"{self.config.vocab_size} embedding rows (wrong tokenizer for this checkpoint?)"
            )
        unknown = sorted(set(camera_map) - set(self.config.image_keys))
        if unknown:
            raise CheckpointError(
                f"--camera_map: unknown model cameras {unknown}; the model has {self.config.image_keys}"
            )
        self.camera_map = {key: camera_map.get(key) for key in self.config.image_keys}
        self.checkpoint, self.asset_dir, self.tokenizer_path = checkpoint, asset_dir, tok_path
        self.state_stats, self.action_stats = norm["state"], norm["actions"]
        self.num_steps, self.default_prompt = int(num_steps), default_prompt
        self._rng = jax.random.key(seed)
        config, steps = self.config, self.num_steps

        def sample(params, obs, noise):
            return pi0.sample_actions(config, params, obs, noise, num_steps=steps)

        self._sample = jax.jit(sample)
        self._noise = jax.jit(lambda key: jax.random.normal(key, (1, config.action_horizon, config.action_dim)))

    @property
    def action_dim(self) -> int:
        """The robot's action dims (those of the checkpoint's action norm stats): 14 for the X-Trainer."""
        return self.action_stats.dim

    @property
    def compile_count(self) -> int:
        """How many programs the sampler has compiled (1 after warm-up, whatever observations came since)."""
        return self._sample._cache_size()

    @property
    def metadata(self) -> dict[str, Any]:
        """Sent to every client on connect (openpi sends the policy's metadata map)."""
        size = self.config.vision.image_size
        return {
            "policy": "pi05" if self.config.pi05 else "pi0",
            "checkpoint": str(self.checkpoint),
            "asset_id": self.asset_dir.name,
            "action_horizon": self.config.action_horizon,
            "action_dim": self.action_dim,
            "state_dim": self.state_stats.dim,
            "num_steps": self.num_steps,
            "cameras": dict(self.camera_map),
            "image_size": [size, size],
            "default_prompt": self.default_prompt,
            "action_units": "absolute, robot units (un-normalised with the checkpoint's norm stats)",
        }

    def warm_up(self) -> float:
        """Compile the sampler on a synthetic observation; returns the seconds it took."""
        frame = {
            "images": {cam: np.zeros((8, 8, 3), np.uint8) for cam in self.camera_map.values() if cam is not None},
            "state": np.zeros(self.state_stats.dim, np.float32),
            "prompt": self.default_prompt or "warm up",
        }
        start = time.perf_counter()
        self.infer(frame)
        return time.perf_counter() - start

    def model_inputs(self, obs: Any) -> dict[str, Any]:
        """Check one observation and build the model inputs; ObservationError names what was wrong."""
        if not isinstance(obs, Mapping):
            raise ObservationError(f"observation must be a map, got {type(obs).__name__}")
        images = obs.get("images")
        if not isinstance(images, Mapping):
            got = "nothing" if images is None else type(images).__name__
            raise ObservationError(f"'images' must map camera names to uint8 arrays, got {got}")
        state = obs.get("state")
        if state is None:
            raise ObservationError(f"observation has no 'state' (keys: {sorted(map(str, obs))})")
        state = np.asarray(state)
        if state.dtype.kind not in "fiu" or state.shape != (self.state_stats.dim,):
            raise ObservationError(
                f"'state' must be a numeric array of shape ({self.state_stats.dim},) in robot units, "
                f"got {state.dtype} {state.shape}"
            )
        if not np.all(np.isfinite(state)):
            raise ObservationError(f"'state' has NaN or inf: {state}")
        prompt = obs.get("prompt", self.default_prompt)
        if prompt is None:
            raise ObservationError("observation has no 'prompt' and the server has no default (--prompt)")
        if not isinstance(prompt, str):
            raise ObservationError(f"'prompt' must be a str, got {type(prompt).__name__}")
        frame = {"images": {str(k): _to_hwc(v, str(k)) for k, v in images.items()}, "state": state, "prompt": prompt}
        size = self.config.vision.image_size
        try:
            return self._pre.make_observation_inputs(
                frame,
                camera_map=self.camera_map,
                tokenizer=self.tokenizer,
                state_stats=self.state_stats,
                use_quantiles=self.config.pi05,
                discrete_state=self.config.pi05,
                action_dim=self.config.action_dim,
                image_size=(size, size),
            )
        except (KeyError, ValueError, TypeError) as err:  # their messages name the camera / state / prompt
            raise ObservationError(str(err.args[0]) if isinstance(err, KeyError) else str(err)) from err

    def infer(self, obs: Any, *, noise: np.ndarray | None = None) -> dict[str, Any]:
        """openpi's `Policy.infer`: one observation -> `{"actions": (horizon, action_dim), "policy_timing"}`.

        `noise` (horizon, model action_dim) fixes the flow's starting point; by default it is drawn from the
        server's key stream.
        """
        inputs = self.model_inputs(obs)
        observation = self._pi0.Observation.from_dict(inputs)
        shape = (self.config.action_horizon, self.config.action_dim)
        if noise is None:
            self._rng, key = self._jax.random.split(self._rng)
            noise = self._noise(key)
        elif np.shape(noise) != shape:
            raise ValueError(f"noise must have shape {shape} (horizon, model action_dim), got {np.shape(noise)}")
        # Host numpy either way, so given and drawn noise hit the same compiled program.
        noise = np.asarray(noise, np.float32).reshape(1, *shape)
        start = time.monotonic()
        chunk = np.asarray(self._jax.block_until_ready(self._sample(self.params, observation, noise)))
        model_ms = (time.monotonic() - start) * 1000
        actions = self._pre.unnormalize(chunk[0, :, : self.action_dim], self.action_stats, self.config.pi05)
        actions = actions.astype(np.float32)
        if not np.all(np.isfinite(actions)):
            raise FloatingPointError(f"the policy produced non-finite actions: {int((~np.isfinite(actions)).sum())}")
        return {"actions": actions, "policy_timing": {"infer_ms": model_ms}}


# --------------------------------------------------------------------------------------------------------
# The websocket server (openpi's WebsocketPolicyServer behaviour, plus API keys and a one-at-a-time model)
# --------------------------------------------------------------------------------------------------------


class PolicyServer:
    """Serves `policy.infer` to any number of clients; inference runs on one worker thread, in arrival order.

    The event loop stays free while the model runs, so pings, new connections and their metadata are answered
    at once; a client that sends something unusable gets the error as a text frame and is closed with 1011.
    """

    def __init__(self, policy, host: str = "localhost", port: int = 8000, api_key: str | None = None):
        self.policy, self.host, self.port, self.api_key = policy, host, port, api_key
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="policy")
        self._metadata = policy.metadata

    def _process_request(self, connection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.api_key is None:
            return None
        header = request.headers.get("Authorization", "")
        if hmac.compare_digest(header.encode(), f"Api-Key {self.api_key}".encode()):
            return None
        log.warning("refused a client from %s: missing or wrong API key", connection.remote_address)
        return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong Authorization: Api-Key header\n")

    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        from robot.dobot import msgpack_numpy

        peer = ws.remote_address
        log.info("client %s connected", peer)
        loop = asyncio.get_running_loop()
        prev_total_ms = None
        try:
            await ws.send(msgpack_numpy.packb(self._metadata))
            async for message in ws:
                start = time.monotonic()
                try:
                    if isinstance(message, str):
                        raise ObservationError("expected a binary msgpack-numpy observation, got a text frame")
                    try:
                        obs = msgpack_numpy.unpackb(message)
                    except Exception as err:  # msgpack raises several unrelated types for garbage
                        raise ObservationError(
                            f"malformed frame: not msgpack-numpy ({type(err).__name__}: {err})"
                        ) from err
                    result = await loop.run_in_executor(self._executor, self.policy.infer, obs)
                except ObservationError as err:
                    log.warning("client %s sent an unusable observation: %s", peer, err)
                    await self._fail(ws, f"invalid observation: {err}")
                    return
                except Exception:
                    log.exception("inference failed for client %s", peer)
                    await self._fail(ws, traceback.format_exc())
                    return
                timing = {"infer_ms": (time.monotonic() - start) * 1000}
                if prev_total_ms is not None:
                    timing["prev_total_ms"] = prev_total_ms
                result["server_timing"] = timing
                await ws.send(msgpack_numpy.packb(result))
                prev_total_ms = (time.monotonic() - start) * 1000
        except ConnectionClosed:
            pass
        finally:
            log.info("client %s disconnected", peer)

    @staticmethod
    async def _fail(ws, text: str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:  # openpi: the error as a text frame, then close 1011; clients raise on any text frame
            await ws.send(text)
            await ws.close(CLOSE_INTERNAL_ERROR, "policy error; message in the previous frame")
        except ConnectionClosed:
            pass

    async def serve(self, ready: Callable[[list[tuple]], None] | None = None, stop: asyncio.Event | None = None):
        """Serve until `stop` is set (forever without one); `ready` gets the bound (host, port, ...) addresses."""
        from websockets.asyncio.server import serve

        stop = stop or asyncio.Event()
        async with serve(
            self._handle,
            self.host,
            self.port,
            compression=None,
            max_size=None,
            process_request=self._process_request,
        ) as server:
            if ready is not None:
                ready([sock.getsockname() for sock in server.sockets])
            await stop.wait()
        self._executor.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------


def parse_camera_map(text: str) -> dict[str, str | None]:
    """`base_0_rgb=cam_high,left_wrist_0_rgb=none,...` -> {model camera: host camera or None}."""
    result: dict[str, str | None] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        model_cam, sep, host_cam = item.partition("=")
        if not sep or not model_cam or not host_cam:
            raise argparse.ArgumentTypeError(f"expected MODEL_CAMERA=ROBOT_CAMERA pairs, got {item!r}")
        result[model_cam.strip()] = None if host_cam.strip().lower() == "none" else host_cam.strip()
    if not result:
        raise argparse.ArgumentTypeError("empty camera map")
    return result


def _positive_port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0..65535; 0 picks a free one)")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.dobot_pnp.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default_map = ",".join(f"{k}={v}" for k, v in XTRAINER_CAMERA_MAP.items())
    parser.add_argument(
        "--checkpoint_path",
        required=True,
        type=pathlib.Path,
        help="checkpoint directory in openpi's layout: params/ (orbax) and assets/<asset_id>/norm_stats.json",
    )
    parser.add_argument("--host", default="localhost", help="address to bind (default %(default)s; 0.0.0.0: all)")
    parser.add_argument(
        "--port", default=8000, type=_positive_port, help="TCP port (default %(default)s, openpi's; 0 picks a free one)"
    )
    parser.add_argument(
        "--api_key",
        default=None,
        help="when set, clients must send 'Authorization: Api-Key <key>' (openpi_client's api_key=); default: none",
    )
    parser.add_argument("--num_steps", default=10, type=int, help="flow-matching denoising steps (default %(default)s)")
    parser.add_argument(
        "--prompt", default=None, help="prompt used when an observation carries none (default: a prompt is required)"
    )
    parser.add_argument(
        "--tokenizer",
        default=None,
        type=pathlib.Path,
        help="PaliGemma SentencePiece model (paligemma_tokenizer.model); default: the one *.model file saved in "
        "the checkpoint directory (the demo saves tiny_tokenizer.model there)",
    )
    parser.add_argument(
        "--prompt_format",
        default="openpi",
        choices=("openpi", "lerobot"),
        help="prompt tokenization the checkpoint was trained with (default %(default)s)",
    )
    parser.add_argument(
        "--asset_id",
        default=None,
        help="which assets/<asset_id>/norm_stats.json to use (default: the only one in the checkpoint)",
    )
    parser.add_argument(
        "--camera_map",
        default=XTRAINER_CAMERA_MAP,
        type=parse_camera_map,
        help=f"model camera=robot camera pairs; 'none' for a camera the robot lacks (default: {default_map})",
    )
    parser.add_argument(
        "--action_horizon",
        default=50,
        type=int,
        help="actions per chunk; not stored in openpi params, so give what the model was trained with "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--max_token_len",
        default=0,
        type=int,
        help="prompt token budget; not stored in openpi params (default 0: openpi's 48 for PI0, 200 for PI0.5)",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16"),
        help="cast the parameters on load (default: keep the checkpoint's dtype)",
    )
    parser.add_argument("--seed", default=0, type=int, help="seed of the sampling noise (default %(default)s)")
    parser.add_argument(
        "--log_level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="level of the server's own log lines (default %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Our own messages at --log_level; the libraries' (orbax, jax, websockets) only when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(args.log_level)
    for name in ("num_steps", "action_horizon"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.max_token_len < 0:
        parser.error(f"--max_token_len must be >= 0, got {args.max_token_len}")
    if not args.checkpoint_path.is_dir():
        parser.error(f"--checkpoint_path: {args.checkpoint_path} is not a directory")
    start = time.perf_counter()
    try:
        policy = CheckpointPolicy(
            args.checkpoint_path,
            asset_id=args.asset_id,
            tokenizer_path=args.tokenizer,
            camera_map=args.camera_map,
            num_steps=args.num_steps,
            default_prompt=args.prompt,
            action_horizon=args.action_horizon,
            max_token_len=args.max_token_len,
            dtype=args.dtype,
            prompt_format=args.prompt_format,
            seed=args.seed,
        )
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(
        f"loaded {policy.metadata['policy']} from {policy.checkpoint} (assets/{policy.asset_dir.name}, tokenizer "
        f"{policy.tokenizer_path}) in {time.perf_counter() - start:.1f}s",
        flush=True,
    )
    print(f"compiled the sampler ({args.num_steps} steps) in {policy.warm_up():.1f}s", flush=True)
    server = PolicyServer(policy, args.host, args.port, args.api_key)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(addresses: list[tuple]) -> None:
            urls = ", ".join(f"ws://{a[0]}:{a[1]}" if ":" not in a[0] else f"ws://[{a[0]}]:{a[1]}" for a in addresses)
            auth = "API key required" if args.api_key else "no API key"
            print(f"serving on {urls} ({auth}); actions {policy.config.action_horizon}x{policy.action_dim}", flush=True)

        await server.serve(ready, stop)

    try:
        asyncio.run(run())
    except OSError as err:  # port in use, address not available
        print(f"error: --host/--port: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    print("server stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
