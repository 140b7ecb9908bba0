"""The sampler benchmark script (experiments/benchmark_samplers.py) on a tiny run.

Checks that the reports are written, that Euler / Heun errors fall with NFE at (at least) their
orders, that the reference solve agrees with an independent fixed-step RK4 solve in other
coordinates, that the order fit is exact on synthetic power laws, and that bad names fail early.
"""

import csv
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.experiments.benchmark_samplers import get_config
from experiments import benchmark_samplers as bench


def _tiny_config():
    c = get_config("quick")
    c.samplers = "euler,heun"
    c.grids = "logsnr"
    c.nfes = (10, 40)
    c.num_samples = 64
    c.w2_num_samples = 64
    c.order_min_nfe = 10
    return c


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny benchmark run (2 samplers, 1 grid, 2 NFEs, 64 samples) shared by the tests below."""
    out = tmp_path_factory.mktemp("bench")
    return bench.run_benchmark(_tiny_config(), str(out), progress=False), out


def test_tiny_run_writes_reports_and_errors_fall(tiny_run):
    result, tmp_path = tiny_run
    for name in ("results.csv", "orders.csv", "results.md", "meta.json", "error_vs_nfe.png", "w2_vs_nfe.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "error_vs_nfe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    md = (tmp_path / "results.md").read_text()
    assert "| euler |" in md and "Measured convergence orders" in md

    by = {(r["sampler"], r["target_nfe"]): r for r in result["rows"]}
    # Counted NFE, not steps: Heun (EDM Algorithm 1, last step Euler) uses 2N - 1 evaluations.
    assert by[("euler", 40)]["nfe"] == 40
    assert by[("heun", 40)]["nfe"] <= 40 and by[("heun", 40)]["num_steps"] >= 20
    # 4x the NFE: an order-p method divides its (median) error by about 4^p. Lower bounds with slack
    # for the pre-asymptotic regime: Euler (p = 1) by > 2.5, Heun (p = 2) by > 6.
    ratio_euler = by[("euler", 10)]["err_median"] / by[("euler", 40)]["err_median"]
    ratio_heun = by[("heun", 10)]["err_median"] / by[("heun", 40)]["err_median"]
    assert ratio_euler > 2.5, ratio_euler
    assert ratio_heun > 6.0, ratio_heun
    for name in ("euler", "heun"):
        assert by[(name, 40)]["err_rms"] < by[(name, 10)]["err_rms"]
        assert np.isfinite(by[(name, 40)]["w2"])
    # The reference is far more accurate than anything it is compared with.
    assert result["meta"]["reference"]["self_err"] < 1e-8
    assert result["meta"]["w2_floor"] > 0


def _rk4_logsigma(denoiser, z, t_start, t_end, steps):
    """Fixed-step classical RK4 on the PF-ODE in the rescaled coordinates x~ = z / alpha against
    u = log(sigma / alpha): dx~/du = (sigma / alpha) eps_hat (DDIM / EDM form, Song et al. 2021a,
    eq. 14; Karras et al. 2022, eq. 4) -- different coordinates, solver and step control than
    `reference_solve`, which integrates dz/dt with adaptive Dopri8."""
    sched = denoiser.schedule

    def f(x, u):
        t = sched.t_from_logsnr(-2.0 * u)
        a = sched.alpha(t)
        return jnp.exp(u) * denoiser.eps(a * x, t)

    def u_of(t):
        return -0.5 * sched.logsnr(jnp.asarray(t, z.dtype))

    u0, u1 = u_of(t_start), u_of(t_end)
    h = (u1 - u0) / steps

    def body(i, x):
        u = u0 + i * h
        k1 = f(x, u)
        k2 = f(x + 0.5 * h * k1, u + 0.5 * h)
        k3 = f(x + 0.5 * h * k2, u + 0.5 * h)
        k4 = f(x + h * k3, u + h)
        return x + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)

    x = jax.lax.fori_loop(0, steps, body, z / sched.alpha(jnp.asarray(t_start, z.dtype)))
    return x * sched.alpha(jnp.asarray(t_end, z.dtype))


def test_reference_solve_matches_independent_rk4(tiny_run, x64):
    result, _ = tiny_run
    den = result["denoiser"]
    (t_start, t_end), ref = next(iter(result["references"].items()))
    z0 = jnp.asarray(result["z0"])
    assert z0.dtype == jnp.float64 and ref.shape == z0.shape
    rk4 = jax.jit(lambda d, z: _rk4_logsigma(d, z, t_start, t_end, 4000))(den, z0)
    err = float(jnp.max(jnp.abs(jnp.asarray(ref) - rk4)))
    # Stated tolerance: 1e-7 absolute, on data of scale ~2 (RK4 at 4000 steps is at ~1e-9 here).
    assert err < 1e-7, err


def test_order_fit_is_exact_on_power_laws():
    rows = []
    for nfe in (5, 10, 20, 50, 100):
        for name, p in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
            rows.append(
                {
                    "sampler": name,
                    "family": "deterministic",
                    "grid": "g",
                    "status": "ok",
                    "nfe": nfe,
                    "err_rms": 3.0 * nfe**-p,
                    "err_median": 0.5 * nfe**-p,
                }
            )
    orders = {o["sampler"]: o for o in bench.convergence_orders(rows, min_nfe=20, floor=1e-12)}
    for name, p in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        assert math.isclose(orders[name]["order_rms"], p, rel_tol=1e-9)
        assert math.isclose(orders[name]["order_median"], p, rel_tol=1e-9)
        assert orders[name]["nfe_range_rms"] == "20-100"
    # Points at the reference's own error level are excluded: only NFE 20 and 50 remain for "c".
    orders = {o["sampler"]: o for o in bench.convergence_orders(rows, min_nfe=20, floor=1e-7)}
    assert orders["c"]["nfe_range_median"] == "20-50"


@pytest.mark.parametrize(
    "field, value, valid",
    [("samplers", "euler,not_a_sampler", "valid samplers"), ("grids", "not_a_grid", "valid grids")],
)
def test_bad_names_fail_before_running(field, value, valid):
    c = _tiny_config()
    c[field] = value
    with pytest.raises(ValueError, match=valid):
        bench.resolve_names(c)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("source", "nonsense", "valid sources"),
        ("source", "checkpoint", "workdir"),  # a checkpoint source needs a run directory
        ("kind", "noise", "valid kinds"),
        ("schedule", "vp_squiggly", "valid names"),
    ],
)
def test_bad_denoiser_settings_fail_before_running(field, value, message):
    c = _tiny_config()
    c.denoiser[field] = value
    with pytest.raises(ValueError, match=message):
        bench.build_setup(c)
