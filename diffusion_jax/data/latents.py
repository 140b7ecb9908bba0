"""Latent datasets: encode a dataset once with a caller-supplied encoder, cache it, read it back.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models",
Sec. 3) trains the diffusion model on ``z = E(x)`` of a frozen autoencoder; since ``E`` is frozen, the
latents of the training set can be computed once and reused. ``cache_latents`` writes them to a single
``.npz`` file (atomically: a crash leaves either no cache or a complete one) and ``LatentSource`` is a
random-access source over that file that the grain pipeline reads like a TFDS data source.

The encoder is deterministic here (e.g. the posterior mean, scaled by the caller); an augmentation such as a
random flip must therefore be applied before encoding, i.e. by the iterator handed to ``cache_latents``.
In a multi-process run call ``cache_latents`` on one process (with a ``process_count=1`` iterator) and let
the others wait for the file, or give each process its own ``path``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping

import numpy as np

LATENT_KEY = "x"
"""Key of the latent in the examples/batches produced from a latent cache."""


def cache_latents(
    encode_fn: Callable[[np.ndarray], np.ndarray],
    iterator: Iterator[Mapping[str, np.ndarray]],
    num_batches: int,
    path: str | os.PathLike,
    *,
    input_key: str = "image",
    overwrite: bool = False,
) -> str:
    """Encodes ``num_batches`` batches of ``iterator`` with ``encode_fn`` and stores them in ``path``.

    If ``path`` already exists (and ``overwrite`` is False) nothing is encoded: the cache is built once.

    Args:
      encode_fn: ``x [B, ...] -> z [B, ...]`` (e.g. a jitted autoencoder encoder); its output is stored
        as float32.
      iterator: yields dicts with ``input_key`` (``[B, ...]``) and optionally ``'label'`` (``[B]``).
      num_batches: how many batches to encode (> 0), e.g. one epoch of a ``num_epochs=1`` iterator.
      path: ``.npz`` file to write (``.npz`` is appended by numpy if missing, so pass it explicitly).
      input_key: which batch entry to encode.
      overwrite: re-encode even if ``path`` exists.

    Returns:
      ``path`` as a string. The file holds ``latent [N, ...] float32`` and, when the batches had labels,
      ``label [N] int32``, with ``N = num_batches * B``.
    """
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"path must end with '.npz', got {path!r}")
    if not isinstance(num_batches, int) or num_batches <= 0:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
    if os.path.exists(path) and not overwrite:
        return path
    latents, labels = [], []
    for i in range(num_batches):
        try:
            batch = next(iterator)
        except StopIteration:
            raise ValueError(f"iterator ended after {i} of num_batches={num_batches} batches") from None
        if input_key not in batch:
            raise ValueError(f"batch has no {input_key!r}; keys: {sorted(batch)}")
        latents.append(np.asarray(encode_fn(batch[input_key]), np.float32))
        if "label" in batch:
            labels.append(np.asarray(batch["label"], np.int32))
    arrays = {"latent": np.concatenate(latents)}
    if labels:
        if len(labels) != num_batches:
            raise ValueError("some batches have 'label' and some do not")
        arrays["label"] = np.concatenate(labels)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path[:-4]}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # Atomic on POSIX: readers never see a partial file.
    return path


class LatentSource:
    """Random-access source over a ``cache_latents`` file (``len``, ``[i]``, ``__getitems__``).

    Element ``i`` is ``{'x': latent [...] float32}`` plus ``'label': int32 []`` when labels were cached.
    The whole file is loaded into memory (latents are small: e.g. 60000 x 7 x 7 x 4 float32 = 47 MB).
    """

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no latent cache at {path!r}; build it with cache_latents(...)")
        with np.load(path) as f:
            self._latent = np.asarray(f["latent"], np.float32)
            self._label = np.asarray(f["label"], np.int32) if "label" in f.files else None
        self.path = path

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent (without the example axis)."""
        return tuple(self._latent.shape[1:])

    @property
    def has_labels(self) -> bool:
        """Whether the cache stores labels."""
        return self._label is not None

    def __len__(self) -> int:
        return len(self._latent)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        out = {LATENT_KEY: self._latent[index]}
        if self._label is not None:
            out["label"] = self._label[index]
        return out

    def __getitems__(self, indices) -> list[dict[str, np.ndarray]]:
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return f"LatentSource({self.path!r}, n={len(self)}, latent_shape={self.latent_shape})"
