"""Stochastic samplers: sampled law vs the exact 1-D Gaussian mixture, exact identities between
parameterisations, DDPM Alg. 2 on its own grid, schedule invariance, and bad input.

Tolerances: with 10k samples the W1 distance between two *exact* independent draws of `gmm_1d` is
~0.011 (the noise floor, measured in `test_stochastic_samplers_reproduce_gmm`); each sampler must land
within W1 < 0.035 (about 3x that floor) of an exact draw. For scale, the same test measures the
deterministic probability-flow Euler sampler on the same grid.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from diffusion_jax import analytic
from diffusion_jax import schedules as S
from diffusion_jax.samplers import stochastic as st
from diffusion_jax.samplers.base import prior_sample

N_SAMPLES = 10_000
W1_TOL = 0.035


def logsnr_grid(sch, n):
    """Times uniform in logSNR from t_max to t_min ([n+1], numpy float64), independent of grids.py."""
    lam = np.linspace(float(sch.logsnr(sch.t_max)), float(sch.logsnr(sch.t_min)), n + 1)
    g = np.array(sch.t_from_logsnr(jnp.asarray(lam, jnp.float64)))
    g[0], g[-1] = sch.t_max, sch.t_min
    return g


def run_sampler(sampler, den, grid, n, dim=1, seed=0, trajectory=False, z=None):
    keys = jax.random.split(jax.random.key(seed), n)
    if z is None:
        z = prior_sample(jax.random.key(seed + 1), (n, dim), den.schedule, float(grid[0]), jnp.float64)
    return jax.jit(lambda d, z, k: sampler.run(d, z, grid, k, trajectory))(den, z, keys)


# (sampler, schedule, prediction kind, steps): every sampler, spread over schedules and kinds.
CASES = [
    (st.EulerMaruyama(), S.VPLinear(), "eps", 100),
    (st.DDPMAncestral(), S.EDM(), "x0", 200),
    (st.DDIMStochastic(eta=0.5), S.RectifiedFlow(t_max=0.999, t_min=1e-3), "velocity", 200),
    (st.EulerAncestral(), S.VPCosine(), "v", 200),
    (st.EDMStochastic(s_churn=10.0, s_min=0.05, s_max=50.0), S.EDM(), "x0", 50),
    (st.DPMpp2MSDE(), S.VPLinear(), "v", 100),
    (st.DPMpp3MSDE(), S.VE(), "eps", 100),
    (
        st.DPMpp2MSDE(solver_type="heun", eta=0.5),
        S.Shifted(base=S.RectifiedFlow(t_max=0.999, t_min=1e-3), shift=2.0),
        "velocity",
        100,
    ),
]


@pytest.mark.parametrize("sampler,sch,kind,n_steps", CASES, ids=lambda c: getattr(c, "name", None))
def test_stochastic_samplers_reproduce_gmm(x64, sampler, sch, kind, n_steps):
    gmm = analytic.gmm_1d(dtype=jnp.float64)
    ref = np.asarray(gmm.sample(jax.random.key(123), N_SAMPLES))[:, 0]
    floor = scipy.stats.wasserstein_distance(ref, np.asarray(gmm.sample(jax.random.key(7), N_SAMPLES))[:, 0])
    assert 0.005 < floor < 0.02  # the noise floor the tolerance is built on
    den = gmm.denoiser(sch, kind)
    grid = logsnr_grid(sch, n_steps)
    out = run_sampler(sampler, den, grid, N_SAMPLES)
    w1 = scipy.stats.wasserstein_distance(np.asarray(out.samples)[:, 0], ref)
    assert np.all(np.isfinite(out.samples))
    assert w1 < W1_TOL, (sampler.name, w1, floor)
    assert int(out.nfe) == sampler.nfe(n_steps, final_zero=False)
    if sampler.name == "edm_stochastic":
        assert int(out.nfe) == 2 * n_steps  # grid ends at sigma_min > 0: Heun on every step
    else:
        assert int(out.nfe) == n_steps


def test_edm_stochastic_static_nfe():
    """Karras et al. 2022, Alg. 2: Heun on every step but an Euler last step to sigma = 0."""
    assert st.EDMStochastic().nfe(18, final_zero=True) == 35  # the paper's 35 NFE for 18 steps
    assert st.EDMStochastic().nfe(18) == st.EDMStochastic().nfe(18, final_zero=False) == 36


def test_predictor_corrector_16d(x64):
    """Langevin PC in 16-D (Song et al.'s snr rule needs ||noise|| / ||score|| to concentrate, so it is
    not tested in 1-D): the first coordinate's marginal is the 1-D mixture."""
    d = 16
    means = np.zeros((2, d))
    means[:, 0] = [-1.0, 1.5]
    gmm = analytic.GaussianMixture.isotropic([0.3, 0.7], means, jnp.array([0.3, 0.5]), jnp.float64)
    ref = np.asarray(analytic.gmm_1d(dtype=jnp.float64).sample(jax.random.key(123), N_SAMPLES))[:, 0]
    sch = S.VE()
    sampler = st.PredictorCorrector(predictor="ddpm", n_corrector=2, snr=0.05)
    out = run_sampler(sampler, gmm.denoiser(sch, "eps"), logsnr_grid(sch, 50), N_SAMPLES, dim=d)
    w1 = scipy.stats.wasserstein_distance(np.asarray(out.samples)[:, 0], ref)
    assert w1 < W1_TOL, w1
    assert int(out.nfe) == 50 * 3 == sampler.nfe(50)


