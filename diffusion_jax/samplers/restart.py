"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes",
Algorithm 1), on any path through EDM's sigma~ = sigma / alpha, x~ = z / alpha coordinates.

The main process is EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1) over the grid.
When a step lands on the first grid time with 0 < sigma~_next <= `restart_min`, the Restart loop runs
there `restart_k` times (Xu et al. 2023, eq. 4 and Algorithm 1):
    x~ <- x~ + s_noise sqrt(restart_max^2 - sigma~_next^2) n          (forward jump to restart_max)
    x~ <- Heun from restart_max back to sigma~_next in `restart_steps` steps on a Karras rho = 7
          sub-grid (Karras et al. 2022, eq. 5).
The restart interval is [sigma~_next, restart_max] (the paper's [t_min, t_max], with t_min the grid
time the main process reached). The defaults (restart_min 0.06, restart_max 0.3, 2 restarts of 3
steps) are illustrative: the paper tunes the interval and K per dataset and model.
Noise: the k-th jump draws from fold_in(step_key, k).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp

from diffusion_jax.samplers.ancestral import x0_at_sigma
from diffusion_jax.samplers.base import step_noise
from diffusion_jax.samplers.stochastic import StochasticSampler

Array = jax.Array


def _heun(ev, x: Array, s: Array, s_next: Array, d0: Array | None = None) -> Array:
    """One EDM Heun step of x~ from sigma~ s to s_next > 0 (Karras et al. 2022, Alg. 1 lines 4-8)."""
    d = (x - (x0_at_sigma(ev, x, s) if d0 is None else d0)) / s
    x_e = x + (s_next - s) * d
    d2 = (x_e - x0_at_sigma(ev, x_e, s_next)) / s_next
    return x + (s_next - s) * 0.5 * (d + d2)


@dataclasses.dataclass(frozen=True)
class Restart(StochasticSampler):
    """Restart sampling (Xu et al. 2023, Algorithm 1): EDM Heun on the grid, plus `restart_k`
    forward-noise / Heun-backward loops over [sigma~, restart_max] at the first grid time with
    0 < sigma~ <= restart_min (see the module docstring; sigma~ units).
    NFE: 2N (2N - 1 when the grid ends at sigma = 0) + 2 restart_k restart_steps when the grid has such
    a time after one above restart_min (always the case on grids from high noise down to t_min > 0
    with sigma~(t_min) <= restart_min, and `nfe()` assumes it).
    """

    name: ClassVar[str] = "restart"
    restart_min: float = 0.06
    restart_max: float = 0.3
    restart_k: int = 2
    restart_steps: int = 3
    s_noise: float = 1.0

    def validate(self, schedule, num_steps):
        super().validate(schedule, num_steps)
        if not 0.0 < self.restart_min < self.restart_max:
            raise ValueError(
                f"{self.name}: need 0 < restart_min < restart_max, got {self.restart_min}, {self.restart_max}"
            )
        for f in ("restart_k", "restart_steps"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{self.name}: `{f}` must be an integer >= 1, got {v!r}")
        if self.s_noise < 0:
            raise ValueError(f"{self.name}: s_noise must be >= 0, got {self.s_noise}")

    def nfe(self, num_steps, final_zero=False):
        return 2 * num_steps - (1 if final_zero else 0) + 2 * self.restart_k * self.restart_steps

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        sch = ev.schedule
        a_c, a_n = sch.alpha(t_cur), sch.alpha(t_next)
        st, st_n = sch.sigma(t_cur) / a_c, sch.sigma(t_next) / a_n
        x = carry.z / a_c
        d = (x - ev.x0(carry.z, t_cur)) / st
        x_e = x + (st_n - st) * d

        def corrector(_):
            d2 = (x_e - ev.x0(a_n * x_e, t_next)) / st_n
            return x + (st_n - st) * 0.5 * (d + d2)

        x = ev.cond(st_n > 0, corrector, lambda _: x_e, None)
        trigger = (st_n > 0) & (st_n <= self.restart_min) & (st > self.restart_min)
        x = ev.cond(trigger, lambda x: self._restart(ev, x, st_n, keys), lambda x: x, x)
        return a_n * x, ()

    def _restart(self, ev, x: Array, s_lo: Array, keys) -> Array:
        rho, n = 7.0, self.restart_steps
        s_lo = jnp.maximum(s_lo, 1e-30)  # (only runs with s_lo > 0)
        u = jnp.linspace(0.0, 1.0, n + 1, dtype=x.dtype)
        hi = jnp.asarray(self.restart_max, x.dtype)
        sub = (hi ** (1 / rho) + u * (s_lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        sub = sub.at[0].set(hi).at[-1].set(s_lo)

        def one_restart(k, x):
            x = x + self.s_noise * jnp.sqrt(hi**2 - s_lo**2) * step_noise(keys, x, 1 + k)
            return ev.fori_loop(0, n, lambda j, x: _heun(ev, x, sub[j], sub[j + 1]), x)

        return ev.fori_loop(0, self.restart_k, one_restart, x)


__all__ = ["Restart"]
