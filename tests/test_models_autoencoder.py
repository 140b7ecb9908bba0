"""KL autoencoder: KL term vs a Monte Carlo estimate, loss closed forms, latent scale factor, shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.models import autoencoder_kl
from diffusion_jax.models import autoencoder as A
from diffusion_jax.models.functional import abstract_split, host_random_like


def test_gaussian_kl_matches_monte_carlo():
    mean = np.array([[0.5, -1.0, 0.0]])
    logvar = np.array([[0.2, -0.5, 1.0]])
    rng = np.random.default_rng(0)
    n = 400_000
    z = mean + np.exp(0.5 * logvar) * rng.normal(size=(n, 3))
    log_q = -0.5 * ((z - mean) ** 2 / np.exp(logvar) + logvar + np.log(2 * np.pi))
    log_p = -0.5 * (z**2 + np.log(2 * np.pi))
    mc = (log_q - log_p).sum(1)
    se = mc.std() / np.sqrt(n)
    kl = float(A.gaussian_kl(jnp.asarray(mean), jnp.asarray(logvar))[0])
    assert abs(kl - mc.mean()) < 5 * se


def test_loss_closed_forms():
    x = jnp.zeros((2, 4, 4, 3))
    mean, logvar = jnp.zeros((2, 2, 2, 1)), jnp.zeros((2, 2, 2, 1))
    loss, parts = A.kl_autoencoder_loss(x, x, mean, logvar)
    assert float(loss) == 0.0
    loss, parts = A.kl_autoencoder_loss(x, x + 0.5, mean + 1.0, logvar, kl_weight=0.1)
    # nll = 48 pixels * 0.5 per example; KL = 4 latents * 0.5 per example
    assert np.isclose(float(parts["nll"]), 24.0) and np.isclose(float(parts["kl"]), 2.0)
    assert np.isclose(float(loss), 24.0 + 0.2)
    _, parts = A.kl_autoencoder_loss(x, x + 0.5, mean, logvar, recon_loss="l2", nll_logvar=np.log(2.0))
    assert np.isclose(float(parts["nll"]), 48 * (0.25 / 2 + np.log(2.0)), rtol=1e-6)
    with pytest.raises(ValueError, match="recon_loss"):
        A.kl_autoencoder_loss(x, x, mean, logvar, recon_loss="lpips")


def test_latent_scale_factor():
    z = jnp.asarray(np.random.default_rng(0).normal(0.0, 3.0, size=(64, 8, 8, 4)), jnp.float32)
    assert abs(float(A.latent_scale_factor(z)) - 1 / 3) < 0.01 / 3


def test_tiny_autoencoder_roundtrip_shapes_and_gradients():
    graphdef, aparams, arest = abstract_split(autoencoder_kl.get_config("tiny"))
    params = host_random_like(aparams, seed=0)
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, size=(2, 8, 8, 3)), jnp.float32)

    def run(p, key):
        m = nnx.merge(graphdef, p, arest)
        recon, mu, lv = m(x, sample_posterior=True, rngs=nnx.Rngs(sample=key))
        return A.kl_autoencoder_loss(x, recon, mu, lv)[0], (recon, mu)

    with pytest.raises(ValueError, match="sample_posterior"):
        jax.eval_shape(lambda p: nnx.merge(graphdef, p, arest)(x), aparams)
    (loss, (recon, mu)), grads = jax.jit(jax.value_and_grad(run, has_aux=True))(params, jax.random.key(0))
    assert recon.shape == x.shape and mu.shape == (2, 4, 4, 2) and np.isfinite(float(loss))
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
