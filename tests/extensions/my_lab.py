"""A researcher's own parts, written outside the package: one of each kind, added by explicit
``register_*`` calls when this module is imported (a config lists it in ``imports``).

This file is the worked example of docs/design.md ("Adding a part"); tests/test_extensions.py runs a
training run with every part by name through the CLIs, resumes it, samples and evaluates it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_jax import couplings, schedules, time_distributions, weightings
from diffusion_jax.models import layers as L
from diffusion_jax.models import register_network
from diffusion_jax.samplers.base import Sampler
from diffusion_jax.samplers.grids import register_grid
from diffusion_jax.samplers.registry import register_sampler


# --- a schedule: sub-VP (Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 29) --
@dataclasses.dataclass(frozen=True)
class SubVP(schedules.Schedule):
    """The sub-VP SDE's perturbation kernel: alpha = exp(-B/2), sigma = 1 - exp(-B), with
    B(t) = beta_min t + (beta_max - beta_min) t^2 / 2 (linear beta, as VP). Only alpha and sigma are
    written: derivatives, logSNR and its inverse come from the `Schedule` base."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def _b(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t):
        return jnp.exp(-0.5 * self._b(jnp.asarray(t)))

    def sigma(self, t):
        return -jnp.expm1(-self._b(jnp.asarray(t)))


# --- a weighting: P2 (Choi et al. 2022, "Perception Prioritized Training", eq. 8) ------------------
def _p2(c, k, gamma):
    # eps-MSE weighted by 1 / (k + SNR)^gamma, SNR = e^lambda
    return "eps", (k + jnp.exp(c.lam)) ** (-gamma)


P2 = weightings.Weighting(_p2, {"k": 1.0, "gamma": 1.0})


# --- a time distribution: Beta(a, b) on [0, 1] ----------------------------------------------------
def _beta_sample(key, n, schedule, dtype, a, b):
    return jax.random.beta(key, a, b, (n,), dtype)


def _beta_logp(t, schedule, a, b):
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    return log_norm + (a - 1.0) * jnp.log(t) + (b - 1.0) * jnp.log1p(-t)


def _beta_check(kw):
    if not (kw["a"] > 0 and kw["b"] > 0):
        raise ValueError(f"objective.time_kwargs: a and b must be > 0, got {kw['a']}, {kw['b']}")


BETA = time_distributions.TimeDistribution(_beta_sample, _beta_logp, {"a": 2.0, "b": 2.0}, check=_beta_check)


# --- a coupling: monotone pairing along one direction (exact OT in 1-D) -------------------------
@dataclasses.dataclass(frozen=True)
class SortedCoupling(couplings.Coupling):
    """Pairs the k-th smallest data row with the k-th smallest noise row, ranked by coordinate
    `axis` of the flattened rows: the monotone rearrangement, which is the exact OT plan for any
    convex cost in one dimension (Villani 2003, Thm 2.18), in-graph and O(B log B)."""

    axis: int = 0

    def validate(self):
        if int(self.axis) < 0:
            raise ValueError(f"objective.coupling_kwargs.axis must be >= 0, got {self.axis}")

    def pair(self, key, x, noise):
        xs = x.reshape(x.shape[0], -1)[:, self.axis]
        ns = noise.reshape(noise.shape[0], -1)[:, self.axis]
        rank_x = jnp.argsort(jnp.argsort(xs))
        return noise[jnp.argsort(ns)][rank_x]


# --- a network: a two-layer tanh MLP over [x, t] ----------------------------------------------------
class TinyNet(nnx.Module):
    """x [B, dim], t_in [B] -> [B, dim]: Linear(dim + 1, width), tanh, Linear(width, dim)."""

    DEFAULTS = {"dim": 2, "width": 32}

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        self.l1 = L.linear(cfg.dim + 1, cfg.width, rngs=rngs)
        self.l2 = L.linear(cfg.width, cfg.dim, rngs=rngs, names=("mlp", "embed"))

    def __call__(
        self, x, t_in, *, label=None, context=None, context_mask=None, deterministic=True, rngs=None
    ):
        if label is not None or context is not None:
            raise ValueError("TinyNet is unconditional")
        h = jnp.concatenate([x, t_in.astype(x.dtype)[:, None]], axis=-1)
        return self.l2(jnp.tanh(self.l1(h)))


# --- a sampler: Ralston's second-order Runge-Kutta method (a midpoint variant) ----------------------
@dataclasses.dataclass(frozen=True)
class Ralston(Sampler):
    """Ralston's method (Ralston 1962, "Runge-Kutta methods with minimum error bounds"; Hairer et al.,
    "Solving ODEs I", II.1): k1 = f(z, t), k2 = f(z + 2/3 h k1, t + 2/3 h), z' = z + h (k1 + 3 k2) / 4,
    on the probability-flow ODE dz/dt = velocity(z, t). Second order, the 2-stage explicit method
    with the smallest truncation-error bound; its stages never sit at t_next. NFE: 2N."""

    name: ClassVar[str] = "ralston"

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        z, h = carry.z, t_next - t_cur
        k1 = ev.velocity(z, t_cur)
        k2 = ev.velocity(z + (2.0 / 3.0) * h * k1, t_cur + (2.0 / 3.0) * h)
        return z + h * (0.25 * k1 + 0.75 * k2), ()

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        return 2 * num_steps


# --- a time grid: Chebyshev-Lobatto points, denser at both ends ------------------------------------
def chebyshev_grid(num_steps, schedule, t_min, t_max):
    """t_i = t_min + (t_max - t_min) (1 + cos(pi i / N)) / 2, i = 0..N: descending from t_max to t_min,
    clustered at both endpoints (the Chebyshev-Lobatto nodes mapped to [t_min, t_max])."""
    u = np.cos(np.pi * np.arange(num_steps + 1) / num_steps)
    return t_min + (t_max - t_min) * (1.0 + u) / 2.0


schedules.register_schedule("sub_vp", SubVP)
weightings.register_weighting("p2", P2)
time_distributions.register_time_distribution("beta", BETA)
couplings.register_coupling("sorted", SortedCoupling)
register_network("tiny_net", TinyNet, TinyNet.DEFAULTS)
register_grid("chebyshev", chebyshev_grid)
register_sampler("ralston", Ralston)
