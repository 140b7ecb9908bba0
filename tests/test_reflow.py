"""Reflow end to end (Liu et al. 2023): pairs drawn from a trained run through the one sampling
engine, a pairs data source, a reflow run trained from it, the straightness measure, bad input."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad

from diffusion_jax import predictions as P
from diffusion_jax import reflow
from diffusion_jax import sample as sample_cli
from diffusion_jax.data import pairs as PR
from diffusion_jax.data.pipeline import make_iterator
from diffusion_jax.metrics.straightness import straightness
from diffusion_jax.pipeline import Pipeline
from diffusion_jax.samplers import registry
from diffusion_jax.samplers import seeds as sd
from diffusion_jax.samplers.grids import make_grid
from diffusion_jax.schedules import get_schedule
from diffusion_jax.training import build, loop
from diffusion_jax.training.config import validate_config
from tests.test_training_multihost import REPO

sys.path.insert(0, REPO)
from configs.toy2d import reflow as reflow_cfg  # noqa: E402
from configs.toy2d import rf_uniform  # noqa: E402

RF = get_schedule("rectified_flow")
NUM = 40  # pairs: 3 chunks of 16 (the last one padded)


def _tiny(cfg):
    t = cfg.training
    t.num_steps, t.ckpt_every, t.log_every = 2, 2, 1
    t.fast_compile = True
    cfg.sampling.num_steps = 3
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("rf1"))
    loop.train(_tiny(rf_uniform.get_config("tiny")), workdir, progress=False, devices=jax.devices()[:1])
    return workdir


@pytest.fixture(scope="module")
def pairs_file(run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pairs") / "pairs.npz")
    req = sample_cli.get_default_config()
    req.progress = False
    req.num_devices = -1
    summary = reflow.run_reflow(req, run, out, NUM)
    assert summary["num_pairs"] == NUM and summary["sampler"] == "euler"
    return out


def test_pairs_are_the_engines_samples_and_initial_states(run, pairs_file):
    p = PR.read_pairs(pairs_file)
    assert p["x0"].shape == p["x1"].shape == (NUM, 2) and list(p["seed"]) == list(range(NUM))
    # x1: bitwise the samples every other entry point draws for these seeds (Pipeline, 1 device).
    pipe = Pipeline.from_workdir(run)
    np.testing.assert_array_equal(p["x1"], pipe(seeds=f"0-{NUM - 1}"))
    # x0: the documented key derivation, written out: N(0, I) from fold_in(fold_in(key(0), s), 2^32-1),
    # times sigma(1) = 1 on the rectified-flow path.
    for s in (0, 17, NUM - 1):
        k = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), s), 0xFFFFFFFF)
        np.testing.assert_array_equal(p["x0"][s], np.asarray(jax.random.normal(k, (2,), jnp.float32)))
    # ... and the state the engine started from (its trajectory's first point).
    plan = pipe.plan()
    traj = sd.sample(plan.denoiser, plan.sampler, plan.grid, "0-15", (2,), return_trajectory=True).trajectory
    np.testing.assert_array_equal(p["x0"][:16], np.asarray(traj[0]))
    # x1 is the Euler solution from x0 (numpy transcription of the 3 steps from t = 1 to t = 0).
    z = p["x0"].astype(np.float64)
    for t_cur, t_next in zip(plan.grid[:-1], plan.grid[1:], strict=True):
        z = z + (t_next - t_cur) * np.asarray(plan.denoiser.velocity(jnp.asarray(z, jnp.float32), t_cur))
    np.testing.assert_allclose(p["x1"], z, rtol=1e-5, atol=1e-5)


def test_reflow_run_trains_on_the_pairs(pairs_file, tmp_path):
    cfg = _tiny(reflow_cfg.get_config("tiny"))
    cfg.data.pairs_path = pairs_file
    cfg.data.batch_size = 8
    validate_config(cfg)
    p = PR.read_pairs(pairs_file)
    it = make_iterator(cfg.data, seed=int(cfg.seed))
    first = next(it)
    state = it.get_state()
    second = next(it)
    batch = build.to_model_batch(first, conditional=False)
    assert sorted(batch) == ["noise", "x"] and batch["x"].shape == (8, 2)
    for x1, x0 in zip(batch["x"], batch["noise"], strict=True):  # every row is one of the file's pairs
        i = int(np.argmin(np.abs(p["x1"] - x1).sum(1)))
        np.testing.assert_array_equal(p["x1"][i], x1)
        np.testing.assert_array_equal(p["x0"][i], x0)
    assert len({tuple(r) for r in np.concatenate([first["x"], second["x"]])}) == 16  # shuffled, no repeat
    it2 = make_iterator(cfg.data, seed=int(cfg.seed))
    it2.set_state(state)  # checkpointable position
    np.testing.assert_array_equal(next(it2)["x0"], second["x0"])
    # the loss consumes them: batch['noise'] is the paired source sample
    seen = []
    res = loop.train(
        cfg, str(tmp_path / "rf2"), progress=False, devices=jax.devices()[:1],
        hooks=[lambda step, state, metrics: seen.append(float(metrics["loss"]))],
    )  # fmt: skip
    assert res.step == 2 and len(seen) == 2 and all(np.isfinite(seen))


def test_reflow_bad_input(pairs_file, run, tmp_path):
    cfg = reflow_cfg.get_config("tiny")
    with pytest.raises(ValueError, match=r"objective.coupling='reflow' needs data.pairs_path"):
        validate_config(cfg)
    cfg = rf_uniform.get_config("tiny")
    cfg.data.pairs_path = pairs_file
    with pytest.raises(ValueError, match=r"data.pairs_path is set but objective.coupling='independent'"):
        validate_config(cfg)
    cfg = reflow_cfg.get_config("tiny")
    cfg.data.pairs_path = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"data.pairs_path=.*missing.npz.*no such file"):
        loop.train(cfg, str(tmp_path / "a"), progress=False)
    bad = PR.write_pairs(str(tmp_path / "3d.npz"), np.zeros((40, 3)), np.zeros((40, 3)), range(40), {})
    cfg.data.pairs_path = bad
    with pytest.raises(
        ValueError, match=r"data.pairs_path=.*pairs have shape \(3,\) per sample, the run's data has \(2,\)"
    ):
        loop.train(cfg, str(tmp_path / "b"), progress=False)
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")  # nothing written
    req = sample_cli.get_default_config()
    req.sampler.name = "euler_ancestral"
    with pytest.raises(ValueError, match=r"config.sampler.name='euler_ancestral' is stochastic"):
        reflow.run_reflow(req, run, str(tmp_path / "p.npz"), 4)
    with pytest.raises(ValueError, match=r"--out=.* exists"):
        reflow.run_reflow(sample_cli.get_default_config(), run, pairs_file, 4)
    with pytest.raises(ValueError, match=r"--out=.* lies inside a run"):
        reflow.run_reflow(sample_cli.get_default_config(), run, os.path.join(run, "p.npz"), 4)
    assert not os.path.exists(tmp_path / "p.npz")


def test_straightness_of_a_constant_field_is_zero(x64):
    """v(z, t) = c: every path is a straight line at constant speed, S = 0 (to rounding)."""
    c = jnp.asarray([0.3, -1.2])
    den = P.make_denoiser(lambda p, z, t, cond, r: jnp.broadcast_to(c, z.shape), RF, "velocity")
    z = jax.random.normal(jax.random.key(0), (16, 2), jnp.float64)
    s, end = straightness(den, z, make_grid("uniform", 7, RF), registry.get_sampler("euler"))
    assert float(s) < 1e-25
    np.testing.assert_allclose(end, z - c, rtol=1e-12)


@pytest.mark.parametrize("dtype,rtol", [(jnp.float64, 2e-4), (jnp.float32, 2e-3)])
def test_straightness_of_the_gaussian_flow_matches_its_closed_form(dtype, rtol):
    """Source N(0, I) -> data N(m, s^2 I), independent coupling: the flow is z_t = mu_t + sd_t z_1
    (tests/test_samplers_velocity_endpoint.py), so (Z_1 - Z_0) - dZ/ds = (s - 1 + sd_t') z_1 and
    S = mean ||z_1||^2 * int_0^1 (s - 1 + sd'(t))^2 dt (the integral by scipy's adaptive quadrature)."""
    from tests.test_samplers_velocity_endpoint import M, S, _field

    with jax.enable_x64(dtype == jnp.float64):
        den = P.make_denoiser(_field, RF, "velocity")
        z = jax.random.normal(jax.random.key(1), (64, 2), dtype)
        s, _ = straightness(den, z, make_grid("uniform", 200, RF).astype(dtype))

        def dsd(t):
            return ((t - 1) * S**2 + t) / np.sqrt((1 - t) ** 2 * S**2 + t**2)

        ref = (
            np.mean(np.sum(np.asarray(z, np.float64) ** 2, 1))
            * quad(lambda t: (S - 1 + dsd(t)) ** 2, 0, 1)[0]
        )
        assert M and ref > 0.05
        np.testing.assert_allclose(float(s), ref, rtol=rtol)


def test_two_processes_draw_the_same_pairs(run, pairs_file, tmp_path):
    """`python -m diffusion_jax.reflow` over 2 processes x 2 CPU devices (gloo): each process draws its
    block of chunks (32 + 8 seeds), process 0 gathers and writes; the file equals the 1-process one."""
    import portpicker

    from tests.multiproc import cluster_flags, run_processes

    out = str(tmp_path / "two.npz")
    port = portpicker.pick_unused_port()
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    argv = [sys.executable, "-m", "diffusion_jax.reflow", f"--workdir={run}", f"--out={out}", f"--num={NUM}"]
    run_processes(
        [
            [
                *argv,
                "--config.num_devices=-1",
                "--config.progress=false",
                *cluster_flags(port, pid),
            ]
            for pid in range(2)
        ],
        env,
        timeout=300,
    )
    one, two = PR.read_pairs(pairs_file), PR.read_pairs(out)
    for key in ("seed", "x0", "x1"):
        np.testing.assert_array_equal(one[key], two[key])
