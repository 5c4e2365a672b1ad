"""What a hostile peer or an unlucky operator can send the robot env, over real websockets: every refusal names
what was wrong, degenerate images are refused, frames are bounded, a dropped robot frees its slot at once, and
listening beyond localhost needs an API key."""

import concurrent.futures
import logging
import re
import struct

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from robot.dobot import msgpack_numpy, protocol
from robot.dobot.env import DobotEnv, DobotEnvConfig
from robot.dobot.labels import RobotLabels

SIZE = (8, 10)
SPEC = protocol.ObservationSpec(SIZE, 4)


def obs_msg(state=0.0, stamps=(), label=None, images=None):
    msg = {
        "images": images or {k: np.zeros((*SIZE, 3), np.uint8) for k in protocol.CAMERA_KEYS},
        "state": np.full(14, state, np.float32),
        "prompt": "p",
        "server_teleoperation_flag": None,
        "state_chunk": [
            {"state": np.full(14, state, np.float32), "server_teleoperation_flag": None, "state_timestamp": t}
            for t in stamps
        ],
    }
    if label:
        msg["episode_label"] = label
    return msg


@pytest.fixture
def env_factory():
    envs = []

    def make(**kw):
        kw.setdefault("robot_timeout_s", 10.0)
        env = DobotEnv(DobotEnvConfig(port=0, image_size=SIZE, **kw))
        envs.append(env)
        return env

    yield make
    for env in envs:
        env.close()


@pytest.fixture
def actor():
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        yield pool


class Robot:
    def __init__(self, port):
        self.ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None).__enter__()
        self.greeting = self.ws.recv(timeout=5)

    def send(self, msg):
        self.ws.send(msg if isinstance(msg, bytes | str) else msgpack_numpy.packb(msg))

    def recv(self):
        reply = self.ws.recv(timeout=10)
        return reply if isinstance(reply, str) else msgpack_numpy.unpackb(reply)

    def ask(self, msg):
        self.send(msg)
        return self.recv()

    def close(self):
        self.ws.close()


def start_episode(env, actor, robot, stamps=()):
    fut = actor.submit(env.reset, seed=0)
    assert robot.ask(obs_msg())["reset"] is True
    robot.send(obs_msg(stamps=stamps))
    return fut.result(timeout=10)


def ndarray_map(**fields):
    base = {b"__ndarray__": True, b"data": b"\x00" * 12, b"dtype": "<f4", b"shape": [3]}
    base.update({k.encode(): v for k, v in fields.items()})
    return msgpack.packb({k: v for k, v in base.items() if v is not None})


BAD_FRAMES = [
    (b"\xc1\xc1 not msgpack", r"not msgpack"),
    (b"\x91" * 5000 + b"\x00", r"nesting deeper than 1024 levels"),
    (msgpack.packb([1, 2]), r"observation must be a map, got list"),  # valid msgpack, wrong schema
    (msgpack.packb({"a": 1})[:-1], r"incomplete input"),
    (msgpack.packb({"a": 1}) + b"\x00\x01", r"followed by 2 extra bytes"),
    (ndarray_map(dtype=None), r"ndarray needs a dtype string"),
    (ndarray_map(dtype="zz"), r"unknown dtype 'zz'"),
    (ndarray_map(data=b"\x00" * 5), r"needs 12 bytes of data, got 5"),
    (ndarray_map(shape=[-3]), r"shape must be a list of non-negative ints"),
    (ndarray_map(dtype="<c8"), r"unsupported dtype"),
    (msgpack.packb({1: 2}), r"not allowed for map key"),
]


def test_every_refusal_over_the_wire_names_what_was_wrong(env_factory, actor):
    env = env_factory()
    robot = Robot(env.port)
    for frame, reason in BAD_FRAMES:
        reply = robot.ask(frame)
        assert isinstance(reply, str) and reply.startswith("malformed message: "), reply
        assert re.search(reason, reply), (frame[:20], reply)
    start_episode(env, actor, robot)  # the connection survived all of them and nothing was queued
    robot.close()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_give_an_empty_or_foreign_error(frame):
    try:
        protocol.decode_observation(frame, SPEC)
    except protocol.ProtocolError as err:
        assert str(err).strip(), frame
    else:
        pytest.fail(f"random bytes {frame!r} parsed as an observation")


