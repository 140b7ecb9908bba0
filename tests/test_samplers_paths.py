"""Every sampler on every path: each registry sampler x each schedule family on its natural grid, in
float32 and float64, either runs finite or is refused by the pre-compile checks
(`seeds.validate_sampling`: `validate` + `check_grid`) with a message that says what to change, and
following that advice (grid t_max=0.999, or t_min > 0) then runs finite.

Cheap by construction: an exact Gaussian-mixture denoiser, batch 2, 3 steps, and the runs execute
under `jax.disable_jit()` (scan / cond run as Python loops over already-compiled primitives), so no
(sampler, schedule, dtype) program is compiled."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, schedules
from diffusion_jax.samplers import registry
from diffusion_jax.samplers.grids import make_grid
from diffusion_jax.samplers.seeds import validate_sampling
from diffusion_jax.training.build import FAST_COMPILE

STEPS = 3

# family -> (schedule, natural grid, grid kwargs, prediction kind the family's models are trained with)
FAMILIES = {
    "vp_linear": (schedules.VPLinear(), "logsnr", {}, "eps"),
    "ddpm_discrete": (schedules.VPDiscrete(), "linspace", {}, "eps"),
    "cosine": (schedules.VPCosine(), "karras", {}, "v"),
    "ve": (schedules.VE(), "karras", {}, "score"),
    "edm": (schedules.EDM(), "edm", {}, "x0"),
    "rectified": (schedules.RectifiedFlow(), "uniform", {}, "velocity"),
    "polynomial": (schedules.Polynomial(), "uniform", {}, "velocity"),
    "shifted": (schedules.Shifted(base=schedules.RectifiedFlow(), shift=3.0), "shifted", {}, "velocity"),
}
# Adaptive solvers at loose tolerances: this test is about paths, not accuracy.
OPTIONS = {"dopri5": {"rtol": 1e-2, "atol": 1e-2}, "tsit5": {"rtol": 1e-2, "atol": 1e-2}}


def _advice(msg: str) -> dict:
    """The grid change a refusal recommends (the test follows it)."""
    if "t_max=0.999" in msg:
        return {"t_max": 0.999}
    if re.search(r"t_min > 0", msg):
        return {"t_min": 1e-3}
    raise AssertionError(f"refusal without actionable advice: {msg}")


def _run(sampler, den, grid, dtype):
    z = den.schedule.sigma(grid[0]) * jax.random.normal(jax.random.key(0), (2, 2), dtype)
    keys = jax.random.split(jax.random.key(1), 2) if sampler.stochastic else None
    if sampler.name in registry.ADAPTIVE:
        # diffrax's while loop is far slower op by op than compiled; one small program per path,
        # compiled without XLA optimisation (same operations; ~25% less compile CPU; this test only
        # asks for finite samples).
        run = jax.jit(lambda z, grid: sampler.run(den, z, grid, keys).samples, compiler_options=FAST_COMPILE)
        return np.asarray(run(z, grid))
    with jax.disable_jit():
        return np.asarray(sampler.run(den, z, grid, keys).samples)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_sampler_runs_or_is_refused_with_working_advice(family, dtype):
    sch, grid_name, grid_kw, kind = FAMILIES[family]
    with jax.enable_x64(dtype == "float64"):
        dt = jnp.dtype(dtype)
        gmm = analytic.random_gmm(jax.random.key(2), num_components=2, dim=2, dtype=dt)
        den = gmm.denoiser(sch, kind)
        refused, failed = {}, []
        for name in registry.list_samplers():
            sampler = registry.get_sampler(name, **OPTIONS.get(name, {}))
            if sampler.needs_score_head:
                continue  # needs a [velocity, score] network: tests/test_interpolant_sde.py
            grid = make_grid(grid_name, STEPS, sch, **grid_kw)
            try:
                validate_sampling(den, sampler, grid)
            except ValueError as e:
                assert "\n" not in str(e), (name, str(e))
                fix = _advice(str(e))
                refused[name] = fix
                grid = make_grid(grid_name, STEPS, sch, **grid_kw, **fix)
                validate_sampling(den, sampler, grid)  # the advice must pass the checks ...
            out = _run(sampler, den, grid, dt)  # ... and run
            assert out.dtype == dt
            if not np.all(np.isfinite(out)):
                failed.append(name)
        assert not failed, f"{family}/{dtype}: non-finite samples from {failed} (refused: {refused})"
    # The refusals are the expected ones: only paths where alpha(grid[0]) = 0 or sigma(grid[-1]) = 0.
    a0 = float(sch.alpha(make_grid(grid_name, STEPS, sch, **grid_kw)[0]))
    if a0 > 1e-6:
        assert all(fix != {"t_max": 0.999} for fix in refused.values()), refused
