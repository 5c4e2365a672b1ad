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

from hiors_jax.models.config import GemmaConfig, LoraConfig, remat_policy
from hiors_jax.models.init import lecun_normal, lora_normal

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


# openpi's lora._make_lora_eqns for the three attention einsums (L = the rank axis). For attn_vec the head axis
# N is contracted in the A step and appears only on B's side in the B step, so B is summed over heads (openpi).
LORA_EQNS = {
    "BTD,NDH->BTNH": ("BTD,NDL->BTNL", "BTNL,NLH->BTNH"),
    "BSD,2KDH->2BSKH": ("BSD,2KDL->2BSKL", "2BSKL,2KLH->2BSKH"),
    "BTNH,NHD->BTD": ("BTNH,NHL->BTL", "BTL,NLD->BTD"),
}


def lora_einsum(eqn: str, x, p: dict, lora: LoraConfig | None, name: str = "einsum"):
    """openpi's `lora.Einsum`: einsum(x, w) + einsum_b(einsum_a(x, lora_a), lora_b) * alpha / rank."""
    dtype = x.dtype
    out = jnp.einsum(eqn, x, p["w"].astype(dtype))
    if "lora_a" not in p:
        return out
    if lora is None:
        raise ValueError(f"{name} has LoRA leaves but its expert config has no lora_attn")
    eqn_a, eqn_b = LORA_EQNS[eqn]
    delta = jnp.einsum(eqn_b, jnp.einsum(eqn_a, x, p["lora_a"].astype(dtype)), p["lora_b"].astype(dtype))
    return out + delta * lora.scaling


def _lora_dot(x, w, p: dict, name: str, index=None):
    """openpi's `lora.FeedForward._dot`: x @ w (+ (x @ A) @ B, never scaled: openpi ignores alpha here)."""
    dtype = x.dtype
    out = jnp.dot(x, w.astype(dtype))
    if f"{name}_lora_a" not in p:
        return out
    a, b = p[f"{name}_lora_a"], p[f"{name}_lora_b"]
    if index is not None:
        a, b = a[index], b[index]
    return out + jnp.dot(jnp.dot(x, a.astype(dtype)), b.astype(dtype))


def _feed_forward(x, p):
    gating = p["gating_einsum"]
    gate = _lora_dot(x, gating[0], p, "gating_einsum", 0)
    up = _lora_dot(x, gating[1], p, "gating_einsum", 1)
    hidden = jax.nn.gelu(gate, approximate=True) * up
    return _lora_dot(hidden, p["linear"], p, "linear")


def _attention(configs, attn_p, xs, positions, mask, kv_cache):
    cfg = configs[0]
    dtype = next(x.dtype for x in xs if x is not None)
    qs, ks, vs = [], [], []
    for i, x in enumerate(xs):
        if x is None:
            continue
        q_name, kv_name = expert_name("q_einsum", i), expert_name("kv_einsum", i)
        qs.append(lora_einsum("BTD,NDH->BTNH", x, attn_p[q_name], configs[i].lora_attn, q_name))
        k, v = lora_einsum("BSD,2KDH->2BSKH", x, attn_p[kv_name], configs[i].lora_attn, kv_name)
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
        o_name = expert_name("attn_vec_einsum", i)
        outs.append(lora_einsum("BTNH,NHD->BTD", encoded[:, start:end], attn_p[o_name], configs[i].lora_attn, o_name))
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
    remat: str | bool = "none",
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

    if remat_policy(remat) is not None:
        body = jax.checkpoint(body, policy=remat_policy(remat), prevent_cse=False)
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
    lora_keys = iter(jax.random.split(jax.random.fold_in(key, 1), 10 * len(configs)))
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
        if cfg.lora_attn is not None:
            r = cfg.lora_attn.rank
            for name, a_shape, b_shape in (
                ("q_einsum", (n, d, r), (n, r, h)),
                ("kv_einsum", (2, k, d, r), (2, k, r, h)),
                ("attn_vec_einsum", (n, h, r), (n, r, d)),
            ):
                attn[expert_name(name, i)].update(
                    lora_a=lora_normal(next(lora_keys), (depth, *a_shape), dtype),
                    lora_b=lora_normal(next(lora_keys), (depth, *b_shape), dtype),
                )
        if cfg.lora_ffn is not None:
            r = cfg.lora_ffn.rank
            layers[expert_name("mlp", i)].update(
                gating_einsum_lora_a=lora_normal(next(lora_keys), (depth, 2, d, r), dtype),
                gating_einsum_lora_b=lora_normal(next(lora_keys), (depth, 2, r, m), dtype),
                linear_lora_a=lora_normal(next(lora_keys), (depth, m, r), dtype),
                linear_lora_b=lora_normal(next(lora_keys), (depth, r, d), dtype),
            )
        layers[expert_name("pre_attention_norm", i)] = norm(i, d, stacked=True)
        layers[expert_name("pre_ffw_norm", i)] = norm(i, d, stacked=True)
        params[expert_name("final_norm", i)] = norm(i, d, stacked=False)
    return params
