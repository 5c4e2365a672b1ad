"""Replay: episode commit time and batch latency, against the tiny-preset learner step measured in the same run.

    python benchmarks/replay.py [--frames 200] [--window 20000] [--batch 56] [--seconds 5] [--tmp DIR]

1. Commit: a 200-frame Hi-ORS episode with 3 cameras at 224x298 (AV1, lerobot defaults), 50x14 action and
   recorded-state chunks, inserted into a `ReplayStore`; prints the time of the insert that ends the episode
   (online/ commit + acceptance + accepted/ commit + window update), median of 3 episodes.
2. Batches of 56 from a full 20k-frame window: model-size images (224x224, as PI0 takes them; a 9 GB memmap)
   and tiny-preset images (56x56). Prints host sampling + transform latency, and end-to-end `BatchLoader`
   throughput (prefetch thread, uint8 to the device, conversion there), without and with openpi's
   augmentation (crop + rotate on the host with PIL, colour jitter on the device: on a CPU-only machine the
   "device" shares the same 2 cores).
3. Baseline: one jitted `value_and_grad` of the tiny preset's `compute_loss` at batch 56 (the learner's
   consumption rate), and the ratio of batch throughput to it (target >= 10x; >= 500 samples/s absolute).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import shutil
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from hiors_jax.data.pipeline import BatchLoader, PipelineConfig, norm_stats_from_windows
from hiors_jax.data.replay import FrameWindow, ReplayStore
from hiors_jax.models import pi0
from hiors_jax.models.config import tiny_config
from hiors_jax.models.tokenizer import PaligemmaTokenizer, train_tiny_tokenizer

H, W = 224, 298
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
PROMPT = "put the objects in the box"


def synthetic_image(rng: np.random.Generator, frame: int, camera: int) -> np.ndarray:
    """Gradients, a moving disc and noise: real work for the encoder."""
    yy, xx = np.ogrid[0:H, 0:W]
    cx, cy = (frame * 3 + camera * 50) % W, (frame * 2 + camera * 30) % H
    image = np.empty((H, W, 3), np.int16)
    image[..., 0] = (xx + frame) % 256
    image[..., 1] = (yy * 2 + camera * 40) % 256
    image[..., 2] = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < 900, 255, 40)
    image += rng.integers(-6, 7, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def episode(rng: np.random.Generator, episode_id: int, frames: int) -> list[dict]:
    out = []
    for f in range(frames):
        last = f == frames - 1
        chunk = (np.cumsum(rng.standard_normal((50, 14)) * 0.01, axis=0) + f * 0.01).astype(np.float32)
        out.append(
            {
                "images": {c: synthetic_image(rng, f, i) for i, c in enumerate(CAMERAS)},
                "state": rng.standard_normal(14).astype(np.float32),
                "prompt": PROMPT,
                "action": rng.standard_normal((50, 14)).astype(np.float32),
                "reward": 1.0 if last else 0.0,
                "done": last,
                "truncated": False,
                "state_chunk": chunk,
                "state_chunk_mask": np.arange(50) < 20,
                "state_chunk_teleop": np.zeros(50, bool),
                "state_chunk_timestamp": 1e9 + f * 2.0 + np.arange(50) * 0.1,
                "episode_id": episode_id,
                "actor_id": "bench",
                "policy_version": 0,
                "label": "success" if last else None,
            }
        )
    return out


def bench_commit(tmp: pathlib.Path, frames: int) -> None:
    rng = np.random.default_rng(0)
    store = ReplayStore(tmp / "store", fps=10, window_frames=2000, image_size=(224, 224))
    times = []
    for e in range(3):
        transitions = episode(rng, e, frames)
        for t in transitions[:-1]:
            store.insert(t)
        start = time.perf_counter()
        store.insert(transitions[-1])
        times.append(time.perf_counter() - start)
    print(
        f"commit: {frames}-frame episode, 3 cams {H}x{W}: median {statistics.median(times):.2f} s "
        f"(all {', '.join(f'{t:.2f}' for t in times)}; online/ + accepted/ + window), "
        f"{frames / statistics.median(times):.0f} frames/s"
    )


def full_window(directory: pathlib.Path, capacity: int, size: int) -> FrameWindow:
    """A window filled to capacity without per-frame resizing (the content does not matter for latency)."""
    rng = np.random.default_rng(1)
    window = FrameWindow(directory, capacity, CAMERAS, (size, size), 14, 50, 14)
    block = rng.integers(0, 256, (min(capacity, 512), size, size, 3), dtype=np.uint8)
    for cam in CAMERAS:
        array = window.images.arrays[cam]
        for start in range(0, capacity, len(block)):
            stop = min(start + len(block), capacity)
            array[start:stop] = block[: stop - start]
        array.flush()
    window.state[:] = rng.standard_normal(window.state.shape)
    window.actions[:] = rng.standard_normal(window.actions.shape, np.float32)
    window.weight[:] = 1.0
    window.next_slot[:] = np.minimum(np.arange(capacity) + 1, capacity - 1)
    window.prompts, window._prompt_ids = [PROMPT], {PROMPT: 0}
    window.size = window.frames_added = capacity
    return window


def bench_batches(window: FrameWindow, model, tok, batch: int, seconds: float, label: str, augment: bool) -> float:
    stats = norm_stats_from_windows([window])
    config = PipelineConfig(batch_size=batch, ratios={"online": 1.0}, augment=augment, prefetch=3)
    label += ", openpi augmentation" if augment else ", no augmentation"
    host_loader = BatchLoader({"online": window}, config, model, tok, stats)
    lat = []
    deadline = time.perf_counter() + seconds / 2
    while time.perf_counter() < deadline or len(lat) < 3:
        start = time.perf_counter()
        host_loader.next_host()
        lat.append(time.perf_counter() - start)
    host_loader.close()
    with BatchLoader({"online": window}, config, model, tok, stats) as loader:
        first, _ = next(loader)  # compile the device conversion + augmentation
        jax.block_until_ready(first)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2 or n < 3:
            b, _ = next(loader)
            jax.block_until_ready(b)
            n += 1
        rate = n * batch / (time.perf_counter() - start)
    print(
        f"batches {label}: host sample+transform of {batch}: median {1e3 * statistics.median(lat):.1f} ms "
        f"({batch / statistics.median(lat):.0f} samples/s); end to end (prefetch thread, on the device): "
        f"{rate:.0f} samples/s"
    )
    return rate


def bench_learner(model, batch: int, seconds: float) -> float:
    params = pi0.init_params(model, jax.random.key(0))
    size = model.vision.image_size
    obs = pi0.Observation(
        images={k: jnp.zeros((batch, size, size, 3)) for k in model.image_keys},
        image_masks={k: jnp.ones(batch, bool) for k in model.image_keys},
        state=jnp.zeros((batch, model.action_dim)),
        tokenized_prompt=jnp.ones((batch, model.max_token_len), jnp.int32),
        tokenized_prompt_mask=jnp.ones((batch, model.max_token_len), bool),
    )
    actions = jnp.zeros((batch, model.action_horizon, model.action_dim))

    @jax.jit
    def step(params, key):
        noise, time_ = pi0.sample_noise_and_time(key, actions.shape)
        return jax.value_and_grad(lambda p: pi0.compute_loss(model, p, obs, actions, noise, time_).mean())(params)

    jax.block_until_ready(step(params, jax.random.key(1)))
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        jax.block_until_ready(step(params, jax.random.key(n)))
        n += 1
    per_step = (time.perf_counter() - start) / n
    print(
        f"baseline: tiny-preset compute_loss value_and_grad at batch {batch}: {1e3 * per_step:.1f} ms/step "
        f"= {batch / per_step:.0f} samples/s consumed"
    )
    return batch / per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--window", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=56)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--tmp", default=None, help="scratch directory (the 224 px window needs ~9 GB)")
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="replay-bench-", dir=args.tmp))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; scratch {tmp}")
    try:
        bench_commit(tmp, args.frames)
        model = tiny_config()
        tok_path = train_tiny_tokenizer(tmp / "tok.model", [PROMPT, "fold the towel", "pick up the cup"], 60)
        tok = PaligemmaTokenizer(tok_path, model.max_token_len)
        learner = bench_learner(model, args.batch, args.seconds)
        tiny = full_window(tmp / "w56", args.window, model.vision.image_size)
        rate_tiny = bench_batches(tiny, model, tok, args.batch, args.seconds, f"{args.window} frames, 56 px", True)
        print(f"ratio: tiny-preset batches {rate_tiny / learner:.1f}x the tiny learner's consumption (target >= 10x)")
        shutil.rmtree(tmp / "w56")
        real = model.replace(vision=dataclasses.replace(model.vision, image_size=224))
        big = full_window(tmp / "w224", args.window, 224)
        print(f"window: {args.window} frames x 3 cams at 224x224 = {big.nbytes / 2**30:.1f} GiB")
        for augment in (False, True):
            rate = bench_batches(big, real, tok, args.batch, args.seconds, f"{args.window} frames, 224 px", augment)
            print(f"ratio: 224 px batches {rate / learner:.1f}x the tiny learner; {rate:.0f} samples/s (target >= 500)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
