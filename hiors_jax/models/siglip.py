"""SigLIP vision tower (big_vision ViT, `pool_type="none"`) with PaliGemma's linear projector.

Pure functions over an openpi-named parameter dict (`PaliGemma/img/...`). Numerics follow flax's modules as
openpi runs them: the patch convolution and position embedding in float32, then every block in the compute
dtype with LayerNorm statistics in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hiors_jax.models.config import SiglipConfig, remat_policy
from hiors_jax.models.init import lecun_normal, xavier_uniform

LN_EPS = 1e-6


def layer_norm(x, scale, bias, dtype):
    """flax `nn.LayerNorm` (fast variance, statistics in at least float32)."""
    x32 = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.maximum(0.0, jnp.mean(jnp.square(x32), axis=-1, keepdims=True) - jnp.square(mean))
    y = (x32 - mean) * (jax.lax.rsqrt(var + LN_EPS) * scale) + bias
    return y.astype(dtype)


def _dense(x, p, dtype):
    return jnp.dot(x.astype(dtype), p["kernel"].astype(dtype)) + p["bias"].astype(dtype)


def _attention(x, p, dtype):
    x = x.astype(dtype)
    q, k, v = (
        jnp.einsum("btd,dnh->btnh", x, p[n]["kernel"].astype(dtype)) + p[n]["bias"].astype(dtype)
        for n in ("query", "key", "value")
    )
    head_dim = q.shape[-1]
    q = q / jnp.sqrt(head_dim).astype(dtype)
    logits = jnp.einsum("bqnh,bknh->bnqk", q, k)
    probs = jax.nn.softmax(logits).astype(dtype)
    out = jnp.einsum("bnqk,bknh->bqnh", probs, v)
    return jnp.einsum("bqnh,nhd->bqd", out, p["out"]["kernel"].astype(dtype)) + p["out"]["bias"].astype(dtype)


def _encoder_block(x, p, dtype):
    y = layer_norm(x, p["LayerNorm_0"]["scale"], p["LayerNorm_0"]["bias"], dtype)
    x = x + _attention(y, p["MultiHeadDotProductAttention_0"], dtype)
    y = layer_norm(x, p["LayerNorm_1"]["scale"], p["LayerNorm_1"]["bias"], dtype)
    mlp = p["MlpBlock_0"]
    y = jax.nn.gelu(_dense(y, mlp["Dense_0"], dtype), approximate=True)
    return x + _dense(y, mlp["Dense_1"], dtype)


def encode_images(cfg: SiglipConfig, params: dict, images: jax.Array, dtype, remat: str | bool = "none") -> jax.Array:
    """(B, H, W, 3) float images in [-1, 1] -> (B, num_tokens, projector width) tokens in `dtype`."""
    x = jax.lax.conv_general_dilated(
        images.astype(jnp.float32),
        params["embedding"]["kernel"].astype(jnp.float32),
        window_strides=(cfg.patch_size, cfg.patch_size),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    x = x + params["embedding"]["bias"].astype(jnp.float32)
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c) + params["pos_embedding"].astype(jnp.float32)
    x = x.astype(dtype)

    def block(carry, layer_params):
        return _encoder_block(carry, layer_params, dtype), None

    if remat_policy(remat) is not None:
        block = jax.checkpoint(block, policy=remat_policy(remat), prevent_cse=False)
    tower = params["Transformer"]
    x, _ = jax.lax.scan(block, x, tower["encoderblock"])
    x = layer_norm(x, tower["encoder_norm"]["scale"], tower["encoder_norm"]["bias"], dtype)
    return _dense(x, params["head"], dtype)


def init_siglip(cfg: SiglipConfig, out_width: int, key: jax.Array, dtype=jnp.float32) -> dict:
    """Fresh parameters in openpi's layout (layer leaves stacked on a leading depth axis)."""
    d, n, h, m, depth = cfg.width, cfg.num_heads, cfg.width // cfg.num_heads, cfg.mlp_dim, cfg.depth
    keys = iter(jax.random.split(key, 16))
    stack = lambda shape: (depth, *shape)
    zeros = lambda shape: jnp.zeros(shape, dtype)
    ones = lambda shape: jnp.ones(shape, dtype)
    attn = {
        name: {
            "kernel": xavier_uniform(next(keys), stack((d, n, h)), fan_in=d, fan_out=n * h, dtype=dtype),
            "bias": zeros(stack((n, h))),
        }
        for name in ("query", "key", "value")
    }
    attn["out"] = {
        "kernel": xavier_uniform(next(keys), stack((n, h, d)), fan_in=n * h, fan_out=d, dtype=dtype),
        "bias": zeros(stack((d,))),
    }
    block = {
        "LayerNorm_0": {"scale": ones(stack((d,))), "bias": zeros(stack((d,)))},
        "LayerNorm_1": {"scale": ones(stack((d,))), "bias": zeros(stack((d,)))},
        "MlpBlock_0": {
            "Dense_0": {"kernel": xavier_uniform(next(keys), stack((d, m)), d, m, dtype), "bias": zeros(stack((m,)))},
            "Dense_1": {"kernel": xavier_uniform(next(keys), stack((m, d)), m, d, dtype), "bias": zeros(stack((d,)))},
        },
        "MultiHeadDotProductAttention_0": attn,
    }
    p = cfg.patch_size
    return {
        "embedding": {
            "kernel": lecun_normal(next(keys), (p, p, 3, d), fan_in=p * p * 3, dtype=dtype),
            "bias": zeros((d,)),
        },
        "pos_embedding": (jax.random.normal(next(keys), (1, cfg.num_tokens, d)) / jnp.sqrt(d)).astype(dtype),
        "Transformer": {"encoderblock": block, "encoder_norm": {"scale": ones((d,)), "bias": zeros((d,))}},
        # openpi zero-initialises the projector; a small random init keeps fresh models image-sensitive.
        "head": {
            "kernel": lecun_normal(next(keys), (d, out_width), fan_in=d, dtype=dtype),
            "bias": zeros((out_width,)),
        },
    }
