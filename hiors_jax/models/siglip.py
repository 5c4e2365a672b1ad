"""SigLIP vision tower (big_vision ViT, `pool_type="none"`) with PaliGemma's linear projector.

Flax modules whose parameters are exactly openpi's `PaliGemma/img/...` tree (blocks scanned over depth, optional
remat per block), each parameter annotated with logical axis names; the math is in small pure functions below.
Numerics follow flax's modules as openpi runs them: the patch convolution and position embedding in float32, then
every block in the compute dtype with LayerNorm statistics in float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hiors_jax.models.config import SiglipConfig, remat_policy
from hiors_jax.models.init import Params, dense_specs, lecun, ones, param, scaled_normal, xavier, zeros

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


def _embed_patches(cfg: SiglipConfig, embedding: dict, pos_embedding, images, dtype):
    """Patch conv and learned positions in float32 (as flax runs openpi's), then cast to the compute dtype."""
    x = jax.lax.conv_general_dilated(
        images.astype(jnp.float32),
        embedding["kernel"].astype(jnp.float32),
        window_strides=(cfg.patch_size, cfg.patch_size),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    x = x + embedding["bias"].astype(jnp.float32)
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c) + pos_embedding.astype(jnp.float32)
    return x.astype(dtype)


# ---------------------------------------------------------------------------------------------------------------
# Flax modules (big_vision's ViT layout as openpi builds it: embedding, pos_embedding, Transformer/encoderblock
# scanned over depth, Transformer/encoder_norm, head).


def _layer_norm_specs(d: int):
    return (("scale", (d,), ("norm",), ones), ("bias", (d,), ("norm",), zeros))


class MultiHeadAttention(nn.Module):
    """flax's MultiHeadDotProductAttention layout: query / key / value (D, N, H) and out (N, H, D), with biases."""

    cfg: SiglipConfig
    dtype: Any
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, n = self.cfg.width, self.cfg.num_heads
        h = d // n
        proj = lambda name: Params(
            (
                ("kernel", (d, n, h), ("vision_embed", "heads", "head_dim"), xavier(d, n * h)),
                ("bias", (n, h), ("heads", "head_dim"), zeros),
            ),
            self.param_dtype,
            name=name,
        )()
        p = {name: proj(name) for name in ("query", "key", "value")}
        p["out"] = Params(
            (
                ("kernel", (n, h, d), ("heads", "head_dim", "vision_embed"), xavier(n * h, d)),
                ("bias", (d,), ("vision_embed",), zeros),
            ),
            self.param_dtype,
            name="out",
        )()
        return _attention(x, p, self.dtype)


class MlpBlock(nn.Module):
    cfg: SiglipConfig
    dtype: Any
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, m, pd = self.cfg.width, self.cfg.mlp_dim, self.param_dtype
        dense_0 = Params(dense_specs(d, m, "vision_embed", "mlp", xavier(d, m)), pd, name="Dense_0")()
        dense_1 = Params(dense_specs(m, d, "mlp", "vision_embed", xavier(m, d)), pd, name="Dense_1")()
        return _dense(jax.nn.gelu(_dense(x, dense_0, self.dtype), approximate=True), dense_1, self.dtype)


class EncoderBlock(nn.Module):
    """Pre-LN block: LayerNorm_0 -> MultiHeadDotProductAttention_0 -> residual; LayerNorm_1 -> MlpBlock_0."""

    cfg: SiglipConfig
    dtype: Any
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, pd = self.cfg.width, self.param_dtype
        ln_0 = Params(_layer_norm_specs(d), pd, name="LayerNorm_0")()
        ln_1 = Params(_layer_norm_specs(d), pd, name="LayerNorm_1")()
        y = layer_norm(x, ln_0["scale"], ln_0["bias"], self.dtype)
        x = x + MultiHeadAttention(self.cfg, self.dtype, pd, name="MultiHeadDotProductAttention_0")(y)
        y = layer_norm(x, ln_1["scale"], ln_1["bias"], self.dtype)
        return x + MlpBlock(self.cfg, self.dtype, pd, name="MlpBlock_0")(y), None


class Encoder(nn.Module):
    """`Transformer`: the scanned `encoderblock` stack and the final `encoder_norm`."""

    cfg: SiglipConfig
    dtype: Any
    remat: str = "none"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        block = EncoderBlock
        policy = remat_policy(self.remat)
        if policy is not None:
            block = nn.remat(EncoderBlock, policy=policy, prevent_cse=False)
        stack = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.cfg.depth,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(self.cfg, self.dtype, self.param_dtype, name="encoderblock")
        x, _ = stack(x)
        norm = Params(_layer_norm_specs(self.cfg.width), self.param_dtype, name="encoder_norm")()
        return layer_norm(x, norm["scale"], norm["bias"], self.dtype)


class Siglip(nn.Module):
    """SigLIP tower + PaliGemma's linear projector (`head`) to `out_width`; named `img` inside PaliGemma."""

    cfg: SiglipConfig
    out_width: int
    dtype: Any = jnp.float32
    remat: str = "none"
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images):
        """(B, H, W, 3) float images in [-1, 1] -> (B, num_tokens, out_width) tokens in `dtype`."""
        cfg, pd = self.cfg, self.param_dtype
        p, d = cfg.patch_size, cfg.width
        embedding = Params(
            (
                ("kernel", (p, p, 3, d), ("patch", "patch", "patch", "vision_embed"), lecun(p * p * 3)),
                ("bias", (d,), ("vision_embed",), zeros),
            ),
            pd,
            name="embedding",
        )()
        pos = param(
            self,
            "pos_embedding",
            scaled_normal(d**-0.5),
            (1, cfg.num_tokens, d),
            ("position", "position", "vision_embed"),
            pd,
        )
        x = _embed_patches(cfg, embedding, pos, images, self.dtype)
        x = Encoder(cfg, self.dtype, self.remat, pd, name="Transformer")(x)
        # openpi zero-initialises the projector; a small random init keeps fresh models image-sensitive.
        head = Params(dense_specs(d, self.out_width, "vision_embed", "embed"), pd, name="head")()
        return _dense(x, head, self.dtype)


def encode_images(cfg: SiglipConfig, params: dict, images: jax.Array, dtype, remat: str | bool = "none") -> jax.Array:
    """`Siglip.apply` over an openpi-named `img` tree: (B, H, W, 3) in [-1, 1] -> (B, num_tokens, width) tokens."""
    remat = remat if isinstance(remat, str) else ("full" if remat else "none")
    module = Siglip(cfg, params["head"]["kernel"].shape[-1], dtype, remat)
    return module.apply({"params": params}, images)
