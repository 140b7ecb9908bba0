"""Two-stage exponential-integrator samplers with ancestral / SDE noise (k-diffusion's "DPM++ 2S a"
and "DPM++ SDE"), on any path through EDM's sigma~ = sigma / alpha, x~ = z / alpha coordinates
(Karras et al. 2022, eq. 4): z = alpha(t) x~, and the model is queried at the time t with
sigma~(t) = s through `schedule.t_from_logsnr(-2 log s)` (the grid time itself where s is one).

Notation (Lu et al. 2022b, "DPM-Solver++", in lambda = -log sigma~ = logSNR / 2):
  ancestral split (Ho et al. 2020's posterior variance, as in k-diffusion's `get_ancestral_step`)
  of a move sigma_from -> sigma_to with noise fraction eta:
      sigma_up = min(sigma_to, eta sigma_to sqrt(1 - sigma_to^2 / sigma_from^2)),
      sigma_down = sqrt(sigma_to^2 - sigma_up^2);
  DPM-Solver++ first-order move of x~ from sigma~ to sigma' with data estimate D:
      x~' = (sigma' / sigma~) x~ - (sigma' / sigma~ - 1) D           (Lu et al. 2022b, eq. 9).
Noise comes from the per-step keys only: fold_in(step_key, j) for the j-th draw. The last step of
the grid adds no noise (the convention of `stochastic.py`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from diffusion_jax.samplers.base import step_noise
from diffusion_jax.samplers.stochastic import AncestralNoiseSampler

Array = jax.Array


def ancestral_split(s_from: Array, s_to: Array, eta: float) -> tuple[Array, Array]:
    """(sigma_down, sigma_up) of a move s_from -> s_to (sigma~ units, s_to <= s_from), noise
    fraction eta (see the module docstring). eta = 0: (s_to, 0)."""
    one_minus_r = jnp.where(s_from > 0, 1.0 - (s_to / s_from) ** 2, 0.0)
    up = jnp.minimum(s_to, eta * s_to * jnp.sqrt(jnp.maximum(one_minus_r, 0.0)))
    down = jnp.sqrt(jnp.maximum(s_to**2 - up**2, 0.0))
    return down, up


def x0_at_sigma(ev, x: Array, s: Array) -> Array:
    """x0-hat of x~ = x [B, ...] at sigma~ = s (scalar > 0): one evaluation at t(s), z = alpha(t) x."""
    sch = ev.schedule
    t = sch.t_from_logsnr(-2.0 * jnp.log(s)).astype(x.dtype)
    return ev.x0(sch.alpha(t) * x, t)


def _sigma_tilde(sch, t):
    return sch.sigma(t) / sch.alpha(t)


@dataclasses.dataclass(frozen=True)
class _TwoStageAncestral(AncestralNoiseSampler):
    """Shared part of the two-stage samplers below: NFE 2N (2N - 1 when the grid ends at sigma = 0,
    that step being the Euler step) and the start of a step in sigma~ coordinates."""

    def nfe(self, num_steps, final_zero=False):
        return 2 * num_steps - (1 if final_zero else 0)

    @staticmethod
    def _start(ev, carry, t_cur, t_next):
        """(alpha(t_next), sigma~(t_cur), sigma~(t_next), x~ = z / alpha(t_cur), D = x0-hat(z, t_cur))."""
        sch = ev.schedule
        st, st_n = _sigma_tilde(sch, t_cur), _sigma_tilde(sch, t_next)
        return sch.alpha(t_next), st, st_n, carry.z / sch.alpha(t_cur), ev.x0(carry.z, t_cur)


@dataclasses.dataclass(frozen=True)
class DPMpp2SAncestral(_TwoStageAncestral):
    """DPM-Solver++(2S) with ancestral noise: k-diffusion's `sample_dpmpp_2s_ancestral` (Lu et al.
    2022b, Algorithm 1 with r = 1/2, on the deterministic part sigma~ -> sigma_down of the ancestral
    split; then + s_noise sigma_up n):
        D = x0-hat(x~, sigma~);  (sigma_down, sigma_up) = split(sigma~, sigma~_next, eta)
        if sigma_down = 0:  x~' = D                      (Euler to 0)
        else:  s = sqrt(sigma~ sigma_down)  (the lambda midpoint),
               u = (s / sigma~) x~ - (s / sigma~ - 1) D,
               x~' = (sigma_down / sigma~) x~ - (sigma_down / sigma~ - 1) x0-hat(u, s)
        x~' += s_noise sigma_up n   (not on the last step).
    NFE: 2N; 2N - 1 when the grid ends at sigma = 0 (that step is the Euler step).
    """

    name: ClassVar[str] = "dpmpp_2s_ancestral"

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        a_n, st, st_n, x, d0 = self._start(ev, carry, t_cur, t_next)
        down, up = ancestral_split(st, st_n, self.eta)

        def two_stage(x):
            s = jnp.sqrt(st * down)
            u = (s / st) * x - (s / st - 1.0) * d0
            return (down / st) * x - (down / st - 1.0) * x0_at_sigma(ev, u, s)

        x = ev.cond(down > 0, two_stage, lambda x: d0 + 0.0 * x, x)
        mask = jnp.where(i == num_steps - 1, 0.0, 1.0).astype(x.dtype)
        x = x + mask * self.s_noise * up * step_noise(keys, x, 0)
        return a_n * x, ()


@dataclasses.dataclass(frozen=True)
class DPMppSDE(_TwoStageAncestral):
    """DPM-Solver++ SDE: k-diffusion's `sample_dpmpp_sde` (a stochastic DPM-Solver++(2S), Lu et al.
    2022b, with ancestral noise on both stages), r = 1/2 by default. With lambda = -log sigma~,
    h = lambda_next - lambda, s = exp(-(lambda + r h)), fac = 1 / (2r):
        D = x0-hat(x~, sigma~)
        if sigma~_next = 0:  x~' = D                                      (Euler to 0)
        else:  (d1, u1) = split(sigma~, s, eta);   x2 = (d1/sigma~) x~ - (d1/sigma~ - 1) D + s_noise u1 n1
               D2 = x0-hat(x2, s);  D' = (1 - fac) D + fac D2
               (d2, u2) = split(sigma~, sigma~_next, eta);
               x~' = (d2/sigma~) x~ - (d2/sigma~ - 1) D' + s_noise u2 n2
    Noise: k-diffusion draws n1, n2 from one Brownian path W over sigma~ (BrownianTreeNoiseSampler:
    n = (W(b) - W(a)) / sqrt|b - a| over [sigma~, s] and [sigma~, sigma~_next]); here the same joint
    law from two per-step draws g1, g2 (fold_in(step_key, 1 / 2)):
        n1 = g1,  n2 = (sqrt(sigma~ - s) g1 + sqrt(s - sigma~_next) g2) / sqrt(sigma~ - sigma~_next).
    The last step's final noise u2 n2 is not added. NFE: 2N; 2N - 1 when the grid ends at sigma = 0.
    """

    name: ClassVar[str] = "dpmpp_sde"
    r: float = 0.5

    def validate(self, schedule, num_steps):
        super().validate(schedule, num_steps)
        if not 0.0 < self.r < 1.0:
            raise ValueError(f"{self.name}: need 0 < r < 1, got r={self.r}")

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        a_n, st, st_n, x, d0 = self._start(ev, carry, t_cur, t_next)
        mask = jnp.where(i == num_steps - 1, 0.0, 1.0).astype(x.dtype)
        fac = 0.5 / self.r

        def two_stage(x):
            st_n_safe = jnp.where(st_n > 0, st_n, st)  # (this branch only runs when st_n > 0)
            s = st * jnp.exp(self.r * (jnp.log(st_n_safe) - jnp.log(st)))
            g1, g2 = step_noise(keys, x, 1), step_noise(keys, x, 2)
            n2 = (jnp.sqrt(st - s) * g1 + jnp.sqrt(s - st_n_safe) * g2) / jnp.sqrt(st - st_n_safe)
            d1, u1 = ancestral_split(st, s, self.eta)
            x2 = (d1 / st) * x - (d1 / st - 1.0) * d0 + self.s_noise * u1 * g1
            dd = (1.0 - fac) * d0 + fac * x0_at_sigma(ev, x2, s)
            d2, u2 = ancestral_split(st, st_n_safe, self.eta)
            return (d2 / st) * x - (d2 / st - 1.0) * dd + mask * self.s_noise * u2 * n2

        x = ev.cond(st_n > 0, two_stage, lambda x: d0 + 0.0 * x, x)
        return a_n * x, ()


__all__ = ["DPMpp2SAncestral", "DPMppSDE", "ancestral_split", "x0_at_sigma"]
