"""Analytic distributions: densities vs scipy, exact samplers, z_t marginals, Tweedie's formula by Monte
Carlo, scores vs autodiff of the marginal density, small-sigma accuracy, the empirical denoiser."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffusion_jax import analytic as A
from diffusion_jax import predictions as P
from diffusion_jax import schedules as S


def _np_gmm(g):
    return np.asarray(g.weights) / np.sum(np.asarray(g.weights)), np.asarray(g.means), np.asarray(g.covs)


def test_log_prob_matches_scipy(x64):
    g = A.random_gmm(jax.random.key(0), 3, 2)
    w, m, c = _np_gmm(g)
    x = np.random.default_rng(0).normal(size=(50, 2)) * 2
    ref = np.log(sum(w[k] * stats.multivariate_normal(m[k], c[k]).pdf(x) for k in range(3)))
    np.testing.assert_allclose(g.log_prob(jnp.asarray(x)), ref, rtol=1e-11)
    cov = np.array([[2.0, 0.6, 0.1], [0.6, 1.0, -0.3], [0.1, -0.3, 0.5]])
    gauss = A.Gaussian(jnp.asarray([1.0, -2.0, 0.5]), jnp.asarray(cov))
    x3 = np.random.default_rng(1).normal(size=(20, 3))
    ref3 = stats.multivariate_normal([1.0, -2.0, 0.5], cov).logpdf(x3)
    np.testing.assert_allclose(gauss.log_prob(jnp.asarray(x3)), ref3, rtol=1e-12)


def test_log_prob_integrates_to_one(x64):
    """Riemann sum of the 8-Gaussian ring density on a fine grid."""
    g = A.gmm_2d_ring(8, radius=2.0, std=0.3)
    h = 0.025
    grid = np.arange(-4.0, 4.0, h) + h / 2
    xx, yy = np.meshgrid(grid, grid)
    pts = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1))
    assert float(jnp.sum(jnp.exp(g.log_prob(pts))) * h * h) == pytest.approx(1.0, abs=1e-6)


def test_exact_samples(x64):
    """Sample moments vs the closed-form mixture moments, and a KS test of the 1-D mixture against its
    exact CDF (D < 1.63/sqrt(n): the 1% critical value)."""
    g = A.random_gmm(jax.random.key(1), 3, 2)
    n = 40000
    x = np.asarray(g.sample(jax.random.key(2), n))
    mean, cov = (np.asarray(a) for a in g.moments())
    w, m, c = _np_gmm(g)
    ref_mean = (w[:, None] * m).sum(0)
    assert np.allclose(mean, ref_mean, atol=1e-12)
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 4 * se)
    np.testing.assert_allclose(np.cov(x.T), cov, rtol=0.05, atol=0.05)
    g1 = A.gmm_1d()
    x1 = np.asarray(g1.sample(jax.random.key(3), 20000))[:, 0]
    cdf = lambda v: 0.3 * stats.norm.cdf(v, -1.0, 0.3) + 0.7 * stats.norm.cdf(v, 1.5, 0.5)
    assert stats.kstest(x1, cdf).statistic < 1.63 / np.sqrt(len(x1))


@pytest.mark.parametrize(("sname", "t"), [("vp_cosine", 0.4), ("rectified_flow", 0.7)])
def test_zt_marginal_matches_closed_form(x64, sname, t):
    """Pairs (x, z = alpha x + sigma eps) sampled directly; z's mean/cov and (1-D) law vs marginal()."""
    sched = S.get_schedule(sname)
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    g = A.random_gmm(jax.random.key(4), 3, 2)
    n = 40000
    x = np.asarray(g.sample(jax.random.key(5), n))
    z = a * x + s * np.random.default_rng(0).normal(size=x.shape)
    mean, cov = (np.asarray(v) for v in g.moments())
    mm, mc = (np.asarray(v) for v in g.marginal(sched, t).moments())
    np.testing.assert_allclose(mm, a * mean, atol=1e-12)
    np.testing.assert_allclose(mc, a * a * cov + s * s * np.eye(2), atol=1e-12)
    assert np.all(np.abs(z.mean(0) - mm) < 4 * np.sqrt(np.diag(mc) / n))
    np.testing.assert_allclose(np.cov(z.T), mc, rtol=0.05, atol=0.03)
    # 1-D: the law of z is the mixture of N(a mu_k, a^2 s_k^2 + s^2).
    g1 = A.gmm_1d()
    z1 = a * np.asarray(g1.sample(jax.random.key(6), 20000))[:, 0] + s * np.random.default_rng(1).normal(
        size=20000
    )
    cdf = lambda v: (
        0.3 * stats.norm.cdf(v, -a, np.hypot(0.3 * a, s))
        + 0.7 * stats.norm.cdf(v, 1.5 * a, np.hypot(0.5 * a, s))
    )
    assert stats.kstest(z1, cdf).statistic < 1.63 / np.sqrt(20000)
    marg = g1.marginal(sched, t)
    v = jnp.linspace(-3, 3, 7, dtype=jnp.float64)[:, None]
    np.testing.assert_allclose(
        np.exp(marg.log_prob(v)),
        np.gradient(cdf(np.asarray(v[:, 0]) + np.array([[-1e-5], [1e-5]])), axis=0)[0] / 2e-5,
        rtol=1e-6,
    )


