"""Run in a subprocess with 8 simulated CPU devices (XLA_FLAGS must be set before jax is imported).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/models/sharded_check.py {tiny|real}

Prints one JSON line of measured figures; the test asserts on them.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from pi0_test_helpers import random_observation, random_params

from hiors_jax.models import config as model_config
from hiors_jax.models import pi0, sharding, weights


def real_bytes(preset: str) -> dict:
    """Per-device parameter bytes of a real config on a data=2 x fsdp=4 mesh, from shapes only."""
    config = model_config.get_preset(preset)
    mesh = sharding.make_mesh(2, 4)
    shapes = pi0.param_shapes(config)
    shards = sharding.param_shardings(config, mesh)
    total, per_device = 0, np.zeros(len(jax.devices()))
    for leaf, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shards), strict=True):
        nbytes = leaf.dtype.itemsize
        total += int(np.prod(leaf.shape)) * nbytes
        for device, index in sh.devices_indices_map(leaf.shape).items():
            size = int(np.prod([len(range(*s.indices(d))) for s, d in zip(index, leaf.shape, strict=True)]))
            per_device[device.id] += size * nbytes
    return {"total_bytes": total, "max_device_bytes": float(per_device.max()), "devices": len(per_device)}


def tiny_grads() -> dict:
    config = model_config.tiny_config(action_horizon=4, max_token_len=8)
    params = random_params(config, seed=1)
    obs = pi0.prepare_observation(config, random_observation(config, batch=8, seed=2))
    rng = np.random.default_rng(3)
    actions = rng.normal(size=(8, 4, 32)).astype(np.float32)
    noise = rng.normal(size=(8, 4, 32)).astype(np.float32)
    time = rng.uniform(0.01, 1.0, 8).astype(np.float32)

    def loss(p, o, a, n, t):
        return pi0.compute_loss(config, p, o, a, n, t).mean()

    grad_fn = jax.jit(jax.value_and_grad(loss))
    single = jax.devices()[0]
    ref_loss, ref_grads = grad_fn(*jax.device_put((params, obs, actions, noise, time), single))

    mesh = sharding.make_mesh(2, 4)
    # min_shard_bytes=0: shard every leaf the rules allow, so the tiny model exercises the real layout.
    p_shard = sharding.param_shardings(config, mesh, min_shard_bytes=0)
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    sharded_params = jax.device_put(params, p_shard)
    sharded_batch = jax.device_put((obs, actions, noise, time), batch)
    sharded_fn = jax.jit(jax.value_and_grad(loss), out_shardings=(NamedSharding(mesh, PartitionSpec()), p_shard))
    got_loss, got_grads = sharded_fn(sharded_params, *sharded_batch)
    n_sharded = sum(any(axis is not None for axis in leaf.sharding.spec) for leaf in jax.tree.leaves(sharded_params))
    grad_err = max(
        float(jnp.max(jnp.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(ref_grads), strict=True)
    )
    return {
        "devices": len(jax.devices()),
        "loss_err": abs(float(got_loss) - float(ref_loss)),
        "grad_err": grad_err,
        "grad_scale": max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads)),
        "sharded_leaves": n_sharded,
        "leaves": len(jax.tree.leaves(params)),
        "params": weights.count_params(params),
    }


if __name__ == "__main__":
    what = sys.argv[1]
    result = tiny_grads() if what == "tiny" else real_bytes(what)
    print(json.dumps(result))
