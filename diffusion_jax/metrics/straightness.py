"""Straightness of a flow's trajectories (Liu et al. 2023, "Flow Straight and Fast", Sec. 3.2).

For the ODE flow Z with Z_0 ~ source, Liu et al. measure how far its paths are from straight lines
traversed at constant speed:

    S(Z) = int_0^1 E || (Z_1 - Z_0) - dZ_s/ds ||^2 ds,

which is 0 exactly when every path is a straight line at constant speed (then one Euler step is
exact), and which reflow decreases (their Thm. 3.7: min_{k <= K} S(Z^k) = O(1/K)).

In this project's convention the source sits at t = 1 and the data at t = 0, so the paper's time is
s = (t_0 - t) / (t_0 - t_N) for a grid t_0 > ... > t_N, dZ/ds = -(t_0 - t_N) v(z_t, t) with v = dz/dt
the model's velocity, and Z_1 - Z_0 = z(t_N) - z(t_0). `straightness` solves the ODE with any
deterministic sampler on `grid` (trajectory kept), evaluates v at every grid point of the solved
trajectory (N + 1 more network calls) and integrates the squared deviation over s by the trapezoidal
rule on the grid. Its error is the sampler's error plus the quadrature's O(h^2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def straightness(denoiser, z_start: Array, grid, sampler=None) -> tuple[Array, Array]:
    """(S, endpoints): Liu et al.'s straightness of `denoiser`'s probability-flow ODE from z_start.

    Args:
      denoiser: any `predictions.Denoiser` (its `velocity` is dz/dt).
      z_start: [B, ...] states at grid[0] (e.g. the engine's initial states / source draws).
      grid: [N+1] descending times (e.g. uniform from 1 to 0).
      sampler: a deterministic `samplers.base.Sampler` (default RK4).
    Returns:
      S: scalar, the batch mean of int_0^1 ||(Z_1 - Z_0) - dZ/ds||^2 ds (squared norm summed over
      the sample's dimensions); endpoints: [B, ...] the ODE solution at grid[-1].
    """
    from diffusion_jax.samplers import registry

    sampler = registry.get_sampler("rk4") if sampler is None else sampler
    if sampler.stochastic:
        raise ValueError(f"straightness needs a deterministic (ODE) sampler, got {sampler.name!r}")
    grid = jnp.asarray(grid, z_start.dtype)
    out = sampler.run(denoiser, z_start, grid, return_trajectory=True)
    traj = out.trajectory  # [N+1, B, ...]
    span = grid[0] - grid[-1]
    disp = traj[-1] - traj[0]  # Z_1 - Z_0 in the paper's time
    vel = jax.vmap(denoiser.velocity)(traj, grid)  # dz/dt at each grid point, [N+1, B, ...]
    axes = tuple(range(2, traj.ndim))
    dev = jnp.sum((disp[None] + span * vel) ** 2, axis=axes)  # ||(Z_1 - Z_0) - dZ/ds||^2, [N+1, B]
    ds = (grid[:-1] - grid[1:]) / span  # [N] steps in s, summing to 1
    integral = jnp.sum(0.5 * ds[:, None] * (dev[:-1] + dev[1:]), axis=0)  # trapezoid, [B]
    return jnp.mean(integral), out.samples


__all__ = ["straightness"]
