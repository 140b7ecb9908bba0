"""Per-example image transforms (numpy, run inside the grain pipeline).

All functions take one example's image ``[H, W, C]`` and, when random, a ``np.random.Generator`` that
grain seeds from ``(seed, global element index)`` so that every transform is reproducible.

Pixel convention: model inputs live in ``[-1, 1]`` (Ho et al. 2020, "Denoising Diffusion Probabilistic
Models", Sec. 3.3: "image data consisting of integers in {0, ..., 255} scaled linearly to [-1, 1]").
"""

from __future__ import annotations

import numpy as np
from PIL import Image

RESIZE_METHODS = ("none", "pad", "bilinear", "area")
"""How ``resize_image`` reaches ``image_size``: ``none`` (must already match), ``pad`` (centre zero-pad;
for 28 -> 32 Fashion-MNIST/MNIST), ``bilinear`` / ``area`` (PIL resampling: BILINEAR / BOX)."""


def scale_to_unit_interval(image: np.ndarray) -> np.ndarray:
    """``uint8 {0..255} -> float32 [-1, 1]`` by ``x / 127.5 - 1`` (Ho et al. 2020, Sec. 3.3).

    Args:
      image: ``[H, W, C]`` uint8 (any integer array in ``[0, 255]``).

    Returns:
      ``[H, W, C]`` float32 with 0 -> -1 and 255 -> +1.
    """
    return np.asarray(image, np.float32) / np.float32(127.5) - np.float32(1.0)


def uniform_dequantize(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Uniform dequantization to ``[-1, 1)``: ``y = 2 (x + u) / 256 - 1``, ``u ~ U[0, 1)`` per pixel.

    Turns the discrete pixel values into a continuous density whose likelihood lower-bounds the discrete
    one (Theis, van den Oord & Bethge 2016, "A note on the evaluation of generative models", Sec. 3.1;
    used for bits/dim by Dinh et al. 2017 and Ho et al. 2020). Pixel value ``k`` maps to the bin
    ``[2k/256 - 1, 2(k+1)/256 - 1)``, so ``y`` never reaches +1.

    Args:
      image: ``[H, W, C]`` uint8.
      rng: numpy generator (grain seeds it per element).

    Returns:
      ``[H, W, C]`` float32 in ``[-1, 1)``.
    """
    x = np.asarray(image, np.float32)
    u = rng.random(x.shape, dtype=np.float32)
    y = (x + u) * np.float32(2.0 / 256.0) - np.float32(1.0)
    # float32 rounding of (255 + u) with u close to 1 can give exactly 256: keep the half-open bin.
    return np.minimum(y, np.nextafter(np.float32(1.0), np.float32(0.0)))


def random_flip_left_right(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mirrors the width axis with probability 1/2. ``[H, W, C] -> [H, W, C]``."""
    return image[:, ::-1] if rng.random() < 0.5 else image


def resize_image(image: np.ndarray, size: int, method: str) -> np.ndarray:
    """Brings a uint8 ``[H, W, C]`` image to ``[size, size, C]`` (before scaling / dequantization).

    Args:
      image: ``[H, W, C]`` uint8.
      size: target height = width.
      method: one of ``RESIZE_METHODS``.

    Returns:
      ``[size, size, C]`` uint8.
    """
    h, w, c = image.shape
    if (h, w) == (size, size):
        return image
    if method == "pad":
        if size < h or size < w:
            raise ValueError(f"resize='pad' cannot shrink {h}x{w} to {size}x{size}")
        top, left = (size - h) // 2, (size - w) // 2
        return np.pad(image, ((top, size - h - top), (left, size - w - left), (0, 0)))
    if method in ("bilinear", "area"):
        resample = Image.BILINEAR if method == "bilinear" else Image.BOX
        chans = [
            np.asarray(Image.fromarray(np.ascontiguousarray(image[..., i])).resize((size, size), resample))
            for i in range(c)
        ]
        return np.stack(chans, axis=-1)
    raise ValueError(f"resize={method!r} cannot change {h}x{w} to {size}; valid: {list(RESIZE_METHODS)}")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Inverse of ``scale_to_unit_interval`` for viewing samples: ``[-1, 1] -> uint8`` (rounded, clipped)."""
    return np.clip(np.round((np.asarray(image, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
