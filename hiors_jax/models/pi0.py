"""PI0 and PI0.5: PaliGemma prefix + flow-matching action expert, over openpi-named params.

Conventions (openpi's): t = 1 is noise and t = 0 is data, x_t = t * noise + (1 - t) * actions, the model
predicts u = noise - actions, and sampling integrates from t = 1 with dt = -1 / num_steps. The prefix
(images + prompt) never attends to the suffix (state + actions), so the sampler computes the prefix's keys and
values once and reuses them for every denoising step.

The model is the Flax module `Pi0` (submodules `PaliGemma/img` = SigLIP, `PaliGemma/llm` = Gemma, and the
projections); the functions below are thin wrappers over its `apply` on openpi's plain parameter dicts.

Public API (stable): `Observation`, `load_openpi_params`, `predict_velocity`, `compute_loss`, `sample_actions`,
plus `init_params`, `prefix_kv_cache` / `denoise_step` (hooks for RL) and `sample_noise_and_time`.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from hiors_jax.models import gemma, siglip, weights
from hiors_jax.models.config import GemmaConfig, LoraConfig, Pi0Config, SiglipConfig
from hiors_jax.models.init import dense_specs, param


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Observation:
    """Model inputs with openpi's field names.

    images: camera name -> (B, H, W, 3) float in [-1, 1] at the model's resolution; image_masks: camera name ->
    (B,) bool, False where the camera is missing; state: (B, <= action_dim) normalised; tokenized_prompt /
    tokenized_prompt_mask: (B, <= max_token_len) int32 / bool.
    """

    images: dict
    image_masks: dict
    state: jax.Array
    tokenized_prompt: jax.Array | None = None
    tokenized_prompt_mask: jax.Array | None = None

    @classmethod
    def from_dict(cls, data: dict) -> Observation:
        """From our dict (`images`, `image_masks`, ...) or openpi's (`image`, `image_mask`, ...).

        As openpi's `Observation.from_dict` does, uint8 images are converted to float32 in [-1, 1].
        """
        images = data["images"] if "images" in data else data["image"]
        masks = data.get("image_masks", data.get("image_mask", {}))

        def to_model(img):
            if jnp.result_type(img) == jnp.uint8:
                return jnp.asarray(img, jnp.float32) / 255.0 * 2.0 - 1.0
            return img

        return cls(
            images={k: to_model(v) for k, v in images.items()},
            image_masks=dict(masks),
            state=data["state"],
            tokenized_prompt=data.get("tokenized_prompt"),
            tokenized_prompt_mask=data.get("tokenized_prompt_mask"),
        )


# ---------------------------------------------------------------------------------------------------------------
# Input checks: shapes only, so they run eagerly and at trace time alike.


def _pad_last(x, width):
    pad = width - x.shape[-1]
    return x if pad == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])


def prepare_observation(config: Pi0Config, obs: Observation) -> Observation:
    """Validate an observation against the config, fill absent masks and zero-pad state and prompt."""
    if not isinstance(obs, Observation):
        raise TypeError(f"expected a pi0.Observation, got {type(obs).__name__}")
    unknown = sorted(set(obs.images) - set(config.image_keys))
    if unknown:
        raise ValueError(f"unknown camera(s) {unknown}; this model takes {list(config.image_keys)}")
    missing = [k for k in config.image_keys if k not in obs.images]
    if missing:
        raise ValueError(
            f"missing camera(s) {missing}: pass a zero image with image_masks[name] = False for an absent camera"
        )
    unknown_masks = sorted(set(obs.image_masks) - set(config.image_keys))
    if unknown_masks:
        raise ValueError(
            f"image_masks has unknown camera(s) {unknown_masks}; this model takes {list(config.image_keys)}"
        )
    if jnp.ndim(obs.state) != 2:
        raise ValueError(f"state must be (batch, dim), got shape {jnp.shape(obs.state)}")
    batch, state_dim = jnp.shape(obs.state)
    if state_dim > config.action_dim:
        raise ValueError(f"state has {state_dim} dims, wider than the model's action_dim={config.action_dim}")
    size = config.vision.image_size
    images, masks = {}, {}
    for name in config.image_keys:
        img = obs.images[name]
        if jnp.shape(img) != (batch, size, size, 3):
            raise ValueError(
                f"image {name!r} has shape {jnp.shape(img)}, expected {(batch, size, size, 3)}; "
                "resize with hiors_jax.models.preprocessing.resize_with_pad"
            )
        if not jnp.issubdtype(jnp.result_type(img), jnp.floating):
            raise ValueError(
                f"image {name!r} has dtype {jnp.result_type(img)}, expected float in [-1, 1]; convert uint8 with "
                "hiors_jax.models.preprocessing.image_to_model"
            )
        images[name] = img
        mask = obs.image_masks.get(name)
        masks[name] = jnp.ones((batch,), bool) if mask is None else jnp.asarray(mask, bool)
        if masks[name].shape != (batch,):
            raise ValueError(f"image_masks[{name!r}] has shape {masks[name].shape}, expected {(batch,)}")
    if obs.tokenized_prompt is None or obs.tokenized_prompt_mask is None:
        raise ValueError("tokenized_prompt and tokenized_prompt_mask are required")
    if jnp.ndim(obs.tokenized_prompt) != 2 or jnp.shape(obs.tokenized_prompt)[0] != batch:
        raise ValueError(f"tokenized_prompt must be (batch={batch}, length), got {jnp.shape(obs.tokenized_prompt)}")
    if jnp.shape(obs.tokenized_prompt_mask) != jnp.shape(obs.tokenized_prompt):
        raise ValueError(
            f"tokenized_prompt_mask shape {jnp.shape(obs.tokenized_prompt_mask)} differs from tokenized_prompt "
            f"shape {jnp.shape(obs.tokenized_prompt)}"
        )
    length = jnp.shape(obs.tokenized_prompt)[1]
    if length > config.max_token_len:
        raise ValueError(f"prompt has {length} tokens, longer than max_token_len={config.max_token_len}")
    if not jnp.issubdtype(jnp.result_type(obs.tokenized_prompt), jnp.integer):
        raise ValueError(f"tokenized_prompt must be integer token ids, got {jnp.result_type(obs.tokenized_prompt)}")
    return Observation(
        images=images,
        image_masks=masks,
        state=_pad_last(jnp.asarray(obs.state, jnp.float32), config.action_dim),
        tokenized_prompt=_pad_last(jnp.asarray(obs.tokenized_prompt, jnp.int32), config.max_token_len),
        tokenized_prompt_mask=_pad_last(jnp.asarray(obs.tokenized_prompt_mask, bool), config.max_token_len),
    )


def _prepare_chunk(config: Pi0Config, x, name: str, batch: int):
    shape = jnp.shape(x)
    if len(shape) != 3 or shape[0] != batch or shape[1] != config.action_horizon:
        raise ValueError(f"{name} has shape {shape}, expected (batch={batch}, {config.action_horizon}, dims)")
    if shape[2] > config.action_dim:
        raise ValueError(f"{name} has {shape[2]} dims, wider than the model's action_dim={config.action_dim}")
    return _pad_last(jnp.asarray(x, jnp.float32), config.action_dim)


def _prepare_time(time, batch: int):
    time = jnp.asarray(time, jnp.float32)
    if time.ndim == 0:
        return jnp.broadcast_to(time, (batch,))
    if time.shape != (batch,):
        raise ValueError(f"time has shape {time.shape}, expected () or (batch={batch},)")
    return time


# ---------------------------------------------------------------------------------------------------------------
# Building blocks (pure, jit-friendly; they assume a prepared observation).


def make_attn_mask(input_mask, ar_mask):
    """Token i attends to j iff cumsum(ar)[j] <= cumsum(ar)[i] and both are valid (openpi's rule)."""
    ar_mask = jnp.broadcast_to(ar_mask, input_mask.shape)
    cumsum = jnp.cumsum(ar_mask, axis=1)
    attn = cumsum[:, None, :] <= cumsum[:, :, None]
    valid = input_mask[:, None, :] & input_mask[:, :, None]
    return attn & valid


def posemb_sincos(pos, width: int, min_period: float = 4e-3, max_period: float = 4.0):
    """Sine-cosine embedding of scalar flow times, periods from min_period to max_period."""
    fraction = jnp.linspace(0.0, 1.0, width // 2)
    period = min_period * (max_period / min_period) ** fraction
    angles = jnp.einsum("i,j->ij", pos, 1.0 / period * 2 * jnp.pi, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def _linear(x, p):
    # Follows flax promotion: f32 inputs with bf16 params compute in f32, as openpi's nnx.Linear does.
    return jnp.dot(x, p["kernel"]) + p["bias"]


def _experts(config: Pi0Config) -> tuple[GemmaConfig, GemmaConfig]:
    return (config.vlm, config.expert)


# Logical axes of the action/state/time projections ("mlp" names the hidden side of the time MLPs).
_PROJECTIONS_PI0 = {
    "state_proj": ("action", "embed"),
    "action_in_proj": ("action", "embed"),
    "action_time_mlp_in": ("mlp", "embed"),  # [action tokens, time embedding] (2 * width) -> width
    "action_time_mlp_out": ("mlp", "embed"),
    "action_out_proj": ("embed", "action"),
}
_PROJECTIONS_PI05 = {
    "action_in_proj": ("action", "embed"),
    "time_mlp_in": ("embed", "mlp"),
    "time_mlp_out": ("mlp", "embed"),
    "action_out_proj": ("embed", "action"),
}


class Linear(nn.Module):
    """openpi's nnx.Linear: kernel (in, out) + bias."""

    n_in: int
    n_out: int
    axes: tuple[str, str]
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        specs = dense_specs(self.n_in, self.n_out, *self.axes)
        return _linear(
            x, {name: param(self, name, init, shape, axes, self.param_dtype) for name, shape, axes, init in specs}
        )


class PaliGemma(nn.Module):
    """`PaliGemma`: the SigLIP tower `img` and the multi-expert transformer `llm` (expert 1 = action expert)."""

    config: Pi0Config
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.img = siglip.Siglip(c.vision, c.vlm.width, c.compute_dtype, c.remat, self.param_dtype)
        self.llm = gemma.Gemma(_experts(c), c.vocab_size, (False, c.pi05), c.compute_dtype, c.remat, self.param_dtype)


class Pi0(nn.Module):
    """PI0 (config.pi05=False) or PI0.5 as one Flax module; parameters are openpi's tree.

    Methods (use with `apply(..., method=Pi0.<name>)`): embed_prefix, embed_suffix, velocity (joint pass),
    prefix_kv_cache, denoise_step. They assume a prepared observation (see `prepare_observation`).
    """

    config: Pi0Config
    param_dtype: Any = jnp.float32

    def setup(self):
        c = self.config
        self.PaliGemma = PaliGemma(c, self.param_dtype)
        w, a = c.expert.width, c.action_dim
        sizes = {
            "state_proj": (a, w),
            "action_in_proj": (a, w),
            "action_time_mlp_in": (2 * w, w),
            "action_time_mlp_out": (w, w),
            "time_mlp_in": (w, w),
            "time_mlp_out": (w, w),
            "action_out_proj": (w, a),
        }
        axes = _PROJECTIONS_PI05 if c.pi05 else _PROJECTIONS_PI0
        self.projections = {name: Linear(*sizes[name], axes[name], self.param_dtype, name=name) for name in axes}

    def embed_prefix(self, obs: Observation):
        """Image tokens of every camera (in config order) then the prompt's embeddings; all bidirectional."""
        config = self.config
        batch = obs.state.shape[0]
        # One SigLIP call over all cameras stacked on the batch axis (same weights, independent images).
        stacked = jnp.concatenate([obs.images[k] for k in config.image_keys], axis=0)
        img_tokens = self.PaliGemma.img(stacked)
        n = config.vision.num_tokens
        img_tokens = img_tokens.reshape(len(config.image_keys), batch, n, -1)
        tokens = [img_tokens[i] for i in range(len(config.image_keys))]
        masks = [jnp.repeat(obs.image_masks[k][:, None], n, axis=1) for k in config.image_keys]
        tokens.append(self.PaliGemma.llm.embed(obs.tokenized_prompt))
        masks.append(obs.tokenized_prompt_mask)
        tokens = jnp.concatenate(tokens, axis=1)
        input_mask = jnp.concatenate(masks, axis=1)
        return tokens, input_mask, jnp.zeros((tokens.shape[1],), bool)

    def embed_suffix(self, obs: Observation, x_t, time):
        """PI0: [state token, action-time MLP tokens]; PI0.5: action tokens plus an adaRMS conditioning vector."""
        config, proj = self.config, self.projections
        batch = x_t.shape[0]
        tokens, ar = [], []
        if not config.pi05:
            state = obs.state if config.state_input else jnp.zeros_like(obs.state)
            tokens.append(proj["state_proj"](state)[:, None, :])
            ar.append(True)
        action_tokens = proj["action_in_proj"](x_t)
        time_emb = posemb_sincos(time, config.expert.width)
        if config.pi05:
            cond = jax.nn.silu(proj["time_mlp_in"](time_emb))
            cond = jax.nn.silu(proj["time_mlp_out"](cond))
            tokens.append(action_tokens)
        else:
            time_tokens = jnp.broadcast_to(time_emb[:, None, :], (batch, config.action_horizon, time_emb.shape[-1]))
            h = proj["action_time_mlp_in"](jnp.concatenate([action_tokens, time_tokens], axis=-1))
            tokens.append(proj["action_time_mlp_out"](jax.nn.silu(h)))
            cond = None
        ar += [True] + [False] * (config.action_horizon - 1)
        tokens = jnp.concatenate([t.astype(jnp.result_type(*tokens)) for t in tokens], axis=1)
        return tokens, jnp.ones(tokens.shape[:2], bool), jnp.asarray(ar), cond

    def _velocity_from_suffix(self, suffix_out):
        return self.projections["action_out_proj"](suffix_out[:, -self.config.action_horizon :])

    def velocity(self, obs: Observation, x_t, time):
        """v(x_t, t) from one joint prefix + suffix pass."""
        prefix_tokens, prefix_mask, prefix_ar = self.embed_prefix(obs)
        suffix_tokens, suffix_mask, suffix_ar, cond = self.embed_suffix(obs, x_t, time)
        input_mask = jnp.concatenate([prefix_mask, suffix_mask], axis=1)
        ar_mask = jnp.concatenate([prefix_ar, suffix_ar], axis=0)
        positions = jnp.cumsum(input_mask, axis=1) - 1
        (_, suffix_out), _ = self.PaliGemma.llm(
            [prefix_tokens, suffix_tokens], positions, make_attn_mask(input_mask, ar_mask), [None, cond]
        )
        return self._velocity_from_suffix(suffix_out)

    def prefix_kv_cache(self, obs: Observation):
        prefix_tokens, prefix_mask, prefix_ar = self.embed_prefix(obs)
        positions = jnp.cumsum(prefix_mask, axis=1) - 1
        _, kv_cache = self.PaliGemma.llm([prefix_tokens, None], positions, make_attn_mask(prefix_mask, prefix_ar))
        return kv_cache, prefix_mask

    def denoise_step(self, obs: Observation, kv_cache, prefix_mask, x_t, time):
        suffix_tokens, suffix_mask, suffix_ar, cond = self.embed_suffix(obs, x_t, time)
        suffix_len = suffix_tokens.shape[1]
        batch, prefix_len = prefix_mask.shape
        prefix_part = jnp.broadcast_to(prefix_mask[:, None, :], (batch, suffix_len, prefix_len))
        mask = jnp.concatenate([prefix_part, make_attn_mask(suffix_mask, suffix_ar)], axis=-1)
        positions = jnp.sum(prefix_mask, axis=-1)[:, None] + jnp.cumsum(suffix_mask, axis=-1) - 1
        (_, suffix_out), _ = self.PaliGemma.llm([None, suffix_tokens], positions, mask, [None, cond], kv_cache)
        return self._velocity_from_suffix(suffix_out)

    def create_params(self):
        """Touch every parameter with minimal dummy inputs (one image, one token per expert) for `init`."""
        c = self.config
        size = c.vision.image_size
        self.PaliGemma.img(jnp.zeros((1, size, size, 3), jnp.float32))
        self.PaliGemma.llm.embed(jnp.zeros((1, 1), jnp.int32))
        ones = jnp.ones((1, 2), bool)
        xs = [jnp.zeros((1, 1, cfg.width), c.compute_dtype) for cfg in _experts(c)]
        cond = jnp.zeros((1, c.expert.width), c.compute_dtype) if c.pi05 else None
        self.PaliGemma.llm(xs, jnp.zeros((1, 2), jnp.int32), ones[:, :, None] & ones[:, None, :], [None, cond])
        for proj in self.projections.values():
            proj(jnp.zeros((1, proj.n_in), jnp.float32))


def _module(config: Pi0Config) -> Pi0:
    return Pi0(config)


def _apply(config: Pi0Config, params: dict, method, *args):
    return _module(config).apply({"params": params}, *args, method=method)


def embed_prefix(config: Pi0Config, params: dict, obs: Observation):
    """Image tokens of every camera (in config order) then the prompt's embeddings; all bidirectional."""
    return _apply(config, params, Pi0.embed_prefix, obs)


def embed_suffix(config: Pi0Config, params: dict, obs: Observation, x_t, time):
    """PI0: [state token, action-time MLP tokens]; PI0.5: action tokens plus an adaRMS conditioning vector."""
    return _apply(config, params, Pi0.embed_suffix, obs, x_t, time)


def _joint_velocity(config: Pi0Config, params: dict, obs: Observation, x_t, time):
    return _apply(config, params, Pi0.velocity, obs, x_t, time)


def prefix_kv_cache(config: Pi0Config, params: dict, obs: Observation):
    """Keys/values of every layer over the prefix, (depth, B, P, K, H) each, and the prefix validity mask."""
    return _apply(config, params, Pi0.prefix_kv_cache, obs)


def denoise_step(config: Pi0Config, params: dict, obs: Observation, kv_cache, prefix_mask, x_t, time):
    """Velocity at (x_t, time) for the suffix only, attending to a cached prefix (which it never updates)."""
    return _apply(config, params, Pi0.denoise_step, obs, kv_cache, prefix_mask, x_t, time)


def _sample(config: Pi0Config, params: dict, obs: Observation, noise, num_steps: int, return_trajectory: bool):
    kv_cache, prefix_mask = prefix_kv_cache(config, params, obs)
    dt = -1.0 / num_steps
    batch = noise.shape[0]

    def step(carry, _):
        x, t = carry
        v = denoise_step(config, params, obs, kv_cache, prefix_mask, x, jnp.broadcast_to(t, (batch,)))
        x_next = x + dt * v
        return (x_next, t + dt), (x_next if return_trajectory else None)

    # t accumulates in float32 exactly as openpi's while-loop does (1.0, 0.9, 0.79999995, ...).
    (x, _), trajectory = jax.lax.scan(step, (noise, jnp.float32(1.0)), None, length=num_steps)
    return (x, trajectory) if return_trajectory else x


@functools.partial(jax.jit, static_argnums=(0,))
def _predict_velocity_jit(config, params, obs, x_t, time):
    return _joint_velocity(config, params, obs, x_t, time)


@functools.partial(jax.jit, static_argnums=(0,))
def _compute_loss_jit(config, params, obs, actions, noise, time):
    t = time[:, None, None]
    x_t = t * noise + (1 - t) * actions
    v_t = _joint_velocity(config, params, obs, x_t, time)
    return jnp.mean(jnp.square(v_t - (noise - actions)), axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _sample_jit(config, params, obs, noise, num_steps, return_trajectory):
    return _sample(config, params, obs, noise, num_steps, return_trajectory)


# ---------------------------------------------------------------------------------------------------------------
# Public API.


def predict_velocity(config: Pi0Config, params: dict, observation: Observation, x_t, time) -> jax.Array:
    """Velocity v(x_t, t) from the joint prefix+suffix pass: (B, action_horizon, action_dim)."""
    obs = prepare_observation(config, observation)
    batch = obs.state.shape[0]
    return _predict_velocity_jit(
        config, params, obs, _prepare_chunk(config, x_t, "x_t", batch), _prepare_time(time, batch)
    )


def compute_loss(config: Pi0Config, params: dict, observation: Observation, actions, noise, time) -> jax.Array:
    """Flow-matching loss per sample and step, mean over action dims (padded dims included): (B, H)."""
    obs = prepare_observation(config, observation)
    batch = obs.state.shape[0]
    return _compute_loss_jit(
        config,
        params,
        obs,
        _prepare_chunk(config, actions, "actions", batch),
        _prepare_chunk(config, noise, "noise", batch),
        _prepare_time(time, batch),
    )


def sample_actions(
    config: Pi0Config, params: dict, observation: Observation, noise, num_steps: int = 10, return_trajectory=False
):
    """Integrate the flow from x = noise at t = 1 to t = 0 in `num_steps` Euler steps, reusing the prefix cache.

    Returns (B, action_horizon, action_dim) normalised, padded actions; with return_trajectory also x after every
    step (num_steps, B, H, A). Differentiable (a fixed-length scan, not a while loop).
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    obs = prepare_observation(config, observation)
    noise = _prepare_chunk(config, noise, "noise", obs.state.shape[0])
    return _sample_jit(config, params, obs, noise, int(num_steps), bool(return_trajectory))


def sample_noise_and_time(rng: jax.Array, shape: tuple[int, ...]):
    """openpi's training draws: noise ~ N(0, I) of `shape` (B, H, A) and t ~ 0.999 * Beta(1.5, 1) + 0.001."""
    noise_rng, time_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, shape, jnp.float32)
    time = jax.random.beta(time_rng, 1.5, 1.0, shape[:1], jnp.float32) * 0.999 + 0.001
    return noise, time


# ---------------------------------------------------------------------------------------------------------------
# Parameters.


def init_boxed(config: Pi0Config, key: jax.Array) -> dict:
    """`Pi0.init` params with their flax `Partitioned` boxes (logical axis names); see `init_params`."""
    return _module(config).init({"params": key}, method=Pi0.create_params)["params"]


def init_params(config: Pi0Config, key: jax.Array, dtype=jnp.float32) -> dict:
    """Fresh parameters in openpi's exact tree (use with jax.eval_shape for shapes without memory)."""
    params = nn.meta.unbox(init_boxed(config, key))
    return jax.tree.map(lambda x: x.astype(dtype), params)


def param_shapes(config: Pi0Config) -> dict:
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def _flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {path: tuple(leaf.shape) for path, leaf in weights.flatten_params(tree).items()}


def _shape_at(flat: dict, path: str) -> tuple[int, ...]:
    if path not in flat:
        raise ValueError(f"not a PI0/PI0.5 parameter tree: missing {path}")
    return flat[path]


def infer_config(params: dict, **overrides) -> Pi0Config:
    """Read every size from the stored shapes (openpi checkpoints carry no config) and check the whole tree.

    Horizon, prompt length and dtype are not in the weights: they come from `overrides` or openpi's defaults.
    """
    flat = _flat_shapes(params)
    llm, img = "PaliGemma/llm", "PaliGemma/img"
    vocab, width0 = _shape_at(flat, f"{llm}/embedder/input_embedding")

    def expert(i):
        depth, n, d, h = _shape_at(flat, f"{llm}/layers/attn/{gemma.expert_name('q_einsum', i)}/w")
        k = _shape_at(flat, f"{llm}/layers/attn/{gemma.expert_name('kv_einsum', i)}/w")[2]
        m = _shape_at(flat, f"{llm}/layers/{gemma.expert_name('mlp', i)}/linear")[1]
        # LoRA rank from each expert's own leaves; alpha is not stored: openpi's shipped variants use alpha = rank.
        attn_a = flat.get(f"{llm}/layers/attn/{gemma.expert_name('q_einsum', i)}/lora_a")
        ffn_a = flat.get(f"{llm}/layers/{gemma.expert_name('mlp', i)}/linear_lora_a")
        lora = lambda shape: None if shape is None else LoraConfig(rank=shape[-1], alpha=float(shape[-1]))
        return GemmaConfig(
            width=d,
            depth=depth,
            mlp_dim=m,
            num_heads=n,
            num_kv_heads=k,
            head_dim=h,
            lora_attn=lora(attn_a),
            lora_ffn=lora(ffn_a),
        )

    patch, _, _, vwidth = _shape_at(flat, f"{img}/embedding/kernel")
    num_tokens = _shape_at(flat, f"{img}/pos_embedding")[1]
    block = f"{img}/Transformer/encoderblock"
    vdepth, _, vheads, _ = _shape_at(flat, f"{block}/MultiHeadDotProductAttention_0/query/kernel")
    side = int(round(num_tokens**0.5))
    vision = SiglipConfig(
        width=vwidth,
        depth=vdepth,
        mlp_dim=_shape_at(flat, f"{block}/MlpBlock_0/Dense_0/kernel")[2],
        num_heads=vheads,
        patch_size=patch,
        image_size=side * patch,
    )
    fields = dict(
        vlm=expert(0),
        expert=expert(1),
        vision=vision,
        vocab_size=vocab,
        pi05="time_mlp_in" in params,
        action_dim=_shape_at(flat, "action_in_proj/kernel")[0],
    )
    fields.update(overrides)
    config = Pi0Config(**fields)
    expected = _flat_shapes(param_shapes(config))
    problems = [f"missing {p}" for p in sorted(set(expected) - set(flat))]
    problems += [f"unexpected {p}" for p in sorted(set(flat) - set(expected))]
    problems += [
        f"{p} has shape {flat[p]}, expected {expected[p]}"
        for p in sorted(set(flat) & set(expected))
        if flat[p] != expected[p]
    ]
    if problems:
        kind = "PI0.5" if config.pi05 else "PI0"
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} problems)" if len(problems) > 8 else "")
        raise ValueError(f"parameters do not form a {kind} model of the inferred sizes: {shown}")
    return config


def load_openpi_params(path, *, dtype=None, **overrides) -> tuple[Pi0Config, dict]:
    """Load an openpi-layout orbax `params` directory (f32 or bf16, with or without trailing `value` leaves).

    `path` is the `params` directory or the checkpoint directory holding it. Every model size is inferred from
    the stored shapes. `dtype` casts the parameters on load (openpi's inference path uses bfloat16). The compute
    dtype is the parameters' dtype (float32 only if every leaf is float32) unless `compute_dtype=` is given.
    Other overrides (`action_horizon`, `max_token_len`, `remat`) go to the config. LoRA leaves (openpi's
    gemma_2b_lora / gemma_300m_lora fine-tunes) load too: each expert's rank comes from its own leaves and alpha is
    taken equal to the rank, as in openpi's shipped variants (pass `vlm=` / `expert=` configs to state another).
    """
    path = pathlib.Path(path)
    if not (path / "_METADATA").exists() and (path / "params" / "_METADATA").exists():
        path = path / "params"  # an openpi step directory (params/ + assets/), as create_trained_policy takes
    params = weights.restore_params_tree(path, dtype=dtype)
    compute_dtype = overrides.pop("compute_dtype", None)
    if compute_dtype is None:
        leaf_dtypes = {np.dtype(x.dtype) for x in jax.tree.leaves(params)}
        compute_dtype = "float32" if leaf_dtypes == {np.dtype(np.float32)} else "bfloat16"
    config = infer_config(params, dtype=str(jnp.dtype(compute_dtype)), **overrides)
    return config, params
