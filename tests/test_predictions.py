"""Prediction kinds: all-pairs conversions, EDM preconditioning, re-parameterization, bad shapes."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic as A
from diffusion_jax import predictions as P
from diffusion_jax import schedules as S

SCHEDS = {
    "vp_linear": S.get_schedule("vp_linear"),
    "vp_discrete": S.get_schedule("vp_discrete"),
    "vp_cosine": S.get_schedule("vp_cosine"),
    "ve": S.get_schedule("ve"),
    "edm": S.get_schedule("edm"),
    "rectified_flow": S.get_schedule("rectified_flow"),
    "polynomial": S.get_schedule("polynomial"),
    "rf_shift3": S.get_schedule("rectified_flow", shift=3.0),
}


def _data(key, b=16, d=3):
    k1, k2 = jax.random.split(key)
    x0 = jax.random.normal(k1, (b, d), jnp.float64)
    eps = jax.random.normal(k2, (b, d), jnp.float64)
    # Off the DDPM grid t = n/1000, where d alpha/dt has a kink (one-sided derivatives differ).
    t = jnp.linspace(0.0213, 0.9787, b, dtype=jnp.float64)
    return x0, eps, t


def _independent_targets(x0, eps, t, sched):
    """Each kind's definition written out from the papers (module docstring of predictions)."""
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    one = jnp.ones_like(t)
    da = jax.jvp(sched.alpha, (t,), (one,))[1][:, None]
    ds = jax.jvp(sched.sigma, (t,), (one,))[1][:, None]
    z = a * x0 + s * eps
    return z, {
        "eps": eps,
        "x0": x0,
        "v": a * eps - s * x0,  # Salimans & Ho 2022
        "velocity": da * x0 + ds * eps,  # d z_t / dt along the conditional path
        "score": -eps / s,  # grad log N(z; a x0, s^2 I)
    }


@functools.partial(jax.jit, static_argnums=3)
def _all_conversions(x0, eps, t, sched):
    """One compiled program per schedule: targets, (x0, eps) recovery and all 25 conversions."""
    z, ref = _independent_targets(x0, eps, t, sched)
    targets = {k: P.target(k, x0, eps, t, sched) for k in P.KINDS}
    recovered = {k: P.to_x0_eps(ref[k], k, z, t, sched) for k in P.KINDS}
    conv = {(k1, k2): P.convert(ref[k1], k1, k2, z, t, sched) for k1 in P.KINDS for k2 in P.KINDS}
    return ref, targets, recovered, conv


@pytest.mark.parametrize("sname", list(SCHEDS))
def test_every_kind_to_every_kind(x64, sname):
    x0, eps, t = _data(jax.random.key(0))
    ref, targets, recovered, conv = _all_conversions(x0, eps, t, SCHEDS[sname])
    for k in P.KINDS:
        np.testing.assert_allclose(targets[k], ref[k], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(recovered[k][0], x0, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(recovered[k][1], eps, rtol=1e-8, atol=1e-8)
    for k1, k2 in itertools.product(P.KINDS, P.KINDS):
        np.testing.assert_allclose(conv[k1, k2], ref[k2], rtol=1e-8, atol=1e-8, err_msg=f"{k1}->{k2}")


def test_scalar_time_broadcasts(x64):
    sched = SCHEDS["vp_cosine"]
    x0, eps, _ = _data(jax.random.key(1))
    t = jnp.float64(0.4)
    z = sched.alpha(t) * x0 + sched.sigma(t) * eps
    np.testing.assert_allclose(
        P.convert(P.target("v", x0, eps, t, sched), "v", "x0", z, t, sched), x0, atol=1e-12
    )


def test_edm_coefficients_table1(x64):
    """Karras et al. 2022 Table 1 at sigma = 1, sigma_data = 0.5, and the design conditions of App. B.6:
    unit-variance network input, unit-variance effective target, c_skip minimizing c_out."""
    c_skip, c_out, c_in, c_noise = P.edm_coefficients(jnp.float64(1.0), 0.5)
    assert float(c_skip) == pytest.approx(0.25 / 1.25, rel=1e-14)
    assert float(c_out) == pytest.approx(0.5 / np.sqrt(1.25), rel=1e-14)
    assert float(c_in) == pytest.approx(1 / np.sqrt(1.25), rel=1e-14)
    assert float(c_noise) == 0.0
    sd = 0.5
    for sigma in (0.002, 0.1, 1.0, 7.0, 80.0):
        cs, co, ci, cn = (float(c) for c in P.edm_coefficients(jnp.float64(sigma), sd))
        assert ci**2 * (sd**2 + sigma**2) == pytest.approx(1.0, rel=1e-12)  # eq. 114
        assert ((1 - cs) ** 2 * sd**2 + cs**2 * sigma**2) / co**2 == pytest.approx(1.0, rel=1e-12)  # eq. 117
        grid = np.linspace(0, 1, 20001)  # c_skip minimizes the effective-target scale (eq. 131)
        assert abs(grid[np.argmin((1 - grid) ** 2 * sd**2 + grid**2 * sigma**2)] - cs) < 1e-4
        assert cn == pytest.approx(0.25 * np.log(sigma), rel=1e-14)


def _ideal_edm_net(dist, sigma_data):
    """The ideal raw network F of EDM eq. 7: D = c_skip z~ + c_out F equals E[x | z~]. It sees only
    (c_in z~, c_noise), recovers sigma = exp(4 c_noise), and queries the exact posterior mean on the
    alpha = 1 path sigma(t) = t (EDM's with sigma_max = 1)."""
    ve_path = S.EDM(sigma_min=1e-6, sigma_max=1.0)

    def net_fn(params, z_in, t_in, cond, rng):
        sigma = jnp.exp(4.0 * t_in)
        c_skip, c_out, c_in, _ = P.edm_coefficients(sigma, sigma_data)
        zt = z_in / c_in[:, None]
        d = params.x0(zt, sigma, ve_path)
        return (d - c_skip[:, None] * zt) / c_out[:, None]

    return net_fn


@pytest.mark.parametrize("sname", ["edm", "vp_linear", "rectified_flow"])
def test_edm_preconditioned_ideal_network_recovers_x0(x64, sname):
    sched = SCHEDS[sname]
    g = A.random_gmm(jax.random.key(3), 3, 2)
    den = P.make_denoiser(_ideal_edm_net(g, 0.5), sched, "x0", edm=True, sigma_data=0.5, params=g)
    z = jax.random.normal(jax.random.key(4), (16, 2), jnp.float64)
    t = jnp.linspace(0.05, 0.95, 16, dtype=jnp.float64)
    got = jax.jit(lambda d, z, t: (d.x0(z, t), d.eps(z, t)))(den, z, t)
    ref = jax.jit(g.x0_eps, static_argnums=2)(z, t, sched)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    ("src", "dst", "kind"),
    [("rectified_flow", "vp_cosine", "velocity"), ("vp_linear", "edm", "eps"), ("edm", "rf_shift3", "x0")],
)
def test_reparameterize_keeps_x0(x64, src, dst, kind):
    """A model trained on one path, sampled under another at matched logSNR (Kingma et al. 2021 sec.
    4.4): x0-hat equals the exact posterior mean computed directly under the new path."""
    g = A.random_gmm(jax.random.key(5), 3, 2)
    new = SCHEDS[dst]
    den = P.reparameterize(g.denoiser(SCHEDS[src], kind), new)
    exact = g.denoiser(new, "velocity")
    t = jnp.linspace(0.1, 0.9, 12, dtype=jnp.float64)
    x = g.sample(jax.random.key(6), 12)

    @jax.jit
    def both(den, exact, x, t):
        noise = jax.random.normal(jax.random.key(7), x.shape, x.dtype)
        z = new.alpha(t)[:, None] * x + new.sigma(t)[:, None] * noise
        return (den.x0(z, t), den.velocity(z, t)), (exact.x0(z, t), exact.velocity(z, t))

    got, ref = both(den, exact, x, t)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-6, atol=1e-6)


