"""Fashion-MNIST as a local TFDS dataset built from Debian's ``dataset-fashion-mnist`` files.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms", arXiv:1708.07747): 60000 train + 10000 test grayscale 28x28 images in 10
classes, shipped as gzipped IDX files. Debian's package ``dataset-fashion-mnist`` installs the four
files under ``/usr/share/datasets/fashion-mnist/``; this module turns them into a TFDS dataset
(``fashion_mnist_debian``) in the ``array_record`` file format without any download.

No TensorFlow is needed: with ``file_format='array_record'`` TFDS 4.9 writes the records with its own
protobuf serializer, and ``tfds.data_source`` reads them back with ``array_record`` + numpy. The one
feature type that needs TensorFlow to *encode* is ``tfds.features.Image`` (PNG encoding), so the image is
stored as a raw ``uint8`` ``Tensor`` of shape ``[28, 28, 1]`` with ``encoding='bytes'`` (one 784-byte
string per record instead of a 784-entry int64 list: 3x faster to write and read; same shape/dtype as the
image of TFDS's own ``fashion_mnist``; ~40 MB on disk).

The builder's info sets ``disable_shuffling=True`` so record ``k`` of a split is image ``k`` of the IDX file:
shuffling is the input pipeline's job (``diffusion_jax.data.pipeline``), per epoch, from a seed.
"""

from __future__ import annotations

import fcntl
import gzip
import os
import struct

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
"""Where ``apt-get install dataset-fashion-mnist`` puts the IDX files."""

TFDS_NAME = "fashion_mnist_debian"
"""Name under which the builder below is registered with TFDS (``tfds.data_source(TFDS_NAME)``)."""

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SPLIT_SIZES = {"train": 60000, "test": 10000}

_MISSING_MSG = (
    "Fashion-MNIST source files not found: {missing}. They come from the Debian package "
    "'dataset-fashion-mnist'; install it with\n    sudo apt-get install dataset-fashion-mnist\n"
    "(or pass source_dir= pointing at a directory with the four *-ubyte.gz IDX files)."
)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one (optionally gzipped) IDX file (LeCun et al.'s MNIST format) into a numpy array.

    Format: 2 zero bytes, a dtype code (0x08 = uint8), the number of dimensions ``d``, then ``d``
    big-endian uint32 sizes, then the row-major data.

    Returns:
      ``uint8`` array, e.g. ``[N, 28, 28]`` for an image file or ``[N]`` for a label file.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not a uint8 IDX file (header {raw[:4]!r})")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, got {data.size}")
    return data.reshape(shape)


def check_source_files(source_dir: str | os.PathLike = DEBIAN_DIR) -> dict[str, tuple[str, str]]:
    """Returns ``{split: (images_path, labels_path)}``; raises ``FileNotFoundError`` naming the apt package.

    Raises:
      FileNotFoundError: if any of the four IDX files is missing, with the ``apt-get install`` command.
    """
    paths = {s: tuple(os.path.join(source_dir, f) for f in files) for s, files in _FILES.items()}
    missing = [p for pair in paths.values() for p in pair if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(_MISSING_MSG.format(missing=", ".join(missing)))
    return paths


def load_split_numpy(split: str, source_dir: str | os.PathLike = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Loads one split straight from the IDX files.

    Returns:
      ``(images [N, 28, 28, 1] uint8, labels [N] int64)`` with ``N`` = 60000 (train) or 10000 (test).
    """
    if split not in _FILES:
        raise ValueError(f"split={split!r} is not a Fashion-MNIST split; valid: {sorted(_FILES)}")
    img_path, lbl_path = check_source_files(source_dir)[split]
    images = read_idx(img_path)
    labels = read_idx(lbl_path).astype(np.int64)
    if images.shape != (SPLIT_SIZES[split], 28, 28) or labels.shape != (SPLIT_SIZES[split],):
        raise ValueError(f"unexpected Fashion-MNIST {split} shapes {images.shape}, {labels.shape}")
    return images[..., None], labels


class FashionMnistDebian(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder for Fashion-MNIST read from local IDX files (no download, no TensorFlow).

    Features: ``image`` uint8 ``[28, 28, 1]``, ``label`` ``ClassLabel(10)``. Splits: ``train`` (60000),
    ``test`` (10000), in IDX-file order. ``skip_registration``: importing this module does not add the
    builder to TFDS's global registry (TFDS finds a built copy from its files instead).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raw uint8 tensors from Debian's dataset-fashion-mnist IDX files."}
    # TFDS derives `code_path` (where it looks for a checksums file) through `importlib_resources`, a
    # backport that is not installed here; pinning it to this file skips that lookup (no checksums:
    # nothing is downloaded).
    code_path = epath.Path(__file__)

    def __init__(self, *, source_dir: str | os.PathLike = DEBIAN_DIR, **kwargs):
        self._source_dir = os.fspath(source_dir)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST (Zalando) from Debian's dataset-fashion-mnist package.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8, encoding="bytes"),
                    "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                }
            ),
            supervised_keys=("image", "label"),
            # Keep file order; shuffling happens per epoch in the grain pipeline.
            disable_shuffling=True,
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            citation="Xiao, Rasul, Vollgraf (2017). Fashion-MNIST. arXiv:1708.07747.",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing is downloaded.
        check_source_files(self._source_dir)
        return {split: self._generate_examples(split) for split in _FILES}

    def _generate_examples(self, split):
        images, labels = load_split_numpy(split, self._source_dir)
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i])}


def make_builder(
    data_dir: str | os.PathLike, source_dir: str | os.PathLike = DEBIAN_DIR
) -> FashionMnistDebian:
    """The (array_record) builder for ``data_dir``, without building anything."""
    return FashionMnistDebian(data_dir=os.fspath(data_dir), file_format="array_record", source_dir=source_dir)


def prepare(data_dir: str | os.PathLike, source_dir: str | os.PathLike = DEBIAN_DIR) -> FashionMnistDebian:
    """Builds ``fashion_mnist_debian`` under ``data_dir`` once (array_record) and returns the builder.

    A second call finds ``data_dir/fashion_mnist_debian/1.0.0`` complete and does nothing. Afterwards
    ``prepare(data_dir).as_data_source()``, ``tfds.data_source('fashion_mnist_debian', data_dir=data_dir)``
    or ``tfds.builder('fashion_mnist_debian', data_dir=data_dir).as_data_source()`` (the last two read the
    files alone, without this module) give random-access splits of dicts
    ``{'image': uint8 [28, 28, 1], 'label': int}``.

    Raises:
      FileNotFoundError: the IDX files are absent (message says ``apt-get install dataset-fashion-mnist``).
    """
    data_dir = os.fspath(data_dir)
    builder = make_builder(data_dir, source_dir)
    if builder.is_prepared():
        return builder
    check_source_files(source_dir)  # Fail with the apt hint before TFDS creates any directory.
    os.makedirs(data_dir, exist_ok=True)
    # Several processes (hosts sharing a file system, pytest-xdist workers) may call this at once: one
    # builds while the others wait on the lock, then find the dataset prepared.
    with open(os.path.join(data_dir, f".{TFDS_NAME}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not builder.is_prepared():
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False)
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return builder
