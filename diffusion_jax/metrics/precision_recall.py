"""Improved precision and recall (Kynkaanniemi, Karras, Laine, Lehtinen & Aila 2019, "Improved
Precision and Recall Metric for Assessing Generative Models", Sec. 2, eqs. 1-2).

Each feature set defines a manifold: the union of balls around its points, the radius of a point being
the distance to its k-th nearest neighbour in its own set (the point itself excluded). Precision is the
fraction of generated points inside the real manifold; recall the fraction of real points inside the
generated manifold. Distances are computed blockwise (memory O(block * n)).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_BLOCK = 1024


@jax.jit
def _sqdist(a, b):
    hp = jax.lax.Precision.HIGHEST
    d2 = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * jnp.matmul(a, b.T, precision=hp)
    return jnp.maximum(d2, 0.0)


@functools.partial(jax.jit, static_argnums=2)
def _kth_smallest(a, b, k):
    return -jax.lax.top_k(-_sqdist(a, b), k)[0][:, -1]


@jax.jit
def _covered(q, ref, radii2):
    return jnp.any(_sqdist(q, ref) <= radii2[None, :], axis=1)


def knn_radii(x, k: int = 3) -> np.ndarray:
    """[n] distance from each row of x [n, d] to its k-th nearest other row (k < n)."""
    x = jnp.asarray(x)
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k must be in [1, {x.shape[0] - 1}] for {x.shape[0]} points, got {k}")
    # the (k+1)-th smallest squared distance counts the point itself (distance 0) as the first
    r2 = [_kth_smallest(x[i : i + _BLOCK], x, k + 1) for i in range(0, x.shape[0], _BLOCK)]
    return np.sqrt(np.asarray(jnp.concatenate(r2)))


def coverage(queries, ref, radii) -> float:
    """Fraction of queries [m, d] within radii[j] of some ref[j] (ref [n, d], radii [n])."""
    q, ref = jnp.asarray(queries), jnp.asarray(ref)
    r2 = jnp.asarray(radii, ref.dtype) ** 2
    inside = [_covered(q[i : i + _BLOCK], ref, r2) for i in range(0, q.shape[0], _BLOCK)]
    return float(np.mean(np.asarray(jnp.concatenate(inside))))


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of generated features `fake` [m, d] against `real` [n, d] with k-NN
    manifolds (k = 3 as in the paper's experiments)."""
    real, fake = np.asarray(real), np.asarray(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [n, d] and [m, d] of one d, got {real.shape} and {fake.shape}")
    precision = coverage(fake, real, knn_radii(real, k))
    recall = coverage(real, fake, knn_radii(fake, k))
    return precision, recall
