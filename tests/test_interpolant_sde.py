"""The stochastic-interpolant SDE sampler (diffusion chosen at sampling time) against a Gaussian target.

Source N(0, I), data N(m1, S1), independent pairs, Brownian-bridge path noise sigma: x_t is Gaussian
with mean (1-t) m1 and covariance (1-t)^2 S1 + (t^2 + sigma^2 t (1-t)) I, so the marginal velocity
E[u | x_t] and score are closed forms (written here from a = 1-t, b = t, c = sigma sqrt(t(1-t))).
Every diffusion coefficient must land on N(m1, S1); without the score correction it must not.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import predictions as P
from diffusion_jax.samplers.interpolant_sde import InterpolantEM
from diffusion_jax.schedules import get_schedule

M1 = np.array([1.0, -0.5])
S1 = np.array([[0.6, 0.2], [0.2, 0.4]])
SIG = 0.8


def _two_heads(score_scale):
    m1, s1 = jnp.asarray(M1, jnp.float32), jnp.asarray(S1, jnp.float32)

    def net(params, z, t, cond, rng):
        a, b, c2 = 1 - t, t, SIG**2 * t * (1 - t)
        eye = jnp.eye(2)
        cx = a[:, None, None] ** 2 * s1 + (b**2 + c2)[:, None, None] * eye
        cux = -a[:, None, None] * s1 + (b + SIG**2 * (1 - 2 * t) / 2)[:, None, None] * eye
        y = jnp.linalg.solve(cx, (z - a[:, None] * m1)[..., None])[..., 0]
        v = -m1 + jnp.einsum("bij,bj->bi", cux, y)
        return jnp.concatenate([v, -score_scale * y], axis=-1)

    return net


@pytest.mark.parametrize("diffusion,shape", [(0.0, "constant"), (0.5, "constant"), (2.0, "bridge")])
def test_every_diffusion_reaches_the_target(diffusion, shape):
    den = P.make_denoiser(_two_heads(1.0), get_schedule("rectified_flow"), "velocity")
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)
    z1 = jax.random.normal(jax.random.key(1), (n, 2))
    grid = jnp.linspace(1.0, 0.0, 201)
    out = jax.jit(lambda z, k: InterpolantEM(diffusion, shape).run(den, z, grid, k))(z1, keys)
    x = np.asarray(out.samples, np.float64)
    assert int(out.nfe) == 200
    np.testing.assert_allclose(x.mean(0), M1, atol=0.06)
    np.testing.assert_allclose(np.cov(x.T), S1, atol=0.06)
    if diffusion > 0:  # the score term is what keeps the marginals: without it the law is wrong
        den0 = P.make_denoiser(_two_heads(0.0), get_schedule("rectified_flow"), "velocity")
        x0 = np.asarray(InterpolantEM(diffusion, shape).run(den0, z1, grid, keys).samples)
        assert np.abs(np.cov(x0.T) - S1).max() > 0.2


def test_bad_settings():
    sch = get_schedule("rectified_flow")
    with pytest.raises(ValueError, match="diffusion must be >= 0"):
        InterpolantEM(-1.0).validate(sch, 4)
    with pytest.raises(ValueError, match=r"shape='wiggle' unknown"):
        InterpolantEM(1.0, "wiggle").validate(sch, 4)
    den = P.make_denoiser(lambda p, z, t, c, r: z, sch, "velocity")
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="needs a two-head"):
        InterpolantEM(1.0).run(den, jnp.zeros((2, 2)), jnp.linspace(1.0, 0.0, 3), keys)
