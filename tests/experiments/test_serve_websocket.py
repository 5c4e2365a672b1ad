"""`python -m experiments.dobot_pnp.serve` as a real process on localhost, spoken to by openpi's own client.

openpi_client (PyPI 0.1.2) pins numpy < 2 and so cannot be a dependency of this numpy-2 project; install it with
`pip install --no-deps openpi-client==0.1.2` (its websocket client runs unchanged on numpy 2). Without it those
tests skip; the same behaviour is also checked below with a plain websockets client and openpi's wire codec.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from robot.dobot import msgpack_numpy

pytestmark = pytest.mark.integration

PROJECT_ROOT = pathlib.Path(__file__).resolve().parents[2]
API_KEY = "s3cret-key"
START_TIMEOUT_S = 300


def start_server(checkpoint: pathlib.Path, *extra: str) -> tuple[subprocess.Popen, int, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "experiments.dobot_pnp.serve", f"--checkpoint_path={checkpoint}", *extra]
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    seen: list[str] = []

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        match = re.search(r"serving on ws://127\.0\.0\.1:(\d+)", line)
        if match:
            threading.Thread(target=lambda: [seen.append(x) for x in iter(lines.get, None)], daemon=True).start()
            return proc, int(match.group(1)), seen
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(seen))


@pytest.fixture(scope="module")
def server(tiny_checkpoint):
    proc, port, output = start_server(
        tiny_checkpoint,
        "--host=127.0.0.1",
        "--port=0",
        f"--api_key={API_KEY}",
        "--asset_id=xtrainer",
        "--num_steps=3",
        "--prompt=fold the towel",
    )
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, "".join(output)
    assert any("server stopped" in line for line in output)


def openpi_client(port: int, api_key: str | None = API_KEY):
    policy_module = pytest.importorskip(
        "openpi_client.websocket_client_policy", reason="pip install --no-deps openpi-client==0.1.2"
    )
    return policy_module.WebsocketClientPolicy("127.0.0.1", port, api_key=api_key)


@contextlib.contextmanager
def raw_client(port: int):
    """A plain websockets client speaking openpi's wire (our codec), with the key; yields (conn, metadata)."""
    with connect(
        f"ws://127.0.0.1:{port}",
        compression=None,
        max_size=None,
        additional_headers={"Authorization": f"Api-Key {API_KEY}"},
    ) as conn:
        yield conn, msgpack_numpy.unpackb(conn.recv(timeout=30))


def check_reply(reply: dict) -> None:
    assert reply["actions"].shape == (50, 14) and reply["actions"].dtype == np.float32
    assert np.all(np.isfinite(reply["actions"]))
    assert reply["policy_timing"]["infer_ms"] > 0 and reply["server_timing"]["infer_ms"] > 0


def test_openpi_client_infers_actions_and_reads_metadata(server, robot_frame):
    client = openpi_client(server)
    meta = client.get_server_metadata()
    assert meta["action_horizon"] == 50 and meta["action_dim"] == 14 and meta["asset_id"] == "xtrainer"
    assert meta["cameras"]["base_0_rgb"] == "cam_high" and meta["default_prompt"] == "fold the towel"
    first = client.infer(robot_frame)
    check_reply(first)
    second = client.infer({k: v for k, v in robot_frame.items() if k != "prompt"})  # --prompt default
    check_reply(second)
    assert second["server_timing"]["prev_total_ms"] > 0  # openpi reports the previous round trip


def test_openpi_client_with_openpi_image_tools(server, robot_frame):
    image_tools = pytest.importorskip("openpi_client.image_tools", reason="pip install --no-deps openpi-client")
    client = openpi_client(server)
    images = {k: image_tools.resize_with_pad(v, 224, 224).transpose(2, 0, 1) for k, v in robot_frame["images"].items()}
    check_reply(client.infer({**robot_frame, "images": images}))  # CHW, as openpi's ALOHA clients send


@pytest.mark.parametrize("key", [None, "wrong"])
def test_missing_or_wrong_api_key_is_refused(server, key):
    pytest.importorskip("openpi_client", reason="pip install --no-deps openpi-client==0.1.2")
    with pytest.raises(InvalidStatus) as err:
        openpi_client(server, api_key=key)
    assert err.value.response.status_code == 401


def test_wrong_key_refused_raw(server):
    with pytest.raises(InvalidStatus) as err:
        connect(f"ws://127.0.0.1:{server}", additional_headers={"Authorization": "Api-Key nope"})
    assert err.value.response.status_code == 401


def test_raw_client_round_trip(server, robot_frame):
    with raw_client(server) as (conn, meta):
        assert meta["action_dim"] == 14
        conn.send(msgpack_numpy.packb(robot_frame))
        check_reply(msgpack_numpy.unpackb(conn.recv(timeout=60)))


def test_concurrent_clients_are_all_served(server, robot_frame):
    results: list = []
    errors: list = []

    def run(i: int) -> None:
        try:
            with raw_client(server) as (conn, _):
                for _ in range(3):
                    conn.send(msgpack_numpy.packb({**robot_frame, "prompt": f"transfer the cube {i}"}))
                    results.append(msgpack_numpy.unpackb(conn.recv(timeout=120)))
        except Exception as err:  # reported below with the thread's index
            errors.append((i, err))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert len(results) == 12
    for reply in results:
        check_reply(reply)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\xc1\x00garbage", "malformed frame: not msgpack-numpy"),
        ("hello", "got a text frame"),
        (msgpack_numpy.packb({"images": {}, "state": np.zeros(14, np.float32)}), "camera 'cam_high'"),
        (msgpack_numpy.packb([1, 2]), "observation must be a map"),
    ],
)
def test_bad_frame_gets_a_text_error_and_close_1011_while_others_keep_working(server, robot_frame, payload, message):
    with raw_client(server) as (bystander, _):
        with raw_client(server) as (conn, _):
            conn.send(payload)
            reply = conn.recv(timeout=60)
            assert isinstance(reply, str) and message in reply
            with pytest.raises(ConnectionClosed) as closed:
                conn.recv(timeout=30)
            assert closed.value.rcvd.code == 1011
        bystander.send(msgpack_numpy.packb(robot_frame))
        check_reply(msgpack_numpy.unpackb(bystander.recv(timeout=60)))


def test_openpi_client_sees_bad_observation_as_runtime_error(server, robot_frame):
    client = openpi_client(server)
    with pytest.raises(RuntimeError, match=r"'state' must be a numeric array of shape \(14,\)"):
        client.infer({**robot_frame, "state": np.zeros(7, np.float32)})
    check_reply(openpi_client(server).infer(robot_frame))


def test_health_check_answers_without_key(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server}/healthz", timeout=30) as response:
        assert response.status == 200 and response.read() == b"OK\n"
