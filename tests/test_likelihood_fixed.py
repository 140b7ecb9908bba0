"""Fixed-step probability-flow ODE likelihood (Euler, Heun, DPM-Solver++ 2M) against the closed-form
log-density of a Gaussian mixture, in float32 and float64.

Reference: the ODE starts at z(t_min) = x, so it computes log p_{t_min}(x) of the exact marginal
z_{t_min} = alpha x + sigma eps (`GaussianMixture.marginal`); with the exact marginal at t_max as the
prior, the only error left is the discretisation's. Its decay with N, fitted on a log-log scale over
N = 16..128, is the measured order, held to the theoretical one: Euler 1, Heun 2, DPM-Solver++ 2M 2.
Measured (these cases): Euler 1.01 / 0.97, Heun 2.11 / 2.03, DPM-Solver++ 2M 2.17 / 1.82 (VP-linear,
logSNR grid, float32 / rectified flow, uniform grid, float64). On rectified flow's uniform grid
DPM-Solver++ 2M's order is 1.8 in this range (lambda = 2 log((1 - t) / t) is not smooth in the grid
index near t = 0; the error ratio per halving rises slowly, 3.53 -> 3.61 from N = 16 to 512), hence
its wider bound.

NFE: the network calls are counted by a host callback inside the net (independent of the code's own
count) and must equal Euler N, Heun 2N, DPM-Solver++ 2M N. One compiled program per method and dtype
(every N reuses it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic
from diffusion_jax import likelihood_fixed as LF
from diffusion_jax import schedules as S
from diffusion_jax.predictions import make_denoiser

NS = (16, 32, 64, 128)
ORDER = {"euler": (1.0, 0.15), "heun": (2.0, 0.2), "dpmpp_2m": (2.0, 0.3)}
MAX_ERR = {"euler": 0.05, "heun": 1e-3, "dpmpp_2m": 5e-3}  # mean |error| (nats) at N = 128
CASES = {
    "float32-vp_linear-eps-logsnr": ("float32", S.VPLinear(), "eps", "logsnr"),
    "float64-rectified_flow-velocity-uniform": ("float64", S.RectifiedFlow(), "velocity", "uniform"),
}


def mixture(dtype):
    return analytic.GaussianMixture.isotropic([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [0.5, 0.7], dtype)


def counting_denoiser(dist, sch, kind, count):
    inner = dist.denoiser(sch, kind)

    def net(p, z, t, c, r):
        jax.debug.callback(lambda: count.__setitem__(0, count[0] + 1))
        return inner.raw(z, t)

    return make_denoiser(net, sch, kind)


@pytest.fixture(scope="module")
def runs():
    """Per case: {method: [mean |error| per N]}, the counted network calls, and what the Hutchinson
    test reuses (the denoiser, x, the exact-divergence Heun N = 16 values)."""
    out = {}
    for case, (dtype, sch, kind, grid) in CASES.items():
        with jax.enable_x64(dtype == "float64"):
            dist = mixture(jnp.dtype(dtype))
            x = dist.sample(jax.random.key(1), 16)
            ref = np.asarray(jax.jit(dist.marginal(sch, sch.t_min).log_prob)(x), np.float64)
            count = [0]
            den = counting_denoiser(dist, sch, kind, count)
            prior = jax.jit(dist.marginal(sch, sch.t_max).log_prob)
            errs, calls, heun16 = {}, {}, None
            for method in ORDER:
                errs[method], calls[method] = [], []
                for n in NS:
                    count[0] = 0
                    res = LF.log_likelihood_fixed(
                        den, x, method=method, num_steps=n, grid=grid, prior_logp=prior
                    )
                    jax.block_until_ready(res)
                    assert res.logp.dtype == jnp.dtype(dtype) and res.logp.shape == (16,)
                    calls[method].append((count[0], int(res.nfe[0])))
                    errs[method].append(float(np.mean(np.abs(np.asarray(res.logp, np.float64) - ref))))
                    if method == "heun" and n == NS[0]:
                        heun16 = np.asarray(res.logp)
            out[case] = dict(errs=errs, calls=calls, den=den, x=x, grid=grid, prior=prior, heun16=heun16)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_converges_to_closed_form_at_the_schemes_order(runs, case):
    for method, (order, tol) in ORDER.items():
        errs = runs[case]["errs"][method]
        measured = -np.polyfit(np.log(NS), np.log(errs), 1)[0]
        assert abs(measured - order) < tol, (method, measured, errs)
        assert errs[-1] < MAX_ERR[method], (method, errs)


@pytest.mark.parametrize("case", list(CASES))
def test_nfe_is_the_counted_network_calls(runs, case):
    for method in ORDER:
        rule = [LF.fixed_step_nfe(method, n) for n in NS]
        assert runs[case]["calls"][method] == [(r, r) for r in rule], method
    assert [LF.fixed_step_nfe(m, 10) for m in ORDER] == [10, 20, 10]


def test_hutchinson_is_unbiased_for_the_same_discretisation(runs):
    """The trajectory does not depend on the probes, so with Rademacher probes the fixed-step
    log-likelihood is an unbiased estimate of the exact-divergence one on the same grid: 16 copies of
    one point (own probe each) average to it within 4 standard errors; the estimate is genuinely noisy."""
    case = "float64-rectified_flow-velocity-uniform"
    r = runs[case]
    with jax.enable_x64(True):
        x = jnp.tile(r["x"][:1], (16, 1))
        hut = LF.log_likelihood_fixed(
            r["den"], x, method="heun", num_steps=NS[0], grid=r["grid"], prior_logp=r["prior"],
            divergence_method="rademacher", key=jax.random.key(3),
        )  # fmt: skip
        hut = np.asarray(hut.logp)
    exact = float(r["heun16"][0])
    assert hut.std() > 1e-4
    assert abs(hut.mean() - exact) < 4 * hut.std() / np.sqrt(hut.size), (hut.mean(), exact, hut.std())


def test_bad_input_refused_before_compiling():
    den = mixture(jnp.float32).denoiser(S.VPLinear(), "eps")
    x = jnp.zeros((2, 2))
    for kw, field in (
        (dict(method="rk4", num_steps=4), "method"),
        (dict(num_steps=4, divergence_method="trace"), "divergence_method"),
        (dict(num_steps=4, divergence_method="gaussian"), "key"),
        (dict(num_steps=0), "num_steps"),
        (dict(num_steps=4, grid="cosine"), "grid"),
        (dict(times=[0.5, 0.2]), "times"),
        (dict(times=[0.0, 1.0], num_steps=4), "times"),
    ):
        with pytest.raises(ValueError, match=field):
            LF.log_likelihood_fixed(den, x, **kw)
    with pytest.raises(ValueError, match="method"):
        LF.fixed_step_nfe("dopri5", 4)
