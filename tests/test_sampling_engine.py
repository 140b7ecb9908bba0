"""One sampling engine: seed s of a checkpoint is bitwise the same sample through every entry point.

Two tiny runs are trained in this process on 2 devices with periodic samples at the final step (the
step of the final checkpoint): an unconditional rectified flow (Euler, uniform grid from t = 1)
and a class-conditional VP run with classifier-free guidance and a stochastic sampler (per-step
noise from the per-seed keys). Seed 3 must then be bit-for-bit equal in the periodic samples
(`samples/<step>.npz`), the sampling CLI (seeds "0-7" and "3" alone), `evaluate`
(`eval.save_samples`) and `Pipeline`. The reference for the first drawn state is the documented key
derivation written out here: fold_in(fold_in(key(base_seed), seed), INIT_TAG).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax import evaluate as ev
from diffusion_jax import sample as cli
from diffusion_jax.pipeline import Pipeline
from diffusion_jax.samplers import seeds as sd
from diffusion_jax.training import loop, overrides, sampling
from tests.test_training_multihost import REPO

STEPS = 4


def _tiny(cond: bool):
    sys.path.insert(0, REPO)
    from configs.models import mlp
    from configs.toy2d import rf_uniform, vp_eps

    cfg = (vp_eps if cond else rf_uniform).get_config("tiny")
    t = cfg.training
    t.num_steps, t.ckpt_every, t.log_every, t.sample_every = STEPS, STEPS, STEPS, STEPS
    t.fast_compile = True
    cfg.sampling.num_samples = 8
    cfg.sampling.chunk_size = 4
    if cond:
        cfg.model = mlp.get_config("tiny")  # 3 classes
        cfg.objective.label_dropout = 0.2
        cfg.sampling.update(sampler="euler_ancestral", grid="karras", num_steps=3, guidance_scale=2.0, seed=5)
    return cfg


@pytest.fixture(scope="module", params=["uncond", "cond"])
def run(request, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp(request.param))
    cfg = _tiny(request.param == "cond")
    loop.train(cfg, workdir, progress=False, devices=jax.devices()[:2])
    periodic = np.load(os.path.join(workdir, "samples", f"{STEPS:08d}.npz"))
    return workdir, cfg, periodic


def _cli(workdir, seeds, out):
    req = cli.get_default_config()
    req.seeds, req.output_dir, req.progress = seeds, out, False
    summary = cli.run_sampling(req, workdir)
    return summary, {int(f[:6]): np.load(os.path.join(out, f)) for f in os.listdir(out) if f.endswith(".npz")}


def test_seed_is_one_sample_everywhere(run, tmp_path):
    workdir, cfg, periodic = run
    ref = periodic["samples"]
    assert ref.shape == (8, 2) and np.all(np.isfinite(ref)) and int(periodic["checkpoint_step"]) == STEPS
    summary, files = _cli(workdir, "0-7", str(tmp_path / "all"))
    _, alone = _cli(workdir, "3", str(tmp_path / "alone"))
    for s in range(8):
        np.testing.assert_array_equal(files[s]["sample"], ref[s])
    np.testing.assert_array_equal(alone[3]["sample"], ref[3])
    # evaluate: seeds 0..eval.num_samples-1, same settings, written on request
    ecfg = overrides.apply_overrides(
        overrides.load_config_arg(os.path.join(workdir, "config.json")),
        [("eval.num_samples", "8"), ("eval.metrics", "('w2',)")],
    )
    ecfg.eval.save_samples = True
    out = ev.evaluate(ecfg, workdir)
    assert out["step"] == STEPS and out["nfe"] == summary["nfe"]
    got = np.load(os.path.join(workdir, "eval", f"{STEPS:08d}_samples", "000003.npz"))["sample"]
    np.testing.assert_array_equal(got, ref[3])
    pipe = Pipeline.from_workdir(workdir)
    np.testing.assert_array_equal(pipe([3])[0], ref[3])
    np.testing.assert_array_equal(pipe("0-7"), ref)
    # what each file records
    f = files[3]
    spec = sampling.spec_from_run(cfg)
    assert str(f["sampler"]) == spec.sampler and str(f["grid"]) == spec.grid
    assert int(f["seed"]) == 3 and int(f["checkpoint_step"]) == STEPS and str(f["weights"]) == "ema_0p999"
    assert float(f["guidance_scale"]) == spec.guidance_scale and int(f["nfe"]) == summary["nfe"]
    if cfg.model.get("num_classes", 0):
        assert [int(files[s]["label"]) for s in range(8)] == [s % 3 for s in range(8)]  # seed mod K
        np.testing.assert_array_equal(periodic["labels"], np.arange(8) % 3)
    else:
        assert "label" not in f.files


def test_first_state_follows_the_documented_keys(run):
    workdir, cfg, _ = run
    pipe = Pipeline.from_workdir(workdir)
    plan = pipe.plan(steps=1)
    grid = jnp.asarray(plan.grid, jnp.float32)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.sampling.seed), 6), sd.INIT_TAG)
    want = plan.denoiser.schedule.sigma(grid[0]) * jax.random.normal(key, (2,), jnp.float32)
    traj = sd.sample(plan.denoiser, plan.sampler, plan.grid, [6], (2,), base_seed=cfg.sampling.seed,
                     chunk_size=4, cond=plan.cond_fn, return_trajectory=True).trajectory  # fmt: skip
    np.testing.assert_allclose(traj[0, 0], want, rtol=1e-6)


def test_labels_are_a_function_of_the_seed(run, tmp_path):
    workdir, cfg, _ = run
    if not cfg.model.get("num_classes", 0):
        pytest.skip("unconditional run")
    pipe = Pipeline.from_workdir(workdir)
    a = pipe("0-5", condition="2,0")  # label(s) = [2, 0][s mod 2]
    b = pipe([4], condition="2,0")
    np.testing.assert_array_equal(a[4], b[0])
    plan = pipe.plan(condition="2,0")
    assert [plan.condition_of(s)["label"] for s in range(4)] == [2, 0, 2, 0]
    # seed 4 has label 2 under "2,0" and under "2": the same sample; under "0" another one
    np.testing.assert_array_equal(pipe([4], condition=2)[0], b[0])
    assert np.abs(pipe([4], condition=0)[0] - b[0]).max() > 0


def test_a_runs_source_starts_its_samples():
    """A run trained from a non-Gaussian source (data.pair_with) is sampled from that source: seed s
    starts at source.draw(fold_in(fold_in(key(base), s), INIT_TAG)), whoever draws it."""
    from configs.toy2d import cfm
    from diffusion_jax.data.sources import toy_source
    from diffusion_jax.training import build, periodic

    cfg = cfm.get_config("moons_tiny")
    cfg.data.pair_with = "8gaussians"
    cfg.sampling.update(sampler="euler", grid="uniform", num_steps=2, chunk_size=4)
    net = build.build_network(cfg)
    _, den = build.build_loss(cfg, net.net_fn)
    plan = periodic.plan_for(cfg, den.replace(params=net.params))
    assert plan.meta["source"] == "8gaussians"
    traj = sd.sample(plan.denoiser, plan.sampler, plan.grid, [2, 9], (2,), base_seed=cfg.sampling.seed,
                     chunk_size=4, source=plan.source, return_trajectory=True).trajectory  # fmt: skip
    for i, s in enumerate((2, 9)):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(cfg.sampling.seed), s), sd.INIT_TAG)
        want = toy_source("8gaussians").sample(key, (1, 2))[0]
        np.testing.assert_array_equal(traj[0, i], want)
    np.testing.assert_array_equal(
        traj[-1], periodic.generate_samples(cfg, den.replace(params=net.params), 10)[[2, 9]]
    )


def test_bad_conditions_are_refused_before_compiling(run):
    workdir, cfg, _ = run
    pipe = Pipeline.from_workdir(workdir)
    if cfg.model.get("num_classes", 0):
        with pytest.raises(ValueError, match=r"labels \[3\] outside \[0, 3\)"):
            pipe.plan(condition="0-3")
        with pytest.raises(ValueError, match="no text encoder"):
            pipe.plan(condition="a photo of a cat")
    else:
        with pytest.raises(ValueError, match="needs a conditional model"):
            pipe.plan(guidance=2.0)
        with pytest.raises(ValueError, match="not class-conditional"):
            pipe.plan(condition="0-3")
        req = cli.get_default_config()
        req.conditioning.guidance_scale = 3.0
        with pytest.raises(ValueError, match="needs a conditional model"):
            cli.build_plan(req, workdir)
    with pytest.raises(ValueError, match="unknown sampler"):
        pipe.plan(sampler="nope")
    with pytest.raises(ValueError, match="unknown option"):
        pipe.plan(sampler="euler", sampler_kwargs={"order": 3})
