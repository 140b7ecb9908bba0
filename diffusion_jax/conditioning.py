"""Conditioning semantics (no networks): the condition keys, classifier-free guidance dropout and the
null condition.

A *condition* is a dict with any of `COND_KEYS`:

- ``label`` [B] int: a class id in [0, num_classes); the id ``num_classes`` is the **null label**.
- ``context`` [B, L, E] float with ``context_mask`` [B, L] bool: a sequence of embeddings (e.g. from
  CLIP / T5), consumed by cross-attention (Rombach et al. 2022, sec. 3.3).
- ``tokens`` [B, L] int with ``tokens_mask`` [B, L] bool: UTF-8 byte ids (0..255, `PAD_ID` pads) for a
  network that carries its own text encoder.

Classifier-free guidance (Ho & Salimans 2022) trains one network both conditionally and
unconditionally by dropping the condition with probability p: a dropped label becomes the null label,
a dropped sequence has its whole mask emptied (an all-false mask is exactly "no context" to
cross-attention). `null_condition` builds the same unconditional counterpart at sampling time, so
what guidance subtracts is what dropout trained. This module is core semantics: objectives (training)
and samplers (guidance) use it, networks implement it (`models`), and it imports nothing from them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

COND_KEYS = ("label", "context", "context_mask", "tokens", "tokens_mask")
"""Every conditioning input a network may take (batch keys, and keys of a denoiser's `cond`)."""

PAD_ID = 256
"""Byte-token padding id (byte ids are 0..255)."""

BYTE_VOCAB = 257
"""Size of the byte-token vocabulary: 256 byte values + `PAD_ID`."""


def drop_labels(key: jax.Array, label: jax.Array, p: float, num_classes: int) -> jax.Array:
    """label [B] int -> [B]: each label replaced by the null label `num_classes` with probability p
    (CFG dropout)."""
    drop = jax.random.bernoulli(key, p, label.shape)
    return jnp.where(drop, jnp.asarray(num_classes, label.dtype), label)


def drop_context(key: jax.Array, context_mask: jax.Array, p: float) -> jax.Array:
    """context_mask [B, L] bool -> [B, L]: each example's whole mask emptied with probability p."""
    drop = jax.random.bernoulli(key, p, context_mask.shape[:1])
    return context_mask & ~drop[:, None]


def cond_from_batch(
    batch: dict, key: jax.Array, p: float = 0.0, null_label: int | None = None
) -> dict | None:
    """The network's condition from a training batch, with CFG dropout at rate p.

    batch: dict with any of `COND_KEYS` (other keys are ignored). A ``context`` without a mask gets an
    all-true ``context_mask``; ``tokens`` need their ``tokens_mask``. With p > 0 labels are dropped to
    `null_label` (key) and caption / context masks are emptied (``fold_in(key, 1)``): labels and text
    draw independent decisions. Returns None when the batch carries no condition.
    """
    cond = {k: batch[k] for k in COND_KEYS if k in batch}
    if "context" in cond and "context_mask" not in cond:
        cond["context_mask"] = jnp.ones(cond["context"].shape[:2], bool)
    if "tokens" in cond and "tokens_mask" not in cond:
        raise ValueError("batch has 'tokens' but no 'tokens_mask'")
    if p > 0:
        if "label" in cond:
            if null_label is None:
                raise ValueError("the batch has labels but make_loss got num_classes=0 (no null label)")
            cond["label"] = drop_labels(key, cond["label"], p, null_label)
        k_text = jax.random.fold_in(key, 1)
        for m in ("context_mask", "tokens_mask"):
            if m in cond:
                cond[m] = drop_context(k_text, jnp.asarray(cond[m], bool), p)
    return cond or None


def null_condition(cond: dict, null_label: int | None = None) -> dict:
    """The unconditional counterpart of a condition, as CFG dropout trains it: ``label`` becomes
    `null_label`, every ``*_mask`` (caption tokens, context) is emptied; other entries are kept."""
    out = {}
    for k, v in cond.items():
        if k == "label":
            if null_label is None:
                raise ValueError("null_condition: the condition has a label but no null_label was given")
            out[k] = jnp.full_like(v, null_label)
        else:
            out[k] = jnp.zeros_like(v) if k.endswith("_mask") else v
    return out


__all__ = [
    "BYTE_VOCAB",
    "COND_KEYS",
    "PAD_ID",
    "cond_from_batch",
    "drop_context",
    "drop_labels",
    "null_condition",
]
