"""PI0 speed and memory: sample_actions latency, train-step throughput and XLA training memory per variant.

    python benchmarks/pi0.py                        # the issue-8 config (below) on whatever device jax picks
    python benchmarks/pi0.py --preset pi0_tiny      # the tiny test preset
    python benchmarks/pi0.py --preset pi0 --train-batch 8   # the real PI0 (GPU)

The default preset `bench` is the config the memory figure is stated for: LM width 512 depth 4 mlp 2048, 8 heads,
1 kv head, head_dim 64; expert width 256 depth 4 mlp 1024; SigLIP width 256 depth 4 mlp 1024, 4 heads; vocab 1024;
3 cameras at 224x224; f32.

Latency baseline: the same Euler sampler without the prefix KV cache (one joint prefix+suffix pass per step),
which is what a port without the cache costs. Train-step rows are ratios against the first row (f32 compute).

Memory: for each variant on its own, XLA's compiled memory analysis
(`jit(value_and_grad(mean flow-matching loss)).lower(...).compile().memory_analysis()`) of one gradient
computation at the train batch, f32 master params: `temp` is XLA's temporary buffers (activations kept for the
backward pass, workspaces), which is what remat changes; params, inputs and gradients are arguments/outputs and are
listed apart. "remat" is the config's default policy "full" (openpi's nothing_saveable per scanned layer); "remat
dots" saves matmul outputs without batch dims. Nothing here reads a process-wide peak, so rows do not inherit
earlier rows' peaks.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hiors_jax.models import config as model_config
from hiors_jax.models import pi0, weights

# The config the issue-8 memory figure is stated for (openpi: 677 MiB of XLA temporaries, always remat).
BENCH_CONFIG = model_config.Pi0Config(
    vlm=model_config.GemmaConfig(width=512, depth=4, mlp_dim=2048, num_heads=8, num_kv_heads=1, head_dim=64),
    expert=model_config.GemmaConfig(width=256, depth=4, mlp_dim=1024, num_heads=8, num_kv_heads=1, head_dim=64),
    vision=model_config.SiglipConfig(width=256, depth=4, mlp_dim=1024, num_heads=4),
    vocab_size=1024,
    dtype="float32",
)
OPENPI_TEMP_MIB = 677  # openpi's figure for BENCH_CONFIG, batch 4, f32 (issue 8)


def _preset(name: str) -> model_config.Pi0Config:
    return BENCH_CONFIG if name == "bench" else model_config.get_preset(name)


def _observation(config, batch, rng):
    size = config.vision.image_size
    tokens = np.zeros((batch, config.max_token_len), np.int32)
    mask = np.zeros((batch, config.max_token_len), bool)
    tokens[:, :12] = rng.integers(3, config.vocab_size, (batch, 12))
    mask[:, :12] = True
    return pi0.Observation(
        images={k: jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)), jnp.float32) for k in config.image_keys},
        image_masks={k: jnp.ones((batch,), bool) for k in config.image_keys},
        state=jnp.asarray(rng.normal(size=(batch, config.action_dim)), jnp.float32),
        tokenized_prompt=jnp.asarray(tokens),
        tokenized_prompt_mask=jnp.asarray(mask),
    )


def _time(fn, repeats):
    jax.block_until_ready(fn())  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.percentile(times, 90))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _uncached_sample(config, params, obs, noise, num_steps):
    dt = -1.0 / num_steps

    def step(carry, _):
        x, t = carry
        v = pi0.predict_velocity(config, params, obs, x, jnp.broadcast_to(t, (x.shape[0],)))
        return (x + dt * v, t + dt), None

    (x, _), _ = jax.lax.scan(step, (noise, jnp.float32(1.0)), None, length=num_steps)
    return x


def bench_latency(config, params, steps, repeats, rng):
    obs = pi0.prepare_observation(config, _observation(config, 1, rng))
    noise = jnp.asarray(rng.normal(size=(1, config.action_horizon, config.action_dim)), jnp.float32)
    cached = _time(lambda: pi0.sample_actions(config, params, obs, noise, num_steps=steps), repeats)
    uncached = _time(lambda: _uncached_sample(config, params, obs, noise, steps), repeats)
    print(f"sample_actions, batch 1, {len(config.image_keys)} cameras, {steps} steps, compute {config.dtype}:")
    print(f"  KV-cached sampler   median {cached[0] * 1e3:8.2f} ms   p90 {cached[1] * 1e3:8.2f} ms")
    print(f"  baseline (no cache) median {uncached[0] * 1e3:8.2f} ms   p90 {uncached[1] * 1e3:8.2f} ms")
    print(f"  speed-up from the cache: {uncached[0] / cached[0]:.2f}x")
    return cached[0]


def _mean_loss(config):
    def loss_fn(params, obs, actions, noise, time_):
        return pi0.compute_loss(config, params, obs, actions, noise, time_).mean()

    return loss_fn


def make_train_step(config, optimizer):
    loss_fn = _mean_loss(config)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, obs, actions, rng):
        noise, time_ = pi0.sample_noise_and_time(rng, actions.shape)
        loss, grads = jax.value_and_grad(loss_fn)(params, obs, actions, noise, time_)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def grad_memory(config, batch, rng) -> dict[str, int]:
    """XLA's compiled memory analysis of value_and_grad of the mean loss (shapes only: nothing is allocated)."""
    params = pi0.param_shapes(config)
    obs = pi0.prepare_observation(config, _observation(config, batch, rng))
    chunk = jax.ShapeDtypeStruct((batch, config.action_horizon, config.action_dim), jnp.float32)
    time_ = jax.ShapeDtypeStruct((batch,), jnp.float32)
    compiled = jax.jit(jax.value_and_grad(_mean_loss(config))).lower(params, obs, chunk, chunk, time_).compile()
    analysis = compiled.memory_analysis()
    return {
        "temp": int(analysis.temp_size_in_bytes),
        "arguments": int(analysis.argument_size_in_bytes),
        "outputs": int(analysis.output_size_in_bytes),
    }


