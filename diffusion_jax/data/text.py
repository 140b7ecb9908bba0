"""Text for conditioning on the host: UTF-8 byte tokens and precomputed embeddings.

- `tokenize_bytes`: captions -> byte ids (0..255, `conditioning.PAD_ID` pads) and a mask, the input
  of the trainable byte-level encoder (`models.conditioning.ByteTextEncoder`; ByT5, Xue et al. 2022,
  likewise works on raw bytes), so captioned training needs no tokenizer or download.
- `load_npy_embeddings`: precomputed embeddings of any external encoder (CLIP, T5, ...) from `.npy`.
"""

from __future__ import annotations

import os

import numpy as np

from diffusion_jax.conditioning import PAD_ID


def tokenize_bytes(texts: list[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 byte tokens: list of N strings -> (ids [N, max_len] int32, mask [N, max_len] bool).

    Longer texts are truncated; padding uses id 256 and mask False.
    """
    if max_len < 1:
        raise ValueError(f"max_len={max_len} must be >= 1")
    ids = np.full((len(texts), max_len), PAD_ID, np.int32)
    mask = np.zeros((len(texts), max_len), bool)
    for i, s in enumerate(texts):
        b = np.frombuffer(s.encode("utf-8"), np.uint8)[:max_len]
        ids[i, : len(b)] = b
        mask[i, : len(b)] = True
    return ids, mask


def load_npy_embeddings(path: str | os.PathLike, mask_path: str | os.PathLike | None = None):
    """Load precomputed embeddings from `.npy`: [N, E] (pooled) or [N, L, E] -> (emb [N,L,E] f32, mask).

    mask_path (optional) holds a bool [N, L] mask or int lengths [N]; without it every token is valid.
    """
    emb = np.load(path, allow_pickle=False)
    if emb.ndim == 2:
        emb = emb[:, None, :]
    if emb.ndim != 3:
        raise ValueError(f"{path}: embeddings must be [N, E] or [N, L, E], got shape {emb.shape}")
    n, length, _ = emb.shape
    if mask_path is None:
        mask = np.ones((n, length), bool)
    else:
        m = np.load(mask_path, allow_pickle=False)
        if m.shape == (n,) and np.issubdtype(m.dtype, np.integer):
            if m.min() < 0 or m.max() > length:
                raise ValueError(f"{mask_path}: lengths must lie in [0, {length}]")
            mask = np.arange(length)[None, :] < m[:, None]
        elif m.shape == (n, length):
            mask = m.astype(bool)
        else:
            raise ValueError(
                f"{mask_path}: mask must be bool [{n},{length}] or int lengths [{n}], got {m.shape}"
            )
    return emb.astype(np.float32), mask


__all__ = ["load_npy_embeddings", "tokenize_bytes"]
