"""Gemma with several "experts" that share one attention (openpi's `gemma.Module`).

Each expert has its own weights and processes its own token segment (expert 0 = PaliGemma on the prefix,
expert 1 = the action expert on the suffix); the segments attend to each other through one joint attention
per layer. An expert given `None` is skipped, which is how prefix-only and cached suffix-only passes run.

Parameter names follow openpi: expert 0 keeps PaliGemma's names, expert i > 0 gets the suffix `_i`; layer
leaves are stacked on a leading depth axis. Numerics follow openpi's precision policy: RMSNorm, RoPE, attention
logits and softmax in float32, everything else in the compute dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from hiors_jax.models.config import GemmaConfig
from hiors_jax.models.init import lecun_normal

RMS_EPS = 1e-6
ROPE_MAX_WAVELENGTH = 10_000
# openpi masks logits with this finite constant (not -inf): fully masked rows get a uniform softmax.
BIG_NEG = -2.3819763e38


def expert_name(name: str, i: int) -> str:
    return name if i == 0 else f"{name}_{i}"


def rms_norm(x, p, cond=None):
    """RMSNorm with (1 + scale); with `cond`, adaptive: Dense(cond) -> (scale, shift, gate), returns the gate."""
    dtype = x.dtype
    var = jnp.mean(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
    normed = x * jnp.reciprocal(jnp.sqrt(var + RMS_EPS))
    if cond is None:
        return (normed * (1 + p["scale"])).astype(dtype), None
    dense = p["Dense_0"]
    modulation = jnp.dot(cond.astype(dtype), dense["kernel"].astype(dtype)) + dense["bias"].astype(dtype)
    scale, shift, gate = jnp.split(modulation[:, None, :], 3, axis=-1)
    return (normed * (1 + scale) + shift).astype(dtype), gate


def _two_product(a, b):
    """a * b = p + err exactly (Dekker's split; float32 operands)."""

    def split(v):
        t = 4097.0 * v
        hi = t - (t - v)
        return hi, v - hi

    p = a * b
    (ah, al), (bh, bl) = split(a), split(b)
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _correctly_rounded_div(x, y):
    """IEEE float32 x / y. XLA's CPU division can be 1 ulp off, which at RoPE angles of ~800 rad is 3e-5 and
    shows in the keys; one residual correction restores openpi's exact angles on every backend."""
    q = x / y
    p, err = _two_product(q, y)
    return q + ((x - p) - err) / y


def apply_rope(x, positions):
    """Half-split rotary embedding in float32; x (B, T, N, H), positions (B, T)."""
    half = x.shape[-1] // 2
    freq_exponents = (2.0 / x.shape[-1]) * jnp.arange(half, dtype=jnp.float32)
    timescale = ROPE_MAX_WAVELENGTH**freq_exponents
    radians = _correctly_rounded_div(positions[..., None].astype(jnp.float32), timescale[None, None, :])[..., None, :]
    sin, cos = jnp.sin(radians), jnp.cos(radians)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def _gated_residual(x, y, gate):
    return x + y if gate is None else x + y * gate


def _feed_forward(x, p):
    dtype = x.dtype
    gating = p["gating_einsum"].astype(dtype)
    hidden = jax.nn.gelu(jnp.dot(x, gating[0]), approximate=True) * jnp.dot(x, gating[1])
    return jnp.dot(hidden, p["linear"].astype(dtype))


def _attention(configs, attn_p, xs, positions, mask, kv_cache):
    cfg = configs[0]
    dtype = next(x.dtype for x in xs if x is not None)
    qs, ks, vs = [], [], []
    for i, x in enumerate(xs):
        if x is None:
            continue
        qs.append(jnp.einsum("BTD,NDH->BTNH", x, attn_p[expert_name("q_einsum", i)]["w"].astype(dtype)))
        k, v = jnp.einsum("BSD,2KDH->2BSKH", x, attn_p[expert_name("kv_einsum", i)]["w"].astype(dtype))
        ks.append(k)
        vs.append(v)
    q, k, v = (jnp.concatenate(parts, axis=1) for parts in (qs, ks, vs))
    q = apply_rope(q, positions) * cfg.head_dim**-0.5
    k = apply_rope(k, positions)
    if kv_cache is not None:
        k = jnp.concatenate([kv_cache[0], k], axis=1)
        v = jnp.concatenate([kv_cache[1], v], axis=1)
    b, t = q.shape[:2]
    if mask.shape != (b, t, k.shape[1]):
        raise ValueError(f"attention mask has shape {mask.shape}, expected {(b, t, k.shape[1])} (batch, query, key)")
    q = q.reshape(b, t, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, None, None, :, :], logits, BIG_NEG)
    probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
    encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, cfg.num_heads, cfg.head_dim)
    outs, start = [], 0
    for i, x in enumerate(xs):
        if x is None:
            outs.append(None)
            continue
        end = start + x.shape[1]
        w = attn_p[expert_name("attn_vec_einsum", i)]["w"].astype(dtype)
        outs.append(jnp.einsum("BTNH,NHD->BTD", encoded[:, start:end], w))
        start = end
    return outs, (k, v)