def test_deterministic_reference_error(x64):
    """The noise floor and a deterministic sampler's W1 on the same setting, for scale: the PF-ODE
    Euler step written out here (z_s = z + (s - t) velocity) with 100 logSNR-uniform steps."""
    gmm = analytic.gmm_1d(dtype=jnp.float64)
    sch = S.VPLinear()
    den = gmm.denoiser(sch, "eps")
    grid = jnp.asarray(logsnr_grid(sch, 100))
    z = prior_sample(jax.random.key(1), (N_SAMPLES, 1), sch, float(grid[0]), jnp.float64)

    def body(z, ts):
        return z + (ts[1] - ts[0]) * den.velocity(z, ts[0]), None

    z, _ = jax.lax.scan(body, z, (grid[:-1], grid[1:]))
    ref = np.asarray(gmm.sample(jax.random.key(123), N_SAMPLES))[:, 0]
    w1 = scipy.stats.wasserstein_distance(np.asarray(z)[:, 0], ref)
    assert w1 < W1_TOL, w1


def test_ancestral_parameterisations_agree(x64):
    """DDPM posterior sampling, DDIM with eta = 1 and Euler ancestral (eta = 1) are the same Markov
    chain written three ways (Kingma et al. 2021 eq. 33-34; DDIM eq. 16; k-diffusion's sigma_up /
    sigma_down): with the same keys they agree to rounding."""
    gmm = analytic.gmm_1d(dtype=jnp.float64)
    sch = S.VPLinear()
    den = gmm.denoiser(sch, "eps")
    grid = logsnr_grid(sch, 20)
    outs = [
        run_sampler(s, den, grid, 256).samples
        for s in (st.DDPMAncestral(), st.DDIMStochastic(1.0), st.EulerAncestral())
    ]
    np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(outs[0], outs[2], rtol=0, atol=1e-10)
    # eta = 1 DPM++ SDE first-order step is the same posterior step (2M correction off: 1 step).
    g2 = grid[:2]
    g3 = np.r_[g2, g2[-1] * 0.5]
    a = run_sampler(st.DDPMAncestral(), den, g3, 64).samples
    b = run_sampler(st.DPMpp2MSDE(lower_order_final="never"), den, g3, 64).samples
    assert not np.allclose(a, b)  # second step uses the 2M correction
    # ... unless the final order is lowered ("auto" at N < 15): then both steps are first order.
    b_auto = run_sampler(st.DPMpp2MSDE(), den, g3, 64).samples
    np.testing.assert_allclose(a, b_auto, rtol=0, atol=1e-10)
    a1 = run_sampler(st.DDPMAncestral(), den, g2, 64).samples
    b1 = run_sampler(st.DPMpp2MSDE(), den, g2, 64).samples
    np.testing.assert_allclose(a1, b1, rtol=0, atol=1e-10)


