"""Initialisers and the parameter-declaring building block shared by the Flax modules.

Fresh values matter little (checkpoints supply the real ones); names, shapes and logical axis names are what
count: every parameter is declared through `param`, which attaches its logical axes (`nn.with_logical_partitioning`)
so `sharding.py` can map them onto a mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Init = Callable[[jax.Array, tuple[int, ...], Any], jax.Array]


def lecun_normal(key, shape, fan_in, dtype=jnp.float32):
    return (jax.random.truncated_normal(key, -2.0, 2.0, shape) * (0.87962566 / jnp.sqrt(fan_in))).astype(dtype)


def xavier_uniform(key, shape, fan_in, fan_out, dtype=jnp.float32):
    limit = jnp.sqrt(6.0 / (fan_in + fan_out))
    return jax.random.uniform(key, shape, minval=-limit, maxval=limit).astype(dtype)


def lora_normal(key, shape, dtype=jnp.float32):
    """openpi's LoRA init for both factors: N(0, 0.01^2) (B is not zero, so a fresh LoRA model is not the base)."""
    return (0.01 * jax.random.normal(key, shape)).astype(dtype)


def lecun(fan_in: int) -> Init:
    return lambda key, shape, dtype: lecun_normal(key, shape, fan_in, dtype)


def xavier(fan_in: int, fan_out: int) -> Init:
    return lambda key, shape, dtype: xavier_uniform(key, shape, fan_in, fan_out, dtype)


def scaled_normal(std: float) -> Init:
    return lambda key, shape, dtype: (jax.random.normal(key, shape) * std).astype(dtype)


def zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype):
    return jnp.ones(shape, dtype)


def lora_init(key, shape, dtype):
    return lora_normal(key, shape, dtype)


def param(module: nn.Module, name: str, init: Init, shape, axes: tuple[str, ...], dtype=jnp.float32):
    """Declare a parameter with its logical axis names (unboxed on read; plain arrays pass through in apply)."""
    if len(axes) != len(shape):
        raise ValueError(f"{name}: logical axes {axes} do not match shape {tuple(shape)}")
    return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape), dtype)


class Params(nn.Module):
    """A named group of parameters returned as a dict, for modules whose math is a shared pure function.

    specs: (name, shape, logical axes, init) per parameter, in declaration order.
    """

    specs: tuple[tuple[str, tuple[int, ...], tuple[str, ...], Init], ...]
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> dict:
        return {name: param(self, name, init, shape, axes, self.param_dtype) for name, shape, axes, init in self.specs}


def dense_specs(n_in: int, n_out: int, in_axis: str, out_axis: str, kernel_init: Init | None = None):
    """kernel (in, out) + bias (out,): flax Dense's names and layout."""
    kernel_init = kernel_init or lecun(n_in)
    return (("kernel", (n_in, n_out), (in_axis, out_axis), kernel_init), ("bias", (n_out,), (out_axis,), zeros))
