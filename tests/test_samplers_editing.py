"""Inpainting (replacement, RePaint resampling) and SDEdit, wrapped around unmodified samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic
from diffusion_jax import schedules as S
from diffusion_jax.samplers import editing as ed
from diffusion_jax.samplers import stochastic as st

RHO = 0.9


def corr_gaussian():
    """N(0, [[1, rho], [rho, 1]]): given x_1 = a, x_2 ~ N(rho a, 1 - rho^2)."""
    cov = jnp.array([[[1.0, RHO], [RHO, 1.0]]], jnp.float64)
    return analytic.GaussianMixture(jnp.ones(1, jnp.float64), jnp.zeros((1, 2), jnp.float64), cov)


def test_repaint_schedule():
    assert ed.repaint_schedule(4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    # jump back 2 steps at index 2 (once, resample=2): 0-1-2, back to 0, 0-1-2-3-4
    assert ed.repaint_schedule(4, jump_length=2, resample=2) == [
        (0, 1), (1, 2), (2, 1), (1, 0), (0, 1), (1, 2), (2, 3), (3, 4),
    ]  # fmt: skip
    for n, j, r in [(10, 1, 3), (10, 3, 4), (7, 2, 1)]:
        p = ed.repaint_schedule(n, j, r)
        rev = sum(b > a for a, b in p)
        n_jumps = len(range(j, n, j))
        assert rev == n + (r - 1) * j * n_jumps  # every jump re-does j reverse steps
        assert p[-1] == (n - 1, n) and all(abs(a - b) == 1 for a, b in p)
    with pytest.raises(ValueError, match="jump_length"):
        ed.repaint_schedule(4, 0, 1)


def test_inpainting_keeps_known_region_and_resampling_approaches_conditional(x64):
    """x ~ N(0, [[1, .9], [.9, 1]]), x_1 = 1 known: x_2 | x_1 ~ N(0.9, 0.19). Replacement alone is biased
    towards the marginal (Lugmayr et al. 2022, sec. 4.2; measured here: mean 0.56, std 0.50 with 20
    DDPM steps); RePaint resampling (r = 10, j = 1) pulls it to mean 0.80, std 0.40."""
    gmm = corr_gaussian()
    den = gmm.denoiser(S.VPLinear(), "eps")
    n = 4000
    x_known = jnp.tile(jnp.array([[1.0, 123.0]]), (n, 1))  # entry 2 is garbage: it must not leak
    mask = jnp.array([1.0, 0.0])
    grid = np.linspace(1.0, 1e-3, 21)
    keys = jax.random.split(jax.random.key(0), n)
    sampler = st.DDPMAncestral()
    errs = {}
    for r in (1, 10):
        out = jax.jit(lambda d, k, r=r: ed.inpaint(d, sampler, grid, x_known, mask, k, resample=r))(den, keys)
        x = np.asarray(out.samples)
        assert np.array_equal(x[:, 0], np.ones(n))  # known region exactly
        assert int(out.nfe) == 20 + (r - 1) * 19
        errs[r] = (abs(x[:, 1].mean() - RHO), abs(x[:, 1].std() - np.sqrt(1 - RHO**2)))
    assert errs[10][0] < 0.5 * errs[1][0] and errs[10][0] < 0.15, errs
    assert errs[10][1] < errs[1][1] and errs[10][1] < 0.06, errs


def test_inpainting_trajectory_and_bad_input(x64):
    gmm = corr_gaussian()
    den = gmm.denoiser(S.VPLinear(), "eps")
    x_known = jnp.zeros((3, 2))
    keys = jax.random.split(jax.random.key(0), 3)
    grid = np.linspace(1.0, 1e-3, 5)
    out = ed.inpaint(
        den, st.EulerAncestral(), grid, x_known, jnp.array([1.0, 0.0]), keys, return_trajectory=True
    )
    assert out.trajectory.shape == (5, 3, 2)
    # intermediate known entries are the data noised to the current time: alpha_s x + sigma_s n, x = 0
    assert np.all(np.abs(np.asarray(out.trajectory[1:-1, :, 0])) > 0)
    with pytest.raises(ValueError, match="history"):
        ed.inpaint(den, st.DPMpp2MSDE(), grid, x_known, jnp.array([1.0, 0.0]), keys, resample=2)
    with pytest.raises(ValueError, match="mask"):
        ed.inpaint(den, st.DDPMAncestral(), grid, x_known, jnp.ones((3,)), keys)
    with pytest.raises(ValueError, match="keys"):
        ed.inpaint(den, st.DDPMAncestral(), grid, x_known, jnp.ones((2,)), keys[:2])
    with pytest.raises(ValueError, match="eta"):
        ed.inpaint(den, st.DDIMStochastic(eta=4.0), grid, x_known, jnp.ones((2,)), keys)


def test_sdedit(x64):
    gmm = analytic.gmm_2d_ring(dtype=jnp.float64)
    sch = S.RectifiedFlow(t_min=0.0)
    den = gmm.denoiser(sch, "velocity")
    grid = np.linspace(1.0, 0.0, 11)
    x = jnp.array([[0.3, -1.7], [2.0, 0.1], [-0.5, 0.5]])
    keys = jax.random.split(jax.random.key(0), 3)
    sampler = st.DDIMStochastic(eta=1.0)
    # strength -> 0: the input comes back (one step from t=1e-7 to 0 with the exact denoiser)
    tiny = ed.sdedit(den, sampler, grid, x, 1e-7, keys)
    assert int(tiny.nfe) == 1
    np.testing.assert_allclose(tiny.samples, x, atol=1e-5)
    # the truncated grid: strength then the grid times below it
    np.testing.assert_allclose(ed.sdedit_grid(grid, 0.45), [0.45, 0.4, 0.3, 0.2, 0.1, 0.0], atol=1e-12)
    mid = ed.sdedit(den, sampler, grid, x, 0.45, keys, return_trajectory=True)
    assert int(mid.nfe) == 5 and mid.trajectory.shape == (6, 3, 2)
    # its start is the input noised to t0 with noise from fold_in(key, INIT_TAG)
    from diffusion_jax.samplers.seeds import INIT_TAG

    n0 = jax.random.normal(jax.random.fold_in(keys[1], INIT_TAG), (2,), jnp.float64)
    np.testing.assert_allclose(mid.trajectory[0, 1], 0.55 * x[1] + 0.45 * n0, rtol=1e-12)
    # strength = 1 with data far from the modes: the output lands on the ring (radius 2, std 0.2)
    full = ed.sdedit(den, sampler, grid, x, 1.0, keys)
    r = np.linalg.norm(np.asarray(full.samples), axis=1)
    assert np.all(np.abs(r - 2.0) < 1.0)
    for bad in [0.0, -0.1, 1.5]:
        with pytest.raises(ValueError, match="strength"):
            ed.sdedit(den, sampler, grid, x, bad, keys)