# -- every field replaced by an odd value: accepted, or refused with the field named ---------------------------
ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.lists(st.integers(0, 3), max_size=16),
    st.lists(st.floats(allow_nan=True), min_size=14, max_size=14),
    st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=3),
    st.sampled_from(
        [
            np.zeros((50, 14), np.float32),
            np.zeros(14, ">f8"),
            np.zeros(0, np.float32),
            np.zeros((2, 2), np.uint8),
            np.zeros((*SIZE, 3), np.uint16),
            np.zeros((*SIZE, 3), np.uint8),
            np.array(["a", "b"]),
            np.float64(2.5),
            np.int16(-1),
            "success",
            "server to teleoperation",
            [[[[[[[[[[1]]]]]]]]]],
        ]
    ),
)
FIELDS = [
    ("images",),
    ("images", "cam_high"),
    ("state",),
    ("prompt",),
    ("server_teleoperation_flag",),
    ("state_chunk",),
    ("state_chunk", 0),
    ("state_chunk", 0, "state"),
    ("state_chunk", 0, "server_teleoperation_flag"),
    ("state_chunk", 0, "state_timestamp"),
    ("episode_label",),
    ("episode_label_reason",),
]


def path_name(path):
    name = path[0]
    for part in path[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(FIELDS), ODD_VALUES)
def test_any_field_with_any_value_is_accepted_or_refused_by_name(path, value):
    msg = obs_msg(stamps=(0.0,))
    target = msg
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    frame = msgpack_numpy.packb(msg)
    try:
        obs, _ = protocol.decode_observation(frame, SPEC)
    except protocol.ProtocolError as err:
        text = str(err)
        # The field, or its nearest container for a wrong container type (images must map ..., state_chunk[0] ...)
        assert any(path_name(path[:n]) in text for n in range(len(path), 0, -1)), (path, value, text)
        assert len(text) < 600, text  # bounded whatever was sent
    else:
        assert obs["state"].shape == (14,) and all(img.shape == (*SIZE, 3) for img in obs["images"].values())


def test_state_chunk_sent_as_an_array_is_refused_by_name():
    with pytest.raises(
        protocol.ProtocolError, match=r"state_chunk must be a list of records, got ndarray <f4 \(3, 14\)"
    ):
        protocol.parse_observation({**obs_msg(), "state_chunk": np.zeros((3, 14), np.float32)}, SPEC)


# -- images --------------------------------------------------------------------------------------------------
DEGENERATE_IMAGES = [
    (np.zeros((0, 0, 3), np.uint8), r"height 0"),
    (np.zeros((3, 0, 0), np.uint8), r"height 0"),
    (np.zeros((8, 0, 3), np.uint8), r"width 0"),
    (np.zeros((0,), np.uint8), r"3 dims"),
    (np.zeros((8, 10, 4), np.uint8), r"3 colour channels"),
    (np.zeros((8, 10, 1), np.uint8), r"3 colour channels"),
    (np.zeros((8, 10), np.uint8), r"3 dims"),
    (np.zeros((8, 10, 3), np.float32), r"uint8"),
    (np.zeros((8, 10, 3), np.uint16), r"uint8"),
    (np.zeros((8, 10, 3), bool), r"uint8"),
    (np.zeros((1, 5000, 3), np.uint8), r"width 5000 .*2\.\.80"),
    (np.zeros((65, 10, 3), np.uint8), r"height 65 .*1\.\.64"),
    ([[1, 2, 3]], r"must be a uint8 array"),
]


@pytest.mark.parametrize("image, reason", DEGENERATE_IMAGES)
def test_degenerate_images_are_refused_with_the_camera_named(env_factory, image, reason):
    env = env_factory()
    robot = Robot(env.port)
    images = {k: np.zeros((*SIZE, 3), np.uint8) for k in protocol.CAMERA_KEYS}
    images["cam_left_wrist"] = image
    reply = robot.ask(obs_msg(images=images))
    assert isinstance(reply, str) and reply.startswith("malformed message: images.cam_left_wrist"), reply
    assert re.search(reason, reply), reply
    robot.close()


