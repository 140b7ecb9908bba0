"""Extension by import path: parts written outside the package (tests/extensions/my_lab.py) are
checked against independent references, then a run made of them trains, resumes, samples and
evaluates through the CLIs, reopened from its saved config alone."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats
from scipy.optimize import linear_sum_assignment

from diffusion_jax import (
    analytic,
    couplings,
    extensions,
    objectives,
    schedules,
    time_distributions,
    weightings,
)
from diffusion_jax import models as M
from diffusion_jax.models import build_model, complete_config
from diffusion_jax.samplers import grids, registry
from tests.test_training_multihost import REPO

_TABLES = (
    schedules.SCHEDULES,
    weightings.WEIGHTINGS,
    time_distributions.TIME_DISTRIBUTIONS,
    couplings.COUPLINGS,
    M.MODELS,
    M.DEFAULTS,
    registry._USER_SAMPLERS,
    grids._USER_GRIDS,
    grids._USER_GRID_KWARGS,
)


@pytest.fixture(scope="module")
def my_lab():
    """Import the researcher's module (it registers its parts) and afterwards restore every table,
    so other tests in this process see only the package's own parts."""
    saved = [dict(t) for t in _TABLES]
    import importlib

    mod = importlib.import_module("tests.extensions.my_lab")
    yield mod
    for table, before in zip(_TABLES, saved, strict=True):
        table.clear()
        table.update(before)
    sys.modules.pop("tests.extensions.my_lab", None)


def _b(t, bmin=0.1, bmax=20.0):
    return bmin * t + 0.5 * (bmax - bmin) * t**2


def test_sub_vp_schedule_by_name_and_path(my_lab, x64):
    t = np.linspace(0.01, 0.99, 9)
    b = _b(t)
    alpha, sigma = np.exp(-b / 2), 1 - np.exp(-b)
    for name in ("sub_vp", "tests.extensions.my_lab:SubVP"):
        s = schedules.get_schedule(name)
        np.testing.assert_allclose(s.logsnr(t), 2 * np.log(alpha / sigma), rtol=1e-12)
        # the base class's jvp derivative against d alpha/dt = -B'(t) alpha / 2
        np.testing.assert_allclose(s.d_alpha(t), -0.5 * (0.1 + 19.9 * t) * alpha, rtol=1e-12)
        np.testing.assert_allclose(s.t_from_logsnr(s.logsnr(t)), t, atol=1e-9)


def test_p2_weighting_and_beta_time_distribution(my_lab, x64):
    obj = objectives.resolve_objective(
        dict(
            schedule="sub_vp",
            prediction="x0",
            weighting="p2",
            weighting_kwargs={"k": 1.0, "gamma": 0.5},
            time_distribution="beta",
            time_kwargs={"a": 2.0, "b": 3.0},
        )
    )
    t = jnp.linspace(0.05, 0.95, 7)
    b = _b(np.asarray(t))
    snr = np.exp(-b) / (1 - np.exp(-b)) ** 2
    w_eps = (1.0 + snr) ** -0.5  # P2 (Choi et al. 2022, eq. 8) on the eps-MSE
    np.testing.assert_allclose(objectives.loss_weight(obj, t, "eps"), w_eps, rtol=1e-10)
    np.testing.assert_allclose(objectives.loss_weight(obj, t), w_eps * snr, rtol=1e-10)  # x0 output
    np.testing.assert_allclose(objectives.time_log_density(obj, t), stats.beta(2, 3).logpdf(t), rtol=1e-10)
    ts = np.asarray(objectives.sample_time(obj, jax.random.key(0), 4000, jnp.float64))
    assert stats.kstest(ts, stats.beta(2, 3).cdf).pvalue > 1e-3


def test_sorted_coupling_is_exact_ot_in_one_dimension(my_lab):
    rng = np.random.default_rng(0)
    x, noise = rng.normal(2.0, 0.5, (64, 1)), rng.normal(size=(64, 1))
    c = couplings.make_coupling("sorted", {"axis": 0})
    paired = np.asarray(c.pair(jax.random.key(0), jnp.asarray(x), jnp.asarray(noise)))
    cost = (x - noise.T) ** 2
    rows, cols = linear_sum_assignment(cost)  # independent reference: Jonker-Volgenant
    assert ((x - paired) ** 2).sum() == pytest.approx(cost[rows, cols].sum(), rel=1e-6)  # float32
    np.testing.assert_allclose(np.sort(paired[:, 0]), np.sort(noise[:, 0]), rtol=1e-6)