def test_ddpm_large_variance_is_ho_algorithm_2(x64):
    """On VPDiscrete's own grid t = n/1000, `ddpm(variance='large')` is Ho et al. 2020 Alg. 2 line 4:
    z_{n-1} = (z_n - beta_n / sqrt(1 - abar_n) eps) / sqrt(1 - beta_n) + sqrt(beta_n) noise."""
    sch = S.VPDiscrete()
    abar = sch.alphas_cumprod()
    betas = np.linspace(1e-4, 0.02, 1000)
    gmm = analytic.gmm_1d(dtype=jnp.float64)
    den = gmm.denoiser(sch, "eps")
    idx = np.array([600, 599, 598, 597])  # n: three steps, the last one noise-free
    grid = idx / 1000.0
    keys = jax.random.split(jax.random.key(0), 32)
    z0 = jax.random.normal(jax.random.key(1), (32, 1), jnp.float64)
    out = run_sampler(st.DDPMAncestral(variance="large"), den, grid, 32, trajectory=True, z=z0)
    z = np.asarray(z0)
    for j, n in enumerate(idx[:-1]):
        eps = np.asarray(den.eps(jnp.asarray(z), grid[j]))
        b = betas[n - 1]
        mean = (z - b / np.sqrt(1 - abar[n - 1]) * eps) / np.sqrt(1 - b)
        noise = np.asarray(
            jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, j), (1,), jnp.float64))(keys)
        )
        z = mean + (np.sqrt(b) * noise if j < len(idx) - 2 else 0.0)
        np.testing.assert_allclose(np.asarray(out.trajectory[j + 1]), z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "sampler",
    [st.DDPMAncestral(), st.EDMStochastic(s_churn=5.0), st.DPMpp3MSDE(), st.EulerAncestral(eta=0.7)],
)
def test_schedule_invariance(x64, sampler):
    """Samplers defined through logSNR / sigma~ give the same x~ = z / alpha on any two paths with the
    same sigma~ grid (Kingma et al. 2021 sec. 4.4): VP-linear vs EDM, same keys, same noise."""
    gmm = analytic.gmm_1d(dtype=jnp.float64)
    vp, edm = S.VPLinear(), S.EDM()
    g_vp = logsnr_grid(vp, 12)
    st_grid = np.asarray(vp.sigma(g_vp) / vp.alpha(g_vp))
    g_edm = st_grid / edm.sigma_max
    n0 = jax.random.normal(jax.random.key(4), (64, 1), jnp.float64)
    a0 = float(vp.alpha(g_vp[0]))
    out_vp = run_sampler(sampler, gmm.denoiser(vp, "eps"), g_vp, 64, seed=3, z=a0 * st_grid[0] * n0)
    out_edm = run_sampler(sampler, gmm.denoiser(edm, "x0"), g_edm, 64, seed=3, z=st_grid[0] * n0)
    np.testing.assert_allclose(
        np.asarray(out_vp.samples) / float(vp.alpha(g_vp[-1])), out_edm.samples, atol=1e-7
    )


