"""Learner and actor processes for the transport integration tests (run as scripts by the tests).

learner: a TrainerServer (ack="persist" unless --ack says otherwise) whose replay (here: the ids it received)
is saved together with the transport marks in one atomic file, as a real learner's replay checkpoint would
be. On restart it reloads both, so nothing is lost or counted twice. SIGTERM persists once more and exits.
With --requests-log every request callback call appends its payload there.

actor: inserts `--count` transitions (uint8 camera images, 50x14 chunks) with unique ids, logs each id after
`insert` returns, uploads in the background and on every 10th step, then waits until the learner has
persisted everything. With --spill-dir a SIGKILLed actor's journal is resent by the next run.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from hiors_jax.transport import DataStoreBase, QueuedDataStore, TrainerClient, TrainerConfig, TrainerServer


def save_atomically(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class IdStore(DataStoreBase):
    def __init__(self, ids):
        super().__init__(capacity=0)
        self.ids = list(ids)
        self.lock = threading.Lock()

    def insert(self, data):
        assert data["observations"]["cam_high"].dtype == np.uint8
        with self.lock:
            self.ids.append(data["id"])

    def __len__(self):
        return len(self.ids)


def run_learner(args: argparse.Namespace) -> None:
    config = TrainerConfig(port_number=args.port, broadcast_port=args.bport, request_types=["send-stats"])
    state_path = Path(args.state)
    state = json.loads(state_path.read_text()) if state_path.exists() else {"ids": [], "marks": []}
    store = IdStore(state["ids"])

    def log_request(kind, payload):  # a request callback with a visible effect: one line per call
        with open(args.requests_log, "a") as f:
            f.write(json.dumps(payload) + "\n")
        return {"logged": True}

    server = TrainerServer(
        config, ack=args.ack, auth_key=args.auth_key, request_callback=log_request if args.requests_log else None
    )
    server.restore_marks(state["marks"])
    server.register_data_store("actor_env", store)
    server.start(threaded=True)

    def save(marks):
        with store.lock:
            save_atomically(state_path, {"ids": list(store.ids), "marks": marks})

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    Path(args.ready).touch()
    while not stop.wait(args.persist_every):
        server.persist(save)
    server.persist(save)
    server.stop()


def transition(tag: str, i: int) -> dict:
    rng = np.random.default_rng(i)
    cams = {name: rng.integers(0, 255, (224, 298, 3), dtype=np.uint8) for name in ("cam_high", "cam_left_wrist")}
    return {
        "id": f"{tag}-{i}",
        "observations": {**cams, "state": np.zeros((1, 14), np.float32)},
        "actions": rng.standard_normal((50, 14)).astype(np.float32),
        "rewards": 0.0,
    }


def run_actor(args: argparse.Namespace) -> None:
    config = TrainerConfig(port_number=args.port, broadcast_port=args.bport, request_types=["send-stats"])
    log_path = Path(args.log)
    done = [int(line.rsplit("-", 1)[1]) for line in log_path.read_text().split()] if log_path.exists() else []
    # a killed run may have inserted (and journaled) one id it never logged: skip past it
    start = max(done) + 2 if done else 0
    queue = QueuedDataStore(args.capacity, spill_dir=args.spill_dir)
    recovered = sum(len(s) for s in queue.streams() if s.recovered)
    print(f"recovered {recovered} journaled items", file=sys.stderr, flush=True)
    client = TrainerClient(
        "actor_env",
        "127.0.0.1",
        config,
        data_stores={"actor_env": queue},
        actor_id=args.actor_id,
        wait_for_server=True,
        timeout_ms=2000,
        heartbeat_interval=0.5,
        backoff=(0.05, 0.5),
    )
    client.start_async_update(interval=0.05)
    with open(log_path, "a") as log:
        for i in range(start, args.count):
            queue.insert(transition(args.tag, i))
            log.write(f"{args.tag}-{i}\n")
            log.flush()
            if i % 10 == 0:
                client.update()
            time.sleep(args.sleep)
    deadline = time.monotonic() + args.drain_timeout
    while len(queue) and time.monotonic() < deadline:
        client.update()
        time.sleep(0.05)
    client.stop()
    queue.close()
    sys.exit(0 if len(queue) == 0 else 3)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {sys.argv[1]} %(name)s %(message)s")
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["learner", "actor"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bport", type=int, required=True)
    parser.add_argument("--state")
    parser.add_argument("--ready")
    parser.add_argument("--persist-every", type=float, default=0.1)
    parser.add_argument("--ack", default="persist")
    parser.add_argument("--auth-key")
    parser.add_argument("--requests-log")
    parser.add_argument("--actor-id")
    parser.add_argument("--tag")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--sleep", type=float, default=0.005)
    parser.add_argument("--capacity", type=int, default=10_000)
    parser.add_argument("--spill-dir")
    parser.add_argument("--log")
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    args = parser.parse_args()
    run_learner(args) if args.role == "learner" else run_actor(args)


if __name__ == "__main__":
    main()
