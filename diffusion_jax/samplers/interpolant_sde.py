"""Euler-Maruyama on the stochastic-interpolant SDE with a diffusion coefficient chosen at sampling time.

For an interpolant with marginal velocity v(t, x) and score s(t, x), every eps(t) >= 0 gives an SDE
with the interpolant's marginals (Albergo & Vanden-Eijnden 2023, "Stochastic interpolants: a unifying
framework", Thm. 2.21 / eq. 2.33; `interpolants` module docstring). In our time (source at t = 1,
data at t = 0), one step from t to t - h (h > 0):

    X_{t-h} = X_t - h (v(t, X_t) - eps(t) s(t, X_t)) + sqrt(2 eps(t) h) xi,   xi ~ N(0, I),

which is the probability-flow ODE's Euler step for eps = 0, and SB-CFM's generative SDE (Tong et al.
2024b, eq. 8) for eps = sigma^2 / 2. Here eps(t) = diffusion * shape(t) with shape 'constant' (1) or
'bridge' (t (1 - t), vanishing where a bridge's learned score is weighted away).

The denoiser must be a two-head one (`objectives.make_denoiser_from_config(..., head='both')` of an
objective with score_head): its raw output's last axis is [velocity, score]. NFE = N (one call per
step; both heads come from it). Per-step noise is `fold_in(sample_key, step)` (`base.run`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax.numpy as jnp

from diffusion_jax.samplers.base import Sampler, noise_like

SHAPES = ("constant", "bridge")


@dataclasses.dataclass(frozen=True)
class InterpolantEM(Sampler):
    """Euler-Maruyama with diffusion eps(t) = diffusion * shape(t) (module docstring)."""

    name: ClassVar[str] = "interpolant_em"
    stochastic: ClassVar[bool] = True
    needs_score_head: ClassVar[bool] = True
    diffusion: float = 0.0
    shape: str = "constant"

    def validate(self, schedule, num_steps: int) -> None:
        super().validate(schedule, num_steps)
        if not float(self.diffusion) >= 0.0:
            raise ValueError(f"{self.name}: diffusion must be >= 0, got {self.diffusion}")
        if self.shape not in SHAPES:
            raise ValueError(f"{self.name}: shape={self.shape!r} unknown; valid: {list(SHAPES)}")

    def _eps(self, t):
        return self.diffusion * (t * (1.0 - t) if self.shape == "bridge" else jnp.ones_like(t))

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        z = carry.z
        out = ev.raw(z, t_cur)
        if out.shape[-1] != 2 * z.shape[-1]:
            raise ValueError(
                f"{self.name} needs a two-head [velocity, score] denoiser (head='both'); the output has "
                f"{out.shape[-1]} channels for {z.shape[-1]} data channels"
            )
        v, s = out[..., : z.shape[-1]], out[..., z.shape[-1] :]
        h = t_cur - t_next
        e = self._eps(t_cur).astype(z.dtype)
        z_next = z - h * (v - e * s) + jnp.sqrt(2.0 * e * h) * noise_like(keys, z)
        return z_next, ()


__all__ = ["InterpolantEM"]