def test_bad_input_raises_before_compiling(x64):
    gmm = analytic.gmm_1d(dtype=jnp.float64)
    z = jnp.zeros((4, 1))
    keys = jax.random.split(jax.random.key(0), 4)
    cos1 = S.VPCosine(t_max=1.0)
    grid = jnp.linspace(1.0, 1e-3, 5)
    # SDE drift alpha'/alpha is infinite at alpha(t_max) = 0.
    with pytest.raises(ValueError, match="alpha"):
        st.EulerMaruyama().run(gmm.denoiser(cos1, "x0"), z, grid, keys)
    # DDPM only needs x0-hat: fine with an x0 model, impossible with an eps model at alpha = 0.
    assert np.all(np.isfinite(st.DDPMAncestral().run(gmm.denoiser(cos1, "x0"), z, grid, keys).samples))
    with pytest.raises(ValueError, match="'eps'-prediction"):
        st.DDPMAncestral().run(gmm.denoiser(cos1, "eps"), z, grid, keys)
    vp = gmm.denoiser(S.VPLinear(), "eps")
    with pytest.raises(ValueError, match="decreasing"):
        st.DDPMAncestral().run(vp, z, grid[::-1], keys)
    with pytest.raises(ValueError, match="PRNG key"):
        st.DDPMAncestral().run(vp, z, jnp.linspace(1.0, 1e-3, 5), None)
    for bad, field in [
        (st.DDIMStochastic(eta=1.5), "eta"),
        (st.DDPMAncestral(variance="huge"), "variance"),
        (st.DPMpp2MSDE(solver_type="rk4"), "solver_type"),
        (st.EDMStochastic(s_min=2.0, s_max=1.0), "s_min"),
        (st.PredictorCorrector(predictor="rk4"), "predictor"),
        (st.PredictorCorrector(snr=0.0), "snr"),
    ]:
        with pytest.raises(ValueError, match=field):
            bad.run(vp, z, jnp.linspace(1.0, 1e-3, 5), keys)
    # Under jit with a traced grid the schedule-level check still fires at trace time.
    with pytest.raises(ValueError, match="alpha"):
        jax.jit(lambda g: st.EulerAncestral().run(gmm.denoiser(cos1, "x0"), z, g, keys))(grid)


def test_listing():
    assert set(st.SAMPLERS) == {
        "euler_maruyama", "ddpm", "ddim_eta", "euler_ancestral", "edm_stochastic", "dpmpp_2m_sde",
        "dpmpp_3m_sde", "pc",
    }  # fmt: skip
    for name, cls in st.SAMPLERS.items():
        assert cls.name == name and cls.stochastic and cls.__doc__ and "et al." in cls.__doc__


def test_exponential_integrator_weights(x64):
    """The DPM++ SDE weights I_n = int_0^h k e^{-k(h-u)} u^n du against numerical quadrature."""
    from scipy.integrate import quad

    for k in (1.0, 1.5, 2.0):
        for h in (1e-4, 1e-3, 0.1, 0.24, 0.26, 0.7, 3.0):
            got = st._phi(k, jnp.float64(h))
            for n in range(3):
                ref = quad(
                    lambda u, n=n: k * np.exp(-k * (h - u)) * u**n, 0.0, h, epsabs=1e-14, epsrel=1e-12
                )[0]
                np.testing.assert_allclose(float(got[n]), ref, rtol=1e-9, atol=1e-16)
    # float32: the series keeps full relative precision where the closed form would cancel
    got32 = st._phi(2.0, jnp.float32(1e-3))
    np.testing.assert_allclose(float(got32[2]), 2.0 * 1e-9 / 3.0 * (1 - 2e-3 / 4), rtol=1e-5)


