"""Learner throughput: Hi-ORS updates/s and samples/s for the tiny preset, 1 device vs 8 simulated devices.

    python benchmarks/learner.py [--batch 16] [--seconds 20] [--window 2000]

Each configuration runs in its own process (the 8-device one with
XLA_FLAGS=--xla_force_host_platform_device_count=8, mesh data=4 x fsdp=2) and feeds the jitted, sharded
Hi-ORS update from the real data path: a `FrameWindow` of tiny-preset frames and the replay pipeline's
prefetching `BatchLoader` (host sampling + normalisation + tokenisation, device placement with the batch
sharding, on-device colour jitter). Every step is synchronised, so the step time splits cleanly into waiting
for the loader and computing. The single-device run is the baseline for the 8-device ratio. On a CPU the
"8 devices" share the same cores, so the ratio measures the sharding overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROMPT = "put the objects in the box"
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


def child(data: int, fsdp: int, batch: int, seconds: float, window_frames: int, tmp: pathlib.Path) -> dict:
    import jax
    import numpy as np

    from hiors_jax.agents import hiors
    from hiors_jax.data.pipeline import BatchLoader, PipelineConfig, norm_stats_from_windows
    from hiors_jax.data.replay import FrameWindow
    from hiors_jax.models import pi0
    from hiors_jax.models.config import tiny_config
    from hiors_jax.models.tokenizer import PaligemmaTokenizer, train_tiny_tokenizer
    from hiors_jax.train import learner as learner_lib
    from hiors_jax.train import mesh as mesh_lib

    model = tiny_config()
    size = model.vision.image_size
    rng = np.random.default_rng(0)
    window = FrameWindow(tmp / "window", window_frames, CAMERAS, (size, size), 14, model.action_horizon, 14)
    for cam in CAMERAS:
        window.images.arrays[cam][:] = rng.integers(0, 256, (window_frames, size, size, 3), dtype=np.uint8)
    window.state[:] = rng.standard_normal(window.state.shape)
    window.actions[:] = rng.standard_normal(window.actions.shape, np.float32)
    window.weight[:] = 1.0
    window.next_slot[:] = np.minimum(np.arange(window_frames) + 1, window_frames - 1)
    window.prompts, window._prompt_ids = [PROMPT], {PROMPT: 0}
    window.size = window.frames_added = window_frames
    tok = PaligemmaTokenizer(
        train_tiny_tokenizer(tmp / "tok.model", [PROMPT, "fold the towel"], 60), model.max_token_len
    )

    mesh = mesh_lib.make_mesh(data, fsdp, jax.devices()[: data * fsdp])
    mesh_lib.check_batch_size(batch, mesh)
    agent = hiors.make_agent(model)
    state = agent.init({"actor": pi0.init_params(model, jax.random.key(0))}, jax.random.PRNGKey(0))
    # As the Learner does: the PI0 params follow the model's logical-axis rules (at the tiny preset every leaf is
    # below their minimum shard size, so the fsdp axis acts as a second data axis here).
    sharded = mesh_lib.ShardedUpdate(agent, mesh, jax.eval_shape(lambda: state), learner_lib.model_param_rules())
    state = sharded.place(state)
    config = PipelineConfig(batch_size=batch, ratios={"online": 1.0}, augment=True, prefetch=3)
    stats = norm_stats_from_windows([window])
    with BatchLoader({"online": window}, config, model, tok, stats, sharding=sharded.batch_sharding) as loader:
        t0 = time.perf_counter()
        b, _ = next(loader)
        state, info = sharded.step(state, b)
        jax.block_until_ready(info)
        compile_s = time.perf_counter() - t0
        wait = compute = 0.0
        steps = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or steps < 3:
            t0 = time.perf_counter()
            b, _ = next(loader)
            jax.block_until_ready(b)
            t1 = time.perf_counter()
            state, info = sharded.step(state, b)
            jax.block_until_ready(info)
            t2 = time.perf_counter()
            wait += t1 - t0
            compute += t2 - t1
            steps += 1
        total = time.perf_counter() - start
    return {
        "devices": data * fsdp,
        "mesh": f"data={data} x fsdp={fsdp}",
        "updates_per_s": steps / total,
        "samples_per_s": steps * batch / total,
        "wait_share": wait / (wait + compute),
        "ms_per_step": 1e3 * total / steps,
        "first_step_s": compile_s,
        "loss": float(info["loss"]),
    }


def run_child(data: int, fsdp: int, args) -> dict:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="learner-bench-"))
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    if data * fsdp > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={data * fsdp}"
    try:
        cmd = [sys.executable, __file__, "--child", f"{data},{fsdp}", "--batch", str(args.batch)]
        cmd += ["--seconds", str(args.seconds), "--window", str(args.window), "--tmp", str(tmp)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            raise RuntimeError(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--window", type=int, default=2000)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        data, fsdp = (int(x) for x in args.child.split(","))
        print(json.dumps(child(data, fsdp, args.batch, args.seconds, args.window, pathlib.Path(args.tmp))))
        return
    print(f"tiny preset Hi-ORS update, batch {args.batch}, {args.seconds:g} s per configuration, CPU")
    results = [run_child(1, 1, args), run_child(4, 2, args)]
    for r in results:
        print(
            f"{r['devices']} device(s) ({r['mesh']}): {r['updates_per_s']:.2f} updates/s, "
            f"{r['samples_per_s']:.1f} samples/s, {r['ms_per_step']:.0f} ms/step, waiting for data "
            f"{100 * r['wait_share']:.1f}% of step time (first step incl. compile {r['first_step_s']:.1f} s)"
        )
    base, sharded = results
    print(f"ratio: 8 simulated devices at {sharded['samples_per_s'] / base['samples_per_s']:.2f}x the single device's "
          "samples/s (same CPU cores: this is the sharding overhead)")  # fmt: skip


if __name__ == "__main__":
    main()
