"""2-D toy samplers against their pinned definitions.

References: closed forms where the distribution has them (8 Gaussians: means/std/weights; moons: mean;
checkerboard: cell masses; spirals: E|x|^2 by quadrature) and numpy transcriptions of the reference code
(torchdyn ``generate_moons`` as called by torchcfm; FFJORD ``2spirals``) compared through moments and
marginal quantiles. Tolerances are ~5 standard errors of the estimate at the stated sample size.
"""

import math

import jax
import numpy as np
import pytest
from scipy import integrate

from diffusion_jax.data import toy2d

N = 200_000


def _draw(name, seed=0, n=N):
    return np.asarray(
        jax.jit(toy2d.get_toy_sampler(name), static_argnums=1)(jax.random.key(seed), n), np.float64
    )


def test_8gaussians_components_on_radius_5_with_torchcfm_covariance():
    x = _draw("8gaussians")
    angles = np.arange(8) * np.pi / 4
    centers = 5.0 * np.stack([np.cos(angles), np.sin(angles)], -1)
    # Components are 7 std apart (distance 3.83 vs std 0.562): nearest-centre assignment is exact in practice.
    comp = np.argmin(((x[:, None, :] - centers[None]) ** 2).sum(-1), axis=1)
    std = 0.1**0.25  # torchcfm: covariance_matrix = sqrt(0.1) * I.
    for k in range(8):
        xk = x[comp == k]
        se = std / math.sqrt(len(xk))
        np.testing.assert_allclose(xk.mean(0), centers[k], atol=5 * se)
        # SE of a sample std ~ std / sqrt(2 n).
        np.testing.assert_allclose(xk.std(0), std, atol=5 * std / math.sqrt(2 * len(xk)))
        np.testing.assert_allclose(np.corrcoef(xk.T)[0, 1], 0.0, atol=5 / math.sqrt(len(xk)))
    freq = np.bincount(comp, minlength=8) / N
    np.testing.assert_allclose(freq, 1 / 8, atol=5 * math.sqrt(1 / 8 * 7 / 8 / N))
    np.testing.assert_allclose(x.var(0), 12.5 + math.sqrt(0.1), rtol=0.01)


def _torchdyn_moons_reference(n, rng):
    """torchcfm ``sample_moons`` = torchdyn ``generate_moons(n, noise=0.2) * 3 - 1``, transcribed."""
    n_out = n // 2
    n_in = n - n_out
    t_out, t_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    xy = np.concatenate(
        [
            np.stack([np.cos(t_out), np.sin(t_out)], -1),
            np.stack([1 - np.cos(t_in), 1 - np.sin(t_in) - 0.5], -1),
        ]
    )
    xy = xy + rng.random((n, 1)) * 0.2
    return xy * 3 - 1


def _assert_same_distribution(x, ref, tol_moment, tol_quantile):
    np.testing.assert_allclose(x.mean(0), ref.mean(0), atol=tol_moment)
    np.testing.assert_allclose(np.cov(x.T), np.cov(ref.T), atol=tol_moment * 3)
    qs = np.linspace(0.02, 0.98, 25)
    for d in range(2):
        np.testing.assert_allclose(np.quantile(x[:, d], qs), np.quantile(ref[:, d], qs), atol=tol_quantile)


def test_moons_matches_torchcfm_definition():
    x = _draw("moons")
    # Closed form: arcs have mean (0, 2/pi) and (1, 1/2 - 2/pi); +E[u] = 0.1 on both; then 3 v - 1.
    np.testing.assert_allclose(x.mean(0), [0.8, 0.05], atol=0.015)
    ref = _torchdyn_moons_reference(N, np.random.default_rng(0))
    _assert_same_distribution(x, ref, tol_moment=0.015, tol_quantile=0.03)
    # The noise is ONE offset u in [0, 0.2) added to both coordinates: every point must be an arc point
    # shifted along (1, 1), i.e. |v - u (1, 1) - centre| = 1 has a root u in [0, 0.2] for one of the arcs
    # (upper: centre (0, 0), above it; lower: centre (1, 1/2), below it).
    v = (x + 1) / 3
    on_an_arc = np.zeros(len(v), bool)
    for centre, side in (((0.0, 0.0), 1.0), ((1.0, 0.5), -1.0)):
        a, b = v[:, 0] - centre[0], v[:, 1] - centre[1]
        disc = (a + b) ** 2 - 2 * (a**2 + b**2 - 1)
        for sign in (-1.0, 1.0):
            u = ((a + b) + sign * np.sqrt(np.maximum(disc, 0))) / 2
            ok = (disc > -1e-4) & (u > -1e-4) & (u < 0.2 + 1e-4) & (side * (b - u) > -1e-4)
            on_an_arc |= ok
    assert on_an_arc.all(), f"{(~on_an_arc).sum()} points are not shifted-arc points"


