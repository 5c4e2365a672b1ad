"""Safe wire codec and envelope: round trips, zero copy, dtype/shape validation, fuzzed rejection."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hiors_jax.transport import codec
from hiors_jax.transport.codec import WireError
from hiors_jax.transport.envelope import MAGIC, AuthError, Envelope

KEY = b"0123456789abcdef0123456789abcdef"

dtypes = st.sampled_from(["u1", "i4", "f4", "f8", "?", "i8", "f2", "c8"]).map(np.dtype)
arrays = hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=3, max_side=40))
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.binary(max_size=20), arrays
)
trees = st.recursive(
    leaves,
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)),
    max_leaves=12,
)


def assert_same(a, b):
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees)
def test_round_trip_of_nested_structures(tree):
    env = Envelope(KEY)
    assert_same(tree, env.unpack(env.pack(tree)))


def test_transition_keeps_dtypes_images_zero_copy_small_arrays_packed():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (224, 298, 3), dtype=np.uint8)
    item = {
        "observations": {"cam_high": image, "state": np.zeros((1, 14), np.float32)},
        "prompt": np.array(["pick up the cube"]),
        "actions": rng.standard_normal((50, 14)).astype(np.float32),  # 2.8 KB: in the header
        "state_chunk": rng.standard_normal((50, 14, 4)).astype(np.float32),  # 11 KB: packed
        "bf16": np.ones(3000, ml_dtypes.bfloat16),  # 6 KB: packed with the chunk
        "rewards": np.float32(1.0),
        "pair": (1, "a"),
    }
    header, buffers = codec.encode(item)
    assert len(buffers) == 2, "the image has its own frame, the two small arrays share one"
    assert np.shares_memory(np.frombuffer(buffers[0], np.uint8), image), "images are not copied"
    out = codec.decode(header, buffers)
    assert out["observations"]["cam_high"].dtype == np.uint8
    assert np.shares_memory(out["observations"]["cam_high"], np.frombuffer(buffers[0], np.uint8))
    assert out["bf16"].dtype == ml_dtypes.bfloat16 and out["pair"] == (1, "a")
    assert isinstance(out["rewards"], np.float32) and out["prompt"][0] == "pick up the cube"
    assert_same(item, out)


def test_non_contiguous_and_jax_like_arrays():
    a = np.arange(100, dtype=np.int32).reshape(10, 10)[:, ::2]

    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return np.arange(5.0)

    out = codec.decode(*codec.encode({"a": a, "j": ArrayLike()}))
    np.testing.assert_array_equal(out["a"], a)
    np.testing.assert_array_equal(out["j"], np.arange(5.0))


@pytest.mark.parametrize("bad", [object(), np.array([object()]), {1, 2}, {"f": lambda: 0}])
def test_unsupported_values_are_refused_with_a_clear_error(bad):
    with pytest.raises(WireError):
        codec.encode(bad)


def test_decoder_validates_arrays():
    header, buffers = codec.encode({"x": np.zeros(5000, np.uint8)})
    with pytest.raises(WireError, match="truncated"):
        codec.decode(header, [buffers[0][:100]])
    with pytest.raises(WireError, match="buffer"):
        codec.decode(header, [])
    with pytest.raises(WireError, match="unreferenced"):
        codec.decode(header, [buffers[0], b"extra"])
    evil = codec.msgpack.packb(
        codec.msgpack.ExtType(codec.EXT_ARRAY_INLINE, codec.msgpack.packb(["|O", [1], b"x" * 8]))
    )
    with pytest.raises(WireError, match="not allowed"):
        codec.decode(evil, [])


def test_envelope_authentication():
    signed = Envelope(KEY).pack({"t": "ping", "x": np.zeros(20000, np.float32)})
    with pytest.raises(AuthError):
        Envelope(b"another key, 32 bytes long......").unpack(signed)
    with pytest.raises(AuthError):
        Envelope(KEY).unpack(Envelope(None).pack({"t": "ping"}))
    tampered = list(signed)
    tampered[3] = bytes(tampered[3])[:-1] + b"\x01"
    with pytest.raises(AuthError):
        Envelope(KEY).unpack(tampered)
    with pytest.raises(AuthError):  # a dropped buffer frame
        Envelope(KEY).unpack(signed[:-1])
    with pytest.raises(ValueError, match="16 bytes"):
        Envelope(b"short")


def test_envelope_size_and_tag_limits():
    frames = Envelope(None).pack({"x": np.zeros(10_000, np.uint8)})
    with pytest.raises(WireError, match="exceeds"):
        Envelope(None, max_message_bytes=5000).unpack(frames)
    with pytest.raises(WireError, match="protocol tag"):
        Envelope(None).unpack([b"XXXX", *frames[1:]])
    with pytest.raises(WireError, match="frame"):
        Envelope(None).unpack([MAGIC])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=6), st.booleans())
def test_fuzzed_frames_raise_only_wire_errors(frames, with_magic):
    if with_magic and frames:
        frames[0] = MAGIC
    for env in (Envelope(None), Envelope(KEY)):
        try:
            env.unpack(frames)
        except WireError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_headers_raise_only_wire_errors(header):
    try:
        codec.decode(header, [])
    except WireError:
        pass
