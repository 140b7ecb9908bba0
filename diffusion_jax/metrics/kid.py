"""Kernel Inception Distance (Binkowski, Sutherland, Arbel & Gretton 2018, "Demystifying MMD GANs",
Sec. 5): the unbiased MMD^2 (Gretton et al. 2012, JMLR, eq. 3) between feature sets under the cubic
polynomial kernel k(a, b) = (a . b / d + 1)^3, averaged over random subsets of both sets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _mmd2_cubic(x, y):
    d = x.shape[1]
    hp = jax.lax.Precision.HIGHEST
    kxx = (jnp.matmul(x, x.T, precision=hp) / d + 1.0) ** 3
    kyy = (jnp.matmul(y, y.T, precision=hp) / d + 1.0) ** 3
    kxy = (jnp.matmul(x, y.T, precision=hp) / d + 1.0) ** 3
    m, n = x.shape[0], y.shape[0]
    sxx = (jnp.sum(kxx) - jnp.trace(kxx)) / (m * (m - 1))
    syy = (jnp.sum(kyy) - jnp.trace(kyy)) / (n * (n - 1))
    return sxx + syy - 2.0 * jnp.mean(kxy)


def polynomial_mmd2(x, y) -> float:
    """Unbiased MMD^2 between features x [m, d] and y [n, d] (m, n >= 2) with the cubic kernel
    (a . b / d + 1)^3 (diagonal terms excluded from the within-set means)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be [m, d] and [n, d] of one d, got {x.shape} and {y.shape}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"need at least 2 rows on each side, got {len(x)} and {len(y)}")
    return float(_mmd2_cubic(jnp.asarray(x), jnp.asarray(y)))


def kid(x, y, *, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: (mean, std) over `num_subsets` unbiased cubic-kernel MMD^2 estimates, each on
    min(subset_size, m, n) rows drawn without replacement from each of x [m, d] and y [n, d]
    (the subset protocol of Binkowski et al. 2018 and torch-fidelity / clean-fid)."""
    x, y = np.asarray(x), np.asarray(y)
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"num_subsets must be >= 1 and subset_size >= 2, got {num_subsets}, {subset_size}")
    s = min(int(subset_size), len(x), len(y))
    rng = np.random.default_rng(seed)
    vals = [
        polynomial_mmd2(x[rng.choice(len(x), s, replace=False)], y[rng.choice(len(y), s, replace=False)])
        for _ in range(int(num_subsets))
    ]
    return float(np.mean(vals)), float(np.std(vals))
