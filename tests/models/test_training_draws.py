"""The flow-matching training draws on CPU: t ~ 0.999 * Beta(1.5, 1) + 0.001 and standard-normal noise."""

import math

import jax
import numpy as np

from hiors_jax.models import pi0

N = 20_000
# Kolmogorov-Smirnov critical value at significance 1e-3: P(sqrt(n) * D > 1.95) ~ 1e-3 under the null.
KS_CRIT = 1.95 / math.sqrt(N)


def _ks(samples, cdf) -> float:
    x = np.sort(samples)
    f = cdf(x)
    n = len(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


def _draws(seed=0):
    noise, time = pi0.sample_noise_and_time(jax.random.key(seed), (N, 5, 4))
    return np.asarray(noise, np.float64), np.asarray(time, np.float64)


def _unit(t):
    return np.clip((t - 0.001) / 0.999, 0.0, 1.0)


def test_time_follows_scaled_beta_1p5_1():
    _, t = _draws()
    assert t.shape == (N,)
    assert t.min() >= 0.001 and t.max() <= 1.0
    # Beta(1.5, 1) has CDF x**1.5; the swapped Beta(1, 1.5) has 1 - (1 - x)**1.5 and must be rejected by far.
    assert _ks(t, lambda x: _unit(x) ** 1.5) < KS_CRIT
    assert _ks(t, lambda x: 1 - (1 - _unit(x)) ** 1.5) > 10 * KS_CRIT
    assert _ks(t, _unit) > 10 * KS_CRIT  # nor uniform
    # Moments: mean 0.001 + 0.999 * 0.6, variance 0.999**2 * (1.5 * 1) / (2.5**2 * 3.5).
    mean, var = 0.001 + 0.999 * 0.6, 0.999**2 * 1.5 / (2.5**2 * 3.5)
    assert abs(t.mean() - mean) < 4 * math.sqrt(var / N)
    assert abs(t.var() - var) < 0.004


def test_noise_is_standard_normal_and_independent_of_time():
    noise, t = _draws(seed=1)
    assert noise.shape == (N, 5, 4)
    phi = np.vectorize(lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2))))
    flat = noise.ravel()
    assert _ks(flat[:N], phi) < KS_CRIT
    assert abs(flat.mean()) < 4 / math.sqrt(flat.size)
    assert abs(flat.std() - 1.0) < 0.01
    # The two draws use split keys: no correlation between a sample's time and its noise.
    assert abs(np.corrcoef(t, noise[:, 0, 0])[0, 1]) < 4 / math.sqrt(N)
