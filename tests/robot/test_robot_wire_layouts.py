"""Byte order, memory layout and zero-size arrays through the robot wire (openpi msgpack-numpy), both directions.

A codec that labelled every array little-endian (a `>i4` [0, 1, 2] arriving as [0, 16777216, 33554432]) or that
copied an array's memory as if it were C-contiguous (a Fortran-order or strided view arriving scrambled) must fail
here: values are compared with the sender's, never with what the codec itself produced.
"""

import concurrent.futures
import contextlib
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import serve

from robot.dobot import msgpack_numpy, protocol
from robot.dobot.bridge import Bridge, BridgeConfig
from robot.dobot.env import DobotEnv, DobotEnvConfig

NUMERIC = ["i2", "i4", "i8", "u2", "u4", "u8", "f2", "f4", "f8"]
SIZE = (8, 10)


def byte_orders(kind: str) -> list[str]:
    return ["<" + kind, ">" + kind]


ARRAY_DTYPES = [o for k in NUMERIC for o in byte_orders(k)] + ["|u1", "|i1", "?"]


@st.composite
def laid_out_arrays(draw):
    """Arrays of either byte order in C order, Fortran order, strided, reversed and zero-size layouts."""
    dtype = np.dtype(draw(st.sampled_from(ARRAY_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    elements = hnp.from_dtype(dtype, allow_nan=False) if dtype.kind == "f" else None
    arr = draw(hnp.arrays(dtype, shape, elements=elements))
    layout = draw(st.sampled_from(["C", "F", "strided", "reversed", "transposed"]))
    if layout == "F":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and arr.ndim:
        arr = np.repeat(arr, 2, axis=-1)[..., ::2]
    elif layout == "reversed" and arr.ndim:
        arr = arr[::-1]
    elif layout == "transposed":
        arr = arr.T
    assert arr.dtype == dtype  # the layout changes never change the byte order
    return arr


@settings(max_examples=200, deadline=None)
@given(laid_out_arrays())
def test_any_byte_order_and_layout_round_trips_with_equal_values(arr):
    decoded = msgpack_numpy.unpackb(msgpack_numpy.packb({"a": arr, "nested": [{"b": arr}]}))
    for out in (decoded["a"], decoded["nested"][0]["b"]):
        assert out.dtype == arr.dtype and out.shape == arr.shape
        # Compare as native Python values: a byte-order slip changes them even when dtypes agree.
        assert out.tolist() == arr.tolist()


@pytest.mark.parametrize("dtype", [">i4", "<i4", ">f8", ">u2"])
def test_the_issue_example_arrives_with_its_values(dtype):
    arr = np.arange(3, dtype=dtype)
    frame = msgpack_numpy.packb(arr)
    assert msgpack_numpy.unpackb(frame).tolist() == [0, 1, 2]
    # What openpi's decoder does (np.ndarray on the bytes with the sent dtype string) reads the same values:
    import msgpack

    raw = msgpack.unpackb(frame)
    assert np.ndarray(buffer=raw[b"data"], dtype=np.dtype(raw[b"dtype"]), shape=tuple(raw[b"shape"])).tolist() == [
        0,
        1,
        2,
    ]


def obs_msg(state, images, stamps=(0.0,)):
    return {
        "images": images,
        "state": state,
        "prompt": "p",
        "server_teleoperation_flag": None,
        "state_chunk": [{"state": state, "server_teleoperation_flag": None, "state_timestamp": t} for t in stamps],
    }


@st.composite
def state_vectors(draw):
    dtype = draw(st.sampled_from(byte_orders("f4") + byte_orders("f8") + byte_orders("i4") + byte_orders("i2")))
    base = np.arange(-7, 7) if np.dtype(dtype).kind == "i" else np.linspace(-3.0, 3.0, 14)
    layout = draw(st.sampled_from(["C", "strided", "reversed"]))
    if layout == "strided":
        return np.repeat(base.astype(dtype), 2)[::2]
    if layout == "reversed":
        return base[::-1].astype(dtype)[::-1]
    return base.astype(dtype)


@st.composite
def camera_images(draw):
    """uint8 pictures in HWC or CHW, C order, Fortran order, flipped or strided; the expected HWC picture too."""
    hwc = draw(hnp.arrays(np.uint8, (*SIZE, 3)))
    form = draw(st.sampled_from(["HWC", "CHW", "F", "flipped", "strided"]))
    if form == "CHW":
        return np.ascontiguousarray(hwc.transpose(2, 0, 1)), hwc
    if form == "F":
        return np.asfortranarray(hwc), hwc
    if form == "flipped":  # a negative-stride view of the picture
        return hwc[::-1, ::-1][::-1, ::-1], hwc
    if form == "strided":
        return np.repeat(hwc, 2, axis=1)[:, ::2], hwc
    return hwc, hwc


@settings(max_examples=60, deadline=None)
@given(state_vectors(), camera_images())
def test_observations_of_any_byte_order_and_layout_parse_to_the_sent_values(state, image):
    sent, expected_image = image
    images = {k: sent for k in protocol.CAMERA_KEYS}
    frame = msgpack_numpy.packb(obs_msg(state, images, stamps=(np.float64(1.5),)))
    obs, _ = protocol.decode_observation(frame, protocol.ObservationSpec(SIZE, 4))
    np.testing.assert_array_equal(obs["state"], state.astype(np.float64).astype(np.float32))
    np.testing.assert_array_equal(obs["state_chunk"][0], obs["state"])
    assert obs["state"].dtype == np.float32 and obs["state"].dtype.isnative
    for key in protocol.CAMERA_KEYS:
        np.testing.assert_array_equal(obs["images"][key], expected_image)


def test_zero_size_and_non_native_action_chunks_are_checked_by_value():
    with pytest.raises(protocol.InvalidAction, match=r"shape \(50, 14\), got \(0, 14\)"):
        protocol.check_action_chunk(msgpack_numpy.unpackb(msgpack_numpy.packb(np.zeros((0, 14), ">f4"))))
    big = np.arange(700, dtype=">f8").reshape(14, 50).T  # non-native and Fortran order
    out = protocol.check_action_chunk(msgpack_numpy.unpackb(msgpack_numpy.packb(big)))
    np.testing.assert_array_equal(out, big.astype(np.float32))


# -- over the real websocket, both directions --------------------------------------------------------------
class FakeIO:
    realtime = False
    prompt = "test"

    def __init__(self, state, images):
        self.state, self.images, self.commands, self.t = state, images, [], 0.0

    def now(self):
        return self.t

    def read_state(self):
        return self.state

    def read_images(self):
        return self.images

    def teleop_flag(self):
        return None

    def command(self, q):
        self.commands.append(np.array(q))

    def tick(self):
        self.t += 0.02

    def reset(self, chunk, seed):
        pass

    def episode_label(self):
        return None, ""


@pytest.mark.parametrize("layout", ["big-endian f8, Fortran order", "big-endian f4, reversed rows", "native, strided"])
def test_env_to_robot_actions_of_any_layout_reach_the_robot_with_their_values(layout):
    """The actor hands the env an odd array; the robot (hand-driven client) decodes the same numbers."""
    values = np.linspace(0.0, 0.9, 700).reshape(50, 14)  # inside the joint limits: nothing is clipped
    if layout.startswith("big-endian f8"):
        chunk = np.asfortranarray(values.astype(">f8"))
    elif layout.startswith("big-endian f4"):
        chunk = values[::-1].astype(">f4")[::-1]
    else:
        chunk = np.repeat(values.astype(np.float32), 2, axis=1)[:, ::2]
    env = DobotEnv(DobotEnvConfig(port=0, image_size=SIZE, robot_timeout_s=10))
    images = {k: np.zeros((*SIZE, 3), np.uint8) for k in protocol.CAMERA_KEYS}
    try:
        with (
            connect(f"ws://127.0.0.1:{env.port}", compression=None) as ws,
            concurrent.futures.ThreadPoolExecutor(1) as actor,
        ):
            ws.recv(timeout=5)
            fut = actor.submit(env.reset)
            ws.send(msgpack_numpy.packb(obs_msg(np.zeros(14, np.float32), images)))
            assert msgpack_numpy.unpackb(ws.recv(timeout=5))["reset"] is True
            ws.send(msgpack_numpy.packb(obs_msg(np.zeros(14, np.float32), images)))
            fut.result(timeout=5)
            fut = actor.submit(env.step, chunk)
            received = msgpack_numpy.unpackb(ws.recv(timeout=5))["actions"]
            np.testing.assert_array_equal(received, values.astype(np.float32))
            ws.send(msgpack_numpy.packb(obs_msg(np.zeros(14, np.float32), images)))
            fut.result(timeout=5)
    finally:
        env.close()


def test_robot_decodes_non_native_non_contiguous_replies_and_env_reads_its_odd_observations():
    """Robot side both ways: a peer env sends `>f4` Fortran-order actions and the bridge executes their values;
    the bridge's observation from a driver with odd layouts (big-endian reversed state, CHW and Fortran-order
    images) decodes on the other side to the driver's values."""
    values = np.linspace(0.0, 0.49, 700).reshape(50, 14)
    reply = {"actions": np.asfortranarray(values.astype(">f4"))}
    seen = []

    def handler(ws):
        ws.send(msgpack_numpy.packb({}))
        seen.append(msgpack_numpy.unpackb(ws.recv()))
        ws.send(msgpack_numpy.packb(reply))
        with contextlib.suppress(ConnectionClosed):
            ws.recv()  # the bridge stops after one query

    hwc = (np.arange(SIZE[0] * SIZE[1] * 3) % 251).astype(np.uint8).reshape(*SIZE, 3)
    images = {"cam_high": hwc.transpose(2, 0, 1), "cam_left_wrist": np.asfortranarray(hwc), "cam_right_wrist": hwc}
    state = np.linspace(-1, 1, 14).astype(">f8")[::-1]
    io = FakeIO(state, images)
    with serve(handler, "127.0.0.1", 0, compression=None) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        bridge = Bridge(io, BridgeConfig(uri=f"ws://127.0.0.1:{server.socket.getsockname()[1]}", policy_steps=50))
        bridge.run(max_queries=1)
        server.shutdown()
    np.testing.assert_allclose(np.array(io.commands)[4::5], values.astype(np.float32), atol=1e-6)
    obs, _ = protocol.parse_observation(seen[0], protocol.ObservationSpec(SIZE, 4))
    np.testing.assert_array_equal(obs["state"], state.astype(np.float32))
    for key in protocol.CAMERA_KEYS:
        np.testing.assert_array_equal(obs["images"][key], hwc)
