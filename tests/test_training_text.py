"""Captioned training with no download (configs/fashion_mnist/text.py): template captions -> byte tokens
on the host, a trainable byte-level text encoder feeding the U-Net's cross-attention (Rombach et al.
2022), CFG dropout of the caption (Ho & Salimans 2022), and per-label `.npy` embeddings.

Reference for the one-step caption run: the logged loss must equal the objective's loss evaluated directly on
the initial parameters and the first batch with its captions / embeddings (as in
test_training_families), so the host transform and the train step see the same conditioning.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_jax import objectives
from diffusion_jax.conditioning import cond_from_batch
from diffusion_jax.data import captions
from diffusion_jax.data.pipeline import make_iterator
from diffusion_jax.data.text import tokenize_bytes
from diffusion_jax.models.functional import abstract_split, host_random_like, make_net_fn
from diffusion_jax.training import build, loop
from diffusion_jax.training.config import validate_config
from diffusion_jax.training.logging import read_jsonl
from tests.test_training_multihost import REPO

sys.path.insert(0, REPO)

from configs.fashion_mnist import text  # noqa: E402


def _train_one_step(cfg, tmp_path, check_loss=True):
    cfg.training.fast_compile = True
    cfg.training.num_steps = 1
    cfg.data.prepare = False
    cfg.data.data_dir = str(tmp_path / "tfds")
    with tfds.testing.mock_data(num_examples=16):
        r = loop.train(cfg, str(tmp_path / "run"), progress=False, devices=jax.devices()[:1])
        batch = build.to_model_batch(
            next(make_iterator(cfg.data, seed=int(cfg.seed))), False, captions.make_text_transform(cfg), 0
        )
    assert r.step == 1 and int(r.state.nonfinite_total) == 0
    loss = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))[-1]["train/loss"]
    assert np.isfinite(loss)
    if not check_loss:
        return batch
    net = build.build_network(cfg)
    loss_fn, _ = build.build_loss(cfg, net.net_fn)
    key = jax.random.fold_in(build.init_key(cfg.seed), 0)
    want, _ = jax.jit(loss_fn, compiler_options=build.FAST_COMPILE)(net.params, batch, key)
    assert loss == pytest.approx(float(want), rel=1e-5)
    return batch


@pytest.mark.heavy  # the text U-Net's train step compiles in up to ~9 GB RSS (tests/conftest.py)
def test_text_tiny_trains_one_step_with_byte_captions(tmp_path):
    cfg = text.get_config("text_tiny")
    batch = _train_one_step(cfg, tmp_path)
    _check_captioned_sampling(cfg, tmp_path / "run")
    max_len = cfg.model.text_encoder.max_len
    assert batch["tokens"].shape == (8, max_len) and batch["tokens"].dtype == np.int32
    assert batch["tokens_mask"].dtype == bool and batch["tokens_mask"].any(axis=1).all()
    assert "label" not in batch  # the model is not class-conditional: the caption carries the class


@pytest.mark.heavy  # a cross-attention U-Net train step compile (tests/conftest.py)
def test_npy_embeddings_train_one_step(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "emb.npy", rng.normal(size=(10, 3, 8)).astype(np.float32))
    np.save(tmp_path / "len.npy", rng.integers(1, 4, size=10))
    cfg = text.get_config("text_tiny")
    cfg.model.text_encoder = None
    cfg.model.context_dim = 8
    cfg.data.captions = ""
    cfg.data.embeddings_path = str(tmp_path / "emb.npy")
    cfg.data.embeddings_mask_path = str(tmp_path / "len.npy")
    batch = _train_one_step(cfg, tmp_path, check_loss=False)  # the wiring is checked with captions
    assert batch["context"].shape == (8, 3, 8) and batch["context_mask"].shape == (8, 3)


def test_caption_changes_output_and_empty_mask_is_unconditional():
    cfg = text.get_config("text_tiny").model
    graphdef, ap, ar = abstract_split(cfg)
    # scale 1 so the zero-initialised cross-attention output projections carry the caption through
    params = host_random_like(ap, seed=0, scale=1.0)
    f = jax.jit(make_net_fn(graphdef, host_random_like(ar, seed=1)), compiler_options=build.FAST_COMPILE)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)
    t = jnp.array([300.0, 700.0])
    L = cfg.text_encoder.max_len
    ids, mask = tokenize_bytes(["a photo of a sneaker", "a photo of a bag"], L)
    ids_swap, mask_swap = tokenize_bytes(["a photo of a bag", "a photo of a sneaker"], L)
    out = f(params, x, t, {"tokens": ids, "tokens_mask": mask})
    out_swap = f(params, x, t, {"tokens": ids_swap, "tokens_mask": mask_swap})
    out_empty = f(params, x, t, {"tokens": ids, "tokens_mask": np.zeros_like(mask)})
    out_none = f(params, x, t, None)
    diff = jnp.max(jnp.abs(out - out_swap).reshape(2, -1), axis=1)
    # each example's output depends on its caption (float32 rounding here is ~1e-7)
    assert float(jnp.min(diff)) > 1e-5
    np.testing.assert_allclose(out_empty, out_none, rtol=0, atol=1e-5)


def test_caption_dropout_empties_masks_at_the_requested_rate():
    p, n = 0.3, 4000
    obj = objectives.resolve_objective({"label_dropout": p})
    ids, mask = tokenize_bytes(["a bag"] * n, 8)
    cond = cond_from_batch({"tokens": ids, "tokens_mask": mask}, jax.random.key(0), obj.label_dropout)
    kept = np.asarray(cond["tokens_mask"])
    emptied = ~kept.any(axis=1)
    # 4 standard deviations of a Binomial(n, p) fraction
    assert abs(emptied.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_equal(kept[~emptied], mask[~emptied])  # kept captions are untouched
    ctx = {"context": np.ones((n, 2, 3), np.float32), "context_mask": np.ones((n, 2), bool)}
    dropped = ~np.asarray(cond_from_batch(ctx, jax.random.key(1), obj.label_dropout)["context_mask"])
    assert abs(dropped.all(axis=1).mean() - p) < 4 * np.sqrt(p * (1 - p) / n)


def test_class_template_captions():
    names = captions.CLASS_NAMES["fashion_mnist"]
    caps = captions.class_captions(np.array([0, 9, 5]), names, np.random.default_rng(0))
    assert "t-shirt/top" in caps[0] and "ankle boot" in caps[1] and "sandal" in caps[2]


def test_inconsistent_text_options_fail_before_compiling():
    cfg = text.get_config("text_tiny")
    cfg.model.text_encoder = None
    with pytest.raises(ValueError, match="data.captions.*model.text_encoder"):
        validate_config(cfg)
    cfg = text.get_config("text_tiny")
    cfg.data.captions = ""
    with pytest.raises(ValueError, match="model.text_encoder is set"):
        validate_config(cfg)
    cfg = text.get_config("text_tiny")
    cfg.data.captions = "class_tempalte"
    with pytest.raises(ValueError, match="data.captions="):
        validate_config(cfg)
    with pytest.raises(ValueError, match="data.embeddings_path"):
        validate_config(text.get_config("emb"))
    cfg = text.get_config("text_tiny")
    cfg.model.context_dim = 7
    with pytest.raises(ValueError, match="model.context_dim=7 must equal model.text_encoder.dim"):
        validate_config(cfg)


def _check_captioned_sampling(cfg, workdir):
    """Periodic / evaluation sampling of a text model: the captions of the requested classes reach the
    network (same noise, other classes -> other samples), and guidance against empty captions runs."""
    from diffusion_jax.training import checkpoints, periodic

    state, run_cfg, net = checkpoints.load_train_state(str(workdir))
    # Random weights of the checkpoint's shapes: the zero-initialised cross-attention output
    # projections (and the first warm-up step's zero learning rate) would hide the caption otherwise.
    params = jax.tree.map(jnp.asarray, host_random_like(state.params, seed=0, scale=1.0))
    den = objectives.make_denoiser_from_config(run_cfg.objective, net.net_fn, params)
    cfg.sampling.guidance_scale = 1.0
    a = periodic.generate_samples(cfg, den, 2, labels=np.array([0, 1]))
    b = periodic.generate_samples(cfg, den, 2, labels=np.array([7, 9]))
    assert a.shape == b.shape == (2, *build.data_shape(cfg)) and np.all(np.isfinite(a))
    assert np.abs(a - b).max() > 1e-6  # other captions, same noise: other samples
    cfg.sampling.guidance_scale = 3.0
    g = periodic.generate_samples(cfg, den, 2, labels=np.array([0, 1]))
    assert np.all(np.isfinite(g)) and np.abs(g - a).max() > 1e-6
