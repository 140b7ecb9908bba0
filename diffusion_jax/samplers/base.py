"""The sampler interface: an initial state plus a step function over (t_cur, t_next) pairs.

A sampler is a frozen dataclass of its hyperparameters (hashable, so it is a static argument under
`jax.jit`). `run` drives it with one `jax.lax.scan` over a descending time grid, so compile time
does not grow with the number of steps and nothing returns to the host between steps. Multistep
methods keep their history in the scan carry. Adaptive solvers override `run` (diffrax, in-graph).

Carry convention: a dict with at least ``z`` ([B, ...] current state) and ``nfe`` (int32 scalar,
network evaluations so far). Randomness: `run` receives one key per sample ([B] typed key array)
and hands the step the per-step keys ``fold_in(sample_key, step_index)``, so sample i never depends
on batch size or device count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.predictions import Denoiser
from diffusion_jax.schedules import Schedule

Array = jax.Array
Carry = dict[str, Any]


class SampleOutput(NamedTuple):
    """samples [B, ...]; trajectory [N+1, B, ...] (z at every grid time, grid[0] first) or None;
    nfe int32 scalar: network evaluations actually used."""

    samples: Array
    trajectory: Array | None
    nfe: Array


def noise_like(keys: Array | None, z: Array) -> Array:
    """Standard normal noise [B, ...] with row b drawn from keys[b] only (batch-size invariant)."""
    if keys is None:
        raise ValueError("this sampler is stochastic: pass one PRNG key per sample (`keys`, shape [B])")
    if keys.shape != (z.shape[0],):
        raise ValueError(f"keys must have shape ({z.shape[0]},) (one per sample), got {keys.shape}")
    return jax.vmap(lambda k: jax.random.normal(k, z.shape[1:], z.dtype))(keys)


def step_keys(keys: Array | None, i) -> Array | None:
    """Per-step keys: fold_in(sample_key, step index) for every sample."""
    if keys is None:
        return None
    return jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Base class. Subclasses set `name`, implement `step` (and `init`/`nfe` when needed).

    Contract:
      init(denoiser, z, grid) -> carry          (carry['z'] = z, carry['nfe'] = 0 by default)
      step(denoiser, carry, t_cur, t_next, i, keys, num_steps) -> carry
      finalize(denoiser, carry) -> samples [B, ...]
      nfe(num_steps, final_zero=False) -> int: static NFE accounting (documented per sampler);
                                final_zero means the last grid time has sigma = 0, where samplers
                                that would evaluate the denoiser there take a cheaper step instead
                                (e.g. EDM Alg. 1-2's Euler last step: Heun 2N - 1, not 2N)
      validate(schedule, num_steps): raise ValueError for impossible settings, before compilation
    """

    name: ClassVar[str] = "base"
    stochastic: ClassVar[bool] = False

    def init(self, denoiser: Denoiser, z: Array, grid: Array) -> Carry:
        return {"z": z, "nfe": jnp.zeros((), jnp.int32)}

    def step(
        self, denoiser: Denoiser, carry: Carry, t_cur: Array, t_next: Array, i: Array, keys, num_steps: int
    ) -> Carry:
        raise NotImplementedError

    def finalize(self, denoiser: Denoiser, carry: Carry) -> Array:
        return carry["z"]

    def nfe(self, num_steps: int, final_zero: bool = False) -> int:
        """Network evaluations of a run over `num_steps` steps (the default: one per step, also on
        a final step to sigma = 0); equals the `nfe` the run counts."""
        return num_steps

    # True when the update works in logSNR / sigma~ = sigma / alpha coordinates, which are infinite
    # where alpha = 0 (rectified flow at t = 1): such a sampler cannot start a step there.
    needs_alpha: ClassVar[bool] = False

    def check_grid(self, denoiser: Denoiser, grid: np.ndarray) -> None:
        """Raise ValueError if a concrete grid [N+1] cannot be used with `denoiser` (before compiling)."""
        if not self.needs_alpha:
            return
        starts = np.asarray(grid, np.float64)[:-1]
        alp = np.asarray(denoiser.schedule.alpha(starts))
        if not np.all(alp > ALPHA_EPS):
            raise ValueError(
                f"{self.name}: steps in logSNR coordinates need alpha(t) > 0 where a step starts; grid "
                f"times {starts[alp <= ALPHA_EPS]} have alpha ~ 0 under {denoiser.schedule.name}. Start the "
                "grid below t = 1 (e.g. t_max=0.999) or use a sampler that integrates in t (euler, heun, "
                "midpoint, rk4, ddim, dpmpp_2m, dopri5, tsit5)"
            )

    def validate(self, schedule: Schedule, num_steps: int) -> None:
        if num_steps < 1:
            raise ValueError(f"{self.name}: the grid needs at least 2 times (1 step), got {num_steps} steps")

    def run(
        self,
        denoiser: Denoiser,
        z: Array,
        grid: Array,
        keys: Array | None = None,
        return_trajectory: bool = False,
    ) -> SampleOutput:
        """Integrate from z at grid[0] through grid[-1] (descending times, shape [N+1]).

        Args:
          denoiser: any `Denoiser` (any schedule, any prediction kind).
          z: [B, ...] initial state at time grid[0].
          grid: [N+1] descending times; explicit, so runs can be compared step by step elsewhere.
          keys: [B] typed PRNG keys, one per sample (required if `self.stochastic`).
          return_trajectory: also return z at every grid time.
        """
        grid = jnp.asarray(grid, z.dtype)
        if grid.ndim != 1:
            raise ValueError(f"grid must be 1-D [N+1], got shape {grid.shape}")
        num_steps = grid.shape[0] - 1
        self.validate(denoiser.schedule, num_steps)
        g = _concrete(grid)
        if g is not None:
            with jax.ensure_compile_time_eval():  # eager even while `run` is traced under jit
                self.check_grid(denoiser, g)
        if self.stochastic and keys is None:
            noise_like(None, z)
        carry = self.init(denoiser, z, grid)

        def body(carry, xs):
            t_cur, t_next, i = xs
            carry = self.step(denoiser, carry, t_cur, t_next, i, step_keys(keys, i), num_steps)
            return carry, (carry["z"] if return_trajectory else None)

        carry, traj = jax.lax.scan(body, carry, (grid[:-1], grid[1:], jnp.arange(num_steps)))
        samples = self.finalize(denoiser, carry)
        if return_trajectory:
            traj = jnp.concatenate([z[None], traj], axis=0)
        return SampleOutput(samples, traj, carry["nfe"])


# alpha below this counts as 0 (e.g. VPCosine's cos(pi/2) ~ 6e-17): dividing by it is meaningless.
ALPHA_EPS = 1e-10


def _concrete(grid) -> np.ndarray | None:
    """The grid as numpy if it is known at trace time (numpy / concrete jax array), else None."""
    try:
        return np.asarray(grid, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def prior_sample(
    key: Array, shape: tuple[int, ...], schedule: Schedule, t_max: float | None = None, dtype=None
):
    """z ~ N(0, sigma(t_max)^2 I): the standard prior at the start time (the alpha x term is
    neglected, as in every reference sampler; it is exactly 0 where alpha(1) = 0)."""
    t_max = schedule.t_max if t_max is None else t_max
    dtype = dtype or jnp.result_type(float)
    return schedule.sigma(jnp.asarray(t_max, dtype)) * jax.random.normal(key, shape, dtype)
