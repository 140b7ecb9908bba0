"""LMS, DPM++ 2S ancestral and DPM++ SDE against independent numpy transcriptions of k-diffusion's
published algorithms (`sample_lms`, `sample_dpmpp_2s_ancestral`, `sample_dpmpp_sde`, written here
from the algorithms in sigma units: x_{i+1} from x_i, D(x; sigma) and the noise), on an exact
Gaussian-mixture denoiser, float64, to 1e-10. The noise the references use is the same draws as the
samplers' (per-step keys fold_in(sample_key, i), then fold_in(., j)), so the comparison is exact.
Also: Restart against a transcription of Xu et al. 2023 Alg. 1, variable-step LMS coefficients
against exact polynomial integrals, float32 runs, the contract (one-file out-of-tree LMS)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, schedules
from diffusion_jax.samplers import lms, registry
from diffusion_jax.samplers.base import step_keys
from diffusion_jax.samplers.grids import make_grid

B, D = 6, 2


@pytest.fixture(scope="module")
def setup():
    with jax.enable_x64(True):
        sch = schedules.EDM()
        gmm = analytic.random_gmm(jax.random.key(7), num_components=3, dim=D, scale=1.5, min_std=0.3)
        den = gmm.denoiser(sch, "x0")
        grid = make_grid("karras", 9, sch, final_zero=True)  # 10 steps, the last to sigma = 0
        keys = jax.random.split(jax.random.key(3), B)
        x0 = 80.0 * jax.random.normal(jax.random.key(1), (B, D), jnp.float64)
        sig = np.asarray(sch.sigma(grid), np.float64)
        model = jax.jit(lambda x, s: den.x0(x, s / sch.sigma_max))
        params = jax.tree.map(np.asarray, gmm)
        return den, grid, keys, np.asarray(x0), sig, model, params


def _normal(keys, i, j):
    """The draw the samplers make: N(0, I) [B, D] from fold_in(fold_in(key_b, i), j)."""
    k = step_keys(keys, i)
    k = jax.vmap(lambda kk: jax.random.fold_in(kk, j))(k)
    return np.asarray(jax.vmap(lambda kk: jax.random.normal(kk, (D,), jnp.float64))(k))


def _lagrange_integral(ts, i, j, order):
    """int_{ts[i]}^{ts[i+1]} prod_{k != j} (tau - ts[i-k]) / (ts[i-j] - ts[i-k]) dtau, exactly."""
    poly = np.poly1d([1.0])
    for k in range(order):
        if k != j:
            poly = poly * np.poly1d([1.0, -ts[i - k]]) / (ts[i - j] - ts[i - k])
    antider = poly.integ()
    return antider(ts[i + 1]) - antider(ts[i])


def lms_reference(model, x, sig, order=4):
    ds = []
    for i in range(len(sig) - 1):
        den = np.asarray(model(jnp.asarray(x), sig[i]))
        ds.append((x - den) / sig[i])
        ds = ds[-order:]
        cur = min(i + 1, order)
        coeffs = [_lagrange_integral(sig, i, j, cur) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds), strict=False))
    return x


def _ancestral(s_from, s_to, eta):
    up = min(s_to, eta * np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2))
    return np.sqrt(s_to**2 - up**2), up


def dpmpp_2s_a_reference(model, x, sig, noise, eta=1.0):
    for i in range(len(sig) - 1):
        den = np.asarray(model(jnp.asarray(x), sig[i]))
        down, up = _ancestral(sig[i], sig[i + 1], eta)
        if down == 0:
            x = x + (down - sig[i]) * (x - den) / sig[i]
        else:
            t, t_next = -np.log(sig[i]), -np.log(down)
            h = t_next - t
            s = t + 0.5 * h
            x2 = (np.exp(-s) / np.exp(-t)) * x - np.expm1(-0.5 * h) * den
            den2 = np.asarray(model(jnp.asarray(x2), np.exp(-s)))
            x = (np.exp(-t_next) / np.exp(-t)) * x - np.expm1(-h) * den2
        if sig[i + 1] > 0:
            x = x + noise(i, 0) * up
    return x


def dpmpp_sde_reference(model, x, sig, brownian, eta=1.0, r=0.5):
    for i in range(len(sig) - 1):
        den = np.asarray(model(jnp.asarray(x), sig[i]))
        if sig[i + 1] == 0:
            x = x + (sig[i + 1] - sig[i]) * (x - den) / sig[i]
            continue
        t, t_next = -np.log(sig[i]), -np.log(sig[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1.0 / (2.0 * r)
        sd, su = _ancestral(np.exp(-t), np.exp(-s), eta)
        s_ = -np.log(sd)
        x2 = (np.exp(-s_) / np.exp(-t)) * x - np.expm1(t - s_) * den
        x2 = x2 + brownian(i, np.exp(-t), np.exp(-s)) * su
        den2 = np.asarray(model(jnp.asarray(x2), np.exp(-s)))
        sd, su = _ancestral(np.exp(-t), np.exp(-t_next), eta)
        tn_ = -np.log(sd)
        dd = (1.0 - fac) * den + fac * den2
        x = (np.exp(-tn_) / np.exp(-t)) * x - np.expm1(t - tn_) * dd
        x = x + brownian(i, np.exp(-t), np.exp(-t_next)) * su
    return x


def test_lms_equals_reference(setup, x64):
    den, grid, keys, x0, sig, model, _ = setup
    ref = lms_reference(model, x0, sig)
    out = jax.jit(lambda z, g: registry.get_sampler("k_lms").run(den, z, g))(jnp.asarray(x0), grid)
    np.testing.assert_allclose(out.samples, ref, rtol=1e-10, atol=1e-10)
    assert int(out.nfe) == 10


def test_dpmpp_2s_ancestral_equals_reference(setup, x64):
    den, grid, keys, x0, sig, model, _ = setup
    ref = dpmpp_2s_a_reference(model, x0, sig, lambda i, j: _normal(keys, i, j))
    out = jax.jit(lambda z, g, k: registry.get_sampler("DPM++ 2S a").run(den, z, g, k))(
        jnp.asarray(x0), grid, keys
    )
    np.testing.assert_allclose(out.samples, ref, rtol=1e-10, atol=1e-10)
    assert int(out.nfe) == 19


def test_dpmpp_sde_equals_reference(setup, x64):
    den, grid, keys, x0, sig, model, _ = setup

    def brownian(i, s_from, s_to):
        """(W(s_to) - W(s_from)) / sqrt|s_to - s_from| on a Brownian path W over sigma, built on
        [sig_next, sig_i] from the two per-step draws: W jumps sqrt(sig_i - s) g1 on [s, sig_i] and
        sqrt(s - sig_next) g2 on [sig_next, s], s = the step's midpoint sigma."""
        s_mid = np.sqrt(sig[i] * sig[i + 1])
        g1, g2 = _normal(keys, i, 1), _normal(keys, i, 2)
        w = {sig[i]: 0.0, s_mid: np.sqrt(sig[i] - s_mid) * g1}
        w[sig[i + 1]] = w[s_mid] + np.sqrt(s_mid - sig[i + 1]) * g2
        a, b = (min(w, key=lambda v, s=s: abs(v - s)) for s in (s_from, s_to))  # exp(-log) round trip
        return (w[b] - w[a]) / np.sqrt(abs(a - b))

    ref = dpmpp_sde_reference(model, x0, sig, brownian)
    out = jax.jit(lambda z, g, k: registry.get_sampler("dpmpp_sde").run(den, z, g, k))(
        jnp.asarray(x0), grid, keys
    )
    np.testing.assert_allclose(out.samples, ref, rtol=1e-10, atol=1e-10)
    assert int(out.nfe) == 19


