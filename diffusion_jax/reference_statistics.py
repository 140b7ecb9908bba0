"""Reference feature statistics (mean / covariance `.npz`) of a real image set, for FID-style metrics.

    python -m diffusion_jax.reference_statistics --features=inception --weights=<converted .npz> \
        --tfds=cifar10 --split=train --out=stats/cifar10_train_inception.npz
    python -m diffusion_jax.reference_statistics --features=classifier \
        --weights=checkpoints/fmnist_classifier.npz --idx=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz \
        --out=stats/fmnist_test_classifier.npz

Images come from one of: a TFDS dataset (`--tfds=name --split=... [--data_dir=...]`, read through its
array_record data source, no TensorFlow), an array file (`--array=x.npy` or `.npz` key `images`,
uint8 [N, H, W(, C)]), or an IDX file (`--idx=...`, the MNIST / Fashion-MNIST format). `--num=N` keeps
the first N records. Features are InceptionV3 pool3 (pytorch-fid's network, `--weights` a file
converted by `python -m diffusion_jax.metrics.inception_weights`) or the Fashion-MNIST classifier's
penultimate layer (`make fmnist_classifier`).

The records are split over processes and batch-sharded over devices; each step is reduced to moments
on device (`metrics.features.feature_statistics`), so the statistics are the same for any device or
process count (up to float reduction order) and no features are gathered. The output holds `mu`,
`sigma` (pytorch-fid's key names, loadable as `eval.reference_stats`) and metadata: features, the
weights file's sha256, the source, the number of images.

Multi-host: `--coordinator_address=host:port --num_processes=P --process_id=i` (and `--cpu_collectives=gloo`
for CPU processes); process 0 writes the file.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

FEATURES = ("inception", "classifier")


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse and check the flags (before any JAX work): one-line errors naming the flag."""
    p = argparse.ArgumentParser(
        prog="python -m diffusion_jax.reference_statistics", description=__doc__.split("\n")[0]
    )
    p.add_argument("--features", required=True, help=f"one of {FEATURES}")
    p.add_argument("--weights", required=True, help="converted Inception .npz or classifier checkpoint .npz")
    p.add_argument("--out", required=True, help="output .npz (mu, sigma, metadata)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tfds", help="TFDS dataset name (prepared under --data_dir)")
    src.add_argument("--array", help=".npy / .npz (key 'images') of uint8 images [N, H, W(, C)]")
    src.add_argument("--idx", help="IDX image file (MNIST format, optionally .gz)")
    p.add_argument("--split", default="train", help="TFDS split (with --tfds)")
    p.add_argument("--data_dir", default=None, help="TFDS data_dir (with --tfds)")
    p.add_argument("--num", type=int, default=0, help="use the first N records (0 = all)")
    p.add_argument("--batch_size", type=int, default=64, help="images per process per step")
    p.add_argument("--coordinator_address", default=None)
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    p.add_argument("--cpu_collectives", default=None, help="e.g. gloo (CPU multi-process)")
    a = p.parse_args(argv)
    if a.features not in FEATURES:
        p.error(f"--features={a.features!r} is not one of {FEATURES}")
    if not os.path.isfile(a.weights):
        hint = (
            "convert pytorch-fid's weights with `python -m diffusion_jax.metrics.inception_weights`"
            if a.features == "inception"
            else "train it with `make fmnist_classifier`"
        )
        p.error(f"--weights={a.weights!r} not found; {hint}")
    for flag in ("array", "idx"):
        path = getattr(a, flag)
        if path and not os.path.isfile(path):
            p.error(f"--{flag}={path!r} not found")
    if a.num < 0 or a.batch_size < 1:
        p.error(f"--num={a.num} must be >= 0 and --batch_size={a.batch_size} >= 1")
    return a


def open_images(a: argparse.Namespace):
    """(number of records, read(indices) -> uint8 [b, H, W, C], description) of the chosen source."""
    from diffusion_jax.metrics import features

    if a.tfds:
        n, read = features.tfds_reader(a.tfds, a.split, a.data_dir)
        desc = f"tfds:{a.tfds}/{a.split}"
    else:
        if a.array:
            loaded = np.load(a.array)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    if "images" not in loaded.files:
                        raise ValueError(f"--array={a.array!r} has no 'images' entry (has {loaded.files})")
                    loaded = loaded["images"]
            images = np.asarray(loaded)
            desc = f"array:{os.path.basename(a.array)}"
        else:
            from diffusion_jax.data.fashion_mnist import read_idx

            images, desc = read_idx(a.idx), f"idx:{os.path.basename(a.idx)}"
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 [N, H, W(, C)], got {images.dtype} {images.shape}")
        n, read = len(images), features.array_reader(images)
    n = min(n, a.num) if a.num else n

    def read4(idx):
        x = np.asarray(read(idx))
        return x[..., None] if x.ndim == 3 else x

    return n, read4, desc


def feature_function(kind: str, weights: str):
    """The jit-compatible feature function of `kind` ('inception' or 'classifier') from `weights`."""
    if kind == "inception":
        from diffusion_jax.metrics import inception, inception_weights

        return inception.feature_fn(*inception_weights.load_inception(weights))
    from diffusion_jax.metrics import classifier

    g, st, _ = classifier.load(weights)
    return classifier.feature_fn(g, st)


def compute(a: argparse.Namespace):
    """(FeatureResult, source description) of the parsed request over all devices of all processes."""
    from diffusion_jax.metrics import features

    n, read, desc = open_images(a)
    if n < 2:
        raise ValueError(f"need at least 2 images for a covariance, the source has {n}")
    batches = features.dataset_batches(n, read, a.batch_size)
    fn = feature_function(a.features, a.weights)
    return features.feature_statistics(fn, batches, batch_size=a.batch_size), desc


def main(argv: list[str] | None = None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    from diffusion_jax.training import distributed

    distributed.initialize(
        a.coordinator_address, a.num_processes, a.process_id, cpu_collectives=a.cpu_collectives
    )
    import jax

    from diffusion_jax.metrics import fid, inception_weights

    r, desc = compute(a)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        fid.save_statistics(
            a.out,
            r.mu,
            r.sigma,
            num_images=r.count,
            features=a.features,
            weights_sha256=inception_weights.sha256_of(a.weights),
            source=desc,
        )
        print(f"wrote {a.out}: {a.features} statistics of {r.count} images (d = {r.mu.shape[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
