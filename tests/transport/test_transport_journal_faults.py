"""Fault injection into an actor's spill journal: a truncated tail, flipped bytes mid-file, a garbage length
field, a zero-filled region, random damage anywhere. The records the damage touched are quarantined (copied
aside, counted, logged with file and byte offset); every other record reaches a real learner over real sockets
exactly once, and the stream keeps flowing."""

import logging
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transport_test_helpers import ListStore, free_ports

from hiors_jax.transport import QueuedDataStore, TrainerClient, TrainerConfig, TrainerServer

COUNT = 12


@pytest.fixture(scope="module")
def learner():
    port, bport = free_ports(2)
    config = TrainerConfig(port_number=port, broadcast_port=bport)
    server = TrainerServer(config)
    store = ListStore()
    server.register_data_store("actor_env", store)
    server.start(threaded=True)
    yield config, server, store
    server.stop()


def write_journal(spill_dir, count=COUNT):
    """`count` items in several segments; returns {seq: (path, start, end)} of each record's bytes."""
    queue = QueuedDataStore(100, spill_dir=spill_dir, segment_bytes=5000)
    rng = np.random.default_rng(len(str(spill_dir)))
    for i in range(count):
        queue.insert({"id": f"{spill_dir.name}-{i}", "img": rng.integers(1, 255, 1500, dtype=np.uint8)})
    index = dict(queue.current.journal.index)
    queue.close()
    spans = {}
    for seq, (path, start) in index.items():
        later = [o for p, o in index.values() if p == path and o > start]
        spans[seq] = (path, start, min(later) if later else path.stat().st_size)
    return spans


def damage(path, start, new_bytes=None, truncate=False):
    """Overwrite (or truncate at) `start`; returns the byte range that actually changed."""
    data = bytearray(path.read_bytes())
    if truncate:
        path.write_bytes(bytes(data[:start]))
        return start, len(data)
    old = bytes(data[start : start + len(new_bytes)])
    data[start : start + len(new_bytes)] = new_bytes
    path.write_bytes(bytes(data))
    changed = [i for i, (a, b) in enumerate(zip(old, new_bytes, strict=True)) if a != b]
    return (start + changed[0], start + changed[-1] + 1) if changed else (start, start)


def hit_records(spans, path, lo, hi):
    if lo >= hi:
        return set()  # nothing changed (e.g. zeros written over zeros)
    return {seq for seq, (p, a, b) in spans.items() if p == path and a < hi and lo < b}


def deliver(learner, spill_dir, actor_id):
    config, server, store = learner
    before = len(store)
    queue = QueuedDataStore(100, spill_dir=spill_dir)
    client = TrainerClient(
        "actor_env", "localhost", config, data_stores={"actor_env": queue}, actor_id=actor_id, timeout_ms=3000
    )
    try:
        assert client.update(), "the stream must keep flowing past the bad records"
        queue.insert({"id": f"{spill_dir.name}-after", "img": np.zeros(4, np.uint8)})  # and new items still go
        assert client.update() and len(queue) == 0
        return [item["id"] for item in store.items[before:]], queue.quarantined
    finally:
        client.stop()
        queue.close()


def expected_ids(spill_dir, lost):
    return [f"{spill_dir.name}-{i}" for i in range(COUNT) if i not in lost] + [f"{spill_dir.name}-after"]