def test_restart_equals_reference(setup, x64):
    """Restart (Xu et al. 2023, Alg. 1) written out: EDM Heun on the grid; at the first grid sigma
    <= 0.06 (and > 0), K = 2 times: x += sqrt(0.3^2 - s^2) n_k, then 3 Heun steps on a rho = 7 grid
    from 0.3 down to s."""
    den, grid, keys, x0, sig, model, _ = setup

    def heun(x, s, s_next):
        d = (x - np.asarray(model(jnp.asarray(x), s))) / s
        xe = x + (s_next - s) * d
        if s_next == 0:
            return xe
        d2 = (xe - np.asarray(model(jnp.asarray(xe), s_next))) / s_next
        return x + (s_next - s) * 0.5 * (d + d2)

    x = x0
    for i in range(len(sig) - 1):
        x = heun(x, sig[i], sig[i + 1])
        if 0 < sig[i + 1] <= 0.06 < sig[i]:
            lo, hi = sig[i + 1], 0.3
            sub = (hi ** (1 / 7) + np.linspace(0, 1, 4) * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
            sub[0], sub[-1] = hi, lo
            for k in range(2):
                x = x + np.sqrt(hi**2 - lo**2) * _normal(keys, i, 1 + k)
                for j in range(3):
                    x = heun(x, sub[j], sub[j + 1])
    out = jax.jit(lambda z, g, k: registry.get_sampler("restart").run(den, z, g, k))(
        jnp.asarray(x0), grid, keys
    )
    np.testing.assert_allclose(out.samples, x, rtol=1e-9, atol=1e-9)
    assert int(out.nfe) == registry.get_sampler("restart").nfe(10, final_zero=True) == 19 + 12


def test_lagrange_integrals_exact(x64):
    pts = jnp.array([0.9, 0.5, 0.31, 0.2])
    got = lms.lagrange_integrals(pts, jnp.float64(0.9), jnp.float64(0.12))
    ts = np.array([0.2, 0.31, 0.5, 0.9, 0.12])  # ts[i - k] = pts[k] for i = 3, ts[4] = the end
    ref = [_lagrange_integral(ts, 3, j, 4) for j in range(4)]
    np.testing.assert_allclose(got, ref, rtol=1e-13)


@pytest.mark.parametrize(
    "name, kw",
    [("lms", {}), ("ipndm_v", {}), ("dpmpp_2s_ancestral", {"eta": 0.0}), ("dpmpp_sde", {"eta": 0.0}),
     ("restart", {"s_noise": 0.0})],
)  # fmt: skip
def test_float32_runs_close_to_float64(name, kw, setup):
    """float32 (the default) runs and agrees with the float64 run to float32 accuracy (noise-free
    settings: normal draws differ between dtypes; the noisy defaults run in test_samplers_paths.py)."""
    den64, grid64, keys, x0, sig, _, params = setup
    sampler = registry.get_sampler(name, **kw)
    k = keys if sampler.stochastic else None
    with jax.enable_x64(True):
        ref = np.asarray(jax.jit(lambda z, g: sampler.run(den64, z, g, k).samples)(jnp.asarray(x0), grid64))
    gmm32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)  # the same mixture, float32
    den32 = gmm32.denoiser(schedules.EDM(), "x0")
    out = sampler.run(den32, jnp.asarray(x0, jnp.float32), jnp.asarray(sig / 80.0, jnp.float32), k)
    assert out.samples.dtype == jnp.float32
    np.testing.assert_allclose(out.samples, ref, rtol=2e-3, atol=2e-3)


def test_bad_input_one_line_before_compiling():
    for bad in ("dpmpp_4m", "DPM++ 2M Foo", ""):
        with pytest.raises(ValueError, match="valid samplers: .*'lms'") as e:
            registry.get_sampler(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"valid options: \['order'\]"):
        registry.get_sampler("k_lms", eta=1.0)
    with pytest.raises(ValueError, match="valid grids: .*'ays'"):
        make_grid("ays_xl", 10, schedules.EDM())
    with pytest.raises(ValueError, match="valid: \\['sd15', 'sdxl', 'svd'\\]"):
        make_grid("ays", 10, schedules.EDM(), model="flux")
    with pytest.raises(ValueError, match="restart_min < restart_max"):
        registry.get_sampler("restart", restart_min=0.5, restart_max=0.3).validate(schedules.EDM(), 5)
