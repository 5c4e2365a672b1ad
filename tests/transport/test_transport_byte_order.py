"""Arrays the codecs must carry exactly: non-native byte orders (>i4, >f8, <u2 ...), non-contiguous views
(strided, transposed, negative strides) and zero-size arrays, through every path of the safe codec (inline,
packed, zero-copy frames), the agentlace wire, the spill journal and weight broadcasts, and over real sockets.
A codec that relabels byte order (a >i4 [0, 1, 2] arriving as [0, 16777216, 33554432]) or sends the raw
memory of a view fails these."""

import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from transport_test_helpers import ListStore

from hiors_jax.transport import QueuedDataStore, TrainerClient, TrainerServer, codec, legacy
from hiors_jax.transport.envelope import Envelope
from hiors_jax.transport.weights import NetworkAssembler, chunk_messages

KEY = "a-shared-secret-of-32-characters"
# every byte order explicitly, including the non-native one of this machine, and byte-order-free kinds
DTYPES = [">i4", "<i4", ">f8", "<f8", "<u2", ">u2", ">i8", ">f4", ">f2", ">c8", "<c16", "|u1", "|i1", "?", ">U3", "|S4"]
settings_ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def views_of(base: np.ndarray, data: st.DataObject) -> np.ndarray:
    """The array itself or a non-contiguous view of it: transposed, strided, reversed (negative stride)."""
    arr = base
    for _ in range(data.draw(st.integers(0, 2), label="view ops")):
        op = data.draw(st.sampled_from(["T", "step", "reverse", "slice"]), label="op")
        axis = data.draw(st.integers(0, max(arr.ndim - 1, 0)), label="axis") if arr.ndim else 0
        if op == "T":
            arr = arr.T
            continue
        if arr.ndim == 0:
            continue
        index = [slice(None)] * arr.ndim
        if op == "step":
            index[axis] = slice(None, None, data.draw(st.integers(2, 3), label="step"))
        elif op == "reverse":
            index[axis] = slice(None, None, -data.draw(st.integers(1, 2), label="neg step"))
        elif op == "slice":
            index[axis] = slice(1, None)
        arr = arr[tuple(index)]
    return arr


@st.composite
def tricky_arrays(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES), label="dtype"))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9), label="shape")
    base = draw(hnp.arrays(dtype, shape), label="base")
    return views_of(base, draw(st.data()))


def assert_exact(sent: np.ndarray, got, same_byte_order: bool = True) -> None:
    """Same values, shape and dtype. numpy's pickle (agentlace's wire) hands non-native arrays back in native
    byte order with the same values, so there only the values and the dtype up to byte order must match."""
    assert isinstance(got, np.ndarray), type(got)
    if same_byte_order:
        assert got.dtype == sent.dtype, f"dtype {sent.dtype.str} arrived as {got.dtype.str}"
    else:
        assert got.dtype.newbyteorder("=") == sent.dtype.newbyteorder("="), f"{sent.dtype.str} -> {got.dtype.str}"
    assert got.shape == sent.shape
    np.testing.assert_array_equal(got, sent)  # NaNs compare equal here


@settings_
@given(arr=tricky_arrays(), inline=st.sampled_from([0, 64, 4096]), zero_copy=st.sampled_from([0, 256, 64 << 10]))
def test_safe_codec_carries_byte_order_views_and_empty_arrays_on_every_path(arr, inline, zero_copy):
    header, buffers = codec.encode({"x": arr, "t": (arr,)}, inline_limit=inline, zero_copy_bytes=zero_copy)
    out = codec.decode(header, [bytes(b) for b in buffers])  # as received: new memory, no link to the sender
    assert_exact(arr, out["x"])
    assert_exact(arr, out["t"][0])


@settings_
@given(arr=tricky_arrays(), key=st.sampled_from([None, KEY]))
def test_safe_envelope_round_trip(arr, key):
    env = Envelope(key)
    scalar = arr.reshape(-1)[0] if arr.size else np.float32(0)  # numpy scalars are always native-endian
    frames = [bytes(f) for f in env.pack({"obs": {"a": arr}, "scalar": scalar})]
    out = env.unpack(frames)
    assert_exact(arr, out["obs"]["a"])
    assert_exact(np.asarray(scalar), np.asarray(out["scalar"]))


@settings_
@given(arr=tricky_arrays())
def test_agentlace_wire_round_trip(arr):
    pytest.importorskip("lz4")
    assert_exact(arr, legacy.decode(legacy.encode({"a": arr}), 1 << 30)["a"], same_byte_order=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=st.lists(tricky_arrays(), min_size=1, max_size=4))
def test_spill_journal_round_trip(arrays):
    with tempfile.TemporaryDirectory() as tmp:
        store = QueuedDataStore(100, spill_dir=tmp, segment_bytes=512)
        for i, arr in enumerate(arrays):
            store.insert({"i": i, "a": arr})
        store.close()
        again = QueuedDataStore(100, spill_dir=tmp)
        (old,) = [s for s in again.streams() if s.recovered]
        _, items, skipped = old.pending(0, 100, 1 << 30)
        again.close()
    assert skipped == [] and [item["i"] for item in items] == list(range(len(arrays)))
    for arr, item in zip(arrays, items, strict=True):
        assert_exact(arr, item["a"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=st.lists(tricky_arrays().filter(lambda a: a.dtype.kind in "biufc"), min_size=1, max_size=4))
def test_weight_broadcast_round_trip(arrays):
    params = {"layers": {f"w{i}": arr for i, arr in enumerate(arrays)}}
    assembler = NetworkAssembler()
    results = [assembler.feed(m) for m in chunk_messages(params, 1, 7, chunk_bytes=64, split_bytes=48)]
    _, tree = results[-1]
    for i, arr in enumerate(arrays):
        assert_exact(arr, tree["layers"][f"w{i}"])


def tricky_transition(i: int) -> dict:
    base = np.arange(24 * 5, dtype=">i4").reshape(24, 5) + i
    return {
        "i": i,
        "big_endian": np.arange(3, dtype=">i4") + i,
        "state": np.linspace(0, 1, 14, dtype=">f8"),
        "u2": np.arange(7, dtype="<u2"),
        "transposed": base.T,
        "strided": base[::3, ::-2],
        "image": np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)[::-1, :, ::-1],
        "big_image": np.arange(40_000, dtype=">f8").reshape(200, 200)[:, ::-1],  # zero-copy frame path
        "empty": np.zeros((0, 14), ">f4"),
    }


@pytest.mark.parametrize("wire", ["safe", "agentlace"])
def test_tricky_arrays_cross_real_sockets_unchanged(trainer_config, wire):
    pytest.importorskip("lz4")
    key = KEY if wire == "safe" else None
    server = TrainerServer(trainer_config, wire=wire, auth_key=key)
    store = ListStore()
    server.register_data_store("actor_env", store)
    server.start(threaded=True)
    queue = QueuedDataStore(10)
    client = TrainerClient(
        "actor_env", "localhost", trainer_config, data_stores={"actor_env": queue}, wire=wire, auth_key=key
    )
    try:
        for i in range(3):
            queue.insert(tricky_transition(i))
        assert client.update()
        assert [item["i"] for item in store.items] == [0, 1, 2]
        for i, got in enumerate(store.items):
            sent = tricky_transition(i)
            for name in sent:
                if name != "i":
                    assert_exact(sent[name], got[name], same_byte_order=wire == "safe")
        np.testing.assert_array_equal(store.items[1]["big_endian"], [1, 2, 3])
    finally:
        client.stop()
        server.stop()