def test_tiny_images_are_refused_at_the_deployed_size():
    spec = protocol.ObservationSpec((224, 298))
    for shape in ((1, 1, 3), (27, 298, 3), (224, 37, 3)):
        images = {k: np.zeros((224, 298, 3), np.uint8) for k in protocol.CAMERA_KEYS}
        images["cam_high"] = np.zeros(shape, np.uint8)
        with pytest.raises(protocol.ProtocolError, match="images.cam_high has (height|width)"):
            protocol.parse_observation({**obs_msg(), "images": images}, spec)
    images = {k: np.zeros((480, 640, 3), np.uint8) for k in protocol.CAMERA_KEYS}  # a camera's own size: resized
    obs, _ = protocol.parse_observation({**obs_msg(), "images": images}, spec)
    assert obs["images"]["cam_high"].shape == (224, 298, 3)


@pytest.mark.parametrize(
    "image",
    [
        np.full((*SIZE, 3), 7, np.uint8),  # exact size, HWC: decoded as a read-only view on the frame
        np.full((3, *SIZE), 7, np.uint8),  # CHW
        np.full((16, 20, 3), 7, np.uint8),  # resized
        np.asfortranarray(np.full((*SIZE, 3), 7, np.uint8)),
    ],
    ids=["hwc", "chw", "resized", "fortran"],
)
def test_every_observation_array_is_writable_whatever_the_layout(env_factory, actor, image):
    env = env_factory()
    robot = Robot(env.port)
    fut = actor.submit(env.reset)
    robot.ask(obs_msg())
    robot.send(obs_msg(stamps=(0.0,), images={k: image for k in protocol.CAMERA_KEYS}))
    obs, _ = fut.result(timeout=10)
    arrays = [*obs["images"].values()] + [obs[k] for k in ("state", "state_chunk", "state_chunk_timestamp")]
    for arr in arrays:
        assert arr.flags.writeable and arr.flags.c_contiguous and arr.dtype.isnative
    obs["images"]["cam_high"][0, 0] = 1  # the actor may annotate or normalise in place
    assert obs["images"]["cam_high"][0, 0, 0] == 1 and obs["images"]["cam_left_wrist"][0, 0, 0] == 7
    robot.close()


# -- the robot slot ---------------------------------------------------------------------------------------------
def test_a_robot_dropping_while_the_actor_computes_frees_the_slot_at_once(env_factory, actor):
    env = env_factory()
    robot = Robot(env.port)
    start_episode(env, actor, robot)  # the actor now holds an observation and computes its next chunk
    robot.close()
    replacement = Robot(env.port)  # before the actor's next step
    assert isinstance(replacement.greeting, bytes), replacement.greeting  # metadata, not "already connected"
    fut = actor.submit(env.step, np.zeros((50, 14)))
    replacement.send(obs_msg(state=0.5))
    obs, _, _, truncated, info = fut.result(timeout=10)
    assert info["robot_disconnected"] and truncated and obs["state"][0] == pytest.approx(0.5)
    fut = actor.submit(env.reset)
    assert replacement.recv()["reset"] is True
    replacement.send(obs_msg(state=0.7))
    assert fut.result(timeout=10)[0]["state"][0] == pytest.approx(0.7)
    replacement.close()


def test_a_second_robot_is_told_who_holds_the_slot(env_factory):
    env = env_factory()
    robot = Robot(env.port)
    intruder = Robot(env.port)
    assert re.match(r"another robot \(\('127\.0\.0\.1', \d+\)\) is already connected", intruder.greeting)
    intruder.close()
    robot.close()


