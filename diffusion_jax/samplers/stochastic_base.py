"""The base of the stochastic samplers (`stochastic.py`, `ancestral.py`, `restart.py`): the grid
checks of `StochasticSampler`, the eta / s_noise knobs of `AncestralNoiseSampler`, and the step
helpers they share (the final-step noise mask, tagged per-step noise, 1 - r without cancellation).
Split from `stochastic.py`, which re-exports these names; its docstring states the conventions.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.predictions import Denoiser
from diffusion_jax.samplers.base import (
    ALPHA_EPS,
    Sampler,
    noise_like,
)

Array = jax.Array


# -------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------


def _one_minus_r(lam_t: Array, lam_s: Array) -> Array:
    """1 - exp(lambda_t - lambda_s) without cancellation (lambda_s may be +inf at sigma_s = 0)."""
    return -jnp.expm1(lam_t - lam_s)


def _final_mask(i: Array, num_steps: int, dtype) -> Array:
    """0 on the last step (no noise added there), 1 elsewhere."""
    return jnp.where(i == num_steps - 1, 0.0, 1.0).astype(dtype)


def _noise(keys: Array | None, z: Array, tag: int | None = None) -> Array:
    """Per-sample standard normal noise; `tag` derives an independent stream from the step key."""
    if keys is not None and tag is not None:
        keys = jax.vmap(lambda k: jax.random.fold_in(k, tag))(keys)
    return noise_like(keys, z)


@dataclasses.dataclass(frozen=True)
class StochasticSampler(Sampler):
    """Base for the samplers in this module: stochastic, with grid checks.

    Flags:
      needs_alpha (True unless a subclass says otherwise): the update divides by alpha(t_cur)
        (sigma~ coordinates, SDE drift alpha'/alpha, or logSNR), so alpha must be > 0 at every time a
        step starts from: checked on the GRID (`check_grid`), so a rectified-flow model runs with a
        grid starting below t = 1 (e.g. t_max=0.999). Under jit with a traced grid, the schedule's own
        t_max stands in for grid[0] (`check_traced_grid`).
      multistep: the carry keeps a history of earlier steps (RePaint-style jumps cannot reuse it).
    """

    stochastic: ClassVar[bool] = True
    needs_alpha = True
    multistep: ClassVar[bool] = False

    def check_traced_grid(self, denoiser: Denoiser) -> None:
        """Traced grid (values unknown before compiling): refuse if the schedule's t_max has alpha ~ 0."""
        sch = denoiser.schedule
        if self.needs_alpha:
            a = float(sch.alpha(np.float64(sch.t_max)))
            if not a > ALPHA_EPS:
                raise ValueError(
                    f"{self.name}: needs alpha(t) > 0 where a step starts, but {sch.name} has "
                    f"alpha(t_max={sch.t_max}) = {a} and the grid is traced (not checkable); pass a concrete "
                    "grid starting below t = 1 (grid t_max=0.999) or use ddpm / ddim_eta"
                )

    def check_grid(self, denoiser: Denoiser, grid: np.ndarray) -> None:
        """Raise ValueError if a concrete grid [N+1] is unusable with `denoiser` (before compiling)."""
        sch = denoiser.schedule
        if grid.ndim != 1 or grid.shape[0] < 2:
            raise ValueError(f"{self.name}: grid must be 1-D with at least 2 times, got shape {grid.shape}")
        if not np.all(np.diff(grid) < 0):
            raise ValueError(f"{self.name}: grid must be strictly decreasing, got {grid}")
        starts = grid[:-1]
        sig = np.asarray(sch.sigma(starts))
        if not np.all(sig > 0):
            raise ValueError(
                f"{self.name}: sigma(t) must be > 0 at every step start; grid times {starts[sig <= 0]} "
                f"have sigma = 0 under {sch.name}"
            )
        alp = np.asarray(sch.alpha(starts))
        if (self.needs_alpha or denoiser.kind in ("eps", "score")) and not np.all(alp > ALPHA_EPS):
            why = "this sampler" if self.needs_alpha else f"a {denoiser.kind!r}-prediction denoiser"
            raise ValueError(
                f"{self.name}: {why} needs alpha(t) > 0 where a step starts; grid times "
                f"{starts[alp <= ALPHA_EPS]} have alpha ~ 0 under {sch.name}. Start the grid below t = 1 "
                "(grid t_max=0.999)" + ("" if self.needs_alpha else " or use an x0 / v / velocity model")
            )


@dataclasses.dataclass(frozen=True)
class AncestralNoiseSampler(StochasticSampler):
    """Base for the samplers with k-diffusion's ancestral-noise knobs: the noise fraction `eta` >= 0
    and the noise scale `s_noise` >= 0 (both 1 by default), checked by `validate`."""

    eta: float = 1.0
    s_noise: float = 1.0

    def validate(self, schedule, num_steps):
        super().validate(schedule, num_steps)
        if self.eta < 0 or self.s_noise < 0:
            raise ValueError(f"{self.name}: eta and s_noise must be >= 0, got {self.eta}, {self.s_noise}")
