"""Transport throughput: uploads of realistic transitions and multi-GB bf16 weight broadcasts, each beside an
agentlace-style lz4+pickle baseline (our wire="agentlace", which is agentlace's format byte for byte) run in
the same command. Learner and actor are separate processes on loopback.

    python benchmarks/transport.py                       # 200 transitions, 1 GB of weights
    python benchmarks/transport.py --weights-gb 6.5      # the real PI0 size, if memory allows (see below)
    python benchmarks/transport.py --baseline-weights-gb 1

Memory: the safe path holds the tree once on each side (sent zero-copy, received as views of the frames);
the baseline holds pickle + lz4 copies (about 3x on the sender, 2x on the receiver), so its size is capped
separately (--baseline-weights-gb).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import time

import ml_dtypes
import numpy as np

from hiors_jax.transport import DataStoreBase, QueuedDataStore, TrainerClient, TrainerConfig, TrainerServer

KEY = "benchmark-key-0123456789abcdef0123456789"
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def make_transition(rng: np.random.Generator) -> dict:
    """Hi-ORS transition: 3 cameras 224x298 uint8 for obs and next_obs, 50x14 chunks, 14-d state."""

    def obs():
        cams = {c: rng.integers(0, 255, (1, 224, 298, 3), dtype=np.uint8) for c in CAMERAS}
        return {**cams, "state": rng.standard_normal((1, 14)).astype(np.float32)}

    return {
        "observations": obs(),
        "next_observations": obs(),
        "actions": rng.standard_normal((50, 14)).astype(np.float32),
        "rewards": np.float32(0.0),
        "masks": np.float32(1.0),
        "dones": False,
        "truncateds": False,
        "complementary_info": {
            "state_chunk": rng.standard_normal((50, 14)).astype(np.float32),
            "intervention_chunk": np.zeros(50, bool),
            "state_timestamp_chunk": np.arange(50, dtype=np.float64),
        },
    }


def transition_bytes(t: dict) -> int:
    if isinstance(t, dict):
        return sum(transition_bytes(v) for v in t.values())
    return t.nbytes if isinstance(t, np.ndarray | np.generic) else 8


class CountingStore(DataStoreBase):
    def __init__(self):
        super().__init__(0)
        self.n = 0

    def insert(self, data):
        self.n += 1

    def __len__(self):
        return self.n


def learner_proc(config: TrainerConfig, wire: str, key: str | None, ready, stop) -> None:
    server = TrainerServer(config, wire=wire, auth_key=key)
    server.register_data_store("actor_env", CountingStore())
    server.start(threaded=True)
    ready.set()
    stop.wait()
    server.stop()


def bench_uploads(wire: str, key: str | None, count: int, per_update: int) -> tuple[float, float]:
    port, bport = free_ports(2)
    config = TrainerConfig(port_number=port, broadcast_port=bport)
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=learner_proc, args=(config, wire, key, ready, stop))
    proc.start()
    ready.wait(60)
    try:
        queue = QueuedDataStore(count + 1)
        client = TrainerClient(
            "actor_env",
            "127.0.0.1",
            config,
            data_stores={"actor_env": queue},
            wire=wire,
            auth_key=key,
            timeout_ms=60_000,
        )
        rng = np.random.default_rng(0)
        # distinct objects: pickle would send a repeated object once (its memo), which no real actor sees
        items = [make_transition(rng) for _ in range(count)]
        nbytes = transition_bytes(items[0])
        start = time.perf_counter()
        for item in items:
            queue.insert(item)
            i = queue.latest_data_id()
            if (i + 1) % per_update == 0:  # one upload per episode, as hil-serl and Hi-ORS do
                assert client.update()
        assert client.update() and len(queue) == 0
        elapsed = time.perf_counter() - start
        client.stop()
    finally:
        stop.set()
        proc.join(30)
    return count / elapsed, count * nbytes / elapsed / 1e6


def make_params(total_bytes: int, seed: int = 0) -> dict:
    """A PI0-shaped bf16 tree: one large embedding plus stacked layer matrices, random (incompressible)."""
    rng = np.random.default_rng(seed)

    def leaf(n_elems: int, shape_tail: int) -> np.ndarray:
        rows = max(1, n_elems // shape_tail)
        return rng.integers(0, 2**16, (rows, shape_tail), dtype=np.uint16).view(ml_dtypes.bfloat16)

    elems = total_bytes // 2
    params = {"PaliGemma": {"llm": {"embedder": {"input_embedding": leaf(elems // 8, 2048)}, "layers": {}}}}
    layers = params["PaliGemma"]["llm"]["layers"]
    per = (elems - elems // 8) // 6
    for name in ("q_einsum", "kv_einsum", "attn_vec_einsum", "gating_einsum", "linear", "proj"):
        layers[name] = {"w": leaf(per, 2048)}
    params["action_in_proj"] = {"kernel": leaf(32 * 1024, 1024), "bias": np.zeros(1024, ml_dtypes.bfloat16)}
    return params


def tree_bytes(tree) -> int:
    return sum(tree_bytes(v) for v in tree.values()) if isinstance(tree, dict) else tree.nbytes


def peak_rss_gb() -> float:
    """VmHWM of this address space (ru_maxrss would include the parent's peak, inherited across exec)."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def receiver_proc(config: TrainerConfig, wire: str, key: str | None, ready, done, result) -> None:
    client = TrainerClient("actor_env", "127.0.0.1", config, data_stores={}, wire=wire, auth_key=key, timeout_ms=60_000)

    def got(params):
        result["t_done"] = time.monotonic()
        result["bytes"] = tree_bytes(params)
        result["rss_gb"] = peak_rss_gb()
        done.set()

    client.recv_network_callback(got)
    ready.set()
    done.wait(600)
    client.stop()


def bench_broadcast(wire: str, key: str | None, params: dict) -> tuple[float, float]:
    port, bport = free_ports(2)
    config = TrainerConfig(port_number=port, broadcast_port=bport)
    server = TrainerServer(config, wire=wire, auth_key=key)
    server.start(threaded=True)
    ctx = mp.get_context("spawn")
    ready, done, manager = ctx.Event(), ctx.Event(), ctx.Manager()
    result = manager.dict()
    proc = ctx.Process(target=receiver_proc, args=(config, wire, key, ready, done, result))
    proc.start()
    try:
        ready.wait(60)
        time.sleep(1.0)  # let the SUB socket finish connecting
        start = time.monotonic()
        server.publish_network(params)
        if not done.wait(600):
            raise TimeoutError("broadcast not received")
        elapsed = result["t_done"] - start
        assert result["bytes"] == tree_bytes(params)
        return elapsed, result["rss_gb"]
    finally:
        proc.join(30)
        manager.shutdown()
        server.stop()


def report(label: str, size_gb: float, seconds: float, rss: float, baseline: float | None) -> None:
    ratio = f"  ({size_gb / seconds / baseline:.1f}x baseline)" if baseline else ""
    rate = size_gb / seconds
    print(f"  {label:32s} {size_gb:5.2f} GB: {seconds:6.2f} s {rate:5.2f} GB/s  rx peak RSS {rss:.1f} GB{ratio}")


def best_broadcast(wire: str, key: str | None, params: dict, repeats: int) -> tuple[float, float]:
    runs = [bench_broadcast(wire, key, params) for _ in range(repeats)]
    return min(r[0] for r in runs), max(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transitions", type=int, default=200)
    parser.add_argument("--per-update", type=int, default=50, help="transitions per update() (an episode)")
    parser.add_argument("--weights-gb", type=float, default=1.0)
    parser.add_argument("--baseline-weights-gb", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant; the best is shown")
    args = parser.parse_args()

    sample = make_transition(np.random.default_rng(0))
    print(f"transition: {transition_bytes(sample) / 1e6:.2f} MB (3 cams 224x298 uint8 for obs and next_obs)")
    print(f"uploads: {args.transitions} transitions, {args.per_update} per update(), learner in another process")

    def best_uploads(wire: str, key: str | None) -> tuple[float, float]:
        return max(bench_uploads(wire, key, args.transitions, args.per_update) for _ in range(args.repeats))

    base_tps, base_mbs = best_uploads("agentlace", None)
    print(f"  {'agentlace lz4+pickle (baseline)':32s}: {base_tps:8.1f} transitions/s {base_mbs:8.1f} MB/s")
    for label, key in (("safe msgpack+raw frames", None), ("safe + MAC (shared key)", KEY)):
        tps, mbs = best_uploads("safe", key)
        print(f"  {label:32s}: {tps:8.1f} transitions/s {mbs:8.1f} MB/s  ({tps / base_tps:.1f}x baseline)")

    print("weight broadcast (bf16, PUB/SUB, receiver in another process, until its callback has the tree):")
    baseline = None
    if args.baseline_weights_gb > 0:
        params = make_params(int(args.baseline_weights_gb * 1e9))
        size = tree_bytes(params) / 1e9
        seconds, rss = best_broadcast("agentlace", None, params, args.repeats)
        baseline = size / seconds
        report("agentlace lz4+pickle (baseline)", size, seconds, rss, None)
        del params
    params = make_params(int(args.weights_gb * 1e9))
    size = tree_bytes(params) / 1e9
    for label, key in (("safe chunked", None), ("safe chunked + MAC (shared key)", KEY)):
        seconds, rss = best_broadcast("safe", key, params, args.repeats)
        report(label, size, seconds, rss, baseline)


if __name__ == "__main__":
    main()
