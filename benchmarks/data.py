"""LeRobot batch throughput: random batches of 56 (3 video cameras 224x298 + 50-step action windows).

    python benchmarks/data.py [--root DIR] [--episodes 6] [--frames 300] [--seconds 4] [--workers 2]
                              [--open-rows 100000] [--open-only]

Builds a synthetic v3.0 dataset with our writer (AV1, lerobot defaults) unless --root points at one, then
prints samples/s for: item-by-item decoding on one thread (baseline, `dataset[i]` in a loop), a naive
per-frame decoder that opens the mp4 for every frame (second baseline), batched decoding in this process
(one thread, then one thread per mp4), worker processes, and the uint8 memmap cache (copying, and with
reused buffers). Ratios are against the item-by-item
baseline measured in the same run.

First it prints what opening costs (reading every parquet column and checking it against the metadata) for a
tabular dataset of --open-rows frames, against the bare pyarrow read of the same files in the same run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from hiors_jax.data.batches import BatchLoader, attach_frame_cache
from hiors_jax.data.lerobot import LeRobotDataset, LeRobotDatasetWriter, decode_frames_at

H, W = 224, 298
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
BATCH = 56
ACTION_STEPS = 50


def synthetic_frame(rng: np.random.Generator, episode: int, frame: int, camera: int) -> np.ndarray:
    """Moving bright disc on gradients plus sensor-like noise (so the codec has real work to do)."""
    yy, xx = np.ogrid[0:H, 0:W]
    cx, cy = (frame * 3 + camera * 50 + episode * 17) % W, (frame * 2 + camera * 30) % H
    image = np.empty((H, W, 3), np.int16)
    image[..., 0] = (xx + frame) % 256
    image[..., 1] = (yy * 2 + camera * 40) % 256
    image[..., 2] = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < 900, 255, 40)
    image += rng.integers(-6, 7, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def build_dataset(root: pathlib.Path, episodes: int, frames: int) -> float:
    features = {
        "observation.state": {"dtype": "float32", "shape": [14], "names": None},
        "action": {"dtype": "float32", "shape": [14], "names": None},
    }
    for camera in CAMERAS:
        features[f"observation.images.{camera}"] = {
            "dtype": "video",
            "shape": [H, W, 3],
            "names": ["height", "width", "channels"],
        }
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    writer = LeRobotDatasetWriter(root, 30, features, robot_type="bench")
    for e in range(episodes):
        for f in range(frames):
            frame = {
                "observation.state": rng.standard_normal(14).astype(np.float32),
                "action": np.full(14, 1000 * e + f, np.float32),
            }
            for c, camera in enumerate(CAMERAS):
                frame[f"observation.images.{camera}"] = synthetic_frame(rng, e, f, c)
            writer.add_frame(frame, task="fold the towel")
        writer.save_episode()
    writer.finalize()
    return time.perf_counter() - start


def open_cost(workdir: pathlib.Path, rows: int, repeats: int = 5) -> None:
    """Median time to open a tabular dataset (all checks included) vs reading its parquet columns bare."""
    root = workdir / "tabular"
    features = {
        "observation.state": {"dtype": "float32", "shape": [14], "names": None},
        "action": {"dtype": "float32", "shape": [14], "names": None},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
    }
    rng = np.random.default_rng(0)
    frames_per_episode = 1000
    with LeRobotDatasetWriter(root, 30, features) as writer:
        for _ in range(max(1, rows // frames_per_episode)):
            for _frame in range(frames_per_episode):
                state = rng.standard_normal(14).astype(np.float32)
                writer.add_frame(
                    {"observation.state": state, "action": state, "next.reward": 0.0, "next.done": False}, task="t"
                )
            writer.save_episode()
    files = sorted((root / "data").rglob("*.parquet"))

    def bare() -> None:
        for path in files:
            for column in pq.read_table(path).columns:
                column.combine_chunks()

    def median_s(step) -> float:
        step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    raw, opened = median_s(bare), median_s(lambda: LeRobotDataset(root))
    print(
        f"open: {len(LeRobotDataset(root))} rows in {opened * 1e3:.0f} ms (checks included); bare pyarrow read "
        f"{raw * 1e3:.0f} ms; ratio {opened / raw:.2f}x"
    )


def rate(step, seconds: float) -> float:
    """Samples per second of `step()` (which returns how many samples it produced), after one warm-up call."""
    step()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += step()
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=pathlib.Path, help="existing dataset with the three cameras (else synthetic)")
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--open-rows", type=int, default=100_000, help="rows of the tabular dataset to open")
    parser.add_argument("--open-only", action="store_true", help="only the cost of opening a dataset")
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="hiors_bench_"))
    try:
        open_cost(workdir, args.open_rows)
        if args.open_only:
            return
        root = args.root
        if root is None:
            root = workdir / "ds"
            n = args.episodes * args.frames
            took = build_dataset(root, args.episodes, args.frames)
            size = sum(p.stat().st_size for p in root.rglob("*.mp4")) / 1e6
            print(
                f"writer: {n} frames x {len(CAMERAS)} cams {H}x{W} AV1 in {took:.1f}s "
                f"= {n / took:.0f} frames/s, {size:.1f} MB of video"
            )
        deltas = {"action": [i / 30 for i in range(ACTION_STEPS)]}
        dataset = LeRobotDataset(root, delta_timestamps=deltas)
        serial = LeRobotDataset(root, delta_timestamps=deltas, decode_threads=1)
        rng = np.random.default_rng(0)
        print(f"dataset: {len(dataset)} frames, batch {BATCH}, {os.cpu_count()} cpus visible")

        def item_by_item() -> int:
            items = [serial[int(i)] for i in rng.integers(0, len(dataset), BATCH)]
            {k: np.stack([it[k] for it in items]) for k in items[0] if k != "task"}
            return BATCH

        baseline = rate(item_by_item, args.seconds)
        results = [("item by item, 1 thread (baseline)", baseline)]

        video_keys = dataset.meta.video_keys
        timestamps = dataset._cols.tabular["timestamp"]

        def naive_per_frame() -> int:
            rows = rng.integers(0, len(dataset), BATCH // 4)  # slow: a quarter batch per call
            for row in rows:
                episode = dataset._row_episode[row]
                for key in video_keys:
                    t = timestamps[row] + dataset.meta.episodes.video_from_timestamp[key][episode]
                    decode_frames_at(dataset.meta.video_path(key, episode), [t])
            return len(rows)

        results.append(("naive: open+seek+decode per frame", rate(naive_per_frame, args.seconds)))

        for name, ds in (("batched, 1 process, 1 thread", serial), ("batched, 1 process, decode threads", dataset)):

            def batched(ds=ds) -> int:
                ds.get_batch(rng.integers(0, len(ds), BATCH))
                return BATCH

            results.append((name, rate(batched, args.seconds)))
        for workers in sorted({1, args.workers}):
            with BatchLoader(dataset, BATCH, num_workers=workers, prefetch=2, seed=1) as loader:
                results.append(
                    (f"BatchLoader {workers} worker(s), copy", rate(lambda: len(next(loader)["index"]), args.seconds))
                )
            with BatchLoader(dataset, BATCH, num_workers=workers, prefetch=2, seed=1, reuse_buffers=True) as loader:
                results.append(
                    (
                        f"BatchLoader {workers} worker(s), reuse buffers",
                        rate(lambda: len(next(loader)["index"]), args.seconds),
                    )
                )
        start = time.perf_counter()
        cached = LeRobotDataset(root, delta_timestamps=deltas)
        attach_frame_cache(cached, workdir / "cache")
        print(
            f"frame cache build: {time.perf_counter() - start:.1f}s for {len(cached)} frames x {len(video_keys)} cams"
        )
        with BatchLoader(cached, BATCH, seed=2) as loader:
            results.append(("uint8 cache, 1 process, copy", rate(lambda: len(next(loader)["index"]), args.seconds)))
        with BatchLoader(cached, BATCH, seed=2, reuse_buffers=True) as loader:
            results.append(
                ("uint8 cache, 1 process, reuse buffers", rate(lambda: len(next(loader)["index"]), args.seconds))
            )
        print(f"\n{'method':<45} {'samples/s':>10} {'x baseline':>11}")
        for name, value in results:
            print(f"{name:<45} {value:>10.0f} {value / baseline:>10.1f}x")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
