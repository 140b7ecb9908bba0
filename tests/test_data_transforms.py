"""Per-example transforms against their definitions (bins, inverses, block means)."""

import numpy as np
import pytest

from diffusion_jax.data import transforms


def test_scaling_and_its_inverse_are_exact_on_all_256_levels():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    y = transforms.scale_to_unit_interval(x)
    assert y.dtype == np.float32 and y.min() == -1.0 and y.max() == 1.0
    np.testing.assert_allclose(y, x / 127.5 - 1, atol=1e-7)
    np.testing.assert_array_equal(transforms.to_uint8(y), x)


def test_dequantized_value_stays_in_its_pixel_bin():
    x = np.repeat(np.arange(256, dtype=np.uint8), 200).reshape(256, 200, 1)
    y = transforms.uniform_dequantize(x, np.random.default_rng(0)).astype(np.float64)
    lo, hi = 2 * x / 256 - 1, 2 * (x.astype(np.float64) + 1) / 256 - 1
    # float32 rounding may land exactly on a bin edge, hence the 1e-6 slack.
    assert np.all(y >= lo - 1e-6) and np.all(y < hi + 1e-6) and y.max() < 1.0
    # Within the bin the offset is U[0, 1): mean 1/2.
    assert abs(((y + 1) * 128 - x).mean() - 0.5) < 5 * np.sqrt(1 / 12 / y.size)


def test_area_resize_is_the_block_mean_and_pad_centres():
    x = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    small = transforms.resize_image(x, 14, "area").astype(np.float64)
    block = x.reshape(14, 2, 14, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert small.shape == (14, 14, 3) and np.abs(small - block).max() <= 1.0  # PIL rounds to uint8.
    big = transforms.resize_image(x, 32, "pad")
    np.testing.assert_array_equal(big[2:30, 2:30], x)
    assert big.sum() == x.astype(np.int64).sum()
    with pytest.raises(ValueError, match="cannot shrink"):
        transforms.resize_image(x, 20, "pad")
    with pytest.raises(ValueError, match="bilinear"):
        transforms.resize_image(x, 20, "nearest")
    assert transforms.resize_image(x, 28, "none") is x


def test_flip_mirrors_the_width_axis():
    x = np.arange(12, dtype=np.uint8).reshape(2, 6, 1)
    outs = [transforms.random_flip_left_right(x, np.random.default_rng(s)) for s in range(40)]
    flipped = [np.array_equal(o, x[:, ::-1]) for o in outs]
    assert all(f or np.array_equal(o, x) for f, o in zip(flipped, outs, strict=True))
    assert 0 < sum(flipped) < 40
