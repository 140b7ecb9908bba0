"""Analytic data distributions with exact samplers, densities and optimal denoisers.

For data x ~ p and the Gaussian path z_t = alpha(t) x + sigma(t) eps (see `schedules`), the optimal
(MSE) denoiser is the posterior mean E[x | z_t] (Tweedie's formula, Efron 2011; Robbins 1956) and the
score is grad log p_t(z) = (alpha E[x | z] - z) / sigma^2. Both have closed forms for

  * `Gaussian(mean [D], cov [D, D])`,
  * `GaussianMixture(weights [K], means [K, D], covs [K, D, D])` (full, possibly singular, covariances),
  * `Empirical(data [N, D])`: the training set as a sum of Diracs, whose optimal denoiser is the
    softmax-weighted mean of the data points (Karras et al. 2022, Appendix B.3 "ideal denoiser").

Every distribution is a `flax.struct.dataclass` pytree with its arrays as leaves, so it can be the
`params` of a `predictions.Denoiser` and pass through `jax.jit` / `vmap` without retracing. The
exact denoiser `dist.denoiser(schedule, kind)` is therefore a drop-in model for any sampler, under any
schedule and any prediction kind.

Numerics (they matter: float64 sampler convergence tests go down to sigma ~ 1e-3). Each mixture
component is handled in the eigenbasis of its covariance, S_k = U_k diag(l_k) U_k^T, where
a^2 S_k + s^2 I = U_k diag(a^2 l_k + s^2) U_k^T is diagonal. So
  * no matrix is ever inverted: only divisions by d = a^2 l + s^2 > 0, elementwise;
  * the posterior noise eps_k = U_k (s / d) r_k (r_k = U_k^T (z - a mu_k)) is computed directly rather
    than as (z - a x0) / s, which would cancel catastrophically at small s;
  * responsibilities are a softmax of log-densities (log-sum-exp), never a ratio of densities.
Singular covariances (l = 0, e.g. data on a line) are exact for s > 0.

All methods take samples as [B, D] (flatten images first) and t as a scalar or [B].
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from diffusion_jax.predictions import Denoiser, Preconditioning, check_kind, from_x0_eps
from diffusion_jax.schedules import Schedule

Array = jax.Array
_LOG_2PI = math.log(2.0 * math.pi)


def _coeffs(t, z: Array, schedule: Schedule) -> tuple[Array, Array]:
    """alpha(t), sigma(t) shaped to broadcast against per-sample arrays: () or [B, 1, 1]."""
    t = jnp.asarray(t, z.dtype)
    if t.ndim == 0:
        return schedule.alpha(t), schedule.sigma(t)
    if t.ndim != 1 or t.shape[0] not in (1, z.shape[0]):
        raise ValueError(f"t of shape {tuple(t.shape)} does not fit samples of shape {tuple(z.shape)}")
    a, s = schedule.alpha(t), schedule.sigma(t)
    return a[:, None, None], s[:, None, None]


def _check_samples(z: Array, dim: int, name: str = "z") -> Array:
    z = jnp.asarray(z)
    if z.ndim != 2 or z.shape[1] != dim:
        raise ValueError(f"{name} must have shape [B, {dim}], got {tuple(z.shape)}")
    return z


@dataclasses.dataclass(frozen=True)
class ExactNet:
    """The net_fn of an analytic denoiser: `ExactNet(schedule, kind)(dist, z [B, D], t [B], cond, rng)`
    returns the exact prediction of `kind` at (z, t) for the distribution passed as `params`
    (time input 't', no input scaling). A frozen dataclass (hashable by value) so that rebuilding
    the denoiser does not force `jax.jit` to retrace; usable wherever a network's net_fn is (e.g.
    `objectives.make_loss(cfg, ExactNet(schedule, kind))` evaluates the loss of the optimum)."""

    schedule: Schedule
    kind: str

    def __call__(self, params, z, t_in, cond=None, rng=None):
        x0, eps = params.x0_eps(z, t_in, self.schedule)
        return from_x0_eps(x0, eps, self.kind, z, t_in, self.schedule)


def _analytic_denoiser(dist, schedule: Schedule, kind: str) -> Denoiser:
    check_kind(kind, "kind")
    return Denoiser(
        net_fn=ExactNet(schedule, kind),
        schedule=schedule,
        kind=kind,
        precond=Preconditioning(time_input="t", input_scaling="none"),
        params=dist,
    )


# -------------------------------------------------------------------------------------------------
# Gaussian mixture (the general case)
# -------------------------------------------------------------------------------------------------


@struct.dataclass
class GaussianMixture:
    """sum_k weights_k N(means_k, covs_k). weights [K] (normalised on use), means [K, D], covs [K, D, D]
    symmetric positive semi-definite."""

    weights: Array
    means: Array
    covs: Array

    # --- constructors -----------------------------------------------------------------------------
    @classmethod
    def isotropic(cls, weights, means, stds, dtype=None) -> GaussianMixture:
        """Components N(means_k, stds_k^2 I). weights [K], means [K, D], stds [K] or scalar (concrete
        values: built in numpy, so no per-op compilation outside jit)."""
        dtype = dtype or jnp.result_type(float)
        means = np.asarray(means, np.float64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape [K, D], got {tuple(means.shape)}")
        k, d = means.shape
        stds = np.broadcast_to(np.asarray(stds, np.float64), (k,))
        weights = np.asarray(weights, np.float64)
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},) to match means {tuple(means.shape)}")
        covs = stds[:, None, None] ** 2 * np.eye(d)
        return cls(*(jnp.asarray(a, dtype) for a in (weights, means, covs)))

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def astype(self, dtype) -> GaussianMixture:
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), self)

    def _log_weights(self) -> Array:
        w = jnp.asarray(self.weights)
        return jnp.log(w) - jnp.log(jnp.sum(w))

    def _eig(self) -> tuple[Array, Array]:
        """Eigenvalues [K, D] (clipped at 0) and eigenvectors [K, D, D] of the covariances."""
        covs = 0.5 * (self.covs + jnp.swapaxes(self.covs, -1, -2))
        lam, u = jnp.linalg.eigh(covs)
        return jnp.maximum(lam, 0.0), u

    # --- moments ----------------------------------------------------------------------------------
    def moments(self) -> tuple[Array, Array]:
        """(E[x] [D], Cov[x] [D, D]) by the law of total covariance."""
        w = jnp.exp(self._log_weights())
        m = jnp.einsum("k,kd->d", w, self.means)
        dm = self.means - m
        return m, jnp.einsum("k,kij->ij", w, self.covs) + jnp.einsum("k,ki,kj->ij", w, dm, dm)

    # --- sampling and density ---------------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=2)
    def sample(self, key: Array, n: int) -> Array:
        """n exact samples [n, D]: component by categorical draw, then mean + U sqrt(l) eps."""
        k1, k2 = jax.random.split(key)
        comp = jax.random.categorical(k1, self._log_weights(), shape=(n,))
        lam, u = self._eig()
        eps = jax.random.normal(k2, (n, self.dim), self.means.dtype)
        root = u * jnp.sqrt(lam)[:, None, :]  # [K, D, D], root root^T = cov
        return self.means[comp] + jnp.einsum("nij,nj->ni", root[comp], eps)

    def _component_terms(self, z: Array, a, s) -> tuple[Array, Array, Array, Array, Array]:
        """For each sample and component: log N(z; a mu_k, a^2 S_k + s^2 I) [B, K], the rotated
        residual r = U^T (z - a mu) [B, K, D], d = a^2 l + s^2 [B|1, K, D], eigenvalues, eigenvectors."""
        lam, u = self._eig()
        diff = z[:, None, :] - a * self.means[None]  # [B, K, D]
        r = jnp.einsum("kji,bkj->bki", u, diff)  # U^T diff
        d = a**2 * lam[None] + s**2
        logn = -0.5 * jnp.sum(_LOG_2PI + jnp.log(d) + r**2 / d, axis=-1)
        return logn, r, d, lam, u

    @jax.jit
    def log_prob(self, x: Array) -> Array:
        """Exact log-density [n] at x [n, D] (needs non-singular covariances)."""
        x = _check_samples(x, self.dim, "x")
        logn, *_ = self._component_terms(x, jnp.ones((), x.dtype), jnp.zeros((), x.dtype))
        return jax.nn.logsumexp(logn + self._log_weights(), axis=-1)

    def marginal(self, schedule: Schedule, t) -> GaussianMixture:
        """The exact law of z_t = alpha x + sigma eps (scalar t): means alpha mu_k, covs
        alpha^2 S_k + sigma^2 I, same weights."""
        t = jnp.asarray(t, self.means.dtype)
        if t.ndim != 0:
            raise ValueError(f"marginal needs a scalar t, got shape {tuple(t.shape)}")
        a, s = schedule.alpha(t), schedule.sigma(t)
        eye = jnp.eye(self.dim, dtype=self.means.dtype)
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covs + s**2 * eye)

    # --- exact posterior quantities ---------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=3)
    def x0_eps(self, z: Array, t, schedule: Schedule) -> tuple[Array, Array]:
        """Exact (E[x | z_t], E[eps | z_t]), each [B, D], at z [B, D] and t () or [B].

        Per component, in the covariance eigenbasis: E[x | z, k] = mu + U (a l / d) r and
        E[eps | z, k] = U (s / d) r with r = U^T (z - a mu), d = a^2 l + s^2; mixed with the posterior
        responsibilities softmax(log w_k + log N(z; a mu_k, a^2 S_k + s^2 I)).
        """
        z = _check_samples(z, self.dim)
        a, s = _coeffs(t, z, schedule)
        logn, r, d, lam, u = self._component_terms(z, a, s)
        resp = jax.nn.softmax(logn + self._log_weights(), axis=-1)  # [B, K]
        x_k = self.means[None] + jnp.einsum("kij,bkj->bki", u, (a * lam[None] / d) * r)
        e_k = jnp.einsum("kij,bkj->bki", u, (s / d) * r)
        return jnp.einsum("bk,bkd->bd", resp, x_k), jnp.einsum("bk,bkd->bd", resp, e_k)

    def x0(self, z: Array, t, schedule: Schedule) -> Array:
        """Exact E[x | z_t] [B, D] (Tweedie)."""
        return self.x0_eps(z, t, schedule)[0]

    @functools.partial(jax.jit, static_argnums=3)
    def score(self, z: Array, t, schedule: Schedule) -> Array:
        """Exact grad log p_t(z) [B, D] = -sum_k resp_k U_k (r_k / d_k) (no division by sigma)."""
        z = _check_samples(z, self.dim)
        a, s = _coeffs(t, z, schedule)
        logn, r, d, _, u = self._component_terms(z, a, s)
        resp = jax.nn.softmax(logn + self._log_weights(), axis=-1)
        return -jnp.einsum("bk,kij,bkj->bi", resp, u, r / d)

    def denoiser(self, schedule: Schedule, kind: str = "x0") -> Denoiser:
        """The exact denoiser as a `predictions.Denoiser` (params = this distribution, time input t)
        predicting `kind` under `schedule`."""
        return _analytic_denoiser(self, schedule, kind)


# -------------------------------------------------------------------------------------------------
# Gaussian
# -------------------------------------------------------------------------------------------------


@struct.dataclass
class Gaussian:
    """N(mean [D], cov [D, D]); the one-component mixture, with its own closed forms."""

    mean: Array
    cov: Array

    @classmethod
    def isotropic(cls, mean, std, dtype=None) -> Gaussian:
        """N(mean, std^2 I). mean [D], std scalar."""
        dtype = dtype or jnp.result_type(float)
        mean = np.asarray(mean, np.float64)
        if mean.ndim != 1:
            raise ValueError(f"mean must have shape [D], got {tuple(mean.shape)}")
        cov = float(std) ** 2 * np.eye(mean.shape[0])
        return cls(jnp.asarray(mean, dtype), jnp.asarray(cov, dtype))

    @classmethod
    def standard(cls, dim: int, dtype=None) -> Gaussian:
        """N(0, I) in `dim` dimensions."""
        dtype = dtype or jnp.result_type(float)
        return cls(jnp.asarray(np.zeros(dim), dtype), jnp.asarray(np.eye(dim), dtype))

    @property
    def dim(self) -> int:
        return self.mean.shape[-1]

    def astype(self, dtype) -> Gaussian:
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), self)

    def as_mixture(self) -> GaussianMixture:
        return GaussianMixture(jnp.ones((1,), self.mean.dtype), self.mean[None], self.cov[None])

    def moments(self) -> tuple[Array, Array]:
        """(E[x] [D], Cov[x] [D, D])."""
        return self.mean, self.cov

    @functools.partial(jax.jit, static_argnums=2)
    def sample(self, key: Array, n: int) -> Array:
        """n exact samples [n, D]."""
        return self.as_mixture().sample(key, n)

    @jax.jit
    def log_prob(self, x: Array) -> Array:
        """Exact log-density [n] at x [n, D]."""
        return self.as_mixture().log_prob(x)

    def marginal(self, schedule: Schedule, t) -> Gaussian:
        """Law of z_t: N(alpha mean, alpha^2 cov + sigma^2 I) (scalar t)."""
        m = self.as_mixture().marginal(schedule, t)
        return Gaussian(m.means[0], m.covs[0])

    @functools.partial(jax.jit, static_argnums=3)
    def x0_eps(self, z: Array, t, schedule: Schedule) -> tuple[Array, Array]:
        """Exact (E[x | z_t], E[eps | z_t]) [B, D]: mean + a S (a^2 S + s^2 I)^{-1} (z - a mean), via the
        eigenbasis of S (see module docstring)."""
        return self.as_mixture().x0_eps(z, t, schedule)

    def x0(self, z: Array, t, schedule: Schedule) -> Array:
        """Exact E[x | z_t] [B, D]."""
        return self.x0_eps(z, t, schedule)[0]

    @functools.partial(jax.jit, static_argnums=3)
    def score(self, z: Array, t, schedule: Schedule) -> Array:
        """Exact grad log p_t(z) = -(a^2 S + s^2 I)^{-1} (z - a mean), [B, D]."""
        return self.as_mixture().score(z, t, schedule)

    def denoiser(self, schedule: Schedule, kind: str = "x0") -> Denoiser:
        """Exact denoiser (see `GaussianMixture.denoiser`)."""
        return _analytic_denoiser(self, schedule, kind)


# -------------------------------------------------------------------------------------------------
# Empirical distribution (finite dataset)
# -------------------------------------------------------------------------------------------------


@struct.dataclass
class Empirical:
    """Uniform distribution over the rows of data [N, D]. Its optimal denoiser is
    E[x | z] = sum_n softmax_n(-|z - a x_n|^2 / (2 s^2)) x_n (Karras et al. 2022, eq. 57): a model
    that memorises the training set. It has no density (Diracs): `log_prob` raises.

    The logits use |z - a x_n|^2 = |z|^2 - 2a z.x_n + a^2 |x_n|^2 with the |z|^2 term dropped (it
    cancels in the softmax), so the cost is one [B, N] matmul and scales to image datasets.
    """

    data: Array

    @property
    def dim(self) -> int:
        return self.data.shape[-1]

    def astype(self, dtype) -> Empirical:
        return jax.tree.map(lambda a: jnp.asarray(a, dtype), self)

    def moments(self) -> tuple[Array, Array]:
        """(mean [D], population covariance (1/N) [D, D]) of the data."""
        m = jnp.mean(self.data, axis=0)
        dm = self.data - m
        return m, dm.T @ dm / self.data.shape[0]

    @functools.partial(jax.jit, static_argnums=2)
    def sample(self, key: Array, n: int) -> Array:
        """n rows drawn uniformly with replacement, [n, D]."""
        idx = jax.random.randint(key, (n,), 0, self.data.shape[0])
        return self.data[idx]

    def log_prob(self, x: Array) -> Array:
        raise ValueError("Empirical (a sum of Diracs) has no density; use marginal(schedule, t).log_prob")

    def marginal(self, schedule: Schedule, t) -> GaussianMixture:
        """Law of z_t: the equal-weight mixture of N(alpha x_n, sigma^2 I) (scalar t)."""
        t = jnp.asarray(t, self.data.dtype)
        if t.ndim != 0:
            raise ValueError(f"marginal needs a scalar t, got shape {tuple(t.shape)}")
        a, s = schedule.alpha(t), schedule.sigma(t)
        n, d = self.data.shape
        return GaussianMixture.isotropic(
            jnp.ones((n,)), a * self.data, jnp.broadcast_to(s, (n,)), self.data.dtype
        )

    def _resp(self, z: Array, t, schedule: Schedule):
        z = _check_samples(z, self.dim)
        a, s = _coeffs(t, z, schedule)
        a2, s2 = (a[:, :, 0], s[:, :, 0]) if jnp.ndim(a) else (a, s)  # () or [B, 1]
        sq = jnp.sum(self.data**2, axis=-1)  # [N]
        logits = (a2 * (z @ self.data.T) - 0.5 * a2**2 * sq[None]) / s2**2
        return jax.nn.softmax(logits, axis=-1), a2, s2

    @functools.partial(jax.jit, static_argnums=3)
    def x0_eps(self, z: Array, t, schedule: Schedule) -> tuple[Array, Array]:
        """(E[x | z_t], E[eps | z_t]) [B, D]; eps = (z - a x0) / s (exact for the Dirac mixture)."""
        w, a, s = self._resp(z, t, schedule)
        x0 = w @ self.data
        return x0, (z - a * x0) / s

    def x0(self, z: Array, t, schedule: Schedule) -> Array:
        """Exact E[x | z_t] [B, D]: the softmax-weighted mean of the data points."""
        return self.x0_eps(z, t, schedule)[0]

    @functools.partial(jax.jit, static_argnums=3)
    def score(self, z: Array, t, schedule: Schedule) -> Array:
        """Exact grad log p_t(z) = (a E[x|z] - z) / s^2, [B, D]."""
        w, a, s = self._resp(z, t, schedule)
        return (a * (w @ self.data) - z) / s**2

    def denoiser(self, schedule: Schedule, kind: str = "x0") -> Denoiser:
        """Exact (memorising) denoiser (see `GaussianMixture.denoiser`)."""
        return _analytic_denoiser(self, schedule, kind)


Distribution = Gaussian | GaussianMixture | Empirical


# -------------------------------------------------------------------------------------------------
# Standard test distributions
# -------------------------------------------------------------------------------------------------


def gmm_2d_ring(num_modes: int = 8, radius: float = 2.0, std: float = 0.2, dtype=None) -> GaussianMixture:
    """`num_modes` equal-weight isotropic Gaussians (std) evenly spaced on a circle of `radius`: the
    standard 2-D toy of the flow-matching / OT-CFM literature (e.g. Tong et al. 2024's 8 Gaussians)."""
    ang = 2.0 * np.pi * np.arange(num_modes) / num_modes
    means = radius * np.stack([np.cos(ang), np.sin(ang)], axis=-1)
    return GaussianMixture.isotropic(np.ones(num_modes) / num_modes, means, std, dtype)


def gmm_1d(weights=(0.3, 0.7), means=(-1.0, 1.5), stds=(0.3, 0.5), dtype=None) -> GaussianMixture:
    """A bimodal 1-D mixture (unequal weights and widths), for stochastic-sampler tests where the
    sampled law can be compared with the exact CDF."""
    return GaussianMixture.isotropic(weights, np.asarray(means, np.float64)[:, None], stds, dtype)


def random_gmm(
    key: Array, num_components: int = 4, dim: int = 2, scale: float = 2.0, min_std: float = 0.1, dtype=None
) -> GaussianMixture:
    """A random mixture with full covariances: means ~ N(0, scale^2 I), covs = A A^T / D + min_std^2 I
    with A ~ N(0, 1/4), weights uniform in [0.5, 1.5] then normalised. Deterministic in `key`."""
    dtype = dtype or jnp.result_type(float)
    return _random_gmm_impl(
        key, int(num_components), int(dim), float(scale), float(min_std), jnp.dtype(dtype)
    )


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _random_gmm_impl(key, num_components, dim, scale, min_std, dtype) -> GaussianMixture:
    k1, k2, k3 = jax.random.split(key, 3)
    means = scale * jax.random.normal(k1, (num_components, dim), dtype)
    a = 0.5 * jax.random.normal(k2, (num_components, dim, dim), dtype)
    covs = a @ jnp.swapaxes(a, -1, -2) / dim + min_std**2 * jnp.eye(dim, dtype=dtype)
    weights = jax.random.uniform(k3, (num_components,), dtype, 0.5, 1.5)
    weights = weights / jnp.sum(weights)
    return GaussianMixture(weights, means, covs)


def _standard_gaussian(dim: int = 2, dtype=None) -> Gaussian:
    return Gaussian.standard(dim, dtype)


def _random_gmm(seed: int = 0, num_components: int = 4, dim: int = 2, **kwargs) -> GaussianMixture:
    return random_gmm(jax.random.key(seed), num_components, dim, **kwargs)


DISTRIBUTIONS: dict[str, Any] = {
    "standard_gaussian": _standard_gaussian,
    "gmm_2d_ring": gmm_2d_ring,
    "gmm_1d": gmm_1d,
    "random_gmm": _random_gmm,
}


def get_distribution(name: str, **kwargs):
    """Build a standard test distribution by name, e.g. `get_distribution("gmm_2d_ring", num_modes=8)`.
    `random_gmm` takes an integer `seed` instead of a key. Raises ValueError listing the valid names."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {name!r}; valid names: {sorted(DISTRIBUTIONS)}")
    return DISTRIBUTIONS[name](**kwargs)


__all__ = [
    "DISTRIBUTIONS",
    "Distribution",
    "Empirical",
    "ExactNet",
    "Gaussian",
    "GaussianMixture",
    "get_distribution",
    "gmm_1d",
    "gmm_2d_ring",
    "random_gmm",
]
