"""Adaptive diffrax solvers: accuracy against an independent high-accuracy solve, the reported NFE
against a runtime count of network calls, per-sample independence, trajectories, bad input."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, schedules
from diffusion_jax.samplers import adaptive
from diffusion_jax.samplers.grids import make_grid


def _setup(b=8):
    sch = schedules.VPLinear()
    gmm = analytic.random_gmm(jax.random.key(6), num_components=3, dim=2)
    den = gmm.denoiser(sch, "eps")
    grid = make_grid("uniform", 4, sch)
    z = sch.sigma(grid[0]) * jax.random.normal(jax.random.key(2), (b, 2), jnp.float64)
    return sch, den, grid, z


def _reference(den, z, ts):
    """Dopri8 at rtol = atol = 1e-11 (one joint solve), saved at the times ts."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, d: d.velocity(y, t)),
        diffrax.Dopri8(),
        t0=ts[0],
        t1=ts[-1],
        dt0=None,
        y0=z,
        args=den,
        stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-11),
        saveat=diffrax.SaveAt(ts=ts),
        max_steps=100_000,
    )
    return sol.ys


@pytest.mark.parametrize("cls", [adaptive.Dopri5, adaptive.Tsit5])
def test_matches_reference_and_counts_nfe(cls, x64):
    sch, den, grid, z = _setup()
    calls = []
    net = den.net_fn

    def counting_net(params, z_in, t_in, cond, rng):
        jax.debug.callback(lambda: calls.append(1))  # one per (batched) network call, at run time
        return net(params, z_in, t_in, cond, rng)

    den_c = den.replace(net_fn=counting_net)
    ref = jax.jit(_reference)(den, z, grid)
    errs, nfes = [], []
    for tol, per_sample in ((1e-4, True), (1e-8, False)):
        s = cls(rtol=tol, atol=tol, per_sample=per_sample)
        calls.clear()
        out = jax.jit(lambda d, z, g, s=s: s.run(d, z, g, return_trajectory=True))(den_c, z, grid)
        jax.effects_barrier()
        # 1 + 6 * attempted steps; diffrax re-evaluates the first stage after steps it flags as
        # jumps (not in its stats): a few extra calls at most (documented in `adaptive`).
        extra = len(calls) - int(out.nfe)
        assert 0 <= extra <= 3, (tol, per_sample, len(calls), int(out.nfe))
        assert (int(out.nfe) - 1) % 6 == 0
        err = float(jnp.max(jnp.abs(out.samples - ref[-1])))
        assert err < 300 * tol, (tol, per_sample, err)
        # Trajectory at the grid times (dense output), first row is the initial state.
        assert out.trajectory.shape == (5, 8, 2)
        np.testing.assert_array_equal(out.trajectory[0], z)
        assert float(jnp.max(jnp.abs(out.trajectory - ref))) < 300 * tol
        errs.append(err)
        nfes.append(int(out.nfe))
    # Tighter tolerance: more evaluations, smaller error.
    assert nfes[1] > nfes[0] and errs[1] < errs[0]
    assert s.nfe(10) is None


def test_per_sample_solves_are_batch_independent(x64):
    """Each sample has its own step sizes: solved alone it gives the same result (and its own NFE)."""
    _, den, grid, z = _setup(b=8)
    s = adaptive.Dopri5(rtol=1e-6, atol=1e-6)
    run = jax.jit(lambda d, z, g: s.run(d, z, g))
    full = run(den, z, grid)
    alone = [run(den, z[i : i + 1], grid) for i in range(8)]
    np.testing.assert_allclose(
        jnp.concatenate([o.samples for o in alone]), full.samples, rtol=1e-13, atol=1e-13
    )
    nfes = [int(o.nfe) for o in alone]
    assert len(set(nfes)) > 1 and int(full.nfe) == max(nfes)


def test_bad_input(x64):
    sch, den, _, z = _setup()
    with pytest.raises(ValueError, match="sigma = 0"):
        adaptive.Tsit5().run(den, z, make_grid("uniform", 3, sch, final_zero=True))
    with pytest.raises(ValueError, match="rtol and atol must be > 0"):
        adaptive.Dopri5(rtol=0.0).run(den, z, make_grid("uniform", 3, sch))
    with pytest.raises(ValueError, match="at least 2 times"):
        adaptive.Dopri5().run(den, z, jnp.array([0.5]))
