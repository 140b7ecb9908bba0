"""Feature statistics over a stream of image batches, sharded across devices and processes.

The stream is any iterable of *process-local* batches ([b, H, W, C] numpy arrays, b <= local batch
size). Each batch is padded to the fixed local batch size (a multiple of this process's devices; the
padding carries mask 0), assembled into one global batch-sharded array, passed through a jitted
feature function (data parallel under the array's sharding), and reduced on device to per-batch
moments (`fid.batch_moments`); only those are fetched. Every process therefore ends with the same
statistics. Features themselves are gathered only when asked (`keep`, for KID and precision/recall).

All processes must consume the same number of batches (`dataset_batches` guarantees it by giving
shorter shards empty, fully masked batches). Batches carry their record indices, so gathered outputs
are put back in record order whatever the device / process layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from diffusion_jax.metrics import fid


class FeatureResult(NamedTuple):
    mu: np.ndarray  # [d]
    sigma: np.ndarray  # [d, d]
    count: int
    features: np.ndarray | None  # [min(keep, count), d] (same on every process), or None


def default_mesh() -> jax.sharding.Mesh:
    """A 1-D mesh ('data',) over all devices of all processes (Auto axes: GSPMD propagation)."""
    return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))


def _auto(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
    """The same devices and axis names with Auto axis types (the reductions here need no annotations)."""
    return jax.sharding.Mesh(
        mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names)
    )


def local_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """Per-process batch rows for a requested per-process `batch_size`: rounded up to a multiple of the
    process's devices in `mesh`."""
    n_local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    return int(math.ceil(max(int(batch_size), 1) / n_local) * n_local)


def to_global(local: np.ndarray, rows: int, mesh: jax.sharding.Mesh, axis: str = "data"):
    """Pad a local batch [b, ...] (b <= rows) to `rows` and build (global array [rows * processes, ...],
    global mask) sharded over `axis`."""
    local = np.asarray(local)
    b = local.shape[0]
    if b > rows:
        raise ValueError(f"local batch of {b} rows exceeds the local batch size {rows}")
    pad = np.zeros((rows - b, *local.shape[1:]), local.dtype)
    mask = np.concatenate([np.ones(b, np.float32), np.zeros(rows - b, np.float32)])
    sharding = NamedSharding(mesh, P(axis))
    x = jax.make_array_from_process_local_data(sharding, np.concatenate([local, pad]))
    m = jax.make_array_from_process_local_data(sharding, mask)
    return x, m


def _replicate(x, mesh):
    return jax.jit(lambda a: a, out_shardings=NamedSharding(mesh, P()))(x)


def _gather_rows(tree, idx_global, mesh):
    """Fetch (indices [R], outputs) of the real rows of a global step on every process."""
    tree, idx = jax.device_get(_replicate((tree, idx_global), mesh))
    real = np.asarray(idx) >= 0
    return np.asarray(idx)[real], jax.tree.map(lambda a: np.asarray(a)[real], tree)


def feature_statistics(
    feature_fn: Callable[[jax.Array], jax.Array],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    batch_size: int,
    mesh: jax.sharding.Mesh | None = None,
    keep: int = 0,
    progress: Callable[[int], None] | None = None,
) -> FeatureResult:
    """Mean / covariance of feature_fn(images) over the stream `batches` (see module doc).

    feature_fn: [B, H, W, C] -> [B, d] (jit-compatible). batches: (record indices [b], images [b, ...])
    per process and step (e.g. `dataset_batches`), b <= batch_size. keep: also return the features of
    records 0..keep-1, in record order, on every process (for KID / precision-recall), so they do not
    depend on the number of devices or processes. progress(n) gets the real rows of each step.
    """
    mesh = default_mesh() if mesh is None else _auto(mesh)
    rows = local_batch_size(batch_size, mesh)
    acc = fid.MomentAccumulator()
    kept: dict[int, np.ndarray] = {}
    fn = jax.jit(feature_fn)
    for idx, local in batches:
        x, m = to_global(local, rows, mesh)
        f = fn(x)
        moments = jax.device_get(fid.batch_moments(f, m))
        acc.add_moments(*moments)
        if keep > 0:
            ig, _ = to_global(np.asarray(idx, np.int64), rows, mesh)
            ig = jnp.where(m > 0, ig, -1)
            for i, row in zip(*_gather_rows(f, ig, mesh), strict=True):
                if i < keep:
                    kept[int(i)] = row
        if progress is not None:
            progress(int(moments[0]))
    mu, sigma = acc.statistics()
    feats = np.stack([kept[i] for i in sorted(kept)]) if kept else None
    return FeatureResult(mu, sigma, int(acc.n), feats)


def map_records(
    fn: Callable[[jax.Array, jax.Array], object],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    batch_size: int,
    mesh: jax.sharding.Mesh | None = None,
    progress: Callable[[int], None] | None = None,
):
    """Apply fn(indices [B], images [B, ...]) -> pytree of [B, ...] to a sharded stream of
    (indices, images) batches; returns (indices [N] sorted, outputs [N, ...]) on every process."""
    mesh = default_mesh() if mesh is None else _auto(mesh)
    rows = local_batch_size(batch_size, mesh)
    jfn = jax.jit(fn)
    all_idx, outs = [], []
    for idx, local in batches:
        x, m = to_global(local, rows, mesh)
        ig, _ = to_global(np.asarray(idx, np.int64), rows, mesh)
        ig = jnp.where(m > 0, ig, -1)
        i, o = _gather_rows(jfn(jnp.maximum(ig, 0), x), ig, mesh)
        all_idx.append(i)
        outs.append(o)
        if progress is not None:
            progress(len(i))
    order = np.argsort(np.concatenate(all_idx))
    return np.concatenate(all_idx)[order], jax.tree.map(lambda *a: np.concatenate(a)[order], *outs)


def dataset_batches(n: int, read: Callable[[np.ndarray], np.ndarray], batch_size: int):
    """This process's share of records 0..n-1 (contiguous, np.array_split over processes) as
    (indices [b], read(indices) [b, ...]) batches of at most `batch_size`. Every process yields the
    same number of batches (empty ones where its shard is shorter)."""
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got {n} and {batch_size}")
    mine = np.array_split(np.arange(n), jax.process_count())[jax.process_index()]
    steps = math.ceil(math.ceil(n / jax.process_count()) / batch_size)
    for s in range(steps):
        idx = mine[s * batch_size : (s + 1) * batch_size]
        yield idx, read(idx)


def array_reader(images: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """read(indices) over an in-memory array [N, H, W, C]."""
    return lambda idx: np.asarray(images[idx])


def tfds_reader(name: str, split: str, data_dir: str | None = None, key: str = "image"):
    """(n, read) over a TFDS dataset's random-access data source (array_record; no TensorFlow)."""
    import tensorflow_datasets as tfds

    source = tfds.data_source(name, split=split, data_dir=data_dir)
    first = np.asarray(source[0][key])

    def read(idx):
        if len(idx) == 0:
            return np.zeros((0, *first.shape), first.dtype)
        return np.stack([np.asarray(source[int(i)][key]) for i in idx])

    return len(source), read


def uint8_images(x: jax.Array) -> jax.Array:
    """Model samples in [-1, 1] -> uint8-valued images in [0, 1] floats (rounded as an 8-bit PNG
    stores them; FID protocols compute features from 8-bit images). Pass-through for uint8 input."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    return jnp.clip(jnp.round((x.astype(jnp.float32) + 1.0) * 127.5), 0.0, 255.0) / 255.0
