"""The `Schedule` base class (a Gaussian path z_t = alpha(t) x + sigma(t) eps with generic
derivatives, logSNR, its inverse and the forward SDE) and `PathCoeffs`. Split from `schedules.py`,
which re-exports these names, states the conventions and holds the concrete schedules.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class PathCoeffs(NamedTuple):
    """alpha(t), sigma(t) and their time derivatives, each with the shape of t."""

    alpha: Array
    sigma: Array
    d_alpha: Array
    d_sigma: Array


def _as_float(t):
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    return t


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base class. Subclasses implement `alpha` and `sigma`; everything else has a generic default.

    Generic defaults: derivatives by forward-mode autodiff (`jax.jvp`), logSNR from alpha and sigma,
    and its inverse by bisection on [0, 1] (logSNR is decreasing), 100 halvings so it is exact to
    float64 resolution. Subclasses override these with closed forms where they exist.
    """

    t_min: float = 1e-3
    t_max: float = 1.0

    @property
    def name(self) -> str:
        return type(self).__name__

    # --- to implement ---------------------------------------------------------------------------
    def alpha(self, t) -> Array:
        raise NotImplementedError

    def sigma(self, t) -> Array:
        raise NotImplementedError

    # --- generic defaults -----------------------------------------------------------------------
    def d_alpha(self, t) -> Array:
        t = _as_float(t)
        return jax.jvp(self.alpha, (t,), (jnp.ones_like(t),))[1]

    def d_sigma(self, t) -> Array:
        t = _as_float(t)
        return jax.jvp(self.sigma, (t,), (jnp.ones_like(t),))[1]

    def __call__(self, t) -> PathCoeffs:
        t = _as_float(t)
        return PathCoeffs(self.alpha(t), self.sigma(t), self.d_alpha(t), self.d_sigma(t))

    def logsnr(self, t) -> Array:
        t = _as_float(t)
        return 2.0 * (jnp.log(self.alpha(t)) - jnp.log(self.sigma(t)))

    def d_logsnr(self, t) -> Array:
        """d lambda / dt = 2 (alpha'/alpha - sigma'/sigma) (negative: logSNR decreases)."""
        t = _as_float(t)
        c = self(t)
        return 2.0 * (c.d_alpha / c.alpha - c.d_sigma / c.sigma)

    def t_from_logsnr(self, lam) -> Array:
        lam = _as_float(lam)
        lo = jnp.zeros_like(lam)
        hi = jnp.ones_like(lam)

        def body(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            # logSNR decreasing: if logsnr(mid) > lam the solution lies above mid.
            above = self.logsnr(mid) > lam
            return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

        lo, hi = jax.lax.fori_loop(0, 100, body, (lo, hi))
        return 0.5 * (lo + hi)

    def sde(self, t) -> tuple[Array, Array]:
        """Drift coefficient f(t) and squared diffusion g(t)^2 of the forward SDE
        dz = f(t) z dt + g(t) dW whose marginals are this path (Kingma et al. 2021, eq. 30-31;
        Song et al. 2021, eq. 5): f = alpha'/alpha, g^2 = d(sigma^2)/dt - 2 f sigma^2.
        """
        c = self(_as_float(t))
        f = c.d_alpha / c.alpha
        g2 = 2.0 * c.sigma * c.d_sigma - 2.0 * f * c.sigma**2
        return f, g2
