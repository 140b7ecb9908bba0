"""The public extension API of the sampler registry: `register_sampler` / `register_grid` (explicit
calls, names listed in errors), checked against closed forms, plus bad input."""

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, schedules
from diffusion_jax.samplers import base, registry
from diffusion_jax.samplers import deterministic as det


@pytest.fixture
def clean_registry():
    yield
    for name in list(registry._USER_SAMPLERS):
        registry.unregister_sampler(name)
    from diffusion_jax.samplers import grids

    for name in list(grids._USER_GRIDS):
        registry.unregister_grid(name)


def _sqrt_grid(n, schedule, t_min, t_max, power=2.0):
    """t_i = (t_max^(1/p) + i/n (t_min^(1/p) - t_max^(1/p)))^p: a user-defined grid."""
    u = np.linspace(0.0, 1.0, n + 1)
    return (t_max ** (1 / power) + u * (t_min ** (1 / power) - t_max ** (1 / power))) ** power


def test_register_grid(clean_registry):
    sch = schedules.VPLinear()
    assert "sqrt_test" not in registry.list_grids()
    registry.register_grid("sqrt_test", _sqrt_grid)
    assert "sqrt_test" in registry.list_grids()
    g = np.asarray(registry.make_grid("sqrt_test", 4, sch, t_min=0.04, t_max=1.0, power=2.0))
    np.testing.assert_allclose(g, [1.0, 0.64, 0.36, 0.16, 0.04], rtol=1e-6)
    g0 = np.asarray(registry.make_grid("sqrt_test", 4, sch, t_min=0.04, final_zero=True))
    assert g0.shape == (6,) and g0[-1] == 0.0
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rho'\]; valid options: \['power'\]"):
        registry.make_grid("sqrt_test", 4, sch, rho=7.0)
    with pytest.raises(ValueError, match="already exists"):
        registry.register_grid("sqrt_test", _sqrt_grid)
    with pytest.raises(ValueError, match="already exists"):
        registry.register_grid("karras", _sqrt_grid)
    registry.register_grid("sqrt_test", _sqrt_grid, overwrite=True)
    with pytest.raises(ValueError, match="must take"):
        registry.register_grid("bad", lambda n: n)
    registry.unregister_grid("sqrt_test")
    with pytest.raises(ValueError, match="valid grids: .*'karras'"):
        registry.make_grid("sqrt_test", 4, sch)


@dataclasses.dataclass(frozen=True)
class _MidpointT(det.Midpoint):
    """Explicit midpoint in t (Hairer et al.), registered under a user name."""

    name: ClassVar[str] = "my_midpoint"


def test_register_sampler(clean_registry):
    registry.register_sampler("my_midpoint", _MidpointT, family="deterministic")
    assert "my_midpoint" in registry.list_samplers() and "my_midpoint" in registry.list_samplers(
        "deterministic"
    )
    s = registry.get_sampler("my_midpoint", coords="sigma")
    assert isinstance(s, _MidpointT) and s.coords == "sigma"
    assert registry.sampler_info()["my_midpoint"]["family"] == "deterministic"
    # Runs like any sampler: against the exact Gaussian flow (second order, 64 steps).
    gauss = analytic.Gaussian.isotropic(jnp.array([0.5, -1.0]), 0.7)
    sch = schedules.VPLinear()
    den = gauss.denoiser(sch, "eps")
    z = jnp.array([[0.3, -1.2], [1.5, 0.2]])
    grid = registry.make_grid("logsnr", 64, sch)
    out = s.run(den, z, grid)
    a0, s0, a1, s1 = sch.alpha(grid[0]), sch.sigma(grid[0]), sch.alpha(grid[-1]), sch.sigma(grid[-1])
    scale = jnp.sqrt((a1**2 * 0.49 + s1**2) / (a0**2 * 0.49 + s0**2))
    ref = a1 * gauss.mean + scale * (z - a0 * gauss.mean)
    np.testing.assert_allclose(out.samples, ref, rtol=2e-3)
    assert int(out.nfe) == 128
    with pytest.raises(ValueError, match="already exists"):
        registry.register_sampler("my_midpoint", _MidpointT)
    with pytest.raises(ValueError, match="already exists"):
        registry.register_sampler("euler", _MidpointT)
    with pytest.raises(ValueError, match="valid families"):
        registry.register_sampler("x", _MidpointT, family="odd")
    with pytest.raises(ValueError, match="subclass of samplers.base.Sampler"):
        registry.register_sampler("x", dict)
    with pytest.raises(ValueError, match=r"valid options: \['coords'\]"):
        registry.get_sampler("my_midpoint", order=3)
    registry.unregister_sampler("my_midpoint")
    with pytest.raises(ValueError, match="valid samplers: .*'euler'"):
        registry.get_sampler("my_midpoint")


