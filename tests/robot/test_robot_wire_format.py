"""Byte-for-byte agreement with openpi_client's msgpack-numpy (golden bytes made by the real package)."""

import pathlib

import msgpack
import numpy as np
import pytest

from robot.dobot import msgpack_numpy

DATA = pathlib.Path(__file__).parent / "data"


def golden_messages():
    """The inputs the golden files were produced from (see data/README.md)."""
    obs = {
        "images": {
            "cam_high": (np.arange(4 * 5 * 3) % 256).astype(np.uint8).reshape(4, 5, 3),
            "cam_left_wrist": (np.arange(3 * 4 * 5) * 7 % 256).astype(np.uint8).reshape(3, 4, 5),
            "cam_right_wrist": np.full((4, 5, 3), 200, np.uint8),
        },
        "state": np.linspace(-1.5, 1.5, 14, dtype=np.float32),
        "prompt": "put the objects in the box",
        "server_teleoperation_flag": "server to teleoperation",
        "state_chunk": [
            {
                "state": np.linspace(0, 1, 14, dtype=np.float32),
                "server_teleoperation_flag": None,
                "state_timestamp": 1700000000.125,
            },
            {
                "state": np.linspace(1, 2, 14, dtype=np.float32),
                "server_teleoperation_flag": "teleoperation to server",
                "state_timestamp": np.float64(1700000000.225),
            },
        ],
    }
    reply = {"actions": (np.arange(50 * 14, dtype=np.float32).reshape(50, 14) / 100.0)}
    misc = {
        "f64": np.arange(6, dtype=np.float64).reshape(2, 3),
        "i64": np.array([-1, 0, 1 << 40], dtype=np.int64),
        "bool": np.array([True, False]),
        "big_endian": np.arange(3, dtype=">i4"),
        "scalar_f32": np.float32(0.5),
        "scalar_i16": np.int16(-7),
        "scalar_bool": np.bool_(True),
        "noncontiguous": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2],
        "empty": np.zeros((0, 14), np.float32),
        "plain": [1, 2.5, None, "x", {"k": b"raw"}],
    }
    return {"observation": obs, "reply": reply, "misc": misc}


def assert_same(decoded, original, where="msg"):
    if isinstance(original, dict):
        assert isinstance(decoded, dict) and list(decoded) == list(original), where
        for k in original:
            assert_same(decoded[k], original[k], f"{where}.{k}")
    elif isinstance(original, list):
        assert len(decoded) == len(original), where
        for i, (d, o) in enumerate(zip(decoded, original, strict=True)):
            assert_same(d, o, f"{where}[{i}]")
    elif isinstance(original, np.ndarray):
        assert isinstance(decoded, np.ndarray) and decoded.dtype == original.dtype, where
        np.testing.assert_array_equal(decoded, original, err_msg=where)
    elif isinstance(original, float):  # np.float64 is a Python float: msgpack packs it natively, like openpi
        assert isinstance(decoded, float) and decoded == original, where
    elif isinstance(original, np.generic):
        assert type(decoded) is type(original) and decoded == original, where
    else:
        assert decoded == original and type(decoded) is type(original), where


@pytest.mark.parametrize("name", ["observation", "reply", "misc"])
def test_encoder_matches_openpi_client_bytes(name):
    golden = (DATA / f"openpi_client_{name}.msgpack").read_bytes()
    assert msgpack_numpy.packb(golden_messages()[name]) == golden


@pytest.mark.parametrize("name", ["observation", "reply", "misc"])
def test_decoder_reads_openpi_client_bytes(name):
    decoded = msgpack_numpy.unpackb((DATA / f"openpi_client_{name}.msgpack").read_bytes())
    assert_same(decoded, golden_messages()[name])


def test_ndarray_layout_is_the_documented_map():
    """The reference's description, spelled out with plain msgpack: byte keys, dtype.str, shape array."""
    arr = np.array([[1, 2, 3]], dtype="<u2")
    expected = msgpack.packb(
        {b"__ndarray__": True, b"data": b"\x01\x00\x02\x00\x03\x00", b"dtype": "<u2", b"shape": [1, 3]}
    )
    assert msgpack_numpy.packb(arr) == expected
    scalar = msgpack.packb({b"__npgeneric__": True, b"data": 2.5, b"dtype": "<f4"})
    assert msgpack_numpy.packb(np.float32(2.5)) == scalar


def test_decoded_arrays_are_read_only_views():
    arr = msgpack_numpy.unpackb(msgpack_numpy.packb(np.zeros(3, np.float32)))
    with pytest.raises(ValueError):
        arr[0] = 1.0


@pytest.mark.parametrize("value", [np.array([object()]), np.array([1 + 2j]), np.zeros(2, dtype=[("a", "<i4")])])
def test_object_complex_and_void_dtypes_are_refused(value):
    with pytest.raises(ValueError, match="unsupported dtype"):
        msgpack_numpy.packb(value)


def test_refused_dtype_on_decode_and_unknown_types():
    crafted = msgpack.packb({b"__ndarray__": True, b"data": b"\x00" * 16, b"dtype": "<c16", b"shape": [1]})
    with pytest.raises(ValueError, match="unsupported dtype"):
        msgpack_numpy.unpackb(crafted)
    with pytest.raises(TypeError, match="cannot serialise"):
        msgpack_numpy.packb({"x": object()})
