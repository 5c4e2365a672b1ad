"""Gemma with several "experts" that share one attention (openpi's `gemma.Module`).

Each expert has its own weights and processes its own token segment (expert 0 = PaliGemma on the prefix,
expert 1 = the action expert on the suffix); the segments attend to each other through one joint attention
per layer. An expert given `None` is skipped, which is how prefix-only and cached suffix-only passes run.

Parameter names follow openpi: expert 0 keeps PaliGemma's names, expert i > 0 gets the suffix `_i`; layer
leaves are stacked on a leading depth axis. `Gemma` is a Flax module (`Embedder`, `layers` = `Block` scanned over
depth with optional remat, final norms) whose parameters carry logical axis names; `apply` runs it over an
openpi-named `llm` dict. Numerics follow openpi's precision policy: RMSNorm, RoPE, attention logits and softmax in
float32, everything else in the compute dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hiors_jax.models.config import GemmaConfig, LoraConfig, remat_policy
from hiors_jax.models.init import Params, dense_specs, lecun, lora_init, param, scaled_normal, zeros

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


def embed_tokens(params: dict, tokens: jax.Array, dtype) -> jax.Array:
    """Token embedding times sqrt(width) (the multiplier rounded to the table dtype, as openpi does)."""
    table = params["embedder"]["input_embedding"]
    x = table[(tokens,)]
    x = x * jnp.sqrt(table.shape[-1]).astype(x.dtype)
    return x.astype(dtype)


def _attend(cfg: GemmaConfig, qs, ks, vs, positions, mask, kv_cache):
    """Joint attention over the experts' concatenated segments: RoPE, scaled queries, f32 logits and softmax."""
    dtype = qs[0].dtype
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
    return encoded, (k, v)


# ---------------------------------------------------------------------------------------------------------------
# Flax modules (openpi's gemma.py layout: Embedder, scanned Block of RMSNorm / Attention / FeedForward, final norms).


class Einsum(nn.Module):
    """openpi's `lora.Einsum`: weight `w` (+ `lora_a`, `lora_b` acting on its last two axes when LoRA is on)."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    fan_in: int
    lora: LoraConfig | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, eqn: str, x):
        p = {"w": param(self, "w", lecun(self.fan_in), self.shape, self.axes, self.param_dtype)}
        if self.lora is not None:
            r, shape, axes = self.lora.rank, self.shape, self.axes
            p["lora_a"] = param(self, "lora_a", lora_init, (*shape[:-1], r), (*axes[:-1], "lora"), self.param_dtype)
            p["lora_b"] = param(
                self, "lora_b", lora_init, (*shape[:-2], r, shape[-1]), (*axes[:-2], "lora", axes[-1]), self.param_dtype
            )
        return lora_einsum(eqn, x, p, self.lora, self.name)


class FeedForward(nn.Module):
    """GeGLU MLP (openpi's `lora.FeedForward`): gating_einsum (2, D, F) = [gelu branch, linear branch], linear."""

    width: int
    mlp_dim: int
    lora: LoraConfig | None = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d, f = self.width, self.mlp_dim
        specs = [
            ("gating_einsum", (2, d, f), ("gate_up", "embed", "mlp"), lecun(d)),
            ("linear", (f, d), ("mlp", "embed"), lecun(f)),
        ]
        if self.lora is not None:
            r = self.lora.rank
            specs += [
                ("gating_einsum_lora_a", (2, d, r), ("gate_up", "embed", "lora"), lora_init),
                ("gating_einsum_lora_b", (2, r, f), ("gate_up", "lora", "mlp"), lora_init),
                ("linear_lora_a", (f, r), ("mlp", "lora"), lora_init),
                ("linear_lora_b", (r, d), ("lora", "embed"), lora_init),
            ]
        p = {name: param(self, name, init, shape, axes, self.param_dtype) for name, shape, axes, init in specs}
        return _feed_forward(x, p)


class RMSNorm(nn.Module):
    """RMSNorm with (1 + scale); adaptive (PI0.5's expert): a zero-initialised Dense_0 of the conditioning vector."""

    adaptive: bool = False
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cond=None):
        d = x.shape[-1]
        if not self.adaptive:
            return rms_norm(x, {"scale": param(self, "scale", zeros, (d,), ("norm",), self.param_dtype)}, None)
        if cond is None:
            raise ValueError(f"{self.name}: an adaptive RMSNorm needs the adaRMS conditioning vector")
        dense = Params(dense_specs(d, 3 * d, "embed", "adarms", zeros), self.param_dtype, name="Dense_0")()
        return rms_norm(x, {"Dense_0": dense}, cond)