# -- frame size ---------------------------------------------------------------------------------------------
def test_frames_over_the_limit_are_refused_and_the_limit_is_named(env_factory, caplog):
    env = env_factory()
    assert env.max_frame_bytes == 16 * protocol.ObservationSpec(SIZE, 50).nominal_frame_bytes()
    robot = Robot(env.port)
    with caplog.at_level(logging.ERROR, logger="robot.dobot.env"):
        robot.send(b"\x00" * (env.max_frame_bytes + 1))
        with pytest.raises(ConnectionClosed) as err:
            robot.recv()
        assert err.value.rcvd.code == 1009
        assert str(env.max_frame_bytes) in err.value.rcvd.reason
        Robot(env.port).close()  # the slot is free again; the env logged why it closed the connection
    assert any(
        "max_frame_bytes" in r.getMessage()
        and "16 x the" in r.getMessage()
        and str(env.max_frame_bytes) in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_a_400mb_frame_header_is_refused_before_its_payload(env_factory):
    """Only the header of a 400 MB frame is sent: the env closes at once instead of waiting to buffer it."""
    env = env_factory()
    robot = Robot(env.port)
    length = 400 * 2**20
    header = struct.pack("!BBQ", 0x82, 0x80 | 127, length) + b"\x00\x00\x00\x00"  # FIN binary, masked, 64-bit len
    robot.ws.socket.sendall(header + b"\x00" * 100)
    with pytest.raises(ConnectionClosed) as err:
        robot.ws.recv(timeout=5)
    assert err.value.rcvd is not None and err.value.rcvd.code == 1009
    robot.close()


def test_a_camera_size_observation_fits_the_default_limit():
    spec = protocol.ObservationSpec()
    images = {k: np.zeros((480, 640, 3), np.uint8) for k in protocol.CAMERA_KEYS}
    frame = msgpack_numpy.packb({**obs_msg(stamps=[0.1 * i for i in range(50)]), "images": images})
    assert len(frame) < 16 * spec.nominal_frame_bytes()
    nominal = msgpack_numpy.packb(
        {
            **obs_msg(stamps=[0.1 * i for i in range(50)]),
            "images": {k: np.zeros((224, 298, 3), np.uint8) for k in protocol.CAMERA_KEYS},
        }
    )
    assert len(nominal) <= spec.nominal_frame_bytes()  # the estimate covers a real full observation


# -- listening beyond localhost --------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "", "::", "192.168.1.20", "robot-actor.example.org"])
def test_listening_beyond_localhost_without_a_key_is_refused(host):
    with pytest.raises(ValueError, match=r"DobotEnvConfig.api_key: listening on .* \(beyond localhost\) without an"):
        DobotEnvConfig(host=host).validate()
    DobotEnvConfig(host=host, api_key="k").validate()
    DobotEnvConfig(host=host, allow_no_api_key=True).validate()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_localhost_needs_no_key(host):
    DobotEnvConfig(host=host).validate()


def test_opting_out_of_the_key_is_logged_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="robot.dobot.env"):
        env = DobotEnv(DobotEnvConfig(host="0.0.0.0", port=0, allow_no_api_key=True))
        env.close()
    assert any("WITHOUT an API key" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_an_empty_api_key_is_refused():
    with pytest.raises(ValueError, match="DobotEnvConfig.api_key: must be a non-empty"):
        DobotEnvConfig(api_key="").validate()


# -- labels and the episode limit -------------------------------------------------------------------------------
def test_steps_without_a_label_have_no_label_reason(env_factory, actor):
    env = env_factory()
    robot = Robot(env.port)
    start_episode(env, actor, robot)
    fut = actor.submit(env.step, np.zeros((50, 14)))
    robot.recv()
    robot.send(obs_msg())
    info = fut.result(timeout=10)[4]
    assert info["label"] is None and info["label_reason"] == ""
    fut = actor.submit(env.step, np.zeros((50, 14)))
    robot.recv()
    robot.send(obs_msg(label="success"))
    info = fut.result(timeout=10)[4]
    assert info["label"] == "success" and info["label_reason"] == "robot label (no reason given)"
    assert RobotLabels().poll({}, {"episode_label": None, "episode_label_reason": "stale"}) == (None, "")
    robot.close()


def test_the_episode_limit_counts_robot_time_not_queries(env_factory, actor):
    """Teleop queries cover 0.1 s each: 25 of them are 2.5 s of robot time, far below a 3 s limit, while a
    query-count limit of 20 would have ended the episode."""
    env = env_factory(max_episode_s=3.0)
    robot = Robot(env.port)
    start_episode(env, actor, robot, stamps=(100.0,))
    for k in range(1, 40):
        fut = actor.submit(env.step, np.zeros((50, 14)))
        robot.recv()
        robot.send(obs_msg(stamps=(100.0 + 0.1 * k,)))
        _, _, term, trunc, info = fut.result(timeout=10)
        assert info["episode_time_s"] == pytest.approx(0.1 * k)
        if trunc:
            break
    assert k == 30 and trunc and not term and info["label"] == "failure"
    assert info["label_reason"] == "no success within 3 s of robot time (DobotEnvConfig.max_episode_s)"
    robot.close()
