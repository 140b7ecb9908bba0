"""Bits/dim of image models: probability-flow ODE likelihood and the variational (ELBO) bound.

Both act on integer images x in {0..255}^D, uniformly dequantised to y = 2 (x + u) / 256 - 1 in the
models' [-1, 1] scale (Theis et al. 2016): -log2 P(x) <= -log2 p(y) + D log2 128 in expectation, so

    bpd = (NLL(y) + D ln 128) / (D ln 2),   NLL(y) in nats.

* ODE: NLL = -log p(y) by the probability-flow ODE (`diffusion_jax.likelihood`), exact for the model's
  ODE density (Song et al. 2021, App. D.2).
* ELBO: the continuous-time variational bound of Kingma, Salimans, Poole & Ho 2021 ("Variational
  Diffusion Models", eqs. 11, 17 and the logSNR invariance of Sec. 5.1), for any Gaussian path
  z_t = alpha y + sigma eps on [t_min, t_max]:

      -log p(y) <= KL(q(z_max | y) || p(z_max)) + E_q[-log p(y | z_min)] + L_diff,
      L_diff = 1/2 int_{lambda_max}^{lambda_min} E_eps ||eps - eps_hat(z_lambda, lambda)||^2 d lambda
             = -1/2 int_{t_min}^{t_max} SNR'(t) E ||y - x0_hat(z_t, t)||^2 dt,

  with lambda = log SNR. The prior p(z_max) = N(0, sigma_max^2 I) (the ODE's default prior, so both
  numbers score the same model) gives KL = alpha_max^2 |y|^2 / (2 sigma_max^2); the decoder
  p(y | z_min) = N(z_min / alpha_min, (sigma_min / alpha_min)^2 I) gives the expected reconstruction
  term D/2 (log(2 pi sigma_min^2 / alpha_min^2) + 1). Where logSNR is infinite at an end of the
  schedule (rectified flow) the interval is shrunk by 1e-5 there. L_diff is estimated by Monte Carlo with logSNR
  drawn uniformly and stratified (VDM's low-variance estimator), `num_t` draws per image. Valid for any
  Gaussian path (VP, VE, EDM, rectified flow with a Gaussian source); not for non-Gaussian sources.

Randomness is per image: image i uses key fold_in(key(seed), i), so its value does not depend on the
batch it is in, nor on the number of devices or processes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax import likelihood
from diffusion_jax.predictions import Denoiser

Array = jax.Array


def sample_keys(seed: int, indices) -> Array:
    """Per-image keys [B]: fold_in(key(seed), index)."""
    base = jax.random.key(int(seed))
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(indices, jnp.uint32))


def to_bpd(nll: Array, dim: int) -> Array:
    """Bits/dim of dequantised 8-bit data from the continuous NLL (nats) of y in [-1, 1]^dim."""
    return (nll + dim * math.log(128.0)) / (dim * math.log(2.0))


class ElboTerms(NamedTuple):
    """Per image [B], nats: nll = prior + recon + diffusion (an upper bound on -log p(y))."""

    nll: Array
    prior: Array
    recon: Array
    diffusion: Array


def _interval(denoiser: Denoiser, t_min, t_max) -> tuple[float, float]:
    """[t_min, t_max] of the bound: the schedule's, each end moved inwards by 1e-5 of the interval
    where logSNR is infinite there (rectified flow: alpha(1) = 0, sigma(0) = 0) unless given."""
    sch = denoiser.schedule
    a, b = float(sch.t_min), float(sch.t_max)
    with jax.ensure_compile_time_eval():
        finite = [bool(np.isfinite(float(sch.logsnr(np.float64(t))))) for t in (a, b)]
    t0 = float(t_min) if t_min is not None else (a if finite[0] else a + 1e-5 * (b - a))
    t1 = float(t_max) if t_max is not None else (b if finite[1] else b - 1e-5 * (b - a))
    if not 0.0 < t0 < t1:
        raise ValueError(f"elbo: need 0 < t_min < t_max, got t_min={t0}, t_max={t1}")
    return t0, t1


def elbo(denoiser: Denoiser, y: Array, keys: Array, *, t_min=None, t_max=None, num_t: int = 8) -> ElboTerms:
    """VDM continuous-time bound on -log p(y) (module doc) for y [B, ...] in the model's data scale.

    keys: [B] per-image keys (e.g. `sample_keys`); num_t: stratified logSNR draws per image.
    Returns ElboTerms of [B] arrays (nats).
    """
    if int(num_t) < 1:
        raise ValueError(f"elbo: num_t must be >= 1, got {num_t}")
    t0, t1 = _interval(denoiser, t_min, t_max)
    sch = denoiser.schedule
    y = jnp.asarray(y)
    b, shape, dt = y.shape[0], y.shape[1:], y.dtype
    d = int(np.prod(shape))
    with jax.ensure_compile_time_eval():
        a0, s0 = float(sch.alpha(np.float64(t0))), float(sch.sigma(np.float64(t0)))
        a1, s1 = float(sch.alpha(np.float64(t1))), float(sch.sigma(np.float64(t1)))
        lam0, lam1 = float(sch.logsnr(np.float64(t0))), float(sch.logsnr(np.float64(t1)))

    def draws(k):
        ku, ke = jax.random.split(k)
        u = (jnp.arange(num_t, dtype=dt) + jax.random.uniform(ku, (num_t,), dt)) / num_t
        return lam1 + (lam0 - lam1) * u, jax.random.normal(ke, (num_t, *shape), dt)

    lam, eps = jax.vmap(draws)(keys)  # [B, T], [B, T, ...]
    t = jnp.clip(sch.t_from_logsnr(lam.reshape(-1)), t0, t1)
    alpha, sigma = sch.alpha(t), sch.sigma(t)
    bc = (-1,) + (1,) * len(shape)
    yr = jnp.repeat(y, num_t, axis=0)
    eps_f = eps.reshape(b * num_t, *shape)
    z = alpha.reshape(bc) * yr + sigma.reshape(bc) * eps_f
    eps_hat = denoiser.eps(z, t)
    sq = jnp.sum((eps_f - eps_hat).reshape(b, num_t, -1) ** 2, axis=-1)
    diffusion = 0.5 * (lam0 - lam1) * jnp.mean(sq, axis=1)
    prior = a1**2 * jnp.sum(y.reshape(b, -1) ** 2, axis=1) / (2.0 * s1**2)
    recon = jnp.full((b,), 0.5 * d * (math.log(2 * math.pi * s0**2 / a0**2) + 1.0), dt)
    return ElboTerms(prior + recon + diffusion, prior, recon, diffusion)


def _dequantize_keys(keys: Array) -> tuple[Array, Array]:
    both = jax.vmap(jax.random.split)(keys)
    return both[:, 0], both[:, 1]


def dequantize(x_uint8: Array, keys: Array, dtype=None) -> Array:
    """Per-image uniform dequantisation [B, ...] -> [-1, 1] (`likelihood.dequantize` with key i for image i)."""
    return jax.vmap(lambda x, k: likelihood.dequantize(x, k, dtype))(jnp.asarray(x_uint8), keys)


def elbo_bits_per_dim(denoiser: Denoiser, x_uint8: Array, keys: Array, **kwargs) -> Array:
    """ELBO bits/dim [B] of 8-bit images [B, ...] (one dequantisation per image from its key)."""
    k_deq, k_elbo = _dequantize_keys(keys)
    y = dequantize(x_uint8, k_deq, kwargs.pop("dtype", None))
    return to_bpd(elbo(denoiser, y, k_elbo, **kwargs).nll, int(np.prod(y.shape[1:])))


def ode_bits_per_dim(denoiser: Denoiser, x_uint8: Array, keys: Array, **kwargs) -> tuple[Array, Array]:
    """Probability-flow ODE bits/dim [B] and NFE [B] of 8-bit images [B, ...]: `likelihood.bits_per_dim`
    applied image by image with its own key (so the value is independent of batching). kwargs go to
    `likelihood.log_likelihood` (divergence_method, num_probes, rtol, atol, ...)."""

    def one(x, k):
        bpd, nfe = likelihood.bits_per_dim(denoiser, x[None], k, **kwargs)
        return bpd[0], nfe[0]

    return jax.vmap(one)(jnp.asarray(x_uint8), keys)
