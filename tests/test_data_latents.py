"""Latent cache: encoded once with a caller's encoder, read back exactly, served by the grain pipeline.

Reference: a linear encoder ``z = vec(x) @ W`` applied here directly with numpy to the known images.
"""

import os

import numpy as np
import pytest

from diffusion_jax.data import latents, pipeline


class ArraySource:
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": i}


IMAGES = np.random.default_rng(0).integers(0, 256, (24, 28, 28, 1), dtype=np.uint8)
W = np.random.default_rng(1).standard_normal((784, 5)).astype(np.float32) / 28


def _image_iterator():
    cfg = pipeline.default_data_config(
        "tfds", "fashion_mnist", 8, prepare=False, num_epochs=1, shuffle=False, dequantize=False
    )
    return pipeline.make_iterator(cfg, source=ArraySource(IMAGES))


def test_cache_is_written_once_and_holds_the_encoded_dataset(tmp_path):
    calls = []

    def encode(x):
        calls.append(len(x))
        return x.reshape(len(x), -1) @ W

    path = str(tmp_path / "lat.npz")
    assert latents.cache_latents(encode, _image_iterator(), 3, path) == path
    assert calls == [8, 8, 8]
    mtime = os.path.getmtime(path)
    latents.cache_latents(encode, _image_iterator(), 3, path)  # Already there: nothing re-encoded.
    assert calls == [8, 8, 8] and os.path.getmtime(path) == mtime
    assert [f for f in os.listdir(tmp_path) if "tmp" in f] == []

    src = latents.LatentSource(path)
    assert len(src) == 24 and src.latent_shape == (5,) and src.has_labels
    expected = (IMAGES.reshape(24, -1).astype(np.float64) / 127.5 - 1) @ W.astype(np.float64)
    got = np.stack([src[i]["x"] for i in range(24)])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal([src[i]["label"] for i in range(24)], np.arange(24))


def test_latent_source_through_the_pipeline(tmp_path):
    path = latents.cache_latents(
        lambda x: x.reshape(len(x), -1) @ W, _image_iterator(), 3, str(tmp_path / "l.npz")
    )
    cfg = pipeline.default_data_config("latents", "fmnist_linear", 6, latents_path=path, num_epochs=2)
    batches = list(pipeline.make_iterator(cfg, process_index=1, process_count=2, seed=0))
    assert len(batches) == 8 and batches[0]["x"].shape == (3, 5) and batches[0]["label"].dtype == np.int32
    expected = (IMAGES.reshape(24, -1).astype(np.float64) / 127.5 - 1) @ W.astype(np.float64)
    for b in batches:  # Every row is the cached latent of the example its label names.
        np.testing.assert_allclose(b["x"], expected[b["label"]], rtol=1e-4, atol=1e-4)


def test_cache_errors(tmp_path):
    with pytest.raises(ValueError, match="only 3 of|after 3 of"):
        latents.cache_latents(lambda x: x, _image_iterator(), 4, str(tmp_path / "a.npz"))
    assert not (tmp_path / "a.npz").exists()
    with pytest.raises(ValueError, match=".npz"):
        latents.cache_latents(lambda x: x, _image_iterator(), 1, str(tmp_path / "a.bin"))
    with pytest.raises(FileNotFoundError, match="cache_latents"):
        latents.LatentSource(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="latents_path"):
        pipeline.default_data_config("latents", "x", 4)