def bench_memory(base_config, batch, rng, variants):
    print(
        f"XLA memory of value_and_grad(mean flow-matching loss), batch {batch}, f32 params "
        "(jit(...).lower(...).compile().memory_analysis(), each variant compiled on its own):"
    )
    for name, changes in variants:
        mem = grad_memory(base_config.replace(**changes), batch, rng)
        print(
            f"  {name:28s} temp {mem['temp'] / 2**20:9.1f} MiB   arguments {mem['arguments'] / 2**20:8.1f} MiB"
            f"   outputs {mem['outputs'] / 2**20:8.1f} MiB"
        )


def bench_train(base_config, batch, repeats, rng, variants):
    obs = pi0.prepare_observation(base_config, _observation(base_config, batch, rng))
    actions = jnp.asarray(rng.normal(size=(batch, base_config.action_horizon, base_config.action_dim)), jnp.float32)
    optimizer = optax.adamw(2.5e-5, b1=0.9, b2=0.95, weight_decay=1e-10)
    print(f"train step (AdamW, f32 params, full fine-tuning), batch {batch}:")
    baseline = None
    train_key = jax.random.key(1)
    for name, changes in variants:
        config = base_config.replace(**changes)
        params = jax.jit(pi0.init_params, static_argnums=0)(config, jax.random.key(0))
        opt_state = optimizer.init(params)
        step = make_train_step(config, optimizer)
        state = {"params": params, "opt": opt_state}

        def run(state=state, step=step):
            state["params"], state["opt"], loss = step(state["params"], state["opt"], obs, actions, train_key)
            return loss

        median, _ = _time(run, repeats)
        rate = batch / median
        baseline = baseline or rate
        print(f"  {name:28s} {median * 1e3:9.1f} ms/step  {rate:8.1f} samples/s  {rate / baseline:5.2f}x")
        del params, opt_state, state


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="bench", choices=["bench", *sorted(model_config.PRESETS)])
    parser.add_argument("--dtype", default=None, help="compute dtype for sampling (default: preset's)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    config = _preset(args.preset)
    if args.dtype:
        config = config.replace(dtype=args.dtype)
    dev = jax.devices()[0]
    print(f"device: {dev.platform} {getattr(dev, 'device_kind', '')}; jax {jax.__version__}; preset {args.preset}")
    print(f"parameters: {weights.count_params(pi0.param_shapes(config)):,}")
    if not args.skip_latency:
        # Inference weights in the compute dtype, as openpi's policy server restores them.
        params = jax.jit(pi0.init_params, static_argnums=(0, 2))(config, jax.random.key(0), config.compute_dtype)
        bench_latency(config, params, args.steps, args.repeats, rng)
        del params
    real = args.preset in ("pi0", "pi05")
    variants = [
        ("f32 compute", dict(dtype="float32", remat="none")),
        ("f32 compute + remat", dict(dtype="float32", remat="full")),
        ("bf16 compute", dict(dtype="bfloat16", remat="none")),
        ("bf16 compute + remat", dict(dtype="bfloat16", remat="full")),
    ]
    if not args.skip_memory:
        dots = [("f32 compute + remat dots", dict(dtype="float32", remat="dots"))]
        bench_memory(config, args.train_batch, rng, variants[:2] + dots + variants[2:])
        if args.preset == "bench":
            print(f"  (openpi, which always remats, needs {OPENPI_TEMP_MIB} MiB of temporaries for this config)")
    if not args.skip_train:
        train_variants = variants
        if real:
            train_variants = variants[2:]  # f32 activations of the real model do not fit beside AdamW state
            print("(real model: f32-compute rows skipped)")
        bench_train(config, args.train_batch, max(3, args.repeats // 3), rng, train_variants)


if __name__ == "__main__":
    main()