def middle(spans):
    return spans[COUNT // 2]


FAULTS = {
    # a SIGKILL mid-write: the last record of the last segment is cut short
    "truncated tail": lambda s: (s[COUNT - 1][0], s[COUNT - 1][1] + 20, None, True),
    # bit rot in the payload of a record in the middle of a segment
    "flipped bytes mid-file": lambda s: (middle(s)[0], (middle(s)[1] + middle(s)[2]) // 2, b"\xff\x00\xff", False),
    # the record's length field replaced by garbage (offset 20: body length within the head)
    "garbage length prefix": lambda s: (middle(s)[0], middle(s)[1] + 20, b"\x99" * 8, False),
    # a zero-filled block spanning the end of one record and the start of the next (a lost disk page)
    "zero-filled region": lambda s: (middle(s)[0], middle(s)[2] - 300, bytes(600), False),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_fault_quarantines_only_the_damaged_records(learner, tmp_path, fault, caplog):
    caplog.set_level(logging.ERROR)
    spill = tmp_path / "spill"
    spill.mkdir()
    spans = write_journal(spill)
    path, start, new_bytes, truncate = FAULTS[fault](spans)
    lo, hi = damage(path, start, new_bytes, truncate)
    lost = hit_records(spans, path, lo, hi)
    assert 1 <= len(lost) <= 2, "the fault must hit at least one record"
    ids, quarantined = deliver(learner, spill, f"actor-{fault}")
    assert ids == expected_ids(spill, lost)  # everything else, in order, exactly once
    assert quarantined and all(q.segment == path for q in quarantined)
    q = quarantined[0]
    assert q.offset <= spans[min(lost)][1] + (20 if truncate else 0) and q.copy.exists()
    assert str(path) in caplog.text and f"bytes {q.offset}.." in caplog.text  # names file and offset
    if fault != "truncated tail":
        assert learner[1].stats["skipped_items"] >= len(lost)  # the learner was told, and passed them


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_damage_anywhere_loses_exactly_the_damaged_records(learner, tmp_path_factory, data):
    spill = tmp_path_factory.mktemp("spill")
    spans = write_journal(spill)
    paths = sorted({p for p, _, _ in spans.values()})
    # draws do not depend on the journal's layout (its file names and sizes vary between runs)
    path = paths[data.draw(st.integers(0, 7), label="segment") % len(paths)]
    size = path.stat().st_size
    kind = data.draw(st.sampled_from(["flip", "zero", "garbage", "truncate"]), label="kind")
    start = data.draw(st.integers(0, 1 << 20), label="start") % size
    length = data.draw(st.integers(1, 400), label="length")
    garbage = data.draw(st.binary(min_size=400, max_size=400), label="garbage")
    if kind == "truncate":
        lo, hi = damage(path, start, truncate=True)
    else:
        old = path.read_bytes()[start : start + length]
        new = {"flip": bytes(b ^ 0x5A for b in old), "zero": bytes(len(old)), "garbage": garbage[: len(old)]}[kind]
        lo, hi = damage(path, start, new)
    lost = hit_records(spans, path, lo, hi)
    ids, quarantined = deliver(learner, spill, f"actor-{spill.name}")
    assert ids == expected_ids(spill, lost)
    assert bool(quarantined) == bool(lost)


def test_a_record_that_goes_bad_while_the_actor_runs_is_skipped_not_fatal(learner, tmp_path, caplog):
    config, server, store = learner
    queue = QueuedDataStore(100, spill_dir=tmp_path, segment_bytes=5000)
    rng = np.random.default_rng(0)
    for i in range(5):
        queue.insert({"id": f"live-{i}", "img": rng.integers(1, 255, 1500, dtype=np.uint8)})
    path, offset = queue.current.journal.index[2]
    with open(path, "r+b") as f:  # the disk returns different bytes for record 2 from now on
        f.seek(offset + 200)
        f.write(b"\x00" * 8)
        f.flush()
        os.fsync(f.fileno())
    before = len(store)
    client = TrainerClient(
        "actor_env", "localhost", config, data_stores={"actor_env": queue}, actor_id="live", timeout_ms=3000
    )
    try:
        assert client.update() and len(queue) == 0
        assert [item["id"] for item in store.items[before:]] == ["live-0", "live-1", "live-3", "live-4"]
        assert len(queue.quarantined) == 1 and "record 2" in caplog.text and str(path) in caplog.text
    finally:
        client.stop()
        queue.close()
