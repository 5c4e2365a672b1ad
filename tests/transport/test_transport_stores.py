"""QueuedDataStore (acknowledged delivery, backpressure, journal), Ledger persistence, weight chunking."""

import threading
import time

import ml_dtypes
import numpy as np
import pytest

from hiors_jax.transport import Ledger, ParamsSlot, QueuedDataStore, QueueFullError, WireError
from hiors_jax.transport.weights import NetworkAssembler, chunk_messages


def test_queued_store_agentlace_api_and_release():
    store = QueuedDataStore(10)
    assert store.latest_data_id() == -1 and store.get_latest_data(-1) == []
    for i in range(5):
        assert store.insert({"i": i}) == i
    assert store.latest_data_id() == 4
    assert [d["i"] for d in store.get_latest_data(2)] == [3, 4]
    assert store.current.release(2) == 3
    assert len(store) == 2
    assert [d["i"] for d in store.get_latest_data(-1)] == [3, 4]  # older items are gone once acknowledged
    first, items, skipped = store.current.pending(0, 10, 1 << 30)
    assert skipped == [] and first == 3 and [d["i"] for d in items] == [3, 4]


def test_full_store_blocks_until_acknowledged_then_times_out():
    store = QueuedDataStore(2, insert_timeout=0.2)
    store.insert(0)
    store.insert(1)
    with pytest.raises(QueueFullError, match="not yet acknowledged"):
        store.insert(2)
    threading.Timer(0.1, store.current.release, args=(0,)).start()
    store.insert(2)  # unblocked by the acknowledgement
    assert store.latest_data_id() == 2 and len(store) == 2


def test_drop_oldest_counts_what_it_drops(caplog):
    store = QueuedDataStore(3, overflow="drop_oldest")
    for i in range(5):
        store.insert(i)
    assert store.dropped == 2 and store.get_latest_data(-1) == [2, 3, 4]
    assert "dropped" in caplog.text


def test_pending_cuts_uploads_by_bytes():
    store = QueuedDataStore(100)
    for _ in range(10):
        store.insert(np.zeros(1000, np.uint8))
    _, items, _ = store.current.pending(0, 100, 2500)
    assert len(items) == 3


def test_journal_survives_a_dead_process_and_drops_a_torn_tail(tmp_path):
    store = QueuedDataStore(100, spill_dir=tmp_path, segment_bytes=3000)
    for i in range(8):
        store.insert({"i": i, "img": np.full(1000, i, np.uint8)})
    store.current.bind("actor-A")
    store.current.release(2)
    epoch = store.epoch
    with pytest.raises(RuntimeError, match="in use"):
        QueuedDataStore(100, spill_dir=tmp_path)
    store.close()  # what the OS does when the process dies
    last_segment = sorted((tmp_path / f"epoch-{epoch}").glob("seg-*.log"))[-1]
    with open(last_segment, "ab") as f:
        f.write(b"\x07" * 11)  # a record cut short by SIGKILL
    again = QueuedDataStore(100, spill_dir=tmp_path)
    assert len(again.quarantined) == 1 and again.quarantined[0].length == 11  # the torn tail, set aside
    old = [s for s in again.streams() if s.epoch == epoch][0]
    assert old.actor_id == "actor-A" and old.recovered
    first, items, skipped = old.pending(0, 100, 1 << 30)
    assert skipped == [] and first == 3 and [d["i"] for d in items] == [3, 4, 5, 6, 7]
    assert items[0]["img"].dtype == np.uint8 and items[0]["img"][0] == 3
    assert again.epoch != epoch and again.latest_data_id() == -1
    old.release(7)
    assert old not in again.streams() and not (tmp_path / f"epoch-{epoch}").exists()
    again.close()


def test_ledger_round_trip_and_validation(tmp_path):
    ledger = Ledger()
    ledger.advance(("a", 1, "s"), 5, commit=False)
    ledger.advance(("a", 1, "s"), 3, commit=False)  # never moves back
    assert ledger.mark(("a", 1, "s")) == 5 and ledger.committed_mark(("a", 1, "s")) == -1
    marks = ledger.snapshot()
    Ledger.save_marks(tmp_path / "ledger.json", marks)
    restored = Ledger()
    restored.restore(Ledger.load_marks(tmp_path / "ledger.json"))
    assert restored.committed_mark(("a", 1, "s")) == 5
    assert Ledger.load_marks(tmp_path / "missing.json") == []
    with pytest.raises(ValueError, match="ledger row"):
        restored.restore([["a", 1, "s"]])


