"""The `python -m diffusion_jax.train` entry point with command-line overrides, its outputs
(config.json, metrics.jsonl, TensorBoard events, sample PNG, periodic W2/MMD), then evaluation and
`load_denoiser_from_checkpoint` on the same run directory."""

import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion_jax.metrics import ot
from diffusion_jax.training import checkpoints as ck
from diffusion_jax.training import periodic
from diffusion_jax.training.logging import read_jsonl
from tests.test_training_multihost import REPO


def _train_cli(tmp_path):
    workdir = str(tmp_path / "run")
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    cmd = [
        sys.executable,
        "-m",
        "diffusion_jax.train",
        "--config=configs/toy2d/rf_uniform.py:moons_tiny",
        f"--workdir={workdir}",
        "--config.training.num_steps=6",
        "--config.training.log_every=3",
        "--config.training.sample_every=6",
        "--config.training.eval_every=6",
        "--config.training.fast_compile=True",
        "--config.sampling.num_samples=200",
        "--config.eval.num_samples=200",
        "--config.training.ema_decays=(0.9,0.5)",
        "--config.sampling.grid_kwargs.t_min=0.001",  # a nested kwarg the base config does not list
        "--progress=false",
    ]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "finished at step 6" in p.stderr
    return workdir


def test_train_cli_then_evaluate_and_load_denoiser(tmp_path):
    # One test (one subprocess): xdist would run a module fixture once per worker.
    run_dir = _train_cli(tmp_path)
    _check_outputs(run_dir)
    _check_evaluate_and_load(run_dir)
    _check_evaluate_cli_and_config_errors(run_dir)


def _cli(module, *args, timeout=300):
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _check_evaluate_cli_and_config_errors(run_dir):
    """`evaluate --config.x=...` without --config overrides the run's own config.json; a run's
    config.json is accepted back as --config; config errors are one line, not a traceback."""
    p = _cli("diffusion_jax.evaluate", f"--workdir={run_dir}", "--config.eval.num_samples=40",
             "--config.sampling.ema=params", "--progress=false")  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout[p.stdout.index("{") :])
    assert out["num_samples"] == 40 and out["ema"] == "params" and out["step"] == 6
    cfg_json = os.path.join(run_dir, "config.json")
    for args, msg in [
        (
            (f"--config={cfg_json}", "--config.sampling.sampler=nope"),
            "sampling.sampler: unknown sampler 'nope'",
        ),
        ((f"--config={cfg_json}", "--config.training.nope=1"), "config.training has no field 'nope'"),
        ((f"--config={cfg_json}", "--config.training.num_steps=abc"), "must be an integer"),
    ]:
        p = _cli("diffusion_jax.train", *args, f"--workdir={run_dir}_x")
        assert p.returncode == 2 and msg in p.stderr, p.stderr[-3000:]
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not os.path.exists(f"{run_dir}_x")


def _check_outputs(run_dir):
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    assert cfg["training"]["num_steps"] == 6 and cfg["training"]["ema_decays"] == [0.9, 0.5]
    assert cfg["sampling"]["grid_kwargs"] == {"t_min": 0.001}
    rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    assert [r["step"] for r in rows if "train/loss" in r] == [3, 6]
    ev = [r for r in rows if "eval/w2" in r]
    assert len(ev) == 1 and ev[0]["step"] == 6 and ev[0]["eval/w2"] > 0 and ev[0]["eval/mmd"] >= 0
    assert glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))
    assert os.path.getsize(os.path.join(run_dir, "samples", "00000006.png")) > 1000
    assert ck.Checkpointer(run_dir).all_steps() == [2, 4, 6]  # ckpt_every=2 in the tiny config


def _check_evaluate_and_load(run_dir):
    from diffusion_jax import evaluate

    out = evaluate.evaluate(None, run_dir, ema="ema_0p9")
    assert out["step"] == 6 and out["num_samples"] == 200
    assert os.path.exists(os.path.join(run_dir, "eval", "00000006.json"))
    # The reported W2 is POT's exact W2 between the EMA samples and the fresh reference set.
    d, cfg = ck.load_denoiser_from_checkpoint(run_dir, ema="ema_0p9")
    samples = periodic.generate_samples(cfg, d, 200)
    assert out["w2"] == pytest.approx(ot.w2_exact(samples, periodic.reference_samples(cfg, 200)), rel=1e-6)

    # Weight selection: each name returns that copy of the checkpointed state.
    state, _, _ = ck.load_train_state(run_dir)
    z, t = jnp.ones((3, 2)), jnp.full((3,), 0.5)
    for name, params in (("params", state.params), ("ema_0p5", state.ema["ema_0p5"])):
        dn, _ = ck.load_denoiser_from_checkpoint(run_dir, ema=name)
        want = dn.replace(params=params).predict(z, t, "velocity")
        np.testing.assert_array_equal(np.asarray(dn.predict(z, t, "velocity")), np.asarray(want))
    a = ck.load_denoiser_from_checkpoint(run_dir, ema="params")[0].predict(z, t, "velocity")
    b = ck.load_denoiser_from_checkpoint(run_dir, ema="ema_0p5")[0].predict(z, t, "velocity")
    assert not np.allclose(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="ema='ema_0p99' not in this checkpoint"):
        ck.load_denoiser_from_checkpoint(run_dir, ema="ema_0p99")
    _, _, shape = ck.load_denoiser_and_shape(run_dir)
    assert shape == (2,)
    assert jax.device_count() >= 1
