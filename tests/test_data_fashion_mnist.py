"""The local Fashion-MNIST TFDS builder on Debian's real files (built once per module into a tmp dir).

References: the raw IDX files parsed here independently (fixed 16/8-byte headers, numpy only), the published
split sizes / class balance (Xiao et al. 2017: 60000 + 10000, 6000 / 1000 per class), the label sequence of
the first training images and the widely used normalisation constants (pixel mean 0.2860, std 0.3530).
"""

import gzip
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffusion_jax.data import fashion_mnist, pipeline

DEBIAN = fashion_mnist.DEBIAN_DIR
pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(DEBIAN, "train-labels-idx1-ubyte.gz")),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


def _raw(name, header):
    with gzip.open(os.path.join(DEBIAN, name), "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    fashion_mnist.prepare(d)
    return d


def test_splits_match_the_raw_idx_files_exactly(data_dir):
    sources = tfds.data_source(fashion_mnist.TFDS_NAME, data_dir=data_dir, download=False)
    rng = np.random.default_rng(0)
    for split, n, prefix in (("train", 60000, "train"), ("test", 10000, "t10k")):
        src = sources[split]
        assert len(src) == n
        # The whole test split; 3000 random train records plus the first 10 (keeps the test fast).
        idx = (
            np.arange(n) if split == "test" else np.union1d(np.arange(10), rng.choice(n, 3000, replace=False))
        )
        examples = src.__getitems__(idx.tolist())
        images = np.stack([e["image"] for e in examples])
        labels = np.array([e["label"] for e in examples])
        raw_images = _raw(f"{prefix}-images-idx3-ubyte.gz", 16).reshape(n, 28, 28, 1)
        raw_labels = _raw(f"{prefix}-labels-idx1-ubyte.gz", 8)
        assert images.dtype == np.uint8 and images.shape == (len(idx), 28, 28, 1)
        np.testing.assert_array_equal(images, raw_images[idx])  # Same order: disable_shuffling.
        np.testing.assert_array_equal(labels, raw_labels[idx])
        assert labels.min() == 0 and labels.max() == 9
        if split == "test":
            np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
            assert images.astype(np.float64).mean() == raw_images.astype(np.float64).mean()
        else:
            np.testing.assert_array_equal(labels[:10], [9, 0, 0, 3, 0, 2, 7, 2, 5, 5])
    # The raw train file itself against the published balance and normalisation constants.
    raw_train = _raw("train-images-idx3-ubyte.gz", 16).astype(np.float64) / 255
    assert abs(raw_train.mean() - 0.2860) < 1e-4 and abs(raw_train.std() - 0.3530) < 1e-4
    np.testing.assert_array_equal(np.bincount(_raw("train-labels-idx1-ubyte.gz", 8)), np.full(10, 6000))


def test_prepare_builds_once(data_dir):
    version_dir = os.path.join(data_dir, fashion_mnist.TFDS_NAME, "1.0.0")
    files = sorted(f for f in os.listdir(version_dir) if "array_record" in f)
    assert files, os.listdir(version_dir)
    mtimes = [os.path.getmtime(os.path.join(version_dir, f)) for f in files]
    builder = fashion_mnist.prepare(data_dir)
    assert builder.is_prepared()
    assert [os.path.getmtime(os.path.join(version_dir, f)) for f in files] == mtimes
    assert builder.info.splits["train"].num_examples == 60000


def test_missing_source_files_name_the_apt_package(tmp_path):
    empty = tmp_path / "no_idx_files"
    empty.mkdir()
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.prepare(out, source_dir=empty)
    assert not (out / fashion_mnist.TFDS_NAME).exists()


def test_pipeline_epoch_over_real_data_two_processes(data_dir):
    cfg = pipeline.default_data_config(
        "tfds", "fashion_mnist", 1000, data_dir=data_dir, split="test", num_epochs=1, dequantize=False
    )
    per_process = []
    for p in range(2):
        batches = list(pipeline.make_iterator(cfg, process_index=p, process_count=2, seed=3))
        assert len(batches) == 10 and batches[0]["image"].shape == (500, 28, 28, 1)
        per_process.append(batches)
    images = np.concatenate([b["image"] for bs in per_process for b in bs])
    labels = np.concatenate([b["label"] for bs in per_process for b in bs])
    assert images.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
    raw = _raw("t10k-images-idx3-ubyte.gz", 16).reshape(10000, 784)
    # Each example exactly once: the epoch's images, mapped back by (y + 1) * 127.5, are a permutation
    # of the raw file's images.
    recovered = np.round((images.reshape(10000, 784).astype(np.float64) + 1) * 127.5).astype(np.uint8)
    assert sorted(r.tobytes() for r in recovered) == sorted(r.tobytes() for r in raw)
    raw_labels = _raw("t10k-labels-idx1-ubyte.gz", 8)
    assert not np.array_equal(per_process[0][0]["label"], raw_labels[:500])  # Shuffled.
    assert images.min() == -1.0 and images.max() == 1.0