def test_shape_mismatch_raises_with_shapes_named():
    sched = SCHEDS["vp_linear"]
    z = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match=r"\(3,\).*\(4, 2\)"):
        P.bcast(jnp.ones(3), z)
    den = A.Gaussian.standard(2).denoiser(sched, "eps")
    with pytest.raises(ValueError, match=r"\(3,\).*\(4, 2\)"):
        jax.jit(lambda d, z, t: d.x0(z, t))(den, z, jnp.full((3,), 0.5))
    with pytest.raises(ValueError, match="valid kinds"):
        P.convert(z, "epsilon", "x0", z, 0.5, sched)


def test_endpoint_behaviour_documented_in_predictions(x64):
    """predictions.py: from eps needs alpha > 0 (fails at VP-cosine t=1); from x0 / v needs sigma > 0
    (fails on clean data, RF t=0); velocity converts at both RF endpoints (det = 1)."""
    z = jnp.array([[0.3, -1.2]], jnp.float64)
    cos_ = S.VPCosine()
    assert float(cos_.alpha(jnp.float64(1.0))) < 1e-15
    # alpha(1) is 0 up to rounding (6e-17): x0 from eps blows up.
    assert np.all(np.abs(P.convert(z + 1.0, "eps", "x0", z, 1.0, cos_)) > 1e12)
    rf = S.RectifiedFlow()
    assert not np.all(np.isfinite(P.convert(z, "x0", "eps", z, 0.0, rf)))
    u = jnp.array([[1.0, 2.0]], jnp.float64)
    np.testing.assert_allclose(P.convert(u, "velocity", "x0", z, 0.0, rf), z, atol=1e-15)  # x0 = z at t=0
    np.testing.assert_allclose(P.convert(u, "velocity", "x0", z, 1.0, rf), z - u, atol=1e-15)  # x0 = z - u
    np.testing.assert_allclose(P.convert(u, "velocity", "eps", z, 1.0, rf), z, atol=1e-15)  # eps = z at t=1


def test_time_inputs(x64):
    """The network's time input: RF's t*999, EDM's c_noise = ln(sigma)/4 of the alpha=1 path."""
    rec = {}

    def net_fn(params, z, t_in, cond, rng):
        rec["t_in"] = t_in
        return z

    sched = SCHEDS["vp_linear"]
    t = jnp.array([0.2, 0.7], jnp.float64)
    z = jnp.ones((2, 2), jnp.float64)
    P.make_denoiser(net_fn, sched, "x0", time_input="t999").x0(z, t)
    np.testing.assert_allclose(rec["t_in"], 999 * t)
    P.make_denoiser(net_fn, sched, "x0", edm=True).x0(z, t)
    np.testing.assert_allclose(rec["t_in"], 0.25 * np.log(sched.sigma(t) / sched.alpha(t)), rtol=1e-12)
