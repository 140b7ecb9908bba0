"""Deterministic samplers (and the interface every deterministic / multistep sampler shares):
closed-form Gaussian solutions under every schedule and prediction kind, exact identities
(DDIM = Euler in sigma~ coordinates = DPM-Solver-1; DDIM = flow-matching Euler on the linear path),
EDM Algorithm 1 transcribed independently, NFE accounting (every registry sampler's `nfe()` against
a run-time count of network calls), scan structure, registry, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import analytic, schedules
from diffusion_jax.samplers import deterministic as det
from diffusion_jax.samplers import registry
from diffusion_jax.samplers.grids import make_grid

ODE_SAMPLERS = sorted(registry.DETERMINISTIC) + sorted(registry.MULTISTEP)

# (schedule, t_min, t_max) cycled over the samplers together with the prediction kinds, so every
# sampler meets a different (schedule, kind) pair and every schedule / kind is exercised.
SETUPS = [
    (schedules.VPLinear(), 1e-3, 1.0),
    (schedules.EDM(), None, None),
    (schedules.RectifiedFlow(), 1e-3, 0.995),
    (schedules.VPCosine(), 1e-3, 0.999),
    (schedules.VE(), 0.0, 1.0),
]
KINDS = ["x0", "eps", "v", "velocity", "score"]

# Relative error allowed against the closed form after 48 Karras steps, by sampler order (measured
# errors are 3-10x below these; a wrong conversion or coefficient gives errors of order 1).
FIRST_ORDER = {"euler", "ddim", "dpm_solver_1"}
HIGH_ORDER = {"rk4", "dpm_solver_3", "dpmpp_3m", "unipc", "unipc_bh1", "unipc_bh2"}


def _gaussian():
    return analytic.Gaussian.isotropic(jnp.array([0.5, -1.0, 0.2]), 0.7)


def gaussian_flow(sch, z, t_from, t_to, mean, std):
    """Exact PF-ODE map for data N(mean, std^2 I): the standardised z is constant along the flow."""
    a0, s0 = sch.alpha(t_from), sch.sigma(t_from)
    a1, s1 = sch.alpha(t_to), sch.sigma(t_to)
    scale = jnp.sqrt((a1**2 * std**2 + s1**2) / (a0**2 * std**2 + s0**2))
    return a1 * mean + scale * (z - a0 * mean)


def _run(sampler, den, z, grid, **kw):
    return jax.jit(lambda d, z, g: sampler.run(d, z, g, **kw))(den, z, grid)


@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_closed_form_gaussian_every_schedule_and_kind(name, x64):
    i = ODE_SAMPLERS.index(name)
    sch, t_min, t_max = SETUPS[i % len(SETUPS)]
    kind = KINDS[(i // len(SETUPS) + i) % len(KINDS)]
    gauss = _gaussian()
    den = gauss.denoiser(sch, kind)
    sampler = registry.get_sampler(name)
    grid = make_grid("karras", 48, sch, t_min=t_min, t_max=t_max)
    z = sch.sigma(grid[0]) * jax.random.normal(jax.random.key(i), (16, 3), jnp.float64)
    out = _run(sampler, den, z, grid, return_trajectory=True)
    exact = gaussian_flow(sch, z, grid[0], grid[-1], gauss.mean, 0.7)
    rel = float(
        jnp.max(jnp.linalg.norm(out.samples - exact, axis=-1)) / jnp.max(jnp.linalg.norm(exact, axis=-1))
    )
    tol = 1e-1 if name in FIRST_ORDER else (2e-3 if name in HIGH_ORDER else 1.5e-2)
    assert rel < tol, (name, sch.name, kind, rel)
    assert out.trajectory.shape == (49, 16, 3)
    np.testing.assert_array_equal(out.trajectory[0], z)
    np.testing.assert_array_equal(out.trajectory[-1], out.samples)
    assert int(out.nfe) == sampler.nfe(48)


@pytest.mark.parametrize("name", ODE_SAMPLERS)
def test_nfe_counted_equals_static_with_final_zero(name, x64):
    """A grid ending at t = 0 (sigma = 0) on VP: finite samples close to the exact data-end map, and
    carry['nfe'] equals the documented nfe(N, final_zero=True) (e.g. Heun 2N - 1)."""
    sch = schedules.VPLinear()
    gauss = _gaussian()
    den = gauss.denoiser(sch, "eps")
    sampler = registry.get_sampler(name)
    grid = make_grid("logsnr", 15, sch, final_zero=True)  # 16 steps, the last one to t = 0
    z = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    out = _run(sampler, den, z, grid)
    assert int(out.nfe) == sampler.nfe(16, final_zero=True)
    assert bool(jnp.all(jnp.isfinite(out.samples)))
    exact = gaussian_flow(sch, z, grid[0], 0.0, gauss.mean, 0.7)
    err = float(jnp.max(jnp.abs(out.samples - exact)))
    assert err < (0.3 if name in FIRST_ORDER else 0.06), (name, err)  # measured: 0.15 / <= 0.03


ALL_SAMPLERS = registry.list_samplers()


def _heads_for(sampler, den):
    """`den` as a two-head [velocity, score = 0] network for samplers that need a score head (the
    interpolant SDE); unchanged otherwise. One network call either way."""
    if not sampler.needs_score_head:
        return den
    f = den.net_fn

    def two_heads(*a):
        out = f(*a)
        return jnp.concatenate([out, jnp.zeros_like(out)], axis=-1)

    return den.replace(net_fn=two_heads)


@pytest.mark.parametrize("final_zero", [False, True], ids=["t_min", "to_zero"])
@pytest.mark.parametrize("name", ALL_SAMPLERS)
def test_static_nfe_equals_network_calls_counted_at_run_time(name, final_zero, x64):
    """For every registry sampler, `nfe(N, final_zero)` equals the number of network calls a run
    makes, on a grid ending at t_min > 0 and on one whose last step goes to sigma = 0.

    How the calls are counted: the denoiser's `net_fn` is wrapped to append to a Python list, and
    the run executes under `jax.disable_jit()`, where `lax.scan` / `fori_loop` run as Python loops
    and `lax.cond` / `switch` with a concrete predicate run only the branch taken. Every Python call
    is then one batched network evaluation actually executed, which is what the compiled program does
    too: the samplers branch only on the grid time (shared by the batch, so never a select that
    evaluates both sides). The count is independent of `carry['nfe']`, which is checked as well.
    Adaptive solvers report None (their NFE is not known before the solve); their `SampleOutput.nfe`
    is checked against a run-time count in test_samplers_adaptive.py.
    """
    sampler = registry.get_sampler(name)
    if sampler.nfe(4, final_zero=final_zero) is None:
        assert registry.ADAPTIVE.get(name) is type(sampler)
        return
    sch = schedules.VPLinear()
    den = analytic.random_gmm(jax.random.key(4), num_components=3, dim=2).denoiser(sch, "eps")
    calls = []

    def counting_net(params, z_in, t_in, cond, rng):
        calls.append(1)
        return den.net_fn(params, z_in, t_in, cond, rng)

    den_c = _heads_for(sampler, den.replace(net_fn=counting_net))
    # 4 steps either way; with final_zero the 4th step lands on t = 0 (sigma = 0).
    grid = make_grid("logsnr", 3, sch, final_zero=True) if final_zero else make_grid("logsnr", 4, sch)
    assert grid.shape == (5,) and (float(grid[-1]) == 0.0) == final_zero
    z = sch.sigma(grid[0]) * jax.random.normal(jax.random.key(1), (4, 2), jnp.float64)
    keys = jax.random.split(jax.random.key(2), 4) if sampler.stochastic else None
    with jax.disable_jit():
        out = sampler.run(den_c, z, grid, keys)
    assert bool(jnp.all(jnp.isfinite(out.samples)))
    assert sampler.nfe(4, final_zero=final_zero) == len(calls) == int(out.nfe), (name, len(calls))


def test_static_nfe_values():
    assert det.Heun().nfe(18, final_zero=True) == 35  # EDM's 35 NFE for 18 steps
    assert det.Heun().nfe(18) == 36
    assert det.RK4().nfe(10, final_zero=True) == 37
    assert det.DPMSolver3().nfe(10) == 30 and det.DPMSolver3().nfe(10, final_zero=True) == 28
    assert registry.get_sampler("dpmpp_2s").nfe(10, final_zero=True) == 19
    assert registry.get_sampler("unipc").nfe(10) == 10


def _vp_gmm_setup(kind="x0", n=12, final_zero=False):
    sch = schedules.VPLinear()
    gmm = analytic.random_gmm(jax.random.key(0), num_components=3, dim=2)
    den = gmm.denoiser(sch, kind)
    grid = make_grid("karras", n, sch, final_zero=final_zero)
    z = sch.sigma(grid[0]) * jax.random.normal(jax.random.key(5), (32, 2), jnp.float64)
    return sch, den, grid, z


def test_ddim_is_euler_in_sigma_tilde_coordinates(x64):
    """DDIM (eta = 0) = Euler on dx~/dsigma~ = eps-hat with x~ = z/alpha (Song et al. 2021, eq. 14),
    checked against a hand-written loop, to float64 round-off; DPM-Solver-1 is the same update."""
    sch, den, grid, z = _vp_gmm_setup("eps", final_zero=True)
    eps_fn = jax.jit(lambda d, z, t: d.eps(z, t))
    x = z / sch.alpha(grid[0])
    for t_c, t_n in zip(grid[:-1], grid[1:], strict=True):
        zc = x * sch.alpha(t_c)
        eps = eps_fn(den, zc, t_c)
        x = x + (sch.sigma(t_n) / sch.alpha(t_n) - sch.sigma(t_c) / sch.alpha(t_c)) * eps
    ref = x * sch.alpha(grid[-1])
    for sampler in (det.DDIM(), det.Euler(coords="sigma"), det.DPMSolver1()):
        out = _run(sampler, den, z, grid)
        np.testing.assert_allclose(out.samples, ref, rtol=1e-11, atol=1e-12, err_msg=sampler.name)


def test_ddim_is_flow_matching_euler_on_linear_path(x64):
    """On the rectified-flow path DDIM = Euler on dz/dt = velocity (flow matching), to round-off."""
    sch = schedules.RectifiedFlow()
    gmm = analytic.random_gmm(jax.random.key(1), num_components=3, dim=2)
    den = gmm.denoiser(sch, "velocity")
    grid = make_grid("uniform", 10, sch)  # from t = 1 (pure noise) to 0 (data)
    z = jax.random.normal(jax.random.key(2), (32, 2), jnp.float64)
    raw = jax.jit(lambda d, z, t: d.raw(z, t))
    ref = z
    for t_c, t_n in zip(grid[:-1], grid[1:], strict=True):
        ref = ref + (t_n - t_c) * raw(den, ref, t_c)  # the network's own velocity output
    for sampler in (det.DDIM(), det.Euler()):
        out = _run(sampler, den, z, grid)
        np.testing.assert_allclose(out.samples, ref, rtol=1e-12, atol=1e-13, err_msg=sampler.name)


def test_heun_matches_edm_algorithm_1(x64):
    """EDM Algorithm 1 transcribed in numpy (sigma(t) = t, s(t) = 1, final Euler step to sigma = 0)."""
    sch = schedules.EDM()
    gmm = analytic.random_gmm(jax.random.key(2), num_components=3, dim=2)
    den = gmm.denoiser(sch, "x0")
    n = 8
    grid = make_grid("edm", n, sch, final_zero=True)
    sig = np.asarray(sch.sigma(grid))
    z = jnp.asarray(sig[0] * np.random.default_rng(0).standard_normal((16, 2)))

    x0 = jax.jit(lambda d, x, t: d.x0(x, t))

    def D(x, s):  # the denoiser at noise level s (EDM's D(x; sigma))
        return np.asarray(x0(den, jnp.asarray(x), jnp.asarray(s / sch.sigma_max)))

    x = np.asarray(z)
    for i in range(n + 1):
        d = (x - D(x, sig[i])) / sig[i]
        x_next = x + (sig[i + 1] - sig[i]) * d
        if sig[i + 1] != 0:
            d2 = (x_next - D(x_next, sig[i + 1])) / sig[i + 1]
            x_next = x + (sig[i + 1] - sig[i]) * (0.5 * d + 0.5 * d2)
        x = x_next
    for coords in ("t", "sigma"):
        out = _run(det.Heun(coords=coords), den, z, grid)
        np.testing.assert_allclose(out.samples, x, rtol=1e-10, atol=1e-11)
        assert int(out.nfe) == 2 * (n + 1) - 1


def test_rk4_midpoint_against_classical_tableau(x64):
    """One RK4 / midpoint step on the scalar-in-time velocity field, written out by hand."""
    sch, den, _, z = _vp_gmm_setup("v")
    t0, t1 = 0.6, 0.45
    f = den.velocity
    h = t1 - t0
    k1 = f(z, t0)
    k2 = f(z + h / 2 * k1, t0 + h / 2)
    k3 = f(z + h / 2 * k2, t0 + h / 2)
    k4 = f(z + h * k3, t1)
    rk4 = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    mid = z + h * k2
    grid = jnp.array([t0, t1])
    np.testing.assert_allclose(_run(det.RK4(), den, z, grid).samples, rk4, rtol=1e-12)
    np.testing.assert_allclose(_run(det.Midpoint(), den, z, grid).samples, mid, rtol=1e-12)


def test_step_to_sigma_zero_is_denoised_estimate(x64):
    """DPM-Solver's step to sigma = 0 is the first-order limit alpha(0) x0-hat(z, t) (documented)."""
    sch, den, _, z = _vp_gmm_setup("eps")
    grid = jnp.array([0.3, 0.0])
    x0 = den.x0(z, 0.3)
    for name in ("dpm_solver_2", "dpm_solver_3", "ddim"):
        out = _run(registry.get_sampler(name), den, z, grid)
        np.testing.assert_allclose(out.samples, x0, rtol=1e-12, atol=1e-12)
        assert int(out.nfe) == 1


