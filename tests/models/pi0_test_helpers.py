"""Small builders shared by the PI0 model tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hiors_jax.models import pi0


def random_params(config, seed=0):
    """Fresh params with every constant leaf (zero biases, norm scales, adaRMS) made random so no path hides."""
    return _random_params(config, seed)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _random_params(config, seed):
    params = pi0.init_params(config, jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, leaves)


def random_observation(config, batch=2, seed=0, prompt_lengths=None, masks=None, state_dim=None):
    rng = np.random.default_rng(seed)
    size = config.vision.image_size
    images = {k: rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32) for k in config.image_keys}
    masks = masks or {k: np.ones(batch, bool) for k in config.image_keys}
    lengths = prompt_lengths or [config.max_token_len] * batch
    tokens = np.zeros((batch, config.max_token_len), np.int32)
    tmask = np.zeros((batch, config.max_token_len), bool)
    for i, n in enumerate(lengths):
        tokens[i, 0] = 2
        tokens[i, 1:n] = rng.integers(3, config.vocab_size, n - 1)
        tmask[i, :n] = True
    state = rng.normal(size=(batch, state_dim or config.action_dim)).astype(np.float32)
    return pi0.Observation(
        images=images, image_masks=dict(masks), state=state, tokenized_prompt=tokens, tokenized_prompt_mask=tmask
    )


def take(obs, idx):
    """Sub-batch of an observation."""
    sel = lambda x: jnp.asarray(x)[idx]
    return pi0.Observation(
        images={k: sel(v) for k, v in obs.images.items()},
        image_masks={k: sel(v) for k, v in obs.image_masks.items()},
        state=sel(obs.state),
        tokenized_prompt=sel(obs.tokenized_prompt),
        tokenized_prompt_mask=sel(obs.tokenized_prompt_mask),
    )
