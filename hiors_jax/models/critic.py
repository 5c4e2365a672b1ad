"""Q-function ensemble over an action chunk (the SAC baseline's critic), in Flax linen.

Q_e(features, state, chunk) for e in 1..E: each member is its own MLP *with its own value head* (the Hi-ORS
original shared one head across the ensemble). Inputs are concatenated: policy features (e.g. pooled PI0 prefix
embeddings), the normalised robot state, and the flattened action chunk (horizon x trained dims).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class QMLP(nn.Module):
    hidden_dims: Sequence[int] = (256, 256)
    use_layer_norm: bool = True

    @nn.compact
    def __call__(self, x):
        for width in self.hidden_dims:
            x = nn.Dense(width, kernel_init=nn.initializers.xavier_uniform())(x)
            if self.use_layer_norm:
                x = nn.LayerNorm()(x)
            x = nn.gelu(x)
        return nn.Dense(1, kernel_init=nn.initializers.xavier_uniform())(x)[..., 0]


class CriticEnsemble(nn.Module):
    """Returns Q-values of shape (ensemble_size, batch)."""

    hidden_dims: Sequence[int] = (256, 256)
    ensemble_size: int = 2
    use_layer_norm: bool = True

    @nn.compact
    def __call__(self, features, state, actions):
        batch = features.shape[0]
        x = jnp.concatenate(
            [features.astype(jnp.float32), state.astype(jnp.float32), actions.reshape(batch, -1).astype(jnp.float32)],
            axis=-1,
        )
        ensemble = nn.vmap(
            QMLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.ensemble_size,
        )
        return ensemble(tuple(self.hidden_dims), self.use_layer_norm)(x)


def init_critic(critic: CriticEnsemble, key: jax.Array, feature_dim: int, state_dim: int, action_size: int) -> dict:
    """Parameters for inputs of the given widths (action_size = horizon * trained dims)."""
    return critic.init(key, jnp.zeros((1, feature_dim)), jnp.zeros((1, state_dim)), jnp.zeros((1, action_size)))[
        "params"
    ]
