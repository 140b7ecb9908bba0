"""Conditioning: labels and context change the output; the null label / an all-false mask is exactly the
unconditional path; CFG dropout statistics; byte tokenizer and text encoder; `.npy` embeddings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.models import dit, mlp, unet_small
from diffusion_jax.data import text as T
from diffusion_jax.models import conditioning as C
from diffusion_jax.models.functional import abstract_split, host_random_like, make_net_fn


def _net(cfg, seed=0):
    graphdef, ap, ar = abstract_split(cfg)
    # scale 1 (LeCun-like variance) so every conditioning path visibly reaches the output
    params = host_random_like(ap, seed=seed, scale=1.0)
    return jax.jit(make_net_fn(graphdef, host_random_like(ar, seed=seed + 1))), params


def _small_unet():
    cfg = unet_small.get_config("tiny_adm")
    cfg.update(ch_mult=(1,), attn_resolutions=(8,))  # one level: cheap to compile, still has attention
    return cfg


def _small_dit():
    cfg = dit.get_config("tiny/4")
    cfg.update(depth=1, context_dim=6)
    return cfg


@pytest.mark.parametrize(
    "make_cfg", [lambda: mlp.get_config("tiny"), _small_unet, _small_dit], ids=["mlp", "unet", "dit"]
)
def test_label_changes_output_and_null_label_is_unconditional(make_cfg):
    cfg = make_cfg()
    f, params = _net(cfg)
    shape = (3, cfg.dim) if cfg.name == "mlp" else (3, cfg.image_size, cfg.image_size, cfg.in_channels)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    t = jnp.array([0.2, 0.5, 0.8])
    null = jnp.full((3,), cfg.num_classes)
    out_none = f(params, x, t, None)
    out_null = f(params, x, t, {"label": null})
    out_lab = f(params, x, t, {"label": jnp.array([0, 1, 2])})
    np.testing.assert_allclose(out_null, out_none, rtol=0, atol=1e-6)
    assert float(jnp.min(jnp.max(jnp.abs(out_lab - out_none).reshape(3, -1), axis=1))) > 1e-3


@pytest.mark.parametrize("make_cfg", [_small_unet, _small_dit], ids=["unet", "dit"])
def test_context_changes_output_and_empty_mask_is_unconditional(make_cfg):
    cfg = make_cfg()
    f, params = _net(cfg)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, cfg.image_size, cfg.image_size, cfg.in_channels)), jnp.float32)
    t = jnp.array([0.3, 0.6])
    ctx = jnp.asarray(rng.normal(size=(2, 4, cfg.context_dim)), jnp.float32)
    mask = jnp.array([[True, True, False, False], [True, False, True, False]])
    out_none = f(params, x, t, None)
    out_empty = f(params, x, t, {"context": ctx, "context_mask": jnp.zeros_like(mask)})
    out_ctx = f(params, x, t, {"context": ctx, "context_mask": mask})
    np.testing.assert_allclose(out_empty, out_none, rtol=0, atol=1e-6)
    assert float(jnp.min(jnp.max(jnp.abs(out_ctx - out_none).reshape(2, -1), axis=1))) > 1e-3
    # masked-out tokens carry no information
    ctx2 = ctx.at[:, 3].set(100.0)
    np.testing.assert_allclose(f(params, x, t, {"context": ctx2, "context_mask": mask}), out_ctx, atol=1e-5)


def test_drop_labels_and_context_statistics():
    labels = jnp.arange(20000) % 7
    dropped = C.drop_labels(jax.random.key(0), labels, 0.1, num_classes=7)
    is_null = np.asarray(dropped == 7)
    # Binomial(20000, 0.1): sd = 42.4; allow 5 sd
    assert abs(is_null.sum() - 2000) < 5 * 42.4
    np.testing.assert_array_equal(np.asarray(dropped)[~is_null], np.asarray(labels)[~is_null])
    assert np.all(np.asarray(C.drop_labels(jax.random.key(1), labels, 1.0, 7)) == 7)
    mask = jnp.ones((1000, 5), bool)
    kept = np.asarray(C.drop_context(jax.random.key(2), mask, 0.5))
    assert np.all(kept.all(1) | ~kept.any(1))  # whole rows dropped
    assert 400 < kept.all(1).sum() < 600


def test_tokenize_bytes():
    ids, mask = T.tokenize_bytes(["hé", "abcdef"], max_len=4)
    np.testing.assert_array_equal(ids[0], [104, 0xC3, 0xA9, C.PAD_ID])  # UTF-8 of 'é' is C3 A9
    np.testing.assert_array_equal(mask, [[True, True, True, False], [True] * 4])
    np.testing.assert_array_equal(ids[1], [97, 98, 99, 100])


def test_byte_text_encoder_masks_padding():
    @jax.jit
    def enc(ids, mask):  # init + apply in one compiled program
        return C.ByteTextEncoder(dim=16, depth=1, num_heads=2, max_len=8, rngs=nnx.Rngs(0))(ids, mask)

    ids, mask = T.tokenize_bytes(["cat", "a dog"], max_len=8)
    out = enc(jnp.asarray(ids), jnp.asarray(mask))
    assert out.shape == (2, 8, 16)
    assert np.all(np.asarray(out)[~mask] == 0.0)
    ids2 = ids.copy()
    ids2[0, 5] = 65  # change a padded position: valid outputs must not move
    out2 = enc(jnp.asarray(ids2), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(out2)[mask], np.asarray(out)[mask], atol=1e-6)


def test_load_npy_embeddings(tmp_path):
    emb = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float16)
    np.save(tmp_path / "e.npy", emb)
    np.save(tmp_path / "len.npy", np.array([5, 2, 0]))
    e, m = T.load_npy_embeddings(tmp_path / "e.npy", tmp_path / "len.npy")
    assert e.dtype == np.float32 and e.shape == (3, 5, 4)
    np.testing.assert_array_equal(m.sum(1), [5, 2, 0])
    np.save(tmp_path / "pooled.npy", emb[:, 0])
    e, m = T.load_npy_embeddings(tmp_path / "pooled.npy")
    assert e.shape == (3, 1, 4) and m.all()
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="embeddings must be"):
        T.load_npy_embeddings(tmp_path / "bad.npy")
    np.save(tmp_path / "badlen.npy", np.array([6, 1, 1]))
    with pytest.raises(ValueError, match="lengths"):
        T.load_npy_embeddings(tmp_path / "e.npy", tmp_path / "badlen.npy")
