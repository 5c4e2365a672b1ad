"""PI0 speed and memory: sample_actions latency and train-step throughput, with same-run baselines.

    python benchmarks/pi0.py                       # tiny preset on whatever device jax picks (CPU here)
    python benchmarks/pi0.py --preset pi0 --dtype bfloat16 --train-batch 8   # the real PI0 (GPU)

Latency baseline: the same Euler sampler without the prefix KV cache (one joint prefix+suffix pass per step),
which is what a port without the cache costs. Train-step baseline: float32 compute without remat; the other
rows (bf16 compute, remat) are ratios against it. On a GPU the peak device memory of each train step is
printed (full fine-tuning: f32 params + AdamW state + grads, activations in the compute dtype).
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


def _peak_bytes():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


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


def make_train_step(config, optimizer):
    def loss_fn(params, obs, actions, rng):
        noise, time_ = pi0.sample_noise_and_time(rng, actions.shape)
        return pi0.compute_loss(config, params, obs, actions, noise, time_).mean()

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, obs, actions, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, obs, actions, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


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
        peak = _peak_bytes()
        mem = f"   peak device memory {peak / 2**30:.1f} GiB" if peak else ""
        print(f"  {name:28s} {median * 1e3:9.1f} ms/step  {rate:8.1f} samples/s  {rate / baseline:5.2f}x{mem}")
        del params, opt_state, state


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="pi0_tiny", choices=sorted(model_config.PRESETS))
    parser.add_argument("--dtype", default=None, help="compute dtype for sampling (default: preset's)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    config = model_config.get_preset(args.preset)
    if args.dtype:
        config = config.replace(dtype=args.dtype)
    dev = jax.devices()[0]
    print(f"device: {dev.platform} {getattr(dev, 'device_kind', '')}; jax {jax.__version__}; preset {args.preset}")
    # Inference weights in the compute dtype, as openpi's policy server restores them.
    params = jax.jit(pi0.init_params, static_argnums=(0, 2))(config, jax.random.key(0), config.compute_dtype)
    print(f"parameters: {weights.count_params(params):,}")
    bench_latency(config, params, args.steps, args.repeats, rng)
    del params
    if not args.skip_train:
        variants = [("f32 compute (baseline)", dict(dtype="float32")), ("bf16 compute", dict(dtype="bfloat16"))]
        variants.append(("bf16 compute + remat", dict(dtype="bfloat16", remat=True)))
        if args.preset in ("pi0", "pi05"):
            variants = variants[1:]  # f32 activations of the real model do not fit beside AdamW state
            print("(real model: f32-compute row skipped; bf16 compute is the baseline)")
        bench_train(config, args.train_batch, max(3, args.repeats // 3), rng, variants)


if __name__ == "__main__":
    main()
