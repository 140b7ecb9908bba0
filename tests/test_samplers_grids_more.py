"""The grids users know from other tools: polyexponential, sgm_uniform, simple, beta, Align Your
Steps, against closed forms and the published AYS table (Sabour et al. 2024, Table 3)."""

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import schedules
from diffusion_jax.samplers.grids import AYS_SIGMAS, make_grid


def _sigma_tilde(sch, t):
    t = jnp.asarray(t)
    return np.asarray(sch.sigma(t) / sch.alpha(t), np.float64)


def test_ays_hits_the_published_table(x64):
    """10 steps on the EDM path (sigma~ = 80 t) reproduce Table 3 exactly; 20 steps keep every
    published level at even indices (log-linear interpolation between them)."""
    sch = schedules.EDM()
    for model, table in AYS_SIGMAS.items():
        if table[0] > sch.sigma_max:
            continue  # SVD's 700 is beyond EDM's sigma_max = 80
        g = np.asarray(make_grid("ays", 10, sch, model=model))
        np.testing.assert_allclose(80.0 * g, table, rtol=1e-12)
        g20 = 80.0 * np.asarray(make_grid("ays", 20, sch, model=model))
        np.testing.assert_allclose(g20[::2], table, rtol=1e-12)
        np.testing.assert_allclose(g20[1::2], np.sqrt(np.array(table[:-1]) * np.array(table[1:])), rtol=1e-12)
    # SVD's range fits a VP-discrete path? sigma~(1) ~ 157 < 700: refused with the reason.
    with pytest.raises(ValueError, match="outside what"):
        make_grid("ays", 10, schedules.VPLinear(), model="svd")
    # On a VP path the grid's sigma~ are still the table's.
    vp = schedules.VPDiscrete()
    np.testing.assert_allclose(_sigma_tilde(vp, make_grid("ays", 10, vp)), AYS_SIGMAS["sd15"], rtol=1e-9)
    with pytest.raises(ValueError, match="fixed by the published table"):
        make_grid("ays", 10, vp, t_max=0.9)


def test_polyexponential(x64):
    sch = schedules.VPLinear()
    np.testing.assert_allclose(make_grid("polyexponential", 7, sch), make_grid("logsnr", 7, sch), rtol=1e-10)
    s = _sigma_tilde(sch, make_grid("polyexponential", 4, sch, rho=2.0))
    lo, hi = np.log(s[-1]), np.log(s[0])
    np.testing.assert_allclose(np.log(s), lo + np.linspace(1, 0, 5) ** 2 * (hi - lo), rtol=1e-9, atol=1e-9)


def test_sgm_uniform_simple_beta(x64):
    rf = schedules.RectifiedFlow()
    np.testing.assert_allclose(make_grid("sgm_uniform", 4, rf, t_min=0.0), [1.0, 0.8, 0.6, 0.4, 0.2])
    g = make_grid("sgm_uniform", 4, rf, t_min=0.0, final_zero=True)
    assert g.shape == (6,) and float(g[-1]) == 0.0
    vp = schedules.VPDiscrete()
    np.testing.assert_allclose(make_grid("simple", 9, vp), np.arange(1000, 0, -100) / 1000.0)
    np.testing.assert_allclose(make_grid("simple", 2, vp), [1.0, 667 / 1000, 334 / 1000])
    # Beta(1, 1) quantiles are uniform; Beta(0.6, 0.6) is symmetric and denser at both ends.
    np.testing.assert_allclose(
        make_grid("beta", 4, rf, t_min=0.0, alpha=1.0, beta=1.0), [1, 0.75, 0.5, 0.25, 0]
    )
    b = np.asarray(make_grid("beta", 8, rf, t_min=0.0))
    np.testing.assert_allclose(b + b[::-1], 1.0, atol=1e-12)
    assert b[0] - b[1] < 0.125 < b[3] - b[4]
    with pytest.raises(ValueError, match="`alpha` and `beta` must be > 0"):
        make_grid("beta", 4, rf, alpha=0.0)
