"""Conditioning networks: class-label embedding with a null label, byte-level text encoder.

The semantics (condition keys, CFG dropout, the null condition, byte-token ids) live in the core
module `diffusion_jax.conditioning`; `COND_KEYS`, `drop_labels` and `drop_context` are re-exported
here for existing callers. Tokenising and loading embeddings are host-side data work (`data.text`).

- Class labels: integer ids in [0, num_classes); the id `num_classes` is the null label, used for
  classifier-free guidance (Ho & Salimans 2022).
- Sequences of embeddings [B, L, E] with a mask [B, L] bool are consumed by cross-attention
  (`layers.CrossAttention`; Rombach et al. 2022, Sec. 3.3).
- `ByteTextEncoder`: a small trainable Transformer over UTF-8 bytes (as in ByT5, Xue et al. 2022,
  which works on raw bytes), so captioned training needs no tokenizer or download.
- `TextConditioned`: a `ByteTextEncoder` and a cross-attention denoiser trained as one network (one
  parameter tree), so the caption `tokens` / `tokens_mask` are just more conditioning inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.conditioning import BYTE_VOCAB, COND_KEYS, PAD_ID, drop_context, drop_labels
from diffusion_jax.models import layers as L


class ClassEmbedding(nnx.Module):
    """Class-label embedding [B] int -> [B, dim]; label == num_classes (or None) is the null label.

    learned_null=True: a table of num_classes + 1 rows, the last one learned (DiT, Peebles & Xie 2023,
    `LabelEmbedder` with class dropout). learned_null=False: num_classes rows and the null label embeds
    to zero (EDM's bias-free linear map of a one-hot label, where dropping the label zeroes the one-hot).
    """

    def __init__(self, num_classes: int, dim: int, *, learned_null: bool = True, rngs: nnx.Rngs):
        self.num_classes, self.learned_null = num_classes, learned_null
        rows = num_classes + 1 if learned_null else num_classes
        self.table = nnx.Embed(
            rows,
            dim,
            embedding_init=nnx.initializers.normal(0.02),
            embedding_metadata=L.meta("vocab", "embed"),
            rngs=rngs,
        )

    def __call__(self, label: jax.Array | None, *, batch: int) -> jax.Array:
        if label is None:
            label = jnp.full((batch,), self.num_classes, jnp.int32)
        label = jnp.asarray(label)
        if label.shape != (batch,) or not jnp.issubdtype(label.dtype, jnp.integer):
            raise ValueError(f"label must be an int array of shape [{batch}], got {label.dtype}{label.shape}")
        if self.learned_null:
            return self.table(label)
        is_null = label >= self.num_classes
        emb = self.table(jnp.where(is_null, 0, label))
        return jnp.where(is_null[:, None], 0.0, emb)


class TextBlock(nnx.Module):
    """Pre-LN Transformer block (Vaswani et al. 2017; pre-LN per Xiong et al. 2020) with a key mask.

    Laid out for tensor parallelism like the DiT's blocks (`training.sharding.TENSOR_PARALLEL`, when a
    DiT trains with this encoder): head-major qkv, MLP hidden axis `ffn`."""

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(dim, scale_metadata=L.meta("norm"), bias_metadata=L.meta("norm"), rngs=rngs)
        self.attn = L.SelfAttention(dim, num_heads, rngs=rngs, head_major=True)
        self.ln2 = nnx.LayerNorm(dim, scale_metadata=L.meta("norm"), bias_metadata=L.meta("norm"), rngs=rngs)
        self.fc1 = L.linear(dim, 4 * dim, rngs=rngs, names=("embed", "ffn"))
        self.fc2 = L.linear(4 * dim, dim, rngs=rngs, names=("ffn", "embed"))

    def __call__(self, x, mask):
        x = x + self.attn(self.ln1(x), mask)
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class ByteTextEncoder(nnx.Module):
    """Trainable byte-level text encoder: ids [B, L] int, mask [B, L] bool -> context [B, L, dim].

    Embedding of 257 byte ids + learned positions, `depth` pre-LN Transformer blocks, final LayerNorm.
    Padded positions are zeroed in the output; pass `mask` on as the cross-attention `context_mask`.
    """

    def __init__(self, dim: int = 128, depth: int = 2, num_heads: int = 4, max_len: int = 64, *, rngs):
        self.max_len = max_len
        self.tok = nnx.Embed(BYTE_VOCAB, dim, embedding_metadata=L.meta("vocab", "embed"), rngs=rngs)
        self.pos = nnx.Param(jax.random.normal(rngs.params(), (max_len, dim)) * 0.02, **L.meta(None, "embed"))
        self.blocks = nnx.List([TextBlock(dim, num_heads, rngs=rngs) for _ in range(depth)])
        self.ln = nnx.LayerNorm(dim, scale_metadata=L.meta("norm"), bias_metadata=L.meta("norm"), rngs=rngs)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        if ids.ndim != 2 or ids.shape[1] > self.max_len or mask.shape != ids.shape:
            raise ValueError(
                f"ids/mask must be [B, L<= {self.max_len}] and equal shapes; got {ids.shape}, {mask.shape}"
            )
        x = self.tok(ids) + self.pos[None, : ids.shape[1]]
        for blk in self.blocks:
            x = blk(x, mask)
        return self.ln(x) * mask[..., None]


TEXT_ENCODER_DEFAULTS = dict(dim=128, depth=2, num_heads=4, max_len=64)
"""Fields of `model.text_encoder` (the `ByteTextEncoder` arguments) and their defaults."""


class TextConditioned(nnx.Module):
    """Byte-level text encoder + denoiser with cross-attention, trained jointly (Rombach et al. 2022,
    Sec. 3.3, where the text encoder is likewise optimised together with the U-Net).

    Call: as the wrapped denoiser, plus `tokens` [B, L] int / `tokens_mask` [B, L] bool: the tokens are
    encoded to `context` and `tokens_mask` becomes `context_mask`. An all-false mask (a caption dropped
    for classifier-free guidance, `drop_context`) therefore gives exactly the denoiser's unconditional
    output, the same as passing no tokens at all. Precomputed `context` may be passed instead of tokens.
    """

    def __init__(self, encoder: ByteTextEncoder, denoiser: nnx.Module):
        self.encoder, self.denoiser = encoder, denoiser

    def __call__(
        self,
        x,
        t_in,
        *,
        label=None,
        context=None,
        context_mask=None,
        tokens=None,
        tokens_mask=None,
        deterministic=True,
        rngs=None,
    ):
        if tokens is not None:
            if context is not None:
                raise ValueError("pass either tokens (encoded here) or a precomputed context, not both")
            if tokens_mask is None:
                tokens_mask = tokens != PAD_ID
            context, context_mask = self.encoder(tokens, tokens_mask), tokens_mask
        return self.denoiser(
            x,
            t_in,
            label=label,
            context=context,
            context_mask=context_mask,
            deterministic=deterministic,
            rngs=rngs,
        )


__all__ = [
    "COND_KEYS",
    "TEXT_ENCODER_DEFAULTS",
    "ByteTextEncoder",
    "ClassEmbedding",
    "TextBlock",
    "TextConditioned",
    "drop_context",
    "drop_labels",
]