@dataclasses.dataclass(frozen=True)
class _AB2Velocity(base.Sampler):
    """A sampler written outside the package on the public contract only: variable-step two-step
    Adams-Bashforth (Hairer et al., "Solving ODEs I", III.1) on dz/dt = velocity-hat(z, t):
        z' = z + h (1 + h / (2 h1)) v_0 - h^2 / (2 h1) v_1,   h = t' - t, h1 = t - t_prev
    (Euler on the first step). NFE: N, counted by the base class."""

    name: ClassVar[str] = "ab2_velocity"

    def init_aux(self, ev, z, grid):
        return base.history_init(2, z, grid.dtype)

    def update(self, ev, carry, t_cur, t_next, i, keys, num_steps):
        hist = base.history_push(carry.aux, ev.velocity(carry.z, t_cur), t_cur)
        h = t_next - t_cur
        h1 = jnp.where(i > 0, t_cur - hist.times[1], 1.0)
        two = carry.z + h * (1 + h / (2 * h1)) * hist.values[0] - h**2 / (2 * h1) * hist.values[1]
        order = base.multistep_order(2, i, num_steps)
        return jnp.where(order == 2, two, carry.z + h * hist.values[0]), hist


def test_out_of_tree_sampler_on_the_public_contract(clean_registry):
    """One class, public names only: registered, run, NFE counted by the base class, second order
    against the exact Gaussian flow; the in-package LMS / DPM++ SDE / Restart use no private name."""
    import ast
    import pathlib

    registry.register_sampler("ab2_velocity", _AB2Velocity)
    gauss = analytic.Gaussian.isotropic(jnp.array([0.5, -1.0]), 0.7)
    sch = schedules.RectifiedFlow()
    den = gauss.denoiser(sch, "velocity")
    z = jnp.array([[0.3, -1.2], [1.5, 0.2]])
    errs = []
    for n in (32, 64):
        grid = registry.make_grid("uniform", n, sch, t_min=1e-3)
        out = registry.get_sampler("ab2_velocity").run(den, z, grid)
        assert int(out.nfe) == n
        a0, s0, a1, s1 = sch.alpha(grid[0]), sch.sigma(grid[0]), sch.alpha(grid[-1]), sch.sigma(grid[-1])
        scale = jnp.sqrt((a1**2 * 0.49 + s1**2) / (a0**2 * 0.49 + s0**2))
        ref = a1 * gauss.mean + scale * (z - a0 * gauss.mean)
        errs.append(float(jnp.max(jnp.abs(out.samples - ref))))
    assert 1.6 < np.log2(errs[0] / errs[1]) < 2.4, errs
    pkg = pathlib.Path(base.__file__).parent
    for mod in ("lms.py", "ancestral.py", "restart.py"):
        tree = ast.parse((pkg / mod).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffusion_jax"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, (mod, node.module, private)


def test_capability_flags_follow_the_instance():
    """`needs_alpha` is a property of the instance: Euler / Heun in sigma~ coordinates are refused on
    a grid starting where alpha = 0 (rectified flow at t = 1) before compiling, with advice that
    works; in t coordinates they run there. Stochastic samplers check the grid, not schedule.t_max."""
    from diffusion_jax.samplers.seeds import validate_sampling

    rf = schedules.RectifiedFlow()
    den = analytic.Gaussian.isotropic(jnp.array([0.5, -1.0]), 0.7).denoiser(rf, "velocity")
    z = jnp.ones((2, 2))
    keys = jax.random.split(jax.random.key(0), 2)
    for name in ("euler", "heun"):
        assert (
            not registry.get_sampler(name).needs_alpha
            and registry.get_sampler(name, coords="sigma").needs_alpha
        )
        with pytest.raises(ValueError, match=r"t_max=0\.999"):
            validate_sampling(
                den, registry.get_sampler(name, coords="sigma"), registry.make_grid("uniform", 4, rf)
            )
        out = registry.get_sampler(name, coords="sigma").run(
            den, z, registry.make_grid("uniform", 4, rf, t_max=0.999)
        )
        assert np.all(np.isfinite(out.samples))
    for name in ("euler_ancestral", "dpmpp_2m_sde", "edm_stochastic"):
        with pytest.raises(ValueError, match=r"t_max=0\.999"):
            validate_sampling(den, registry.get_sampler(name), registry.make_grid("uniform", 4, rf))
        out = registry.get_sampler(name).run(den, z, registry.make_grid("uniform", 4, rf, t_max=0.999), keys)
        assert np.all(np.isfinite(out.samples))
