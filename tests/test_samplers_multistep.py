"""Multistep samplers against step-by-step numpy transcriptions of the papers' algorithms
(DPM-Solver++ Algorithms 1-2, UniPC with B(h) = e^h - 1, iPNDM), the lower-order-final rule, the
step to sigma = 0, and impossible settings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, schedules
from diffusion_jax.samplers import multistep as ms
from diffusion_jax.samplers.grids import make_grid


def _setup(n, kind="x0", final_zero=False):
    sch = schedules.VPLinear()
    gmm = analytic.random_gmm(jax.random.key(4), num_components=3, dim=2)
    den = gmm.denoiser(sch, kind)
    grid = make_grid("logsnr", n, sch, final_zero=final_zero)
    z = sch.sigma(grid[0]) * jax.random.normal(jax.random.key(9), (16, 2), jnp.float64)
    return sch, den, grid, z


def _np_coeffs(sch, t):
    t = jnp.asarray(t, jnp.float64)
    a, s = float(sch.alpha(t)), float(sch.sigma(t))
    return a, s, np.log(a / s)


def _run(sampler, den, z, grid, **kw):
    return jax.jit(lambda d, z, g: sampler.run(d, z, g, **kw))(den, z, grid)


_jit_x0 = jax.jit(lambda den, z, t: den.x0(z, t))  # one compile instead of op-by-op dispatch
_jit_eps = jax.jit(lambda den, z, t: den.eps(z, t))


def _x0(den, z, t):
    return np.asarray(_jit_x0(den, jnp.asarray(z), jnp.asarray(t, jnp.float64)))


def dpmpp_2m_reference(den, z, grid, last_first_order):
    """DPM-Solver++(2M), Lu et al. 2022b, Algorithm 2, transcribed with numpy."""
    sch = den.schedule
    g = np.asarray(grid)
    n = len(g) - 1
    x = np.asarray(z)
    prev = None
    for i in range(n):
        a_c, s_c, l_c = _np_coeffs(sch, g[i])
        a_n, s_n, l_n = _np_coeffs(sch, g[i + 1])
        h = l_n - l_c
        m = _x0(den, x, g[i])
        if prev is None or (last_first_order and i == n - 1):
            d = m
        else:
            r = (l_c - prev[1]) / h
            d = (1 + 1 / (2 * r)) * m - 1 / (2 * r) * prev[0]
        x = s_n / s_c * x - a_n * (np.exp(-h) - 1) * d
        prev = (m, l_c)
    return x


def test_dpmpp_2m_matches_algorithm_2(x64):
    for n, lof, last_first in (
        (6, "auto", True),
        (6, "never", False),
        (16, "auto", False),
        (16, "always", True),
    ):
        _, den, grid, z = _setup(n)
        out = _run(ms.DPMSolverPP2M(lower_order_final=lof), den, z, grid)
        ref = dpmpp_2m_reference(den, z, grid, last_first)
        np.testing.assert_allclose(out.samples, ref, rtol=1e-11, atol=1e-12, err_msg=f"{n} {lof}")
        assert int(out.nfe) == n


def test_dpmpp_2s_matches_algorithm_1(x64):
    _, den, grid, z = _setup(5, kind="eps")
    sch = den.schedule
    g = np.asarray(grid)
    x = np.asarray(z)
    for i in range(5):
        a_c, s_c, l_c = _np_coeffs(sch, g[i])
        a_n, s_n, l_n = _np_coeffs(sch, g[i + 1])
        h = l_n - l_c
        t_s = float(sch.t_from_logsnr(jnp.asarray(2 * (l_c + 0.5 * h))))
        a_s, s_s, _ = _np_coeffs(sch, t_s)
        m = _x0(den, x, g[i])
        u = s_s / s_c * x - a_s * (np.exp(-0.5 * h) - 1) * m
        d = _x0(den, u, t_s)  # r = 1/2: D = x0(u, s)
        x = s_n / s_c * x - a_n * (np.exp(-h) - 1) * d
    out = _run(ms.DPMSolverPP2S(), den, z, grid)
    np.testing.assert_allclose(out.samples, x, rtol=1e-10, atol=1e-11)
    assert int(out.nfe) == 10


def test_unipc2_bh2_matches_transcription(x64):
    """UniPC-2 with B(h) = e^h - 1 (Zhao et al. 2023, Algorithms 2-3, data prediction): UniP-2 then
    UniC-2 on every step but the last, warm-up step with UniP-1 / UniC-1."""
    n = 5
    _, den, grid, z = _setup(n)
    sch = den.schedule
    g = np.asarray(grid)
    x = np.asarray(z)
    m_c = _x0(den, x, g[0])
    prev = None  # (x0, lambda) of the previous point
    for i in range(n):
        a_c, s_c, l_c = _np_coeffs(sch, g[i])
        a_n, s_n, l_n = _np_coeffs(sch, g[i + 1])
        h = l_n - l_c
        hh = -h
        bh = np.expm1(hh)
        first = s_n / s_c * x - a_n * np.expm1(hh) * m_c
        p = 1 if prev is None else 2
        phi2 = np.expm1(hh) / hh - 1  # h phi_2 / h ... recursion of the paper
        b1 = phi2 / bh
        phi3 = phi2 / hh - 0.5
        b2 = phi3 * 2 / bh
        if p == 1:
            x_pred = first
        else:
            r1 = (prev[1] - l_c) / h
            d1 = (prev[0] - m_c) / r1
            x_pred = first - a_n * bh * 0.5 * d1
        if i == n - 1:
            x = x_pred
            break
        m_new = _x0(den, x_pred, g[i + 1])
        if p == 1:
            x = first - a_n * bh * 0.5 * (m_new - m_c)
        else:
            rho = np.linalg.solve(np.array([[1.0, 1.0], [r1, 1.0]]), np.array([b1, b2]))
            x = first - a_n * bh * (rho[0] * d1 + rho[1] * (m_new - m_c))
        prev = (m_c, l_c)
        m_c = m_new
    out = _run(ms.UniPC(order=2, variant="bh2", lower_order_final="never"), den, z, grid)
    np.testing.assert_allclose(out.samples, x, rtol=1e-10, atol=1e-11)
    assert int(out.nfe) == n


def test_ipndm_matches_transcription(x64):
    """iPNDM (Zhang & Chen 2023): Adams-Bashforth in (z/alpha, sigma/alpha) with lower-order warm-up."""
    n = 7
    _, den, grid, z = _setup(n, kind="v", final_zero=True)
    sch = den.schedule
    g = np.asarray(grid)
    coef = [[1], [3 / 2, -1 / 2], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24]]
    x = np.asarray(z)
    eps_hist = []
    for i in range(n + 1):
        a_c, s_c, _ = _np_coeffs(sch, g[i])
        t_n = jnp.asarray(g[i + 1], jnp.float64)
        a_n, s_n = float(sch.alpha(t_n)), float(sch.sigma(t_n))
        eps_hist.insert(0, np.asarray(_jit_eps(den, jnp.asarray(x), jnp.asarray(g[i], jnp.float64))))
        c = coef[min(4, i + 1) - 1]
        d = sum(cj * e for cj, e in zip(c, eps_hist, strict=False))
        x = a_n * (x / a_c + (s_n / a_n - s_c / a_c) * d)
    out = _run(ms.IPNDM(), den, z, grid)
    np.testing.assert_allclose(out.samples, x, rtol=1e-10, atol=1e-11)
    assert int(out.nfe) == n + 1


def test_lower_order_final_rule(x64):
    """'auto' lowers the final orders only for N < 15 (the DPM-Solver++ reference rule)."""
    for n in (14, 15):
        _, den, grid, z = _setup(n)
        auto = _run(ms.DPMSolverPP3M(lower_order_final="auto"), den, z, grid).samples
        never = _run(ms.DPMSolverPP3M(lower_order_final="never"), den, z, grid).samples
        same = bool(jnp.all(auto == never))
        assert same == (n >= 15), n


def test_step_to_sigma_zero_is_data_prediction(x64):
    """The final step to sigma = 0 is z = alpha(0) x0-hat(z, t_cur) (documented convention)."""
    _, den, grid, z = _setup(4, final_zero=True)
    for sampler in (ms.DPMSolverPP2M(), ms.DPMSolverPP3M(), ms.DPMSolverPP2S()):
        out = _run(sampler, den, z, grid, return_trajectory=True)
        np.testing.assert_allclose(out.samples, den.x0(out.trajectory[-2], grid[-2]), rtol=1e-12, atol=1e-12)
        assert bool(jnp.all(jnp.isfinite(out.samples)))
        assert int(out.nfe) == sampler.nfe(5, final_zero=True)


@pytest.mark.parametrize(
    "sampler, steps, match",
    [
        (ms.DPMSolverPP3M(), 2, "order-3 multistep method needs at least 3 steps"),
        (ms.DPMSolverPPMultistep(order=4), 10, "`order` must be an integer in 1..3"),
        (ms.UniPC(order=3), 2, "needs at least 3 steps"),
        (ms.UniPC(order=4), 10, "in 1..3"),
        (ms.UniPC(variant="bh3"), 10, "unknown `variant` 'bh3'; valid: \\['bh1', 'bh2'\\]"),
        (ms.DPMSolverPP2M(lower_order_final="sometimes"), 10, "valid: \\['auto', 'always', 'never'\\]"),
        (ms.IPNDM(order=5), 10, "in 1..4"),
        (ms.DPMSolverPP2S(r=1.5), 10, "0 < r < 1"),
    ],
)
def test_impossible_settings_fail_before_compilation(sampler, steps, match, x64):
    _, den, grid, z = _setup(steps)
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda d, z, g: sampler.run(d, z, g)).lower(den, z, grid)
