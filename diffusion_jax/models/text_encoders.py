"""Published text encoders as Flax NNX modules: CLIP's text transformer and the T5 encoder.

- `CLIPTextModel` (Radford et al. 2021, Sec. 2.4: a 12-layer, 512/768-wide causal Transformer whose
  output at the end-of-text token is the pooled text feature; the SD 1.x encoder is CLIP ViT-L/14's,
  width 768, 77 tokens). Learned token + position embeddings, pre-LN blocks (LayerNorm eps 1e-5),
  causal self-attention with scale head_dim^-1/2 and an optional padding mask, MLP with
  quick-GELU x*sigmoid(1.702x) (or exact GELU), final LayerNorm. Returns the last hidden state
  [B, L, D] and the pooled output [B, D] at the end-of-text token (the first occurrence of
  `eos_token_id`, or the arg-max id when eos_token_id == 2, the original CLIP vocabulary).
- `T5Encoder` (Raffel et al. 2020, Sec. 2.1; v1.1 gated-GELU FFN of Shazeer 2020): RMS LayerNorm
  without bias or mean subtraction (eps 1e-6), unscaled dot-product attention plus a learned
  relative position bias (bidirectional log buckets, computed once by the first block and shared by
  all), FFN relu or gated-GELU (tanh approximation), final RMS norm. Returns [B, L, D].

Both take token ids [B, L] int and an optional mask [B, L] (1 = token, 0 = padding). Configs are
`ConfigDict`s with the transformers field names (`convert.text` builds them from `config.json`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_jax.models import layers as L

CLIP_DEFAULTS = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                     layer_norm_eps=1e-5, eos_token_id=2)  # fmt: skip
T5_DEFAULTS = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                   relative_attention_num_buckets=32, relative_attention_max_distance=128,
                   layer_norm_epsilon=1e-6, feed_forward_proj="relu")  # fmt: skip
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def _check(cfg, defaults: dict, what: str) -> None:
    unknown = sorted(set(cfg.keys()) - set(defaults) - {"name"})
    if unknown:
        raise ValueError(f"{what} config fields {unknown} unknown; valid: {sorted(defaults)}")


def _mha(q, k, v, bias):
    """q/k/v [B, L, H, Dh], additive bias broadcastable to [B, H, Lq, Lk] -> [B, Lq, H*Dh] (no scaling)."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) + bias
    w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", w, v)
    return out.reshape(*out.shape[:2], -1)


def _pad_bias(mask, dtype):
    return jnp.where(mask[:, None, None, :].astype(bool), 0.0, jnp.finfo(dtype).min).astype(dtype)


def _ln(d, eps, rngs):
    return nnx.LayerNorm(
        d, epsilon=eps, scale_metadata=L.meta("norm"), bias_metadata=L.meta("norm"), rngs=rngs
    )


