"""Wasserstein-2 distances between sample sets, and the Gaussian closed form used to check them.

* `w2_exact`: the exact discrete OT problem between two empirical measures, solved on the host with
  POT's network simplex (Bonneel et al. 2011; `ot.emd2`), O(n^3): for evaluation sets of a few
  thousand points.
* `w2_sinkhorn`: entropic OT (Cuturi 2013) in-graph with ott-jax; biased upwards by the entropy
  term (the debiased Sinkhorn divergence of Feydy et al. 2019 is returned when `debiased=True`).
* `gaussian_w2`: W2 between N(m1, S1) and N(m2, S2) in closed form (Dowson & Landau 1982; Givens &
  Shortt 1984): W2^2 = |m1 - m2|^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2), the Bures metric.

All distances are W2 (not squared) with the squared Euclidean ground cost.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def _as2d(x, name) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        x = x.reshape(x.shape[0], -1)
    if x.shape[0] < 1:
        raise ValueError(f"{name} must have at least one sample, got shape {x.shape}")
    return x


def w2_exact(x, y, a=None, b=None) -> float:
    """Exact W2 between empirical measures on x [n, d] and y [m, d] (POT network simplex).

    Args:
      x, y: sample arrays (trailing dims are flattened).
      a, b: optional weights [n], [m] summing to 1 (uniform by default).
    Returns: W2 as a float (float64 arithmetic on the host).
    """
    import ot

    x, y = _as2d(x, "x"), _as2d(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    a = np.full(x.shape[0], 1.0 / x.shape[0]) if a is None else np.asarray(a, np.float64)
    b = np.full(y.shape[0], 1.0 / y.shape[0]) if b is None else np.asarray(b, np.float64)
    cost = ot.dist(x, y, metric="sqeuclidean")
    w2sq = ot.emd2(a, b, cost, numItermax=10_000_000)
    return float(np.sqrt(max(float(w2sq), 0.0)))


def w2_sinkhorn(
    x, y, epsilon: float = 1e-2, *, debiased: bool = True, relative_epsilon: bool = True
) -> float:
    """Entropic-OT estimate of W2 with ott-jax's Sinkhorn solver (in-graph, jit-able).

    Args:
      x [n, d], y [m, d]: samples.
      epsilon: entropic regularisation; relative to the mean cost when `relative_epsilon`.
      debiased: return the Sinkhorn divergence S = OT_eps(x,y) - (OT_eps(x,x) + OT_eps(y,y)) / 2
        (Feydy et al. 2019), which removes the O(eps) entropic bias.
    Returns: sqrt of the (regularised) transport cost.
    """
    import jax
    import jax.numpy as jnp
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn

    x = jnp.asarray(_as2d(x, "x"), jnp.float32)
    y = jnp.asarray(_as2d(y, "y"), jnp.float32)

    @jax.jit
    def divergence(u, v):
        def cost(a, b):
            geom = pointcloud.PointCloud(
                a, b, epsilon=epsilon, relative_epsilon="mean" if relative_epsilon else None
            )
            return sinkhorn.Sinkhorn(max_iterations=5000)(linear_problem.LinearProblem(geom)).reg_ot_cost

        c = cost(u, v)
        if debiased:
            c = c - 0.5 * (cost(u, u) + cost(v, v))
        return c

    c = divergence(x, y)
    return float(np.sqrt(max(float(c), 0.0)))


def gaussian_w2(m1, s1, m2, s2) -> float:
    """Closed-form W2 between N(m1, S1) and N(m2, S2) (means [d], covariances [d, d])."""
    m1, m2 = np.atleast_1d(np.asarray(m1, np.float64)), np.atleast_1d(np.asarray(m2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    r2 = scipy.linalg.sqrtm(s2)
    cross = scipy.linalg.sqrtm(r2 @ s1 @ r2)
    w2sq = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2.0 * np.real(cross))
    return float(np.sqrt(max(w2sq, 0.0)))


__all__ = ["gaussian_w2", "w2_exact", "w2_sinkhorn"]