def _sde_step_by_hand(sch, den, z, t, s, eta, prev=None):
    """One noise-free DPM-Solver++ SDE step t -> s written out (k = 1 + eta, h = (lam_s - lam_t) / 2):
    first order, z_s = (s_s / s_t) e^{-eta h} z + a_s I0 x0-hat, I0 = 1 - e^{-kh}; with `prev` =
    (z_prev, t_prev), the exact integral of the line through x0-hat at t_prev and t adds
    a_s I1 (x0_t - x0_prev) / h_prev, I1 = h - I0 / k."""
    t, s = jnp.float64(t), jnp.float64(s)
    k = 1.0 + eta
    h = 0.5 * (sch.logsnr(s) - sch.logsnr(t))
    i0 = -jnp.expm1(-k * h)
    x0 = den.x0(z, t)
    c = i0 * x0
    if prev is not None:
        z_p, t_p = prev
        h_p = 0.5 * (sch.logsnr(t) - sch.logsnr(jnp.float64(t_p)))
        c = c + (h - i0 / k) * (x0 - den.x0(z_p, jnp.float64(t_p))) / h_p
    return sch.sigma(s) / sch.sigma(t) * jnp.exp(-eta * h) * z + sch.alpha(s) * c


@pytest.mark.parametrize("n", [6, 16])
def test_sde_multistep_lower_order_final(x64, n):
    """`lower_order_final` of DPM++ 2M / 3M SDE has the semantics of the ODE solvers' option
    ("auto" lowers the final orders only for N < 15, "always" for every N, "never" not at all):
      * with "always" (or "auto" at N < 15) the last step is the first-order step and, for 3M, the one
        before it the order-2 step, both computed by hand from the trajectory; with "never" they are
        not. With eta = 1 the last step adds no noise, so it is a deterministic map of z_{N-1};
        the second-to-last step is checked at eta = 0 (no noise);
      * with eta = 0 and the "midpoint" form, 2M SDE is DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2),
        mode for mode (the ODE solver is tested against a transcription of Alg. 2).
    """
    from diffusion_jax.samplers import multistep as ms

    gmm = analytic.gmm_1d(dtype=jnp.float64)
    sch = S.VPLinear()
    den = gmm.denoiser(sch, "eps")
    grid = logsnr_grid(sch, n)
    lowered = {"always": True, "never": False, "auto": n < 15}
    for sde in (st.DPMpp2MSDE, st.DPMpp3MSDE):
        finals = {}
        for lof in ("auto", "always", "never"):
            for eta in (1.0, 0.0):
                traj = run_sampler(
                    sde(eta=eta, lower_order_final=lof), den, grid, 64, seed=5, trajectory=True
                ).trajectory
                first = _sde_step_by_hand(sch, den, traj[-2], grid[-2], grid[-1], eta)
                assert np.allclose(traj[-1], first, rtol=1e-10, atol=1e-12) == lowered[lof], (sde, lof, eta)
            finals[lof] = traj[-1]  # (traj is the eta = 0 run from here on)
            if sde is st.DPMpp3MSDE:  # eta = 0: the step before the last is order 2 iff lowered
                second = _sde_step_by_hand(sch, den, traj[-3], grid[-3], grid[-2], 0.0, (traj[-4], grid[-4]))
                assert np.allclose(traj[-2], second, rtol=1e-10, atol=1e-12) == lowered[lof], lof
            else:
                z0 = prior_sample(jax.random.key(6), (64, 1), sch, float(grid[0]), jnp.float64)
                ode = jax.jit(lambda d, z, lof=lof: ms.DPMSolverPP2M(lower_order_final=lof).run(d, z, grid))
                np.testing.assert_allclose(traj[-1], ode(den, z0).samples, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(finals["auto"], finals["always" if n < 15 else "never"])


def test_sde_multistep_bad_lower_order_final_fails_before_compiling(x64):
    den = analytic.gmm_1d(dtype=jnp.float64).denoiser(S.VPLinear(), "eps")
    z = jnp.zeros((4, 1))
    keys = jax.random.split(jax.random.key(0), 4)
    for bad in (st.DPMpp2MSDE(lower_order_final="sometimes"), st.DPMpp3MSDE(lower_order_final=True)):
        with pytest.raises(ValueError, match="valid: \\['auto', 'always', 'never'\\]"):
            jax.jit(lambda d, z, k, bad=bad: bad.run(d, z, jnp.linspace(1.0, 1e-3, 6), k)).lower(den, z, keys)