def test_network_grid_by_name_and_errors(my_lab):
    from flax import nnx

    full = complete_config(ml_collections.ConfigDict({"name": "tiny_net"}))
    assert full.width == 32 and full.dim == 2

    g = np.asarray(registry.make_grid("chebyshev", 4, schedules.get_schedule("sub_vp"), t_min=0.1, t_max=0.9))
    np.testing.assert_allclose(g, 0.5 + 0.4 * np.cos(np.pi * np.arange(5) / 4), rtol=1e-6)  # float32
    ref = "tests.extensions.my_lab:chebyshev_grid"
    sch = schedules.get_schedule("sub_vp")
    np.testing.assert_array_equal(registry.make_grid(ref, 4, sch, t_min=0.1, t_max=0.9), g)
    net = build_model(full, rngs=nnx.Rngs(0))
    assert net(jnp.ones((3, 2)), jnp.ones(3)).shape == (3, 2)
    path = complete_config(ml_collections.ConfigDict({"name": "tests.extensions.my_lab:TinyNet"}))
    assert path.width == 32
    with pytest.raises(ValueError, match="valid names.*tiny_net"):
        complete_config(ml_collections.ConfigDict({"name": "tiny_nett"}))
    with pytest.raises(ValueError, match="already registered"):
        schedules.register_schedule("sub_vp", schedules.VPLinear)
    schedules.register_schedule("sub_vp", my_lab.SubVP)  # the same part again: a no-op
    with pytest.raises(ValueError, match="not a diffusion_jax.weightings.Weighting"):
        weightings.register_weighting("bad", lambda c: 1.0)
    with pytest.raises(ValueError, match="cannot import module 'no_such_lab'"):
        extensions.import_modules(["no_such_lab"])
    with pytest.raises(ValueError, match="objective.coupling: unknown coupling 'sortd'.*sorted"):
        objectives.resolve_objective({"coupling": "sortd"})
    with pytest.raises(ValueError, match="objective.coupling_kwargs.axis"):
        objectives.resolve_objective({"coupling": "sorted", "coupling_kwargs": {"axis": -1}})


def test_ralston_sampler_is_second_order(my_lab, x64):
    """Against the closed-form probability-flow ODE of Gaussian data N(0, s^2 I) on rectified flow:
    z_t = z_1 std(t) / std(1), std(t) = sqrt((1 - t)^2 s^2 + t^2); halving h divides the error by 4."""
    s, t_end = 0.5, 0.01
    sch = schedules.RectifiedFlow()
    den = analytic.Gaussian.isotropic(np.zeros(2), s, dtype=jnp.float64).denoiser(sch, "x0")
    z1 = jax.random.normal(jax.random.key(0), (16, 2), jnp.float64)
    exact = np.asarray(z1) * math.sqrt((1 - t_end) ** 2 * s**2 + t_end**2)
    sampler = registry.get_sampler("ralston")
    assert registry.get_sampler("tests.extensions.my_lab:Ralston") == sampler  # by reference
    errs = []
    for n in (16, 32):
        out = sampler.run(den, z1, jnp.linspace(1.0, t_end, n + 1))
        assert int(out.nfe) == 2 * n == sampler.nfe(n)
        errs.append(float(np.max(np.abs(np.asarray(out.samples) - exact))))
    assert 3.5 < errs[0] / errs[1] < 4.5, errs


def _cli(module, *args):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", PYTHONPATH=REPO)
    p = subprocess.run(
        [sys.executable, "-m", f"diffusion_jax.{module}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def test_run_of_own_parts_trains_resumes_samples_and_evaluates(tmp_path):
    run = str(tmp_path / "run")
    cfg = "--config=tests/extensions/my_lab_config.py"
    _cli("train", cfg, f"--workdir={run}", "--progress=false")
    saved = json.load(open(os.path.join(run, "config.json")))
    assert saved["imports"] == ["tests.extensions.my_lab"] and saved["model"]["name"] == "tiny_net"
    # resume: the same run to 6 steps (the parts resolve again from the saved imports)
    p = _cli("train", cfg, f"--workdir={run}", "--config.training.num_steps=6", "--progress=false")
    assert "resumed from checkpoint 4" in p.stderr
    out = str(tmp_path / "samples")
    _cli(
        "sample",
        f"--workdir={run}",
        "--config.denoiser.source=checkpoint",
        "--config.seeds=0-7",
        "--config.grid.num_steps=4",
        "--config.grid.name=chebyshev",
        "--config.sampler.name=ralston",
        f"--config.output_dir={out}",
    )
    summary = json.load(open(os.path.join(out, "sampling.json")))
    assert summary["num_samples"] == 8
    p = _cli("evaluate", f"--workdir={run}")
    res = json.loads(p.stdout[p.stdout.index("{") :])
    assert res["step"] == 6 and math.isfinite(res["w2"])
