"""Sampling from a run's source in every entry point (one engine): a moons -> 8gaussians run.

A tiny I-CFM run (configs/toy2d/cfm.py, data 8gaussians, data.pair_with='moons': the source at t = 1)
is trained in this process with periodic samples at its last step. Seed s must start from the moons
point drawn from its own key (fold_in(fold_in(key(base_seed), s), INIT_TAG), written out here), and
be bitwise the same sample through the periodic samples, the sampling CLI, `evaluate` and the Python
API (`Pipeline` and `samplers.seeds.sample` with the source); `evaluate`'s W2 is the W2 of those
samples. (Before, `evaluate` started such runs from N(0, I).)
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import evaluate as ev
from diffusion_jax import sample as cli
from diffusion_jax.data.sources import toy_source
from diffusion_jax.pipeline import Pipeline
from diffusion_jax.samplers import seeds as sd
from diffusion_jax.training import loop, overrides, periodic
from tests.test_training_multihost import REPO

STEPS = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    sys.path.insert(0, REPO)
    from configs.toy2d import cfm

    cfg = cfm.get_config("8gaussians_tiny")
    cfg.data.pair_with = "moons"
    t = cfg.training
    t.num_steps, t.ckpt_every, t.log_every, t.sample_every = STEPS, STEPS, STEPS, STEPS
    t.fast_compile = True
    cfg.sampling.update(num_samples=8, chunk_size=4, seed=2)
    workdir = str(tmp_path_factory.mktemp("moons_to_8g"))
    loop.train(cfg, workdir, progress=False, devices=jax.devices()[:2])
    return workdir, cfg, np.load(os.path.join(workdir, "samples", f"{STEPS:08d}.npz"))


def test_every_entry_point_starts_from_the_source(run, tmp_path):
    workdir, cfg, per = run
    ref = per["samples"]
    assert ref.shape == (8, 2) and np.all(np.isfinite(ref)) and str(per["source"]) == "moons"
    req = cli.get_default_config()
    req.seeds, req.output_dir, req.progress = "0-7", str(tmp_path / "cli"), False
    cli.run_sampling(req, workdir)
    for s in range(8):
        np.testing.assert_array_equal(np.load(str(tmp_path / "cli" / f"{s:06d}.npz"))["sample"], ref[s])
    ecfg = overrides.apply_overrides(
        overrides.load_config_arg(os.path.join(workdir, "config.json")),
        [("eval.num_samples", "8"), ("eval.metrics", "('w2',)")],
    )
    ecfg.eval.save_samples = True
    out = ev.evaluate(ecfg, workdir)
    for s in range(8):
        got = np.load(os.path.join(workdir, "eval", f"{STEPS:08d}_samples", f"{s:06d}.npz"))["sample"]
        np.testing.assert_array_equal(got, ref[s])
    pipe = Pipeline.from_workdir(workdir)
    api = pipe("0-7")
    np.testing.assert_array_equal(api, ref)
    assert out["w2"] == periodic.evaluate_samples(ecfg, api)["w2"]
    # The Python API by hand: the engine with the moons source gives the same bits.
    plan = pipe.plan()
    hand = sd.sample(plan.denoiser, plan.sampler, plan.grid, list(range(8)), (2,), base_seed=2, chunk_size=4,
                     source=toy_source("moons")).samples  # fmt: skip
    np.testing.assert_array_equal(np.asarray(hand), ref)


def test_first_state_is_the_seeds_source_draw(run):
    workdir, cfg, _ = run
    plan = Pipeline.from_workdir(workdir).plan(steps=1)
    traj = sd.sample(plan.denoiser, plan.sampler, plan.grid, [6], (2,), base_seed=2, chunk_size=4,
                     source=plan.source, return_trajectory=True).trajectory  # fmt: skip
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(2), 6), sd.INIT_TAG)
    from diffusion_jax.data import toy2d

    want = toy2d.sample_moons(key, 1)[0]  # the moons sampler itself, one point from the seed's key
    np.testing.assert_array_equal(np.asarray(traj[0, 0]), np.asarray(want, jnp.float32))


def test_grid_must_start_at_the_source(run):
    workdir, _, _ = run
    with pytest.raises(ValueError, match=r"source 'moons' .* the grid must start at t = 1"):
        Pipeline.from_workdir(workdir).plan(grid_kwargs={"t_max": 0.9})


def test_adaptive_solver_from_the_cli_on_zero_to_one(run, tmp_path):
    """dopri5 with rtol / atol fields on the velocity model's full [0, 1] grid (ending where sigma = 0),
    NFE reported; its samples agree with a fine RK4 solve from the same source draws."""
    workdir, _, _ = run
    req = cli.get_default_config()
    req.seeds, req.output_dir, req.progress = "0-3", str(tmp_path / "dopri5"), False
    req.sampler.name = "dopri5"
    req.sampler.kwargs.rtol = 1e-8
    req.sampler.kwargs.atol = 1e-8
    summary = cli.run_sampling(req, workdir)
    assert summary["nfe"] > 7 and summary["sampler"] == "dopri5"
    got = np.stack([np.load(str(tmp_path / "dopri5" / f"{s:06d}.npz"))["sample"] for s in range(4)])
    # RK4 takes an Euler step onto sigma = 0: end the reference 1e-7 above t = 0 instead.
    fine = Pipeline.from_workdir(workdir)([0, 1, 2, 3], sampler="rk4", steps=200, grid_kwargs={"t_min": 1e-7})
    np.testing.assert_allclose(got, fine, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# SDE sampling of a run with a score head (samplers/interpolant_sde.py) through every entry point.
# A tiny SB-CFM run (entropic OT pairs, Brownian bridge, [velocity, score] heads) whose own sampling
# settings are the interpolant SDE with diffusion 0.5, so its periodic samples are drawn by it too.
# --------------------------------------------------------------------------------------------------

DIFF = 0.5


@pytest.fixture(scope="module")
def sb_run(tmp_path_factory):
    sys.path.insert(0, REPO)
    from configs.toy2d import cfm

    cfg = cfm.get_config("8gaussians_tiny")
    cfg.objective.update(coupling="schrodinger", path_noise="bridge", path_sigma=0.5, score_head=True)
    cfg.model.out_dim = 4
    t = cfg.training
    t.num_steps, t.ckpt_every, t.log_every, t.sample_every = STEPS, STEPS, STEPS, STEPS
    t.fast_compile = True
    cfg.sampling.update(num_samples=8, chunk_size=4, seed=3, sampler="interpolant_em", num_steps=6)
    cfg.sampling.sampler_kwargs = {"diffusion": DIFF}
    workdir = str(tmp_path_factory.mktemp("sb_cfm"))
    loop.train(cfg, workdir, progress=False, devices=jax.devices()[:2])
    return workdir, np.load(os.path.join(workdir, "samples", f"{STEPS:08d}.npz"))["samples"]


def test_sde_sampling_same_bits_through_every_entry_point(sb_run, tmp_path):
    """Periodic samples, the sampling CLI (`--config.sampler.kwargs.diffusion`), `evaluate`
    (`--config.sampling.sampler_kwargs.diffusion`) and `Pipeline` give the same bits per seed, and
    they are the Euler-Maruyama recursion written here from the paper's step with the engine's keys:
    x0 from fold_in(fold_in(key(3), s), INIT_TAG), step i's noise from fold_in(fold_in(key(3), s), i)."""
    workdir, ref = sb_run
    assert ref.shape == (8, 2) and np.all(np.isfinite(ref))
    req = cli.get_default_config()
    req.seeds, req.output_dir, req.progress = "0-7", str(tmp_path / "cli"), False
    req.sampler.name = "interpolant_em"
    req.sampler.kwargs.diffusion = DIFF
    summary = cli.run_sampling(req, workdir)
    assert summary["nfe"] == 6 and summary["sampler"] == "interpolant_em"
    got = np.stack([np.load(str(tmp_path / "cli" / f"{s:06d}.npz"))["sample"] for s in range(8)])
    np.testing.assert_array_equal(got, ref)
    pipe = Pipeline.from_workdir(workdir)
    np.testing.assert_array_equal(
        pipe("0-7", sampler="interpolant_em", sampler_kwargs={"diffusion": DIFF}), ref
    )
    ecfg = overrides.apply_overrides(
        overrides.load_config_arg(os.path.join(workdir, "config.json")),
        [
            ("eval.num_samples", "8"),
            ("eval.metrics", "('w2',)"),
            ("sampling.sampler_kwargs.diffusion", str(DIFF)),
        ],
    )
    ecfg.eval.save_samples = True
    ev.evaluate(ecfg, workdir)
    for s in range(8):
        got = np.load(os.path.join(workdir, "eval", f"{STEPS:08d}_samples", f"{s:06d}.npz"))["sample"]
        np.testing.assert_array_equal(got, ref[s])
    # By hand: X <- X - h (v - eps s) + sqrt(2 eps h) xi (Albergo & Vanden-Eijnden 2023, eq. 2.33).
    plan = pipe.plan()
    two = plan.denoiser  # the two-head network the plan selected
    for s in (0, 5):
        key = jax.random.fold_in(jax.random.key(3), s)
        x = jax.random.normal(jax.random.fold_in(key, sd.INIT_TAG), (1, 2))
        for i in range(6):
            t, tn = plan.grid[i], plan.grid[i + 1]
            out = two.raw(x, jnp.float32(t))
            v, sc = out[:, :2], out[:, 2:]
            xi = jax.random.normal(jax.random.fold_in(key, i), (2,))
            x = x - (t - tn) * (v - DIFF * sc) + np.sqrt(2 * DIFF * (t - tn)) * xi
        np.testing.assert_allclose(np.asarray(x[0]), ref[s], rtol=1e-5, atol=1e-5)
    other = pipe("0-7", sampler="interpolant_em", sampler_kwargs={"diffusion": 1.0})
    assert np.abs(other - ref).max() > 1e-3  # the coefficient reaches the sampler


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("float64", 1e-12)])
def test_zero_diffusion_is_the_euler_ode(sb_run, dtype, tol, x64):
    """diffusion = 0: the SDE step is the probability-flow Euler step on the same grid."""
    pipe = Pipeline.from_workdir(sb_run[0])
    sde = pipe("0-7", sampler="interpolant_em", sampler_kwargs={"diffusion": 0.0}, dtype=dtype)
    ode = pipe("0-7", sampler="euler", dtype=dtype)
    assert sde.dtype == np.dtype(dtype)
    np.testing.assert_allclose(sde, ode, rtol=tol, atol=tol)


def test_sde_sampler_refused_on_a_velocity_only_run(run, tmp_path):
    workdir = run[0]
    msg = r"sampling.sampler='interpolant_em' needs a score head, but this run was trained without one"
    with pytest.raises(ValueError, match=msg):
        Pipeline.from_workdir(workdir).plan(sampler="interpolant_em", sampler_kwargs={"diffusion": 0.5})
    req = cli.get_default_config()
    req.seeds, req.output_dir, req.progress = "0-3", str(tmp_path / "refused"), False
    req.sampler.name = "interpolant_em"
    with pytest.raises(ValueError, match=msg.replace("sampling.", "config.")) as e:
        cli.run_sampling(req, workdir)
    assert "\n" not in str(e.value) and not os.path.exists(str(tmp_path / "refused"))
