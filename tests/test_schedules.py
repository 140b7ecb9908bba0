"""Schedules: closed forms against autodiff / quadrature / independent numpy, inverses by round trip."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from diffusion_jax import schedules as S


def all_schedules():
    """Every named schedule with defaults, some non-default fields, and shifted variants."""
    out = [(name, S.get_schedule(name)) for name in S.SCHEDULES]
    out += [
        ("polynomial_p3", S.get_schedule("polynomial", power=3.0)),
        ("ve_wide", S.get_schedule("ve", sigma_min=0.002, sigma_max=80.0)),
        ("rf_shift3", S.get_schedule("rectified_flow", shift=3.0)),
        ("vp_linear_shift2", S.get_schedule("vp_linear", shift=2.0)),
        ("cosine_shift0.5", S.get_schedule("vp_cosine", shift=0.5)),
        ("edm_shift2", S.get_schedule("edm", shift=2.0)),
    ]
    return out


SCHEDS = all_schedules()
IDS = [n for n, _ in SCHEDS]


def _ts():
    # Avoid the DDPM grid points t = n/1000 (kinks of the piecewise-linear log alpha_bar).
    return jnp.linspace(0.0213, 0.9787, 37, dtype=jnp.float64)


@pytest.mark.parametrize("name,sched", SCHEDS, ids=IDS)
def test_derivatives_match_jvp(x64, name, sched):
    t = _ts()
    one = jnp.ones_like(t)
    da_ref = jax.jvp(sched.alpha, (t,), (one,))[1]
    ds_ref = jax.jvp(sched.sigma, (t,), (one,))[1]
    dl_ref = jax.jvp(sched.logsnr, (t,), (one,))[1]
    c = sched(t)
    np.testing.assert_allclose(c.d_alpha, da_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(c.d_sigma, ds_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sched.d_logsnr(t), dl_ref, rtol=1e-8, atol=1e-10)
    # logSNR is log(alpha^2 / sigma^2) and decreasing.
    np.testing.assert_allclose(sched.logsnr(t), 2 * np.log(c.alpha / c.sigma), rtol=1e-10, atol=1e-10)
    assert np.all(np.diff(np.asarray(sched.logsnr(t))) < 0)


@pytest.mark.parametrize("name,sched", SCHEDS, ids=IDS)
def test_logsnr_inverse_round_trip(x64, name, sched):
    t = _ts()
    np.testing.assert_allclose(sched.t_from_logsnr(sched.logsnr(t)), t, rtol=1e-9, atol=1e-10)
    lam = sched.logsnr(jnp.linspace(0.1, 0.9, 9, dtype=jnp.float64))
    np.testing.assert_allclose(sched.logsnr(sched.t_from_logsnr(lam)), lam, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", ["vp_linear", "vp_discrete", "vp_cosine"])
def test_vp_is_variance_preserving(x64, name):
    sched = S.get_schedule(name)
    t = jnp.linspace(0.0, 0.999, 101, dtype=jnp.float64)
    np.testing.assert_allclose(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, 1.0, rtol=0, atol=1e-13)


def test_vp_linear_against_integral_of_beta(x64):
    """alpha(t) = exp(-1/2 int_0^t beta(s) ds), beta linear (Song et al. 2021 eq. 33), by quadrature."""
    sched = S.VPLinear(beta_min=0.1, beta_max=20.0)
    for t in (0.05, 0.3, 0.77, 1.0):
        integral, _ = integrate.quad(lambda s: 0.1 + s * 19.9, 0.0, t)
        assert float(sched.alpha(jnp.float64(t))) == pytest.approx(math.exp(-0.5 * integral), rel=1e-12)


def test_vp_cosine_against_paper_formula(x64):
    """Nichol & Dhariwal 2021 eq. 17: alpha_bar = f(t)/f(0), f = cos^2((t+s)/(1+s) pi/2)."""
    sched = S.VPCosine(s=0.008)
    t = np.linspace(0.0, 0.99, 50)
    f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(np.asarray(sched.alpha(jnp.asarray(t))) ** 2, f(t) / f(0.0), rtol=1e-12)


def test_ddpm_alphas_cumprod_independent_numpy(x64):
    """DDPM (Ho et al. 2020 sec. 4): beta_n linear in [1e-4, 0.02], 1000 steps; alpha_bar by a plain
    python product, compared at the grid times t_n = n/N."""
    sched = S.VPDiscrete()
    betas = [1e-4 + (0.02 - 1e-4) * i / 999 for i in range(1000)]
    ref, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        ref.append(prod)
    ref = np.array(ref)
    np.testing.assert_allclose(sched.alphas_cumprod(), ref, rtol=1e-12)
    tn = jnp.arange(1, 1001, dtype=jnp.float64) / 1000
    np.testing.assert_allclose(np.asarray(sched.alpha(tn)) ** 2, ref, rtol=1e-10)
    # Well-known value: alpha_bar_T ~= 4.036e-5 (sqrt ~= 0.00635) for the DDPM linear schedule.
    assert ref[-1] == pytest.approx(4.0358e-5, rel=1e-3)


@pytest.mark.parametrize("shift", [0.5, 2.0, 3.0, 4.7])
def test_sd3_shift_lowers_rf_logsnr_by_2_log_shift(x64, shift):
    """Esser et al. 2024 eq. 23: the shifted linear path has logSNR lowered by 2 log(shift)."""
    base, shifted = S.RectifiedFlow(), S.get_schedule("rectified_flow", shift=shift)
    t = _ts()
    np.testing.assert_allclose(shifted.logsnr(t), base.logsnr(t) - 2 * math.log(shift), rtol=0, atol=1e-10)
    # and it is the paper's time warp t' = s t / (1 + (s - 1) t) of sigma = t.
    np.testing.assert_allclose(shifted.sigma(t), shift * t / (1 + (shift - 1) * t), rtol=1e-13)


def test_shift_one_or_none_is_identity():
    assert isinstance(S.get_schedule("rectified_flow", shift=None), S.RectifiedFlow)
    assert isinstance(S.get_schedule("rectified_flow", shift=1.0), S.RectifiedFlow)


def test_sde_coefficients_reproduce_the_marginals(x64):
    """f = alpha'/alpha and g^2 = d sigma^2/dt - 2 f sigma^2 (Kingma et al. 2021 eq. 30-31): the
    variance ODE d sigma^2/dt = 2 f sigma^2 + g^2 integrated numerically returns sigma(t)^2."""
    sched = S.VPCosine()
    sde = jax.jit(sched.sde)

    def rhs(t, y):
        f, g2 = sde(jnp.float64(t))
        return [2 * float(f) * y[0] + float(g2)]

    sol = integrate.solve_ivp(rhs, (0.05, 0.9), [float(sched.sigma(0.05)) ** 2], rtol=1e-10, atol=1e-12)
    assert sol.y[0, -1] == pytest.approx(float(sched.sigma(0.9)) ** 2, rel=1e-7)


def test_bad_names_and_fields_raise():
    with pytest.raises(ValueError, match="valid names.*rectified_flow"):
        S.get_schedule("cosine_vp")
    with pytest.raises(ValueError, match="beta_max"):
        S.get_schedule("vp_linear", beta_mx=3.0)
    with pytest.raises(ValueError, match="shift"):
        S.get_schedule("rectified_flow", shift=-1.0)
