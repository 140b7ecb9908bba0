"""Editing by wrapping a sampler's step or run: inpainting (with optional RePaint resampling) and SDEdit.

Neither copies a sampler: `inpaint` drives `sampler.step` in its own `lax.scan` and replaces the known
region after every step; `sdedit` noises the input and calls `sampler.run` on a truncated grid.

Randomness follows `seeds`: one key per sample. Initial noise comes from fold_in(key, INIT_TAG); the
j-th scan step's keys are fold_in(key, j) (handed to `sampler.step`), and the noise that takes the
known data to the current time, or the RePaint forward jump, is drawn from fold_in(fold_in(key, j),
KNOWN_TAG), so it never reuses the sampler's draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.predictions import Denoiser
from diffusion_jax.samplers.base import SampleOutput, Sampler, noise_like, step_keys
from diffusion_jax.samplers.seeds import initial_noise, validate_sampling

Array = jax.Array

KNOWN_TAG = 0xFFFFFFFE  # fold_in data for the known-region / forward-jump noise within a step's key


def repaint_schedule(num_steps: int, jump_length: int = 1, resample: int = 1) -> list[tuple[int, int]]:
    """The RePaint time schedule (Lugmayr et al. 2022, "RePaint", sec. 4.2 and Alg. 1) as a list of
    grid-index pairs (i_from, i_to): i_to = i_from + 1 is a reverse (denoising) step, i_to = i_from - 1
    a forward (noising) step. Every `jump_length` reverse steps (at grid indices jump_length,
    2 jump_length, ... < num_steps) the chain jumps back `jump_length` steps, `resample - 1` times.
    resample = 1 gives the plain grid: [(0, 1), (1, 2), ..., (N-1, N)].
    """
    if num_steps < 1 or jump_length < 1 or resample < 1:
        raise ValueError(
            f"repaint_schedule: need num_steps, jump_length, resample >= 1, got {num_steps}, {jump_length}, {resample}"
        )
    jumps = {j: resample - 1 for j in range(jump_length, num_steps, jump_length)}
    pairs, i = [], 0
    while i < num_steps:
        pairs.append((i, i + 1))
        i += 1
        if jumps.get(i, 0) > 0:
            jumps[i] -= 1
            for _ in range(jump_length):
                pairs.append((i, i - 1))
                i -= 1
    return pairs


def _noised(x: Array, schedule, t, key_noise: Array) -> Array:
    return schedule.alpha(t) * x + schedule.sigma(t) * key_noise


def _tagged(keys: Array) -> Array:
    return jax.vmap(lambda k: jax.random.fold_in(k, KNOWN_TAG))(keys)


def inpaint(
    denoiser: Denoiser,
    sampler: Sampler,
    grid,
    x_known: Array,
    mask: Array,
    keys: Array,
    z_init: Array | None = None,
    *,
    jump_length: int = 1,
    resample: int = 1,
    return_trajectory: bool = False,
) -> SampleOutput:
    """Inpainting by known-region replacement (Song et al. 2021, App. I.2; Lugmayr et al. 2022, eq. 8):
    after every sampler step to time s, z <- mask * (alpha_s x_known + sigma_s n) + (1 - mask) * z,
    and the final sample takes x_known exactly on the mask. With `resample > 1`, RePaint's
    resampling (Lugmayr et al. 2022, Alg. 1 and the jump schedule of sec. 4.2, see
    `repaint_schedule`) re-noises z from s back to t with q(z_t | z_s) =
    N(alpha_t/alpha_s z_s, sigma_t^2 (1 - exp(lambda_t - lambda_s)) I) and denoises again.

    Args:
      denoiser, sampler: any pair (RePaint jumps need a sampler without history in its carry).
      grid: [N+1] concrete descending times.
      x_known: [B, ...] data whose masked entries are kept; mask: [B, ...] or broadcastable, 1 = known.
      keys: [B] typed keys, one per sample.
      z_init: [B, ...] state at grid[0]; default sigma(grid[0]) N(0, I) from fold_in(key, INIT_TAG).
      jump_length, resample: RePaint's j and r (r = 1: no resampling).
      return_trajectory: return z after every scan step (reverse steps and forward jumps).
    Returns:
      SampleOutput(samples [B, ...], trajectory [P+1, B, ...] with P = len(repaint_schedule(...)), nfe).
    """
    g = validate_sampling(denoiser, sampler, grid)
    x_known = jnp.asarray(x_known)
    mask = jnp.asarray(mask, x_known.dtype)
    try:
        jnp.broadcast_shapes(mask.shape, x_known.shape)
    except ValueError as e:
        raise ValueError(f"inpaint: mask {mask.shape} does not broadcast to x_known {x_known.shape}") from e
    if jnp.broadcast_shapes(mask.shape, x_known.shape) != x_known.shape:
        raise ValueError(f"inpaint: mask {mask.shape} does not broadcast to x_known {x_known.shape}")
    num_steps = g.shape[0] - 1
    pairs = repaint_schedule(num_steps, jump_length, resample)
    if keys is None or keys.shape != (x_known.shape[0],):
        raise ValueError(f"inpaint: `keys` must hold one PRNG key per sample, shape ({x_known.shape[0]},)")
    dtype = x_known.dtype
    grid_j = jnp.asarray(g, dtype)
    if z_init is None:
        z_init = initial_noise(keys, x_known.shape[1:], denoiser.schedule.sigma(grid_j[0]), dtype)
    if z_init.shape != x_known.shape:
        raise ValueError(f"inpaint: z_init {z_init.shape} must match x_known {x_known.shape}")
    carry0 = sampler.init(denoiser, z_init, grid_j)
    if resample > 1 and jax.tree.leaves(carry0.aux):
        raise ValueError(
            f"inpaint: RePaint resampling (resample={resample}) needs a sampler without history in its "
            f"carry; {sampler.name} keeps a history ({type(carry0.aux).__name__})"
        )
    sch = denoiser.schedule
    i_from = jnp.asarray([p[0] for p in pairs], jnp.int32)
    i_to = jnp.asarray([p[1] for p in pairs], jnp.int32)
    sk = keys if sampler.stochastic else None

    def body(carry, xs):
        j, a, b = xs
        t_a, t_b = grid_j[a], grid_j[b]
        kj = step_keys(keys, j)

        def reverse(c):
            c = sampler.step(denoiser, c, t_a, t_b, a, None if sk is None else kj, num_steps)
            known = _noised(x_known, sch, t_b, noise_like(_tagged(kj), x_known))
            return c.replace(z=mask * known + (1.0 - mask) * c.z)

        def forward(c):
            # q(z_b | z_a) with t_b > t_a (grid index b = a - 1): mean alpha_b/alpha_a z_a, std sigma_b sqrt(1 - e^{lam_b - lam_a}).
            std = sch.sigma(t_b) * jnp.sqrt(-jnp.expm1(sch.logsnr(t_b) - sch.logsnr(t_a)))
            z = sch.alpha(t_b) / sch.alpha(t_a) * c.z + std * noise_like(_tagged(kj), c.z)
            return c.replace(z=z)

        if resample > 1:
            carry = jax.lax.cond(b < a, forward, reverse, carry)  # grid index down = time up
        else:
            carry = reverse(carry)
        return carry, (carry.z if return_trajectory else None)

    carry, traj = jax.lax.scan(body, carry0, (jnp.arange(len(pairs)), i_from, i_to))
    samples = mask * x_known + (1.0 - mask) * sampler.finalize(denoiser, carry)
    if return_trajectory:
        traj = jnp.concatenate([z_init[None], traj], axis=0)
    return SampleOutput(samples, traj, carry.nfe)


def sdedit_grid(grid, strength: float) -> np.ndarray:
    """[strength] followed by the grid times below it: the truncated grid SDEdit integrates over."""
    g = np.asarray(grid, np.float64)
    return np.concatenate([[float(strength)], g[g < strength]])


def sdedit(
    denoiser: Denoiser,
    sampler: Sampler,
    grid,
    x: Array,
    strength: float,
    keys: Array,
    *,
    return_trajectory: bool = False,
) -> SampleOutput:
    """SDEdit (Meng et al. 2022, "SDEdit", Alg. 1): noise the input to t0 = strength,
    z = alpha(t0) x + sigma(t0) n with n from fold_in(key, INIT_TAG), then run `sampler` on the
    truncated grid [t0, grid times < t0] (`sdedit_grid`). strength -> 0 returns (nearly) x; strength =
    grid[0] is a full run started from the noised input. If no grid time lies below t0 the noised input
    is returned (nfe 0).

    Args:
      x: [B, ...] inputs (in the model's data scale); keys: [B] typed keys; strength: t0 in (0, grid[0]].
    Returns:
      SampleOutput(samples [B, ...], trajectory over the truncated grid or None, nfe).
    """
    g = np.asarray(grid, np.float64)
    if not (isinstance(strength, int | float | np.floating) and 0.0 < float(strength) <= g[0]):
        raise ValueError(f"sdedit: `strength` must be a time in (0, grid[0] = {g[0]}], got {strength!r}")
    x = jnp.asarray(x)
    if keys is None or keys.shape != (x.shape[0],):
        raise ValueError(f"sdedit: `keys` must hold one PRNG key per sample, shape ({x.shape[0]},)")
    sub = sdedit_grid(g, float(strength))
    sch = denoiser.schedule
    t0 = jnp.asarray(sub[0], x.dtype)
    z0 = sch.alpha(t0) * x + initial_noise(keys, x.shape[1:], sch.sigma(t0), x.dtype)
    if sub.shape[0] < 2:
        return SampleOutput(z0, z0[None] if return_trajectory else None, jnp.zeros((), jnp.int32))
    validate_sampling(denoiser, sampler, sub)
    return sampler.run(
        denoiser, z0, jnp.asarray(sub, x.dtype), keys if sampler.stochastic else None, return_trajectory
    )


__all__ = ["KNOWN_TAG", "inpaint", "repaint_schedule", "sdedit", "sdedit_grid"]
