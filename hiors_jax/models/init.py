"""Initialisers for fresh parameters (shapes are what matters; checkpoints supply the real values)."""

import jax
import jax.numpy as jnp


def lecun_normal(key, shape, fan_in, dtype=jnp.float32):
    return (jax.random.truncated_normal(key, -2.0, 2.0, shape) * (0.87962566 / jnp.sqrt(fan_in))).astype(dtype)


def xavier_uniform(key, shape, fan_in, fan_out, dtype=jnp.float32):
    limit = jnp.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, minval=-limit, maxval=limit).astype(dtype)


def lora_normal(key, shape, dtype=jnp.float32):
    """openpi's LoRA init for both factors: N(0, 0.01^2) (B is not zero, so a fresh LoRA model is not the base)."""
    return (0.01 * jax.random.normal(key, shape)).astype(dtype)