class CLIPLayer(nnx.Module):
    """Pre-LN block: x + attn(ln1(x)), then x + mlp(ln2(x)); tokens [B, L, D]."""

    def __init__(self, cfg, *, rngs):
        d, self.heads = cfg.hidden_size, cfg.num_attention_heads
        self.ln1, self.ln2 = _ln(d, cfg.layer_norm_eps, rngs), _ln(d, cfg.layer_norm_eps, rngs)
        self.q, self.k, self.v = (L.linear(d, d, rngs=rngs, names=("embed", "heads")) for _ in range(3))
        self.o = L.linear(d, d, rngs=rngs, names=("heads", "embed"))
        self.fc1 = L.linear(d, cfg.intermediate_size, rngs=rngs)
        self.fc2 = L.linear(cfg.intermediate_size, d, rngs=rngs, names=("mlp", "embed"))
        self.act = cfg.hidden_act

    def __call__(self, x, bias):
        b, n, d = x.shape
        h = self.ln1(x)
        split = lambda y: y.reshape(b, n, self.heads, d // self.heads)  # noqa: E731
        q = split(self.q(h)) / math.sqrt(d // self.heads)
        x = x + self.o(_mha(q, split(self.k(h)), split(self.v(h)), bias))
        return x + self.fc2(ACTIVATIONS[self.act](self.fc1(self.ln2(x))))


class CLIPTextModel(nnx.Module):
    """CLIP text transformer: ids [B, L] (L <= max_position_embeddings), mask [B, L] or None ->
    (last_hidden_state [B, L, D], pooled [B, D])."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        _check(cfg, CLIP_DEFAULTS, "CLIP text")
        if cfg.hidden_act not in ACTIVATIONS:
            raise ValueError(f"CLIP text hidden_act={cfg.hidden_act!r} unknown; valid: {sorted(ACTIVATIONS)}")
        d = cfg.hidden_size
        self.max_len, self.eos = cfg.max_position_embeddings, cfg.eos_token_id
        self.tok = nnx.Embed(cfg.vocab_size, d, embedding_metadata=L.meta("vocab", "embed"), rngs=rngs)
        self.pos = nnx.Embed(
            cfg.max_position_embeddings, d, embedding_metadata=L.meta(None, "embed"), rngs=rngs
        )
        self.layers = nnx.List([CLIPLayer(cfg, rngs=rngs) for _ in range(cfg.num_hidden_layers)])
        self.ln_f = _ln(d, cfg.layer_norm_eps, rngs)

    def __call__(self, ids, mask=None):
        b, n = ids.shape
        if n > self.max_len:
            raise ValueError(f"CLIP text: {n} tokens exceed max_position_embeddings={self.max_len}")
        x = self.tok(ids) + self.pos(jnp.arange(n))[None]
        causal = jnp.where(jnp.tril(jnp.ones((n, n), bool)), 0.0, jnp.finfo(x.dtype).min)[None, None]
        bias = (
            causal if mask is None else jnp.maximum(causal + _pad_bias(mask, x.dtype), jnp.finfo(x.dtype).min)
        )
        for layer in self.layers:
            x = layer(x, bias)
        x = self.ln_f(x)
        eos_at = jnp.argmax(ids, -1) if self.eos == 2 else jnp.argmax((ids == self.eos).astype(jnp.int32), -1)
        return x, x[jnp.arange(b), eos_at]


def t5_relative_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """Bidirectional relative-position buckets [q_len, k_len] (Raffel et al. 2020, Sec. 2.1): half the
    buckets per sign; exact below num_buckets/4, logarithmic up to max_distance, clipped above."""
    rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    rel = np.abs(rel)
    exact = half // 2
    far = np.maximum(rel, exact).astype(np.float32)  # the log branch is used only where rel >= exact
    scaled = np.log(far / np.float32(exact)) / np.float32(math.log(max_distance / exact))
    large = exact + (scaled * np.float32(half - exact)).astype(np.int64)
    return out + np.where(rel < exact, rel, np.minimum(large, half - 1))


class T5RMSNorm(nnx.Module):
    """x * rsqrt(mean(x^2) + eps) * w (T5's LayerNorm: no bias, no mean subtraction), in float32."""

    def __init__(self, d, eps, *, rngs):
        del rngs
        self.eps, self.scale = eps, nnx.Param(jnp.ones((d,)), **L.meta("norm"))

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)).astype(
            x.dtype
        ) * self.scale


class T5Layer(nnx.Module):
    def __init__(self, cfg, *, rngs):
        d, inner = cfg.d_model, cfg.num_heads * cfg.d_kv
        self.heads, self.dkv, self.gated = cfg.num_heads, cfg.d_kv, cfg.feed_forward_proj.startswith("gated-")
        self.act = (
            "gelu_new" if cfg.feed_forward_proj == "gated-gelu" else cfg.feed_forward_proj.split("-")[-1]
        )
        lin = lambda i, o, names=("embed", "mlp"): L.linear(i, o, rngs=rngs, use_bias=False, names=names)  # noqa: E731
        self.ln1, self.ln2 = (
            T5RMSNorm(d, cfg.layer_norm_epsilon, rngs=rngs),
            T5RMSNorm(d, cfg.layer_norm_epsilon, rngs=rngs),
        )
        self.q, self.k, self.v = lin(d, inner), lin(d, inner), lin(d, inner)
        self.o = lin(inner, d, ("heads", "embed"))
        self.wi = lin(d, cfg.d_ff)
        self.wi_gate = lin(d, cfg.d_ff) if self.gated else None
        self.wo = lin(cfg.d_ff, d, ("mlp", "embed"))

    def __call__(self, x, bias):
        b, n, _ = x.shape
        h = self.ln1(x)
        split = lambda y: y.reshape(b, n, self.heads, self.dkv)  # noqa: E731
        x = x + self.o(_mha(split(self.q(h)), split(self.k(h)), split(self.v(h)), bias))
        h = self.ln2(x)
        f = ACTIVATIONS[self.act](self.wi(h))
        if self.gated:
            f = f * self.wi_gate(h)
        return x + self.wo(f)


class T5Encoder(nnx.Module):
    """T5 encoder: ids [B, L], mask [B, L] or None -> last hidden state [B, L, d_model]."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        _check(cfg, T5_DEFAULTS, "T5 encoder")
        ff = cfg.feed_forward_proj
        if ff not in ("relu", "gated-gelu", "gated-relu"):
            raise ValueError(f"T5 feed_forward_proj={ff!r} unknown; valid: relu, gated-gelu, gated-relu")
        self.buckets, self.max_distance = (
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
        )
        self.tok = nnx.Embed(
            cfg.vocab_size, cfg.d_model, embedding_metadata=L.meta("vocab", "embed"), rngs=rngs
        )
        self.rel_bias = nnx.Embed(
            self.buckets, cfg.num_heads, embedding_metadata=L.meta(None, None), rngs=rngs
        )
        self.layers = nnx.List([T5Layer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.ln_f = T5RMSNorm(cfg.d_model, cfg.layer_norm_epsilon, rngs=rngs)

    def __call__(self, ids, mask=None):
        n = ids.shape[1]
        x = self.tok(ids)
        buckets = t5_relative_buckets(n, n, self.buckets, self.max_distance)
        bias = self.rel_bias(jnp.asarray(buckets)).transpose(2, 0, 1)[None].astype(x.dtype)  # [1, H, L, L]
        if mask is not None:
            bias = bias + _pad_bias(mask, x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return self.ln_f(x)