@functools.partial(jax.jit, static_argnums=(3,))
def _importance_posterior_mean(xs, z, t, sched):
    """Self-normalised importance sampling of E[x | z] = E_p[x N(z; a x, s^2)] / E_p[N(z; a x, s^2)],
    with x ~ p; returns the estimate [M, D] and its standard error [M, D] (delta method)."""
    a, s = sched.alpha(t), sched.sigma(t)
    logw = -0.5 * jnp.sum((z[:, None, :] - a * xs[None]) ** 2, -1) / s**2  # [M, N]
    w = jax.nn.softmax(logw, axis=-1)
    est = w @ xs
    var = jnp.einsum("mn,mnd->md", w**2, (xs[None] - est[:, None]) ** 2)
    return est, jnp.sqrt(var)


@pytest.mark.parametrize(("sname", "t"), [("rectified_flow", 0.5), ("vp_linear", 0.3), ("ve", 0.4)])
def test_tweedie_against_monte_carlo(x64, sname, t):
    sched = S.get_schedule(sname)
    g = A.random_gmm(jax.random.key(7), 3, 2)
    xs = g.sample(jax.random.key(8), 200_000)
    z = g.marginal(sched, t).sample(jax.random.key(9), 6)
    est, se = _importance_posterior_mean(xs, z, jnp.float64(t), sched)
    exact = g.x0(z, t, sched)
    assert np.all(np.abs(np.asarray(exact - est)) < 5 * np.asarray(se) + 1e-3), (exact, est, se)
    # and the score is the Tweedie residual: (alpha E[x|z] - z) / sigma^2
    a, s = float(sched.alpha(t)), float(sched.sigma(t))
    np.testing.assert_allclose(g.score(z, t, sched), (a * exact - z) / s**2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("sname", "t"), [("rectified_flow", 1e-3), ("vp_linear", 1e-3), ("vp_cosine", 0.5)])
def test_score_is_gradient_of_marginal_log_density(x64, sname, t):
    """Closed-form score (eigenbasis, no density ratios) vs autodiff of log p_t, down to sigma ~ 1e-3."""
    sched = S.get_schedule(sname)
    g = A.random_gmm(jax.random.key(10), 4, 3)
    marg = g.marginal(sched, t)
    z = marg.sample(jax.random.key(11), 8)
    ref = jax.jit(jax.grad(lambda z: jnp.sum(marg.log_prob(z))))(z)
    np.testing.assert_allclose(g.score(z, t, sched), ref, rtol=1e-8, atol=1e-6 * float(jnp.max(jnp.abs(ref))))


