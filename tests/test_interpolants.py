"""Interpolants x_t = a x1 + b x0 + c eps against closed forms (float64) and the Gaussian paths (bitwise).

References are written here from the papers, independently of `diffusion_jax.interpolants`:
  * the Gaussian -> Gaussian OT map T(x) = m1 + A (x - m0), A = S0^-1/2 (S0^1/2 S1 S0^1/2)^1/2 S0^-1/2
    (Dowson & Landau 1982; Peyre & Cuturi, "Computational OT", Remark 2.31), its McCann interpolation
    and velocity field;
  * the Brownian bridge (SB-CFM, Tong et al. 2024b, eqs. 10-12, in their time t' = 1 - t);
  * the Schrodinger bridge between Gaussians (Bunne et al. 2023, "The Schrodinger bridge between
    Gaussian measures has a closed form", Thm. 3): cross-covariance C_s = (S0^1/2 D_s S0^-1/2 - s^2 I)/2,
    D_s = (4 S0^1/2 S1 S0^1/2 + s^4 I)^1/2, marginal covariance
    (1-t')^2 S0 + t'^2 S1 + t'(1-t') (C_s + C_s^T + s^2 I).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import sqrtm

from diffusion_jax import interpolants as I
from diffusion_jax import predictions as P
from diffusion_jax.objectives import exact_ot_pairing
from diffusion_jax.samplers.deterministic import RK4
from diffusion_jax.schedules import get_schedule

RF = get_schedule("rectified_flow")


def _spd(rng, d, scale=1.0):
    m = rng.normal(size=(d, d))
    return scale * (m @ m.T / d + 0.3 * np.eye(d))


def _gaussians(d=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=d), _spd(rng, d), rng.normal(size=d) + 1.0, _spd(rng, d, 2.0)


def _ot_matrix(s0, s1):
    r = np.real(sqrtm(s0))
    ri = np.linalg.inv(r)
    return ri @ np.real(sqrtm(r @ s1 @ r)) @ ri


def _sb_cross_cov(s0, s1, sig):
    """Bunne et al. 2023, Thm. 3: Cov(x0, x1) of the static SB plan (entropic reg 2 sig^2)."""
    r = np.real(sqrtm(s0))
    d = np.real(sqrtm(4.0 * r @ s1 @ r + sig**4 * np.eye(len(s0))))
    return 0.5 * (r @ d @ np.linalg.inv(r) - sig**2 * np.eye(len(s0)))


# -------------------------------------------------------------------------------------------------
# Gaussian paths written as interpolants: the same bits
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "edm", "rectified_flow", "ve"])
def test_gaussian_path_bitwise(name):
    sch = get_schedule(name)
    key = jax.random.key(0)
    x = jax.random.normal(key, (16, 3), jnp.float32) * 2.0
    eps = jax.random.normal(jax.random.fold_in(key, 1), (16, 3), jnp.float32)
    t = jax.random.uniform(jax.random.fold_in(key, 2), (16,), jnp.float32, 0.01, 0.99)
    interp = I.Interpolant(sch)
    z_ref = P.bcast(sch.alpha(t), x) * x + P.bcast(sch.sigma(t), x) * eps
    np.testing.assert_array_equal(np.asarray(interp.interpolate(x, eps, None, t)), np.asarray(z_ref))
    np.testing.assert_array_equal(
        np.asarray(interp.velocity(x, eps, None, t)), np.asarray(P.target("velocity", x, eps, t, sch))
    )


# -------------------------------------------------------------------------------------------------
# Brownian bridge (SB-CFM) conditional targets
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [0.1, 1.0])
def test_bridge_velocity_and_score_match_sb_cfm(x64, sig):
    rng = np.random.default_rng(1)
    x0, x1, eps = (rng.normal(size=(32, 3)) for _ in range(3))
    t = rng.uniform(0.01, 0.99, size=32)
    interp = I.Interpolant(RF, "bridge", sig)
    xt = np.asarray(interp.interpolate(jnp.asarray(x1), jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t)))
    # SB-CFM in its own time tp = 1 - t (x0 at tp = 0): mu = tp x1 + (1 - tp) x0, sigma_tp^2 = s^2 tp (1-tp)
    tp = (1.0 - t)[:, None]
    mu = tp * x1 + (1 - tp) * x0
    np.testing.assert_allclose(xt, mu + sig * np.sqrt(tp * (1 - tp)) * eps, rtol=1e-13, atol=1e-13)
    u_tp = (1 - 2 * tp) / (2 * tp * (1 - tp)) * (xt - mu) + (x1 - x0)  # eq. 11
    u = np.asarray(interp.velocity(jnp.asarray(x1), jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t)))
    np.testing.assert_allclose(u, -u_tp, rtol=1e-11, atol=1e-11)  # d/dt = -d/dtp
    score = -(xt - mu) / (sig**2 * tp * (1 - tp))  # eq. 12: grad log N(x; mu, sigma_tp^2 I)
    np.testing.assert_allclose(np.asarray(interp.score(jnp.asarray(eps), jnp.asarray(t))), score, rtol=1e-11)
    # The coefficient derivatives are those of the coefficient functions (jvp of c).
    c = interp(jnp.asarray(t))
    dc_jvp = jax.jvp(interp.c, (jnp.asarray(t),), (jnp.ones(32),))[1]
    np.testing.assert_allclose(np.asarray(c.dc), np.asarray(dc_jvp), rtol=1e-12)


def test_cfm_constant_noise_matches_tong():
    """I-CFM / OT-CFM path (Tong et al. 2024 eq. 14): mu = tp x1 + (1-tp) x0, sigma constant, u = x1 - x0."""
    rng = np.random.default_rng(2)
    x0, x1, eps = (jnp.asarray(rng.normal(size=(8, 2)), jnp.float32) for _ in range(3))
    t = jnp.asarray(rng.uniform(size=8), jnp.float32)
    interp = I.Interpolant(RF, "constant", 0.1)
    tp = (1.0 - t)[:, None]
    np.testing.assert_allclose(
        interp.interpolate(x1, x0, eps, t), tp * x1 + (1 - tp) * x0 + 0.1 * eps, atol=1e-6
    )
    np.testing.assert_allclose(interp.velocity(x1, x0, eps, t), -(x1 - x0), atol=1e-6)


# -------------------------------------------------------------------------------------------------
# Gaussian -> Gaussian: exact OT, and marginal transport for every coupling x path noise
# -------------------------------------------------------------------------------------------------


def test_exact_ot_gaussians_conditional_target_is_the_marginal_field(x64):
    m0, s0, m1, s1 = _gaussians()
    a = _ot_matrix(s0, s1)
    rng = np.random.default_rng(3)
    x0 = rng.multivariate_normal(m0, s0, size=64)
    x1 = (m1 + (x0 - m0) @ a.T)[rng.permutation(64)]  # the target sample, shuffled
    x1p = x1[exact_ot_pairing(x0, x1)]  # the minibatch exact OT plan recovers the map
    np.testing.assert_allclose(x1p, m1 + (x0 - m0) @ a.T, rtol=1e-12, atol=1e-12)
    t = rng.uniform(size=64)
    interp = I.Interpolant(RF)
    xt = np.asarray(interp.interpolate(jnp.asarray(x1p), jnp.asarray(x0), None, jnp.asarray(t)))
    u = np.asarray(interp.velocity(jnp.asarray(x1p), jnp.asarray(x0), None, jnp.asarray(t)))
    # McCann interpolation in our time: x_t = M_t (x0 - m0) + (1-t) m1 + t m0, M_t = (1-t) A + t I;
    # marginal velocity v_t(x) = (I - A) M_t^-1 (x - mu_t) + m0 - m1.
    eye = np.eye(2)
    for i in range(64):
        mt = (1 - t[i]) * a + t[i] * eye
        mu = (1 - t[i]) * m1 + t[i] * m0
        v = (eye - a) @ np.linalg.solve(mt, xt[i] - mu) + m0 - m1
        np.testing.assert_allclose(u[i], v, rtol=1e-10, atol=1e-10)
    # The ODE dx/dt = v_t(x) from the source sample at t = 1, solved by our RK4 sampler to t = 0,
    # lands on the OT map T(x0) (a closed-form velocity field as the "network").
    a_j, m0_j, m1_j = (jnp.asarray(v) for v in (a, m0, m1))

    def field(params, z, t_in, cond, rng):
        tt = t_in[:, None, None]
        mt = (1 - tt) * a_j + tt * jnp.eye(2)
        mu = (1 - t_in)[:, None] * m1_j + t_in[:, None] * m0_j
        y = jnp.linalg.solve(mt, (z - mu)[..., None])[..., 0]
        return y @ (jnp.eye(2) - a_j).T + m0_j - m1_j

    den = P.make_denoiser(field, RF, "velocity")
    out = RK4().run(den, jnp.asarray(x0), jnp.linspace(1.0, 0.0, 201))
    np.testing.assert_allclose(np.asarray(out.samples), x1p, rtol=1e-9, atol=1e-9)


def _linear_moments(interp, m0, s0, m1, s1, c01, ts):
    """(mean_x, cov_x, mean_u, cov_ux) [T, ...] of (x_t, u_t) at times ts [T] for jointly Gaussian
    (x0, x1) with Cov(x0, x1) = c01 and eps ~ N(0, I), pushed through *our* interpolate / velocity
    (linear maps of (x0, x1, eps), so their Jacobians carry the moments exactly)."""
    d = len(m0)
    z = np.zeros((d, d))
    joint_m = jnp.asarray(np.concatenate([m0, m1, np.zeros(d)]))
    joint_c = jnp.asarray(np.block([[s0, c01, z], [c01.T, s1, z], [z, z, np.eye(d)]]))

    def moments(t):
        def lin(fn, w):
            return fn(w[None, d : 2 * d], w[None, :d], w[None, 2 * d :], jnp.full((1,), t))[0]

        jx = jax.jacobian(lambda w: lin(interp.interpolate, w))(joint_m)
        ju = jax.jacobian(lambda w: lin(interp.velocity, w))(joint_m)
        return jx @ joint_m, jx @ joint_c @ jx.T, ju @ joint_m, ju @ joint_c @ jx.T

    return tuple(np.asarray(v) for v in jax.jit(jax.vmap(moments))(jnp.asarray(ts)))


@pytest.mark.parametrize("coupling", ["independent", "ot", "sb"])
@pytest.mark.parametrize("noise,sig", [("none", 0.0), ("constant", 0.3), ("bridge", 0.7)])
def test_marginal_ode_transports_source_to_target(x64, coupling, noise, sig):
    """The marginal velocity E[u_t | x_t] (closed form for Gaussians, from our conditional targets)
    transports the t = 1 marginal to the t = 0 marginal: solved by RK4 from an affine frame of the
    start law, the end law must be N(m1, S1 + c(0)^2 I). This fails if a', b', c' are not the
    derivatives of a, b, c (the continuity equation)."""
    m0, s0, m1, s1 = _gaussians(seed=4)
    cross = {"independent": np.zeros((2, 2)), "ot": s0 @ _ot_matrix(s0, s1), "sb": _sb_cross_cov(s0, s1, 0.7)}
    c01 = cross[coupling]
    interp = I.Interpolant(RF, noise, sig)
    # RK4 takes an Euler step onto sigma(t) = 0 (a Gaussian-path convention): end 1e-12 above t = 0.
    ts = np.linspace(1.0, 0.0, 201)
    ts[-1] = 1e-12
    # The affine field v_t(x) = mu_u + C_ux C_x^-1 (x - mu_x), tabulated at the times RK4 visits (the
    # bridge's c' is infinite at t = 0, 1 where c c' stays finite: evaluated 1e-12 inside).
    visits = np.clip(np.sort(np.concatenate([ts, 0.5 * (ts[:-1] + ts[1:])])), 1e-12, 1 - 1e-12)
    mx, cx, mu_u, cux = _linear_moments(interp, m0, s0, m1, s1, c01, visits)
    gain, mx, mu_u, kj = (jnp.asarray(v) for v in (cux @ np.linalg.inv(cx), mx, mu_u, visits))

    def field(params, z, t_in, cond, rng):
        i = jnp.argmin(jnp.abs(kj[None, :] - t_in[:, None]), axis=1)
        return mu_u[i] + jnp.einsum("bij,bj->bi", gain[i], z - mx[i])

    m_start, c_start = np.asarray(mx[-1]), cx[-1]
    sig2 = sig**2 if noise == "constant" else 0.0
    np.testing.assert_allclose(m_start, m0, atol=1e-14)
    np.testing.assert_allclose(c_start, s0 + sig2 * np.eye(2), atol=1e-11)
    frame = np.concatenate([m_start[None], m_start + np.linalg.cholesky(c_start).T], axis=0)  # [3, 2]
    den = P.make_denoiser(field, RF, "velocity")
    end = np.asarray(RK4().run(den, jnp.asarray(frame), jnp.asarray(ts)).samples)
    lend = (end[1:] - end[0]).T
    np.testing.assert_allclose(end[0], m1, atol=1e-9)
    c_end = s1 + sig2 * np.eye(2)
    np.testing.assert_allclose(lend @ lend.T, c_end, rtol=1e-8, atol=1e-9)


def test_bridge_marginal_between_gaussians_matches_bunne(x64):
    m0, s0, m1, s1 = _gaussians(seed=5)
    sig = 0.8
    c01 = _sb_cross_cov(s0, s1, sig)
    interp = I.Interpolant(RF, "bridge", sig)
    ts = np.array([0.1, 0.35, 0.5, 0.9])
    for t, mx, cx in zip(ts, *_linear_moments(interp, m0, s0, m1, s1, c01, ts)[:2], strict=True):
        tp = 1.0 - t  # Bunne et al.'s time (x0 at tp = 0)
        ref = (1 - tp) ** 2 * s0 + tp**2 * s1 + tp * (1 - tp) * (c01 + c01.T + sig**2 * np.eye(2))
        np.testing.assert_allclose(mx, (1 - tp) * m0 + tp * m1, rtol=1e-13)
        np.testing.assert_allclose(cx, ref, rtol=1e-12, atol=1e-13)


def test_bunne_cross_covariance_is_the_entropic_plan():
    """The entropic OT plan with reg 2 s^2 (what SB-CFM pairs with) between 1-D Gaussians has
    cross-covariance (sqrt(4 s0^2 s1^2 + s^4) - s^2) / 2 (Bunne et al. Thm. 3 / Janati et al. 2020):
    Sinkhorn (ott-jax, absolute epsilon) on quantile grids of the two laws reproduces it."""
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn
    from scipy.stats import norm

    s0, s1, sig, n = 1.0, 1.5, 0.6, 400
    q = norm.ppf((np.arange(n) + 0.5) / n)
    x, y = (s0 * q)[:, None], (s1 * q + 0.5)[:, None]
    geom = pointcloud.PointCloud(jnp.asarray(x), jnp.asarray(y), epsilon=I.sb_entropic_reg(sig))
    plan = np.asarray(
        sinkhorn.Sinkhorn(max_iterations=5000, threshold=1e-6)(linear_problem.LinearProblem(geom)).matrix
    )
    cross = np.sum(plan * (x - x.mean()) * (y - y.mean()).T)
    ref = _sb_cross_cov(np.array([[s0**2]]), np.array([[s1**2]]), sig)[0, 0]
    assert abs(cross - ref) < 0.01 * ref, (cross, ref)


# -------------------------------------------------------------------------------------------------
# Sources and bad input
# -------------------------------------------------------------------------------------------------


def test_sources_draw_per_key_and_densities():
    from diffusion_jax.analytic import gmm_2d_ring

    g = I.gaussian_source()
    key = jax.random.key(7)
    np.testing.assert_array_equal(g.draw(key, (3,)), jax.random.normal(key, (3,), jnp.float32))
    x = jnp.asarray([[0.0, 0.0], [1.0, -2.0]])
    np.testing.assert_allclose(g.log_prob(x), [-np.log(2 * np.pi), -np.log(2 * np.pi) - 2.5], rtol=1e-6)
    gmm = gmm_2d_ring()
    src = I.from_distribution("gmm", gmm)
    keys = jax.random.split(key, 5)
    drawn = jax.vmap(lambda k: src.draw(k, (2,)))(keys)
    np.testing.assert_array_equal(drawn[2], src.draw(keys[2], (2,)))  # a seed's draw is its own
    np.testing.assert_allclose(src.log_prob(drawn), gmm.log_prob(drawn), rtol=1e-6)
    user = I.sampler_source("user", lambda k, n: jnp.ones((n, 2)))
    assert not user.has_density
    with pytest.raises(ValueError, match="no log-density; likelihood needs one"):
        user.log_prob(x)
    with pytest.raises(ValueError, match=r"shape \(2,\), asked for \(3,\)"):
        src.draw(key, (3,))


def test_bad_input():
    with pytest.raises(ValueError, match="has no sampler"):
        I.Source("broken", None)
    with pytest.raises(ValueError, match="must be a callable"):
        I.sampler_source("broken", None)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        I.Interpolant(RF, "bridge", -0.1)
    with pytest.raises(ValueError, match=r"noise='wiggle' unknown; valid: \['none', 'constant', 'bridge'\]"):
        I.Interpolant(RF, "wiggle", 0.1)
    with pytest.raises(ValueError, match="needs noise='constant' or 'bridge'"):
        I.Interpolant(RF, "none", 0.1)
    with pytest.raises(ValueError, match="conditional score needs path noise"):
        I.Interpolant(RF).score(jnp.ones((1, 2)), 0.5)


def test_gaussian_source_samples_bitwise_through_the_engine():
    """The engine started from `gaussian_source()` draws the same bits as its default source."""
    from diffusion_jax.analytic import gmm_2d_ring
    from diffusion_jax.samplers import seeds as sd
    from diffusion_jax.samplers.deterministic import Euler

    den = gmm_2d_ring().denoiser(get_schedule("vp_linear"), "eps")
    grid = np.linspace(1.0, 1e-3, 9)
    kw = dict(base_seed=4, chunk_size=4)
    ref = sd.sample(den, Euler(), grid, list(range(6)), (2,), **kw).samples
    got = sd.sample(den, Euler(), grid, list(range(6)), (2,), source=I.gaussian_source(), **kw).samples
    assert np.asarray(got).tobytes() == np.asarray(ref).tobytes()