def _layer(configs, p, xs, positions, mask, conds, kv_cache):
    normed, gates = [], []
    for i, x in enumerate(xs):
        h, g = rms_norm(x, p[expert_name("pre_attention_norm", i)], conds[i]) if x is not None else (None, None)
        normed.append(h)
        gates.append(g)
    attn_out, kv = _attention(configs, p["attn"], normed, positions, mask, kv_cache)
    xs = [None if x is None else _gated_residual(x, y, g) for x, y, g in zip(xs, attn_out, gates, strict=True)]
    out = []
    for i, x in enumerate(xs):
        if x is None:
            out.append(None)
            continue
        h, g = rms_norm(x, p[expert_name("pre_ffw_norm", i)], conds[i])
        out.append(_gated_residual(x, _feed_forward(h, p[expert_name("mlp", i)]), g))
    return out, kv


def embed_tokens(params: dict, tokens: jax.Array, dtype) -> jax.Array:
    """Token embedding times sqrt(width) (the multiplier rounded to the table dtype, as openpi does)."""
    table = params["embedder"]["input_embedding"]
    x = table[(tokens,)]
    x = x * jnp.sqrt(table.shape[-1]).astype(x.dtype)
    return x.astype(dtype)


def apply(
    configs: Sequence[GemmaConfig],
    params: dict,
    embedded: Sequence[jax.Array | None],
    positions: jax.Array,
    mask: jax.Array,
    adarms_cond: Sequence[jax.Array | None] | None = None,
    kv_cache: tuple[jax.Array, jax.Array] | None = None,
    dtype=jnp.float32,
    remat: bool = False,
):
    """Run all layers over the experts' token segments.

    embedded: per expert (B, T_i, width_i) or None; positions (B, sum T_i); mask (B, sum T_i, S) bool where S
    adds the cached length; kv_cache: per-layer keys/values (depth, B, S_cache, K, H) from an earlier pass.
    Returns (per-expert final-normed outputs, (keys, values) of every layer incl. the cache).
    """
    configs = tuple(configs)
    if adarms_cond is None:
        adarms_cond = [None] * len(configs)
    xs = [None if x is None else x.astype(dtype) for x in embedded]

    def body(carry, layer):
        layer_p, layer_cache = layer
        return _layer(configs, layer_p, carry, positions, mask, adarms_cond, layer_cache)

    if remat:
        body = jax.checkpoint(body, policy=jax.checkpoint_policies.nothing_saveable)
    xs, kv = jax.lax.scan(body, xs, (params["layers"], kv_cache))
    outs = [
        None if x is None else rms_norm(x, params[expert_name("final_norm", i)], adarms_cond[i])[0]
        for i, x in enumerate(xs)
    ]
    return outs, kv


def init_gemma(configs: Sequence[GemmaConfig], vocab_size: int, key: jax.Array, adaptive=(), dtype=jnp.float32):
    """Fresh parameters for the multi-expert transformer; experts listed in `adaptive` get adaRMS norms."""
    depth = configs[0].depth
    keys = iter(jax.random.split(key, 8 * len(configs) + 1))
    layers = {"attn": {}}
    params = {
        "embedder": {
            "input_embedding": (
                jax.random.normal(next(keys), (vocab_size, configs[0].width)) / jnp.sqrt(configs[0].width)
            ).astype(dtype)
        },
        "layers": layers,
    }

    def norm(i, width, stacked):
        lead = (depth,) if stacked else ()
        if i in adaptive:  # openpi zero-initialises adaRMS so a fresh model starts as a plain RMSNorm.
            return {
                "Dense_0": {
                    "kernel": jnp.zeros((*lead, width, 3 * width), dtype),
                    "bias": jnp.zeros((*lead, 3 * width), dtype),
                }
            }
        return {"scale": jnp.zeros((*lead, width), dtype)}

    for i, cfg in enumerate(configs):
        d, n, h, k, m = cfg.width, cfg.num_heads, cfg.head_dim, cfg.num_kv_heads, cfg.mlp_dim
        attn = layers["attn"]
        attn[expert_name("q_einsum", i)] = {"w": lecun_normal(next(keys), (depth, n, d, h), fan_in=d, dtype=dtype)}
        attn[expert_name("kv_einsum", i)] = {"w": lecun_normal(next(keys), (depth, 2, k, d, h), fan_in=d, dtype=dtype)}
        attn[expert_name("attn_vec_einsum", i)] = {
            "w": lecun_normal(next(keys), (depth, n, h, d), fan_in=n * h, dtype=dtype)
        }
        layers[expert_name("mlp", i)] = {
            "gating_einsum": lecun_normal(next(keys), (depth, 2, d, m), fan_in=d, dtype=dtype),
            "linear": lecun_normal(next(keys), (depth, m, d), fan_in=m, dtype=dtype),
        }
        layers[expert_name("pre_attention_norm", i)] = norm(i, d, stacked=True)
        layers[expert_name("pre_ffw_norm", i)] = norm(i, d, stacked=True)
        params[expert_name("final_norm", i)] = norm(i, d, stacked=False)
    return params