def test_posterior_mean_small_sigma_against_numpy(x64):
    """E[x|z] and E[eps|z] at sigma = 1e-3 against a direct numpy evaluation (solves, scipy densities)."""
    sched = S.RectifiedFlow()
    t = 1e-3
    g = A.random_gmm(jax.random.key(12), 3, 2)
    z = g.marginal(sched, t).sample(jax.random.key(13), 5)
    x0, eps = g.x0_eps(z, t, sched)
    w, m, c = _np_gmm(g)
    a, s = 1 - t, t
    for b, zb in enumerate(np.asarray(z)):
        logp = np.array(
            [
                np.log(w[k])
                + stats.multivariate_normal(a * m[k], a * a * c[k] + s * s * np.eye(2)).logpdf(zb)
                for k in range(3)
            ]
        )
        r = np.exp(logp - logp.max())
        r /= r.sum()
        xk = [
            m[k] + a * c[k] @ np.linalg.solve(a * a * c[k] + s * s * np.eye(2), zb - a * m[k])
            for k in range(3)
        ]
        ek = [s * np.linalg.solve(a * a * c[k] + s * s * np.eye(2), zb - a * m[k]) for k in range(3)]
        np.testing.assert_allclose(x0[b], sum(r[k] * xk[k] for k in range(3)), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(eps[b], sum(r[k] * ek[k] for k in range(3)), rtol=1e-7, atol=1e-9)


def test_empirical_denoiser(x64):
    data = jax.random.normal(jax.random.key(14), (10, 3), jnp.float64)
    emp = A.Empirical(data)
    sched = S.VPLinear()
    # Same law as a mixture of zero-covariance components (independent code path).
    dirac = A.GaussianMixture(jnp.ones(10) / 10, data, jnp.zeros((10, 3, 3)))
    z = jax.random.normal(jax.random.key(15), (7, 3), jnp.float64)
    t = jnp.linspace(0.2, 0.8, 7)
    np.testing.assert_allclose(emp.x0(z, t, sched), dirac.x0(z, t, sched), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(emp.score(z, t, sched), dirac.score(z, t, sched), rtol=1e-8, atol=1e-9)
    # sigma -> 0: the posterior mean snaps to the data point nearest to z / alpha.
    rf = S.RectifiedFlow()
    y = jax.random.normal(jax.random.key(16), (7, 3), jnp.float64)
    nearest = np.asarray(data)[np.argmin(((np.asarray(y)[:, None] - np.asarray(data)[None]) ** 2).sum(-1), 1)]
    tt = 1e-4
    np.testing.assert_allclose(emp.x0((1 - tt) * y, tt, rf), nearest, atol=1e-10)
    with pytest.raises(ValueError, match="no density"):
        emp.log_prob(z)


@pytest.mark.parametrize("sname", ["vp_cosine", "edm"])
def test_denoiser_every_kind_gives_the_exact_posterior(x64, sname):
    sched = S.get_schedule(sname)
    g = A.random_gmm(jax.random.key(17), 3, 2)
    z = jax.random.normal(jax.random.key(18), (6, 2), jnp.float64) * 2
    t = jnp.linspace(0.1, 0.9, 6)
    x0, eps = g.x0_eps(z, t, sched)

    @jax.jit
    def all_kinds(dens, z, t):
        return [d.x0_eps(z, t) for d in dens]

    for kind, (dx0, deps) in zip(
        P.KINDS, all_kinds([g.denoiser(sched, k) for k in P.KINDS], z, t), strict=True
    ):
        np.testing.assert_allclose(dx0, x0, rtol=1e-9, atol=1e-9, err_msg=kind)
        np.testing.assert_allclose(deps, eps, rtol=1e-9, atol=1e-9, err_msg=kind)
    # Gaussian agrees with its one-component mixture written out: mean + a S (a^2 S + s^2)^-1 (z - a m).
    gauss = A.Gaussian(g.means[0], g.covs[0])
    a, s = sched.alpha(t)[:, None, None], sched.sigma(t)[:, None, None]
    m, c = g.means[0], g.covs[0]
    ref = m + jnp.einsum("bij,bj->bi", a * c @ jnp.linalg.inv(a**2 * c + s**2 * jnp.eye(2)), z - a[:, 0] * m)
    np.testing.assert_allclose(gauss.x0(z, t, sched), ref, rtol=1e-9)


def test_names_and_shapes():
    with pytest.raises(ValueError, match="valid names.*gmm_2d_ring"):
        A.get_distribution("moons")
    ring = A.get_distribution("gmm_2d_ring", num_modes=6, radius=3.0)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(ring.means), axis=1), 3.0, rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, 2\].*\(4, 3\)"):
        ring.x0(jnp.zeros((4, 3)), 0.5, S.RectifiedFlow())
    with pytest.raises(ValueError, match="weights"):
        A.GaussianMixture.isotropic([0.5, 0.5], np.zeros((3, 2)), 1.0)
