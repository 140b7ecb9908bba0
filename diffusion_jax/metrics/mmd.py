"""Maximum mean discrepancy with Gaussian (RBF) kernels (Gretton et al. 2012, JMLR, eq. 3 / Lemma 6).

MMD^2(P, Q) = E k(x, x') + E k(y, y') - 2 E k(x, y). `mmd2` is the unbiased U-statistic (the
diagonal terms are excluded, so it can be slightly negative when P = Q); `mmd` takes sqrt(max(., 0)).
With several bandwidths the kernel is their sum (a characteristic kernel for any choice).
`gaussian_mmd2` is the closed form for two Gaussians, used to check the estimator.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_BANDWIDTHS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _rbf_sum(d2: jax.Array, bandwidths: Sequence[float]) -> jax.Array:
    return sum(jnp.exp(-d2 / (2.0 * float(l) ** 2)) for l in bandwidths)


def _sqdist(x, y):
    return jnp.maximum(jnp.sum(x**2, -1)[:, None] + jnp.sum(y**2, -1)[None, :] - 2.0 * x @ y.T, 0.0)


def mmd2(x, y, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS) -> float:
    """Unbiased MMD^2 between samples x [n, d] and y [m, d] (n, m >= 2), kernel
    k(a, b) = sum_l exp(-|a - b|^2 / (2 l^2)). Computed in float64 when x64 is enabled, else float32."""
    x = jnp.asarray(np.asarray(x).reshape(len(x), -1))
    y = jnp.asarray(np.asarray(y).reshape(len(y), -1))
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd2 needs at least 2 samples on each side, got {n} and {m}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    kxx = _rbf_sum(_sqdist(x, x), bandwidths)
    kyy = _rbf_sum(_sqdist(y, y), bandwidths)
    kxy = _rbf_sum(_sqdist(x, y), bandwidths)
    sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * jnp.mean(kxy))


def mmd(x, y, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS) -> float:
    """sqrt(max(mmd2, 0))."""
    return float(np.sqrt(max(mmd2(x, y, bandwidths), 0.0)))


def gaussian_kernel_mean(m1, s1, m2, s2, bandwidth: float) -> float:
    """E exp(-|X - Y|^2 / (2 l^2)) for independent X ~ N(m1, S1), Y ~ N(m2, S2).

    X - Y ~ N(mu, S) with mu = m1 - m2, S = S1 + S2; the Gaussian integral gives
    det(I + S / l^2)^(-1/2) exp(-mu^T (S + l^2 I)^(-1) mu / 2).
    """
    mu = np.atleast_1d(np.asarray(m1, np.float64) - np.asarray(m2, np.float64))
    s = np.atleast_2d(np.asarray(s1, np.float64) + np.asarray(s2, np.float64))
    eye = np.eye(len(mu))
    l2 = float(bandwidth) ** 2
    return float(np.linalg.det(eye + s / l2) ** -0.5 * np.exp(-0.5 * mu @ np.linalg.solve(s + l2 * eye, mu)))


def gaussian_mmd2(m1, s1, m2, s2, bandwidths: Sequence[float] = DEFAULT_BANDWIDTHS) -> float:
    """Closed-form MMD^2 between N(m1, S1) and N(m2, S2) for the summed RBF kernel."""
    total = 0.0
    for l in bandwidths:
        total += gaussian_kernel_mean(m1, s1, m1, s1, l) + gaussian_kernel_mean(m2, s2, m2, s2, l)
        total -= 2.0 * gaussian_kernel_mean(m1, s1, m2, s2, l)
    return total


__all__ = ["DEFAULT_BANDWIDTHS", "gaussian_kernel_mean", "gaussian_mmd2", "mmd", "mmd2"]