class Attention(nn.Module):
    """Per-expert q / kv / output projections around one joint attention (openpi's `gemma.Attention`)."""

    configs: tuple[GemmaConfig, ...]
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, xs, positions, mask, kv_cache=None):
        qs, ks, vs = [], [], []
        for i, (x, cfg) in enumerate(zip(xs, self.configs, strict=True)):
            if x is None:
                continue
            d, n, k, h, lora = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.lora_attn
            q_proj = Einsum(
                (n, d, h), ("heads", "embed", "head_dim"), d, lora, self.param_dtype, name=expert_name("q_einsum", i)
            )
            kv_proj = Einsum(
                (2, k, d, h),
                ("kv", "kv_heads", "embed", "head_dim"),
                d,
                lora,
                self.param_dtype,
                name=expert_name("kv_einsum", i),
            )
            qs.append(q_proj("BTD,NDH->BTNH", x))
            key, value = kv_proj("BSD,2KDH->2BSKH", x)
            ks.append(key)
            vs.append(value)
        encoded, kv = _attend(self.configs[0], qs, ks, vs, positions, mask, kv_cache)
        outs, start = [], 0
        for i, (x, cfg) in enumerate(zip(xs, self.configs, strict=True)):
            if x is None:
                outs.append(None)
                continue
            end = start + x.shape[1]
            n, h, d = cfg.num_heads, cfg.head_dim, cfg.width
            out_proj = Einsum(
                (n, h, d),
                ("heads", "head_dim", "embed"),
                n * h,
                cfg.lora_attn,
                self.param_dtype,
                name=expert_name("attn_vec_einsum", i),
            )
            outs.append(out_proj("BTNH,NHD->BTD", encoded[:, start:end]))
            start = end
        return outs, kv


class Block(nn.Module):
    """One transformer layer of every expert; scanned over depth (its parameters stacked on a leading axis)."""

    configs: tuple[GemmaConfig, ...]
    adaptive: tuple[bool, ...]
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, xs, kv_cache, positions, mask, conds):
        norm = lambda name, i: RMSNorm(self.adaptive[i], self.param_dtype, name=expert_name(name, i))
        normed, gates = [], []
        for i, x in enumerate(xs):
            h, g = norm("pre_attention_norm", i)(x, conds[i]) if x is not None else (None, None)
            normed.append(h)
            gates.append(g)
        attn_out, kv = Attention(self.configs, self.param_dtype, name="attn")(normed, positions, mask, kv_cache)
        xs = [None if x is None else _gated_residual(x, y, g) for x, y, g in zip(xs, attn_out, gates, strict=True)]
        out = []
        for i, x in enumerate(xs):
            if x is None:
                out.append(None)
                continue
            h, g = norm("pre_ffw_norm", i)(x, conds[i])
            cfg = self.configs[i]
            mlp = FeedForward(cfg.width, cfg.mlp_dim, cfg.lora_ffn, self.param_dtype, name=expert_name("mlp", i))
            out.append(_gated_residual(x, mlp(h), g))
        return out, kv


class Embedder(nn.Module):
    vocab_size: int
    width: int
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, dtype):
        table = param(
            self,
            "input_embedding",
            scaled_normal(self.width**-0.5),
            (self.vocab_size, self.width),
            ("vocab", "embed"),
            self.param_dtype,
        )
        return embed_tokens({"embedder": {"input_embedding": table}}, tokens, dtype)


class Gemma(nn.Module):
    """The multi-expert transformer (openpi's `gemma.Module`); named `llm` inside PaliGemma.

    `adaptive[i]`: expert i uses adaRMS norms (PI0.5's action expert). `remat`: policy per scanned layer.
    """

    configs: tuple[GemmaConfig, ...]
    vocab_size: int
    adaptive: tuple[bool, ...]
    dtype: Any = jnp.float32
    remat: str = "none"
    param_dtype: Any = jnp.float32

    def setup(self):
        self.embedder = Embedder(self.vocab_size, self.configs[0].width, self.param_dtype)
        block = Block
        policy = remat_policy(self.remat)
        if policy is not None:
            block = nn.remat(Block, policy=policy, prevent_cse=False)
        self.layers = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
            length=self.configs[0].depth,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(self.configs, self.adaptive, self.param_dtype)
        self.final_norms = [
            RMSNorm(self.adaptive[i], self.param_dtype, name=expert_name("final_norm", i))
            for i in range(len(self.configs))
        ]

    def embed(self, tokens):
        return self.embedder(tokens, self.dtype)

    def __call__(self, embedded, positions, mask, adarms_cond=None, kv_cache=None):
        """embedded: per expert (B, T_i, width_i) or None; positions (B, sum T_i); mask (B, sum T_i, S) bool where S
        adds the cached length; kv_cache: per-layer keys/values (depth, B, S_cache, K, H) from an earlier pass.
        Returns (per-expert final-normed outputs, (keys, values) of every layer incl. the cache)."""
        if adarms_cond is None:
            adarms_cond = [None] * len(self.configs)
        xs = [None if x is None else x.astype(self.dtype) for x in embedded]
        xs, kv = self.layers(xs, kv_cache, positions, mask, list(adarms_cond))
        outs = [None if x is None else self.final_norms[i](x, adarms_cond[i])[0] for i, x in enumerate(xs)]
        return outs, kv


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
    """`Gemma.apply` over an openpi-named `llm` tree (experts with a `final_norm_i/Dense_0` are adaptive)."""
    configs = tuple(configs)
    adaptive = tuple("Dense_0" in params[expert_name("final_norm", i)] for i in range(len(configs)))
    vocab = params["embedder"]["input_embedding"].shape[0]
    module = Gemma(configs, vocab, adaptive, dtype, remat if isinstance(remat, str) else ("full" if remat else "none"))
    return module.apply({"params": params}, embedded, positions, mask, adarms_cond, kv_cache)
