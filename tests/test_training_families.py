"""One training step for every config family on tiny settings (TFDS under `tfds.testing.mock_data`,
a fake latent cache for the latent config), on one device.

Reference: the loss the train step logs must equal the objective's loss evaluated directly on the
same initial parameters, the first batch of the data pipeline and the step-0 key
fold_in(key(rng), 0) (rtol 1e-5): this checks the wiring (batch renaming, keys, preconditioning,
mixed precision) independently of the jitted, donated step; and parameters must have moved.
"""

import importlib
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_jax.data.pipeline import make_iterator
from diffusion_jax.training import build, loop
from diffusion_jax.training.logging import read_jsonl
from tests.test_training_multihost import REPO

sys.path.insert(0, REPO)


def _direct_loss(cfg):
    net = build.build_network(cfg)
    loss_fn, _ = build.build_loss(cfg, net.net_fn)
    conditional = bool(cfg.model.get("num_classes", 0))
    batch = build.to_model_batch(next(make_iterator(cfg.data, seed=int(cfg.seed))), conditional)
    key = jax.random.fold_in(build.init_key(cfg.seed), 0)
    # Unoptimised XLA (as the step under training.fast_compile): same operations, a fraction of the
    # compile time and memory of an optimised U-Net loss.
    loss, _ = jax.jit(loss_fn, compiler_options=build.FAST_COMPILE)(
        net.params, jax.tree.map(np.asarray, batch), key
    )
    return float(loss), net.params


def _one_step(cfg, tmp_path):
    cfg.training.fast_compile = True
    cfg.training.num_steps = 1
    cfg.training.log_every = 1
    r = loop.train(cfg, str(tmp_path / "run"), progress=False, devices=jax.devices()[:1])
    assert r.step == 1 and int(r.state.nonfinite_total) == 0
    rows = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    want, init = _direct_loss(cfg)
    assert np.isfinite(want)
    assert rows[-1]["train/loss"] == pytest.approx(want, rel=1e-5)
    moved = [
        np.max(np.abs(np.asarray(a) - np.asarray(b)))
        for a, b in zip(jax.tree.leaves(r.state.params), jax.tree.leaves(init), strict=True)
    ]
    assert max(moved) > 0


# vp_eps, rf_uniform and rf_logit_normal also train in the multi-host, resume and device tests.
@pytest.mark.parametrize("formulation", ["vp_v_cosine", "edm", "ot_cfm"])
def test_toy2d_one_step(formulation, tmp_path):
    cfg = importlib.import_module(f"configs.toy2d.{formulation}").get_config("spirals_tiny")
    _one_step(cfg, tmp_path)


@pytest.mark.parametrize(
    ("module", "arg", "dtype"),
    [
        ("configs.fashion_mnist.vp_v_cosine", "cond_tiny", "bfloat16"),
        ("configs.cifar10.edm", "tiny", "float32"),
        ("configs.imagenet64.dit", "tiny", "float32"),
    ],
)
@pytest.mark.heavy  # a U-Net / DiT train step compiles in GBs of RSS (tests/conftest.py)
def test_image_family_one_step_under_mock_tfds(module, arg, dtype, tmp_path):
    cfg = importlib.import_module(module).get_config(arg)
    cfg.training.compute_dtype = dtype
    cfg.data.prepare = False
    cfg.data.data_dir = str(tmp_path / "tfds")
    if arg == "cond_tiny":
        # Large steps (constant lr: the step program does not depend on num_steps, so the resumed run
        # below reuses the compiled step instead of compiling another one for a new lr).
        cfg.training.lr = 0.05
    with tfds.testing.mock_data(num_examples=16):
        _one_step(cfg, tmp_path)
        if arg == "cond_tiny":
            # Two more steps (resuming the run): after step 1 only the zero-initialised output conv
            # has moved (no gradient reaches what lies behind it), so the label cannot reach the
            # output yet; after step 3 it does, which the sampling checks below need.
            assert cfg.training.lr_schedule == "constant"
            cfg.training.num_steps = 3
            loop.train(cfg, str(tmp_path / "run"), progress=False, devices=jax.devices()[:1])
    if arg == "cond_tiny":
        _sample_cli_with_labels_and_guidance(tmp_path / "run", tmp_path / "samples")


def _sample_cli_with_labels_and_guidance(run_dir, out):
    """The sampling CLI on a class-conditional checkpoint: labels are per seed (seed 0 with label 0 is
    bitwise the same whatever seed 1's label is; seed 1 changes with its label), and guidance against
    the null label changes the samples; bad conditioning fails before compiling."""
    from diffusion_jax import sample

    def run(labels, scale, name):
        c = sample.get_default_config()
        # Raw parameters: after one step the EMA copy is still ~ the initial network, whose
        # zero-initialised output conv makes every label give the same output.
        c.denoiser.source, c.denoiser.ema = "checkpoint", "params"
        c.sampler.name, c.grid.name, c.grid.num_steps = "euler", "uniform", 3
        c.seeds, c.chunk_size, c.output_dir = "0-1", 2, str(out / name)
        c.conditioning.labels, c.conditioning.guidance_scale = labels, scale
        sample.run_sampling(c, str(run_dir))
        return [np.load(out / name / f"{i:06d}.npz")["sample"] for i in (0, 1)]

    a, b, g = run("0,1", 1.0, "a"), run("0,5", 1.0, "b"), run("0,1", 3.0, "g")
    np.testing.assert_array_equal(a[0], b[0])
    assert np.abs(a[1] - b[1]).max() > 0
    assert np.abs(g[0] - a[0]).max() > 0 and np.all(np.isfinite(g[0]))
    with pytest.raises(ValueError, match="outside"):
        run("0,10", 1.0, "bad")
    with pytest.raises(ValueError, match="no text encoder"):
        c = sample.get_default_config()
        c.denoiser.source, c.conditioning.caption = "checkpoint", "a bag"
        sample.run_sampling(c, str(run_dir))


def test_latent_family_one_step(tmp_path):
    cfg = importlib.import_module("configs.fashion_mnist.latent").get_config("tiny")
    rng = np.random.default_rng(0)
    path = str(tmp_path / "latents.npz")
    np.savez(
        path,
        latent=rng.normal(size=(16, 7, 7, 4)).astype(np.float32),
        label=rng.integers(0, 10, 16).astype(np.int32),
    )
    cfg.data.latents_path = path
    _one_step(cfg, tmp_path)
