"""Bits/dim: the VDM ELBO against its closed form on Gaussian data (exact denoiser), the bound against the
exact NLL, and the per-image ODE bits/dim against the closed-form Gaussian marginal."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from diffusion_jax import analytic, schedules
from diffusion_jax.metrics import bpd

MU, STD, DIM = np.array([0.3, -0.2, 0.1]), 0.4, 3


def closed_form_elbo(y, sch, t0, t1):
    """Per image: prior + recon + 1/2 int (-lambda'(t)) E||eps - eps_hat||^2 dt with the exact Gaussian
    denoiser: eps_hat = c (alpha (y - mu) / sigma + eps), c = sigma^2 / (alpha^2 s^2 + sigma^2), so
    E||eps - eps_hat||^2 = D (1 - c)^2 + c^2 alpha^2 |y - mu|^2 / sigma^2, a function of lambda alone
    (quadrature over lambda in float64)."""
    f64 = np.float64
    a0, s0 = float(sch.alpha(f64(t0))), float(sch.sigma(f64(t0)))
    a1, s1 = float(sch.alpha(f64(t1))), float(sch.sigma(f64(t1)))
    r2 = float(np.sum((y - MU) ** 2))

    def integrand(lam):
        # only alpha^2 / sigma^2 = e^lam and alpha^2 / (alpha^2 s^2 + sigma^2) enter: c = 1 / (1 + e^lam s^2)
        c = 1.0 / (1.0 + math.exp(lam) * STD**2)
        return 0.5 * (DIM * (1 - c) ** 2 + c**2 * math.exp(lam) * r2)

    lam0, lam1 = float(sch.logsnr(f64(t0))), float(sch.logsnr(f64(t1)))
    diffusion = integrate.quad(integrand, lam1, lam0, epsabs=1e-12, epsrel=1e-10, limit=200)[0]
    prior = a1**2 * float(np.sum(y**2)) / (2 * s1**2)
    recon = 0.5 * DIM * (math.log(2 * math.pi * s0**2 / a0**2) + 1)
    return prior + recon + diffusion


def _check_elbo_closed_form(sched, kind, dtype):
    sch = schedules.get_schedule(sched)
    t0, t1 = (1e-3, 1.0 - 1e-3) if sched == "rectified_flow" else (sch.t_min, sch.t_max)
    dist = analytic.Gaussian.isotropic(MU, STD, dtype=dtype)
    den = dist.denoiser(sch, kind)
    y = np.asarray(dist.sample(jax.random.key(0), 2))
    # average many independent estimates per image: the MC mean must hit the quadrature value
    reps = 64
    yr = jnp.repeat(jnp.asarray(y), reps, 0)
    terms = bpd.elbo(den, yr, bpd.sample_keys(1, jnp.arange(2 * reps)), t_min=t0, t_max=t1, num_t=16)
    assert terms.nll.dtype == dtype
    est = np.asarray(terms.nll, np.float64).reshape(2, reps)
    for i in range(2):
        want = closed_form_elbo(np.float64(y[i]), sch, t0, t1)
        sem = est[i].std() / math.sqrt(reps)
        tol = 4 * sem + (1e-9 if dtype == jnp.float64 else 1e-4 * abs(want))
        assert abs(est[i].mean() - want) < tol, (est[i].mean(), want, sem)
    np.testing.assert_allclose(terms.nll, terms.prior + terms.recon + terms.diffusion, rtol=1e-6)


@pytest.mark.parametrize(
    "sched,kind", [("vp_linear", "eps"), ("vp_cosine", "x0"), ("rectified_flow", "velocity")]
)
def test_elbo_matches_closed_form(x64, sched, kind):
    _check_elbo_closed_form(sched, kind, jnp.float64)


def test_elbo_matches_closed_form_float32():
    _check_elbo_closed_form("vp_linear", "eps", jnp.float32)


def test_elbo_bounds_the_exact_nll_and_is_nearly_tight(x64):
    """With the exact denoiser the only slack is the prior and decoder mismatch: small on VP-linear."""
    sch = schedules.get_schedule("vp_linear")
    t0, t1 = 1e-5, 1.0
    dist = analytic.Gaussian.isotropic(MU, STD)
    y = np.asarray(dist.sample(jax.random.key(3), 4))
    exact = -np.asarray(dist.log_prob(jnp.asarray(y)))
    bound = np.array([closed_form_elbo(yi, sch, t0, t1) for yi in y])
    assert np.all(bound >= exact)
    assert np.all(bound - exact < 0.05), bound - exact


def test_ode_bits_per_dim_per_image_closed_form(x64):
    sch = schedules.get_schedule("vp_linear")
    dist = analytic.Gaussian.isotropic(np.zeros(4), 0.5)
    den = dist.denoiser(sch, "eps")
    x = np.random.default_rng(0).integers(60, 200, size=(2, 2, 2, 1), dtype=np.uint8)
    keys = bpd.sample_keys(7, jnp.arange(2))
    flat_den = den  # data [B, 2, 2, 1] -> the Gaussian is over the flattened 4 dims

    def prior(z):
        return dist.marginal(sch, sch.t_max).log_prob(z.reshape(z.shape[0], -1))

    class Flat:  # view the [2, 2, 1] images as 4-vectors for the analytic denoiser
        schedule = sch

        @staticmethod
        def velocity(z, t):
            return flat_den.velocity(z.reshape(z.shape[0], -1), t).reshape(z.shape)

    got, nfe = bpd.ode_bits_per_dim(Flat, x, keys, prior_logp=prior, rtol=1e-7, atol=1e-7)
    k_deq = jax.vmap(jax.random.split)(keys)[:, 0]
    y = bpd.dequantize(x, k_deq).reshape(2, -1)
    want = bpd.to_bpd(-dist.marginal(sch, sch.t_min).log_prob(y), 4)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all(nfe > 0)
    # batch independence: image 1 alone, with its key, gives the same value
    alone, _ = bpd.ode_bits_per_dim(Flat, x[1:], keys[1:], prior_logp=prior, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(alone, got[1:], rtol=1e-10)


def test_elbo_bits_per_dim_and_errors():
    sch = schedules.get_schedule("vp_linear")
    dist = analytic.Gaussian.isotropic(np.zeros(4), 0.5)
    den = dist.denoiser(sch, "eps")
    x = np.random.default_rng(1).integers(0, 256, size=(3, 4), dtype=np.uint8)
    keys = bpd.sample_keys(0, jnp.arange(3))
    got = np.asarray(bpd.elbo_bits_per_dim(den, x, keys, num_t=4))
    k_deq, k_elbo = (jax.vmap(jax.random.split)(keys)[:, j] for j in (0, 1))
    y = bpd.dequantize(x, k_deq)
    want = (np.asarray(bpd.elbo(den, y, k_elbo, num_t=4).nll) + 4 * math.log(128)) / (4 * math.log(2))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="num_t"):
        bpd.elbo(den, jnp.zeros((1, 4)), keys[:1], num_t=0)
    with pytest.raises(ValueError, match="t_min"):
        bpd.elbo(den, jnp.zeros((1, 4)), keys[:1], t_min=0.0)