def _count_eqns(jaxpr) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for v in eqn.params.values():
            subs = v if isinstance(v, list | tuple) else [v]
            for s in subs:
                if isinstance(s, jax.extend.core.ClosedJaxpr):
                    n += _count_eqns(s.jaxpr)
                elif isinstance(s, jax.extend.core.Jaxpr):
                    n += _count_eqns(s)
    return n


@pytest.mark.parametrize("name", ODE_SAMPLERS + sorted(registry.ADAPTIVE))
def test_program_size_independent_of_steps(name, x64):
    """The traced program of `run` (one scan / while loop) has the same number of equations for 10
    and 100 steps: compile time does not grow with the number of steps."""
    sch, den, _, z = _vp_gmm_setup()
    sampler = registry.get_sampler(name)
    sizes = []
    for n in (10, 100):
        grid = make_grid("logsnr", n, sch)
        jaxpr = jax.make_jaxpr(lambda d, z, g: sampler.run(d, z, g).samples)(den, z, grid)
        sizes.append(_count_eqns(jaxpr.jaxpr))
    assert sizes[0] == sizes[1], sizes


def test_registry_listing_and_errors():
    names = registry.list_samplers()
    for n in ("euler", "heun", "midpoint", "rk4", "ddim", "dpm_solver_3", "dpmpp_2s", "dpmpp_2m", "dpmpp_3m"):
        assert n in names
    for n in ("unipc_bh1", "unipc_bh2", "ipndm", "dopri5", "tsit5"):
        assert n in names
    assert registry.list_samplers("adaptive") == ["dopri5", "tsit5"]
    from diffusion_jax.samplers import stochastic

    assert set(stochastic.SAMPLERS) <= set(registry.list_samplers("stochastic"))
    assert all(registry.sampler_class(n).name == n for n in names)
    assert set(registry.list_samplers("multistep")) == set(registry.MULTISTEP)
    assert "karras" in registry.list_grids()
    s3 = registry.get_sampler("dpm_solver", order=3)
    assert isinstance(s3, det.DPMSolver) and s3.order == 3 and registry.get_sampler("dpm_solver_3").order == 3
    info = registry.sampler_info()
    assert info["heun"]["family"] == "deterministic" and not info["heun"]["stochastic"]
    with pytest.raises(ValueError, match="valid samplers: .*'dpmpp_2m'"):
        registry.get_sampler("dpm++")
    with pytest.raises(ValueError, match="valid options: \\['coords'\\]"):
        registry.get_sampler("euler", order=2)
    with pytest.raises(ValueError, match="valid families"):
        registry.list_samplers("odd")