def make_params(rng):
    return {
        "PaliGemma": {
            "llm": {"layers": {"attn": {"q": rng.standard_normal((64, 300)).astype(np.float32)}}},
            "img": {"embedding": {"kernel": rng.standard_normal((7, 7)).astype(np.float32)}},
        },
        "action_in_proj": {"bias": np.arange(5, dtype=np.int32), "empty": np.zeros((0, 3), np.float32)},
    }


def test_chunked_weights_round_trip_and_bf16():
    params = make_params(np.random.default_rng(0))
    messages = chunk_messages(params, version=3, publisher=9, dtype="bfloat16", chunk_bytes=10_000, split_bytes=9000)
    assert len(messages) > 3  # the 38 KB leaf had to be split
    whole = chunk_messages(params, version=3, publisher=9, dtype="bfloat16", chunk_bytes=10_000)
    assert sum(len(m["pieces"]) for m in whole) == 4  # one piece per leaf
    assembler = NetworkAssembler()
    results = [assembler.feed(m) for m in reversed(messages)]  # any order
    version, tree = results[-1]
    assert version == 3 and all(r is None for r in results[:-1])
    q = tree["PaliGemma"]["llm"]["layers"]["attn"]["q"]
    assert q.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(q, params["PaliGemma"]["llm"]["layers"]["attn"]["q"].astype(ml_dtypes.bfloat16))
    assert tree["action_in_proj"]["bias"].dtype == np.int32  # integers are never cast
    assert tree["action_in_proj"]["empty"].shape == (0, 3)
    assert assembler.feed(messages[0]) is None  # a stale duplicate is ignored


def test_incomplete_version_is_superseded_and_bad_chunks_rejected():
    rng = np.random.default_rng(1)
    v1 = chunk_messages(make_params(rng), 1, 5, chunk_bytes=10_000, split_bytes=9000)
    v2 = chunk_messages(make_params(rng), 2, 5, chunk_bytes=10_000, split_bytes=9000)
    assembler = NetworkAssembler()
    for m in v1[:-1]:
        assert assembler.feed(m) is None  # v1 never completes
    out = [assembler.feed(m) for m in v2]
    assert out[-1][0] == 2
    bad = dict(v2[0], v=3, table=[[["x"], "<f4", [10]]], pieces=[[0, 0, np.zeros(8, np.uint8)]], n=1)
    with pytest.raises(WireError, match="bytes"):
        NetworkAssembler().feed(bad)
    with pytest.raises(WireError, match="chunk header"):
        NetworkAssembler().feed({"t": "net", "v": "x"})


def test_params_slot_swaps_between_inferences():
    slot = ParamsSlot({"w": np.zeros(1000)}, version=0)
    stop = threading.Event()
    torn = []

    def inference_loop():
        while not stop.is_set():
            version, params = slot.get()  # read once per inference
            first = params["w"].sum()
            time.sleep(0.001)
            if params["w"].sum() != first or first != version * 1000:
                torn.append(version)

    thread = threading.Thread(target=inference_loop)
    thread.start()
    for v in range(1, 50):
        slot.set({"w": np.full(1000, float(v))}, version=v)
        time.sleep(0.0005)
    stop.set()
    thread.join()
    assert not torn
    assert slot.wait_for(lambda v: v >= 49, timeout=1)[0] == 49


def test_jax_param_tree_is_cast_on_device_and_arrives_as_numpy():
    jnp = pytest.importorskip("jax.numpy")
    params = {"PaliGemma": {"llm": {"layers": {"w": jnp.arange(6000, dtype=jnp.float32).reshape(60, 100)}}}}
    params["state_proj"] = {"bias": jnp.zeros(3, jnp.int32)}
    assembler = NetworkAssembler()
    out = [assembler.feed(m) for m in chunk_messages(params, 1, 1, dtype="bfloat16")][-1][1]
    w = out["PaliGemma"]["llm"]["layers"]["w"]
    assert isinstance(w, np.ndarray) and w.dtype == ml_dtypes.bfloat16 and w.shape == (60, 100)
    np.testing.assert_array_equal(
        w.astype(np.float32),
        np.asarray(params["PaliGemma"]["llm"]["layers"]["w"]).astype(ml_dtypes.bfloat16).astype(np.float32),
    )
    assert out["state_proj"]["bias"].dtype == np.int32
