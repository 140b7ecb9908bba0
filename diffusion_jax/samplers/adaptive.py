"""Adaptive-step solvers of the probability-flow ODE through diffrax, in-graph.

The ODE is dz/dt = v(z, t) = alpha'(t) x0-hat + sigma'(t) eps-hat (Song et al. 2021, eq. 13, in velocity
form; `Denoiser.velocity`), integrated from grid[0] down to grid[-1] by an embedded explicit
Runge-Kutta pair with a PID step-size controller (Hairer & Wanner, "Solving ODEs II", IV.2;
Soderlind 2002), all inside `diffrax.diffeqsolve` (a `lax.while_loop`), so the solve jit-compiles once
and never returns to the host:
  * `Dopri5`: Dormand & Prince 1980, "A family of embedded Runge-Kutta formulae", order 5(4);
  * `Tsit5`:  Tsitouras 2011, "Runge-Kutta pairs of order 5(4) satisfying only the first column
    simplifying assumption", order 5(4).

Only grid[0] and grid[-1] matter (the integration limits); with `return_trajectory=True` the state is
saved at every grid time (dense output, `SaveAt(ts=grid)`, no extra evaluations). The last grid time
must have sigma > 0: both pairs evaluate the field at the end point, where an x0 / velocity
prediction is undefined on clean data (use t_min > 0, e.g. the schedule's), unless the model predicts
the velocity itself (flow matching on [0, 1]: its output is the field, defined at t = 0).

NFE accounting: both pairs have 7 stages with the first-same-as-last property: the last stage of a
step is the first of the next, and a rejected step keeps it. The reported NFE is
    NFE = 1 + 6 * (num_accepted_steps + num_rejected_steps) = 1 + 6 * sol.stats['num_steps'],
every stage of every attempted step plus the very first evaluation (dt0 is given, from the first grid
interval, so none is spent choosing the first step). diffrax (0.7.2) also re-evaluates the first stage
after a step it flags as a "jump" (`made_jump`), which its statistics do not expose; counting the
network calls at run time, the tests found 0-2 such extra calls per solve (under 1% of the NFE), so
the reported NFE is a lower bound that is exact for most solves.

Batch independence: with `per_sample=True` (default) every sample is solved with its own step sizes
(`jax.vmap` of the solve over the batch), so sample i depends only on z_i and the tolerances — never
on the batch it shares. The vmapped while-loop runs until the slowest sample finishes, evaluating the
network on the whole batch each iteration, so the reported NFE is the maximum over samples of
1 + 6 * attempted steps (what the slowest sample needed; a first-stage re-evaluation needed by any
sample is made for the whole batch). `per_sample=False` solves the batch as one state (one step-size
sequence for all; the error norm is the RMS over the whole batch).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp

from diffusion_jax.predictions import Denoiser
from diffusion_jax.samplers.base import SampleOutput, Sampler, _concrete
from diffusion_jax.schedules import Schedule

Array = jax.Array

# Evaluations per attempted step of a 7-stage FSAL pair (the first stage is the previous last one).
_NFE_PER_STEP = 6


@dataclasses.dataclass(frozen=True)
class _Diffrax(Sampler):
    """Base of the diffrax adaptive solvers.

    Fields:
      rtol, atol: relative / absolute tolerances of the step-size controller.
      pcoeff, icoeff, dcoeff: PID gains (diffrax `PIDController`; the defaults 0, 1, 0 are the classic
        integral controller, Hairer & Wanner II.4).
      max_steps: cap on attempted steps; the solve fails (NaN, `throw=False`) beyond it.
      per_sample: solve each sample with its own step sizes (see the module docstring).
    """

    solver_cls: ClassVar[type] = diffrax.Dopri5
    rtol: float = 1e-5
    atol: float = 1e-5
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    max_steps: int = 4096
    per_sample: bool = True

    def validate(self, schedule: Schedule, num_steps: int) -> None:
        super().validate(schedule, num_steps)
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(
                f"{self.name}: rtol and atol must be > 0, got rtol={self.rtol}, atol={self.atol}"
            )
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ValueError(f"{self.name}: max_steps must be a positive integer, got {self.max_steps!r}")

    def check_grid(self, denoiser: Denoiser, grid) -> None:
        """Refuse a grid whose last time has sigma = 0 (the pairs evaluate the field there) unless the
        model predicts velocity, before compiling; then the base checks (eps / score at alpha = 0)."""
        s_end = float(denoiser.schedule.sigma(jnp.asarray(grid[-1], jnp.result_type(float))))
        # A velocity model's output is the ODE field itself, defined at sigma = 0 too (flow
        # matching on [0, 1]); other kinds are converted through 1/sigma there.
        if not s_end > 0 and denoiser.kind != "velocity":
            raise ValueError(
                f"{self.name}: the grid ends at t={grid[-1]} where sigma = 0; adaptive solvers evaluate the "
                "field at the end point, so end the grid at t_min > 0 (e.g. t_min=0.001, final_zero=False)"
            )
        super().check_grid(denoiser, grid)

    def nfe(self, num_steps: int, final_zero: bool = False) -> int | None:
        """Not known before the solve (adaptive): read `SampleOutput.nfe`. Returns None."""
        return None

    def _solve(self, den: Denoiser, z: Array, grid: Array, save_ts: bool):
        term = diffrax.ODETerm(lambda t, y, args: args.velocity(y, t))
        controller = diffrax.PIDController(
            rtol=self.rtol, atol=self.atol, pcoeff=self.pcoeff, icoeff=self.icoeff, dcoeff=self.dcoeff
        )
        saveat = diffrax.SaveAt(ts=grid) if save_ts else diffrax.SaveAt(t1=True)
        sol = diffrax.diffeqsolve(
            term,
            self.solver_cls(),
            t0=grid[0],
            t1=grid[-1],
            dt0=grid[1] - grid[0],
            y0=z,
            args=den,
            stepsize_controller=controller,
            saveat=saveat,
            max_steps=self.max_steps,
            throw=False,
        )
        nfe = 1 + _NFE_PER_STEP * sol.stats["num_steps"]
        return sol.ys, jnp.asarray(nfe, jnp.int32)

    def run(
        self,
        denoiser: Denoiser,
        z: Array,
        grid: Array,
        keys: Array | None = None,
        return_trajectory: bool = False,
    ) -> SampleOutput:
        """Solve the PF-ODE from z at grid[0] to grid[-1] ([N+1] descending; N >= 1).

        Returns SampleOutput(samples [B, ...], trajectory [N+1, B, ...] at the grid times or None,
        nfe int32: see the module docstring for how it is counted).
        """
        grid = jnp.asarray(grid, z.dtype)
        if grid.ndim != 1:
            raise ValueError(f"grid must be 1-D [N+1], got shape {grid.shape}")
        self.validate(denoiser.schedule, grid.shape[0] - 1)
        g = _concrete(grid)
        if g is not None:
            with jax.ensure_compile_time_eval():
                self.check_grid(denoiser, g)
        if self.per_sample:

            def one(zi):
                ys, n = self._solve(denoiser, zi[None], grid, return_trajectory)
                return ys[:, 0], n

            ys, nfes = jax.vmap(one)(z)  # ys [B, T, ...]
            ys = jnp.moveaxis(ys, 0, 1)
            nfe = jnp.max(nfes)
        else:
            ys, nfe = self._solve(denoiser, z, grid, return_trajectory)
        samples = ys[-1]
        return SampleOutput(samples, ys if return_trajectory else None, nfe)


@dataclasses.dataclass(frozen=True)
class Dopri5(_Diffrax):
    """Dormand-Prince 5(4) (Dormand & Prince 1980) with a PID step-size controller, via diffrax.
    NFE = 1 + 6 * attempted steps (see the module docstring)."""

    name: ClassVar[str] = "dopri5"
    solver_cls: ClassVar[type] = diffrax.Dopri5


@dataclasses.dataclass(frozen=True)
class Tsit5(_Diffrax):
    """Tsitouras 5(4) (Tsitouras 2011) with a PID step-size controller, via diffrax.
    NFE = 1 + 6 * attempted steps (see the module docstring)."""

    name: ClassVar[str] = "tsit5"
    solver_cls: ClassVar[type] = diffrax.Tsit5


__all__ = ["Dopri5", "Tsit5"]