@pytest.mark.parametrize(
    "sampler, steps, match",
    [
        (det.DPMSolver(order=4), 5, "order` must be 1, 2 or 3"),
        (det.DPMSolver(order=3, r1=0.7, r2=0.5), 5, "r1 < r2"),
        (det.Euler(coords="lambda"), 5, "valid: \\['t', 'sigma'\\]"),
        (det.Heun(), 0, "at least 2 times"),
    ],
)
def test_bad_settings_fail_before_compilation(sampler, steps, match, x64):
    sch, den, _, z = _vp_gmm_setup()
    grid = jnp.linspace(1.0, 0.01, steps + 1)
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda d, z, g: sampler.run(d, z, g)).lower(den, z, grid)  # fails while tracing


def test_rectified_flow_from_t1_is_finite_or_rejected_before_compiling(x64):
    """On rectified flow alpha(1) = 0, so logSNR and sigma / alpha are infinite at the usual start
    t = 1. Every registry sampler must either integrate from there to finite samples or refuse with a
    ValueError naming alpha before anything is traced; none may silently return NaN."""
    from diffusion_jax import analytic
    from diffusion_jax import schedules as S
    from diffusion_jax.samplers import grids, registry

    sch = S.get_schedule("rectified_flow")
    den = analytic.gmm_2d_ring(dtype=jnp.float64).denoiser(sch, "velocity")
    z = jax.random.normal(jax.random.key(0), (8, 2), jnp.float64)
    keys = jax.random.split(jax.random.key(1), 8)
    g = grids.make_grid("uniform", 6, sch, t_min=1e-3)
    assert float(g[0]) == 1.0
    rejected, ran = [], []
    for name in registry.list_samplers():
        s = registry.get_sampler(name)
        traced = []
        fake = _heads_for(s, den.replace(net_fn=lambda *a, f=den.net_fn: traced.append(1) or f(*a)))
        try:
            out = s.run(fake, z, g, keys if s.stochastic else None).samples
        except ValueError as e:
            assert "alpha" in str(e), (name, e)
            assert not traced, f"{name} traced the network before rejecting the grid"
            rejected.append(name)
            continue
        assert bool(jnp.all(jnp.isfinite(out))), name
        ran.append(name)
    # The t-coordinate integrators run; the logSNR-coordinate ones are refused.
    assert {"euler", "heun", "rk4", "dpmpp_2m"} <= set(ran)
    assert {"dpm_solver_2", "unipc_bh2", "ipndm", "dpmpp_2s", "euler_maruyama"} <= set(rejected)