def test_checkerboard_is_uniform_on_the_8_black_squares():
    x = _draw("checkerboard")
    assert np.all((x >= -4) & (x < 4))
    cell = np.floor(x / 2).astype(int)
    assert np.all((cell.sum(1) % 2) == 0)  # Only cells with even (i + j): the 8 "black" squares.
    ids = (cell[:, 0] + 2) * 4 + (cell[:, 1] + 2)
    counts = np.bincount(ids, minlength=16)
    black = [i * 4 + j for i in range(4) for j in range(4) if (i + j) % 2 == 0]
    np.testing.assert_allclose(counts[black] / N, 1 / 8, atol=5 * math.sqrt(1 / 8 * 7 / 8 / N))
    # Uniform within a square of side 2: offset mean 1, variance 1/3.
    off = x - 2 * cell
    np.testing.assert_allclose(off.mean(0), 1.0, atol=0.01)
    np.testing.assert_allclose(off.var(0), 1 / 3, atol=0.01)


def _ffjord_spirals_reference(n, rng):
    """FFJORD ``inf_train_gen('2spirals')``, transcribed (numpy)."""
    r = np.sqrt(rng.random((n // 2, 1))) * 540 * (2 * np.pi) / 360
    d1x = -np.cos(r) * r + rng.random((n // 2, 1)) * 0.5
    d1y = np.sin(r) * r + rng.random((n // 2, 1)) * 0.5
    x = np.vstack((np.hstack((d1x, d1y)), np.hstack((-d1x, -d1y)))) / 3
    return x + rng.standard_normal(x.shape) * 0.1


def test_spirals_matches_ffjord_definition():
    x = _draw("spirals")
    ref = _ffjord_spirals_reference(N, np.random.default_rng(1))
    _assert_same_distribution(x, ref, tol_moment=0.03, tol_quantile=0.05)
    # E|x|^2 = (E r^2 - E[r cos r] + E[r sin r] + 2 * E a^2) / 9 + 2 * 0.1^2 with r = 3 pi sqrt(U),
    # a ~ U[0, 1/2) (E a^2 = 1/12), cross terms 2 E[a] E[...] = E[...] / 2 each.
    r_of_u = lambda u: 3 * np.pi * np.sqrt(u)
    e_r2 = 9 * np.pi**2 / 2
    e_rcos = integrate.quad(lambda u: r_of_u(u) * np.cos(r_of_u(u)), 0, 1, limit=200)[0]
    e_rsin = integrate.quad(lambda u: r_of_u(u) * np.sin(r_of_u(u)), 0, 1, limit=200)[0]
    expected = (e_r2 - 0.5 * e_rcos + 0.5 * e_rsin + 2 / 12) / 9 + 2 * 0.01
    np.testing.assert_allclose((x**2).sum(1).mean(), expected, rtol=0.01)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.02)


def test_gaussian_and_pairs_are_independent_draws():
    x0, x1 = jax.jit(toy2d.sample_pair, static_argnums=(0, 1, 3))("gaussian", "moons", jax.random.key(3), N)
    x0, x1 = np.asarray(x0, np.float64), np.asarray(x1, np.float64)
    np.testing.assert_allclose(x0.mean(0), 0.0, atol=0.015)
    np.testing.assert_allclose(np.cov(x0.T), np.eye(2), atol=0.02)
    np.testing.assert_allclose(x1.mean(0), [0.8, 0.05], atol=0.015)
    cross = np.corrcoef(np.concatenate([x0, x1], 1).T)[:2, 2:]
    np.testing.assert_allclose(cross, 0.0, atol=0.015)


def test_lookup_errors_list_the_valid_names_and_samplers_are_deterministic():
    with pytest.raises(ValueError, match="checkerboard.*moons"):
        toy2d.sample_toy("swissroll", jax.random.key(0), 4)
    a = toy2d.sample_toy("spirals", jax.random.key(5), 16)
    b = toy2d.sample_toy("spirals", jax.random.key(5), 16)
    assert a.shape == (16, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)


def test_gmm_toy_matches_its_closed_form_moments():
    """The 'gmm' toy: 8 equal-weight modes, std 0.2, radius 2, so E[x] = 0 and the per-coordinate
    variance is r^2 / 2 + std^2 = 2.04 (the means' spread plus the component variance)."""
    x = _draw("gmm")
    np.testing.assert_allclose(x.mean(0), 0.0, atol=5 * math.sqrt(2.04 / N))
    # Var of x_i^2 is bounded by E x^4 ~ 3 * 2.04^2; 5 standard errors.
    np.testing.assert_allclose(x.var(0), 2.04, atol=5 * math.sqrt(3 * 2.04**2 / N))
    r = np.linalg.norm(x, axis=1)
    assert abs(np.median(r) - 2.0) < 0.05
    # It is the same law as the analytic mixture whose exact density the library uses.
    dist = toy2d.toy_gmm()
    assert dist.means.shape == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(dist.means), axis=1), 2.0, rtol=1e-6)
