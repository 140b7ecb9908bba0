"""Sources of a run, likelihood from a source density, and the one-file CFM config (configs/toy2d/cfm.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import sqrtm

from configs.toy2d import cfm
from diffusion_jax import analytic as A
from diffusion_jax import interpolants as I
from diffusion_jax import predictions as P
from diffusion_jax.data.sources import source_from_config, toy_source
from diffusion_jax.likelihood import log_likelihood
from diffusion_jax.schedules import get_schedule
from diffusion_jax.training.config import validate_config

RF = get_schedule("rectified_flow")


def test_source_from_config():
    cfg = cfm.get_config("moons_tiny")
    assert source_from_config(cfg.data).gaussian
    cfg.data.pair_with = "gmm"
    src = source_from_config(cfg.data)
    assert src is toy_source("gmm") and src.event_shape == (2,)
    x = jnp.asarray([[0.0, 2.0], [1.0, 1.0]])
    np.testing.assert_allclose(src.log_prob(x), A.gmm_2d_ring().log_prob(x), rtol=1e-6)
    assert not toy_source("moons").has_density
    with pytest.raises(ValueError, match="is the distribution at t = 1; sampling must start there"):
        toy_source("moons").draw(jax.random.key(0), (2,), RF, 0.5)


def test_likelihood_from_a_gaussian_source_through_the_ot_map(x64):
    """Source N(m0, S0), data = its OT image N(m1, S1): the McCann velocity field's probability-flow
    log-likelihood with the source's density as prior is log N(x; m1, S1) (closed form)."""
    rng = np.random.default_rng(0)
    m0, m1 = rng.normal(size=2), rng.normal(size=2)
    s0 = np.array([[1.0, 0.3], [0.3, 0.5]])
    s1 = np.array([[2.0, -0.4], [-0.4, 0.8]])
    r = np.real(sqrtm(s0))
    a = np.linalg.inv(r) @ np.real(sqrtm(r @ s1 @ r)) @ np.linalg.inv(r)
    aj, m0j, m1j = (jnp.asarray(v) for v in (a, m0, m1))

    def field(params, z, t, cond, rng_):
        tt = t[:, None, None]
        mt = (1 - tt) * aj + tt * jnp.eye(2)
        mu = (1 - t)[:, None] * m1j + t[:, None] * m0j
        return jnp.linalg.solve(mt, (z - mu)[..., None])[..., 0] @ (jnp.eye(2) - aj).T + m0j - m1j

    den = P.make_denoiser(field, RF, "velocity")
    src = I.from_distribution("gauss", A.Gaussian(jnp.asarray(m0), jnp.asarray(s0)))
    x = jnp.asarray(rng.multivariate_normal(m1, s1, size=6))
    out = log_likelihood(den, x, t_min=0.0, t_max=1.0, source=src, rtol=1e-9, atol=1e-9)
    ref = A.Gaussian(jnp.asarray(m1), jnp.asarray(s1)).log_prob(x)
    np.testing.assert_allclose(np.asarray(out.logp), np.asarray(ref), rtol=1e-7, atol=1e-7)
    with pytest.raises(ValueError, match="source 'moons' has no log-density"):
        log_likelihood(den, x, t_min=0.0, t_max=1.0, source=toy_source("moons"))


def test_cfm_config_switches_by_field():
    base = cfm.get_config("moons_tiny")
    assert base.objective.path_noise == "constant" and base.objective.path_sigma == 0.1
    for coupling in ("independent", "ot_sinkhorn", "ot_exact"):
        cfg = cfm.get_config("moons_tiny")
        cfg.objective.coupling = coupling
        validate_config(cfg)
    cfg = cfm.get_config("moons_tiny")
    cfg.objective.update(coupling="schrodinger", path_noise="bridge", score_head=True)
    cfg.data.pair_with = "8gaussians"
    with pytest.raises(ValueError, match=r"score_head=True: .* set model.out_dim=4"):
        validate_config(cfg)
    cfg.model.out_dim = 4
    validate_config(cfg)


@pytest.mark.parametrize(
    "override,match",
    [
        ({"objective.path_sigma": -0.5}, "objective.path_sigma must be a finite number >= 0"),
        ({"objective.coupling": "schrodinger"}, "needs path_noise='bridge'"),
        ({"data.pair_with": "circles"}, "data.pair_with='circles'"),
    ],
)
def test_cfm_config_bad_input(override, match):
    cfg = cfm.get_config("moons_tiny")
    for k, v in override.items():
        sec, f = k.split(".")
        cfg[sec][f] = v
    with pytest.raises(ValueError, match=match):
        validate_config(cfg)


def test_coupling_needing_a_cost_refuses_a_mis_shaped_source():
    from diffusion_jax import objectives as O

    cfg = O.objective_preset("ot_cfm")
    src = I.sampler_source("three_d", lambda k, n: jnp.zeros((n, 3)), event_shape=(3,))
    with pytest.raises(ValueError, match=r"pairs by the squared distance .* draws shape \(3,\)"):
        O.check_source(cfg, src, (2,))
    O.check_source(O.objective_preset("rf_uniform"), src, (2,))  # independent pairs need no cost
