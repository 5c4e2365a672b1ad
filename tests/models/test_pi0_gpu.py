"""Full-size PI0 on an accelerator (run with `pytest -m gpu` on a lent GPU machine)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hiors_jax.models import config as model_config
from hiors_jax.models import pi0, weights

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu():
    if jax.default_backend() != "gpu":
        pytest.skip(f"needs a GPU; jax backend is {jax.default_backend()}")
    return jax.devices()[0]


def _obs(config, batch):
    rng = np.random.default_rng(0)
    tokens = np.zeros((batch, config.max_token_len), np.int32)
    tokens[:, :10] = rng.integers(3, 1000, (batch, 10))
    return pi0.Observation(
        images={k: jnp.asarray(rng.uniform(-1, 1, (batch, 224, 224, 3)), jnp.float32) for k in config.image_keys},
        image_masks={k: jnp.ones(batch, bool) for k in config.image_keys},
        state=jnp.asarray(rng.normal(size=(batch, 32)), jnp.float32),
        tokenized_prompt=jnp.asarray(tokens),
        tokenized_prompt_mask=jnp.asarray(tokens != 0),
    )


def test_real_pi0_bf16_sampling(gpu):
    config = model_config.pi0_config(dtype="bfloat16")
    params = jax.jit(pi0.init_params, static_argnums=(0, 2))(config, jax.random.key(0), jnp.bfloat16)
    assert weights.count_params(params) == 3_238_048_528
    noise = jax.random.normal(jax.random.key(1), (1, 50, 32))
    actions = pi0.sample_actions(config, params, _obs(config, 1), noise, num_steps=10)
    assert actions.shape == (1, 50, 32) and actions.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(actions)))


def test_real_pi0_full_finetune_step_with_remat(gpu):
    config = model_config.pi0_config(dtype="bfloat16", remat=True)
    params = jax.jit(pi0.init_params, static_argnums=0)(config, jax.random.key(0))
    optimizer = optax.adamw(2.5e-5)
    opt_state = optimizer.init(params)
    obs = _obs(config, 4)
    actions = jax.random.normal(jax.random.key(2), (4, 50, 32))

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            noise, t = pi0.sample_noise_and_time(key, actions.shape)
            return pi0.compute_loss(config, p, obs, actions, noise, t).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.global_norm(grads)

    _, _, loss, grad_norm = step(params, opt_state, jax.random.key(3))
    assert np.isfinite(float(loss)) and np.isfinite(float(grad_norm)) and float(grad_norm) > 0
