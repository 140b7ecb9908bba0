"""Shared layers against independent references (closed forms, NumPy/SciPy computations)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import signal

from diffusion_jax.models import layers as L


def test_positional_embedding_closed_form():
    t = np.array([0.0, 1.5, 700.0])
    dim, half = 8, 4
    # ADM / DiT convention: cos first, frequencies 10000^(-k/half)
    f = 10000.0 ** (-np.arange(half) / half)
    ref = np.concatenate([np.cos(t[:, None] * f), np.sin(t[:, None] * f)], 1)
    np.testing.assert_allclose(L.positional_embedding(jnp.asarray(t), dim), ref, rtol=1e-5, atol=1e-5)
    # DDPM / score_sde convention: sin first, 10000^(-k/(half-1))
    f = 10000.0 ** (-np.arange(half) / (half - 1))
    ref = np.concatenate([np.sin(t[:, None] * f), np.cos(t[:, None] * f)], 1)
    out = L.positional_embedding(jnp.asarray(t), dim, endpoint=True, sin_first=True)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_gaussian_fourier_projection_formula():
    proj = L.GaussianFourierProjection(4, 16.0, rngs=nnx.Rngs(0))
    w = np.asarray(proj.W[...])
    assert w.std() > 1.0  # scale 16 frequencies
    t = np.array([0.1, -2.0])
    ref = np.concatenate([np.sin(2 * np.pi * t[:, None] * w), np.cos(2 * np.pi * t[:, None] * w)], 1)
    np.testing.assert_allclose(proj(jnp.asarray(t)), ref, rtol=1e-4, atol=1e-4)


def _img(seed, shape=(2, 8, 8, 3)):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_fir_with_box_kernel_equals_naive_resampling():
    x = _img(0)
    np.testing.assert_allclose(L.fir_downsample(x, (1, 1)), L.naive_downsample(x), atol=1e-6)
    np.testing.assert_allclose(L.fir_upsample(x, (1, 1)), L.naive_upsample(x), atol=1e-6)


def test_fir_matches_scipy_upfirdn():
    x = np.asarray(_img(1, (1, 8, 8, 1)))[0, :, :, 0]
    k = np.array([1.0, 3.0, 3.0, 1.0])
    k2 = np.outer(k, k) / np.outer(k, k).sum()
    # down: pad (1, 1), filter, keep every 2nd sample
    ref_down = signal.correlate2d(np.pad(x, 1), k2, mode="valid")[::2, ::2]
    out = L.fir_downsample(jnp.asarray(x)[None, :, :, None], tuple(k))[0, :, :, 0]
    np.testing.assert_allclose(out, ref_down, atol=1e-5)
    # up: insert zeros (x at even positions), pad (2, 1), filter with gain 4
    u = np.zeros((16, 16))
    u[::2, ::2] = x
    ref_up = signal.correlate2d(np.pad(u, ((2, 1), (2, 1))), 4 * k2, mode="valid")
    out = L.fir_upsample(jnp.asarray(x)[None, :, :, None], tuple(k))[0, :, :, 0]
    np.testing.assert_allclose(out, ref_up, atol=1e-5)


@pytest.mark.parametrize("fir", [False, True])
def test_resample_shapes(fir):
    x = _img(2)
    rngs = nnx.Rngs(0)
    down = L.Resample(3, 5, up=False, with_conv=True, fir=fir, fir_kernel=(1, 3, 3, 1), rngs=rngs)
    up = L.Resample(3, 5, up=True, with_conv=True, fir=fir, fir_kernel=(1, 3, 3, 1), rngs=rngs)
    assert down(x).shape == (2, 4, 4, 5)
    assert up(x).shape == (2, 16, 16, 5)


def test_attention_matches_numpy_and_masks():
    rng = np.random.default_rng(3)
    q, k, v = (rng.normal(size=s).astype(np.float32) for s in [(2, 3, 1, 4), (2, 5, 1, 4), (2, 5, 1, 4)])
    mask = np.array([[True, True, False, True, False], [False] * 5])
    out = np.asarray(L.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask)))
    logits = np.einsum("qd,kd->qk", q[0, :, 0], k[0, :, 0]) / 2.0
    logits[:, ~mask[0]] = -np.inf
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    np.testing.assert_allclose(out[0, :, 0], w @ v[0, :, 0], rtol=1e-5, atol=1e-5)
    assert np.all(out[1] == 0.0)  # no valid key: no conditioning signal at all


def test_count_params_and_logical_names():
    lin = L.linear(3, 4, rngs=nnx.Rngs(0))
    assert L.count_params(lin) == 3 * 4 + 4
    md = lin.kernel.get_metadata()
    assert tuple(md["out_sharding"]) == ("embed", "mlp")


def test_dropout_requires_rngs_and_rescales():
    x = jnp.ones((1000,))
    assert L.dropout(x, 0.5, deterministic=True, rngs=None) is x
    with pytest.raises(ValueError, match="rngs"):
        L.dropout(x, 0.5, deterministic=False, rngs=None)
    y = L.dropout(x, 0.5, deterministic=False, rngs=nnx.Rngs(dropout=jax.random.key(0)))
    kept = np.asarray(y) > 0
    assert np.all(np.asarray(y)[kept] == 2.0) and 400 < kept.sum() < 600  # Binomial(1000, .5): 6.3 sd
