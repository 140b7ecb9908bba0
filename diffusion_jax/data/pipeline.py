"""Input pipelines: TFDS array_record sources through grain, and seeded iterators for 2-D / analytic samplers.

Public entry: ``make_iterator(data_cfg, *, process_index=0, process_count=1, seed=0)`` returns an iterator
of per-process batches (dicts of numpy arrays) with ``get_state()`` / ``set_state()`` (JSON-serialisable
dicts, for saving with Orbax next to the train state).

**Global-batch layout.** Every pipeline defines one global stream of examples (indices ``0, 1, 2, ...``);
global batch ``k`` is stream elements ``[k B, (k+1) B)`` with ``B = batch_size`` (global). Process ``p``
of ``P`` receives rows ``[p b, (p+1) b)`` of it, ``b = B / P``. Hence concatenating the batches of all
processes in process order gives exactly the batch a single process would see, and every random choice
(shuffle order, dequantization noise, flips, toy samples) depends only on the seed and the *global* element
index: a run on 1 process and on 4 processes consume identical global batches.

**TFDS / latents** (``source='tfds'`` or ``'latents'``), a grain ``MapDataset`` chain:
``source -> shuffle(shuffle_seed) -> repeat(num_epochs) -> random_map(per-example transform) -> this
process's rows of each global batch, stacked``, then ``to_iter_dataset`` with ``num_threads`` reader
threads. Grain shuffles each epoch with its own permutation (seed ``shuffle_seed + epoch``, a Feistel index
shuffle, so nothing is materialised; with ``shuffle_seed = -1`` the seed is hashed from the run seed, so
neighbouring run seeds do not share permutations), and seeds each example's ``np.random.Generator`` from
``(seed, global index)``, which makes dequantization/flip noise differ between epochs yet be reproducible.
The remainder of the stream that does not fill a global batch is dropped (for a 1-epoch eval pass choose a
``batch_size`` dividing the split). The iterator state holds grain's (``{'next_index': k}``, the next
global batch): restoring it resumes with exactly the same batches, also on another number of processes.

**Samplers** (``source='toy2d'`` or ``'analytic'``, or ``make_sampler_iterator`` for any
``fn(key, n) -> [n, d]``): infinite; element ``r`` of global batch ``k`` is drawn from key
``fold_in(fold_in(key(seed), k), r)``, so batch ``k`` of process ``p`` depends only on ``(seed, k, p)``
(and ``b``); the state is ``{'step': k}``.

Batches: ``{'image': float32 [b, H, W, C], 'label': int32 [b]}`` (TFDS; ``label`` when the dataset has
one), ``{'x': float32 [b, ...], 'label': int32 [b]}`` (latents), ``{'x': float32 [b, 2]}`` plus
``'x0'`` when ``pair_with`` is set (toy2d), ``{'x': float32 [b, D]}`` (analytic).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from diffusion_jax.data import fashion_mnist, latents, toy2d, transforms
from diffusion_jax.data.iterators import (  # noqa: F401  (re-exported)
    DataIterator,
    GrainIterator,
    SamplerIterator,
    _BatchedReads,
    _cached_jitted_draw,
    _derive_seed,
    _draw_elements,
    _grain_batches,
    _image_example,
    _is_int,
    _jitted_draw,
    _latent_example,
    _ProcessBatches,
    make_sampler_iterator,
)

SOURCES = ("toy2d", "analytic", "tfds", "latents")


@dataclasses.dataclass(frozen=True)
class TfdsDataset:
    """What the pipeline needs to know about a TFDS dataset before opening it.

    Attributes:
      tfds_name: TFDS builder name (``tfds.data_source(tfds_name)``).
      splits: valid split names (TFDS slicing such as ``'train[:90%]'`` is accepted on top).
      image_shape: native ``(H, W, C)`` of the ``'image'`` feature.
      num_classes: number of labels (0 if unlabelled).
      builder: for a dataset built locally, ``fn(data_dir) -> DatasetBuilder`` (nothing is built);
        None for a TFDS catalogue dataset, which must already be prepared in ``data_dir`` as array_record
        (e.g. ``tfds build --file_format=array_record`` on a machine with TensorFlow).
      prepare: for a local dataset, ``fn(data_dir) -> DatasetBuilder`` that also builds it when missing.
    """

    tfds_name: str
    splits: tuple[str, ...]
    image_shape: tuple[int, int, int]
    num_classes: int
    builder: Callable[[str], Any] | None = None
    prepare: Callable[[str], Any] | None = None


TFDS_DATASETS: dict[str, TfdsDataset] = {
    "fashion_mnist": TfdsDataset(
        fashion_mnist.TFDS_NAME,
        ("train", "test"),
        (28, 28, 1),
        10,
        builder=fashion_mnist.make_builder,
        prepare=fashion_mnist.prepare,
    ),
    "mnist": TfdsDataset("mnist", ("train", "test"), (28, 28, 1), 10),
    "cifar10": TfdsDataset("cifar10", ("train", "test"), (32, 32, 3), 10),
    "imagenet64": TfdsDataset("imagenet_resized/64x64", ("train", "validation"), (64, 64, 3), 1000),
}
"""Config ``name`` -> dataset (explicit table; ``fashion_mnist`` is built locally from Debian's files)."""

# Documented config fields (see `default_data_config`); anything else is rejected as a likely typo.
_FIELDS = (
    "source",
    "name",
    "pair_with",
    "split",
    "batch_size",
    "data_dir",
    "prepare",
    "latents_path",
    "image_size",
    "num_channels",
    "resize",
    "dequantize",
    "random_flip",
    "shuffle",
    "shuffle_seed",
    "num_epochs",
    "num_threads",
    "prefetch",
    "captions",
    "embeddings_path",
    "embeddings_mask_path",
    "pairs_path",
)
# Text-conditioning fields added later: configs saved before them still validate (defaults apply).
_OPTIONAL = {"captions": "", "embeddings_path": "", "embeddings_mask_path": "", "pairs_path": ""}


def default_data_dir() -> str:
    """``$TFDS_DATA_DIR`` if set, else ``~/tensorflow_datasets`` (TFDS's own default)."""
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def default_data_config(
    source: str = "toy2d", name: str = "moons", batch_size: int = 256, **overrides: Any
) -> ml_collections.ConfigDict:
    """A complete, validated data config; ``overrides`` set any other field.

    Fields (integer sentinels instead of None so command-line overrides keep a type):

    - ``source``: ``'toy2d'`` | ``'analytic'`` | ``'tfds'`` | ``'latents'``.
    - ``name``: toy2d: a ``toy2d.TOY_SAMPLERS`` key; analytic: an ``analytic.DISTRIBUTIONS`` key (built
      with its default arguments, e.g. ``gmm_2d_ring``); tfds: a ``TFDS_DATASETS`` key; latents: free text.
    - ``pair_with``: toy2d only; ``''`` or a toy name whose samples are added as ``'x0'`` (source of a
      toy-to-toy flow, e.g. ``name='moons', pair_with='8gaussians'``).
    - ``split``: TFDS split (``'train'``; slices like ``'train[:1000]'`` allowed).
    - ``batch_size``: GLOBAL batch; each of ``process_count`` processes gets ``batch_size // process_count``.
    - ``data_dir``: TFDS data dir (``''`` -> ``default_data_dir()``).
    - ``prepare``: build local datasets (fashion_mnist) into ``data_dir`` when missing (once).
    - ``latents_path``: ``.npz`` written by ``latents.cache_latents`` (``source='latents'``).
    - ``image_size``: output height = width (0, the default: the dataset's own size, so switching
      ``name`` on the command line needs nothing else); ``num_channels`` (0: the dataset's own).
    - ``resize``: ``transforms.RESIZE_METHODS``; how to reach ``image_size`` when it differs.
    - ``dequantize``: uniform dequantization ``(x + U[0,1)) / 256`` mapped to ``[-1, 1)``; else
      ``x / 127.5 - 1``.
    - ``random_flip``: horizontal flip with probability 1/2.
    - ``shuffle``: shuffle each epoch; ``shuffle_seed``: its seed (-1 -> the ``seed`` of ``make_iterator``).
    - ``num_epochs``: 0 -> infinite; else stop after that many passes.
    - ``num_threads`` / ``prefetch``: grain reader threads / prefetched batches (0 -> read in the
      caller's thread).
    - ``captions``: ``''`` or ``'class_template'`` (template captions from class names, tokenized to
      bytes on the host for a model with ``text_encoder``); ``embeddings_path`` /
      ``embeddings_mask_path``: ``''`` or ``.npy`` files of precomputed per-label embeddings (a
      cross-attention context). Both are applied by ``diffusion_jax.data.captions`` when batches are handed to the
      model, not by the iterator here.
    - ``pairs_path``: ``''`` or a reflow pairs ``.npz`` (`diffusion_jax.data.pairs`, written by
      ``python -m diffusion_jax.reflow``): the batches are then its pairs (the data key = x1, ``'x0'`` =
      x0), shuffled per epoch, instead of the configured source's samples; ``name`` still names the
      data distribution (evaluation). Needs ``objective.coupling='reflow'`` (checked by the run config).

    Returns:
      ``ml_collections.ConfigDict`` with exactly the fields above.
    """
    cfg = ml_collections.ConfigDict(
        {
            "source": source,
            "name": name,
            "pair_with": "",
            "split": "train",
            "batch_size": batch_size,
            "data_dir": "",
            "prepare": True,
            "latents_path": "",
            "image_size": 0,
            "num_channels": 0,
            "resize": "none",
            "dequantize": True,
            "random_flip": False,
            "shuffle": True,
            "shuffle_seed": -1,
            "num_epochs": 0,
            "num_threads": 2,
            "prefetch": 4,
            **_OPTIONAL,
        }
    )
    for k, v in overrides.items():
        if k not in _FIELDS:
            raise ValueError(f"unknown data config field {k!r}; valid fields: {sorted(_FIELDS)}")
        cfg[k] = v
    validate_data_config(cfg)
    return cfg


def validate_data_config(
    data_cfg: Mapping[str, Any] | ml_collections.ConfigDict, process_count: int = 1
) -> None:
    """Checks every field of a data config; raises ``ValueError`` naming the field and the valid choices.

    Touches no file and compiles nothing (runs before any work).
    """
    cfg = dict(data_cfg.items()) if hasattr(data_cfg, "items") else dict(data_cfg)
    unknown = sorted(set(cfg) - set(_FIELDS))
    missing = sorted(set(_FIELDS) - set(cfg) - set(_OPTIONAL))
    if unknown or missing:
        raise ValueError(
            f"data config: unknown fields {unknown}, missing fields {missing}; "
            f"valid fields: {sorted(_FIELDS)} "
            "(start from default_data_config())"
        )
    source, name = cfg["source"], cfg["name"]
    if source not in SOURCES:
        raise ValueError(f"data.source={source!r}; valid: {list(SOURCES)}")
    if source == "toy2d":
        if name not in toy2d.TOY_SAMPLERS:
            raise ValueError(
                f"data.name={name!r} is not a toy2d dataset; valid: {sorted(toy2d.TOY_SAMPLERS)}"
            )
        if cfg["pair_with"] not in ("", *toy2d.TOY_SAMPLERS):
            raise ValueError(
                f"data.pair_with={cfg['pair_with']!r}; valid: '' or {sorted(toy2d.TOY_SAMPLERS)}"
            )
    elif cfg["pair_with"]:
        raise ValueError(f"data.pair_with is only for source='toy2d' (source={source!r})")
    if source == "analytic":
        valid = _analytic_names()
        if name not in valid:
            raise ValueError(f"data.name={name!r} is not an analytic distribution; valid: {valid}")
    if source == "tfds":
        if name not in TFDS_DATASETS:
            raise ValueError(f"data.name={name!r} is not a TFDS dataset; valid: {sorted(TFDS_DATASETS)}")
        spec = TFDS_DATASETS[name]
        split = cfg["split"]
        if not isinstance(split, str) or split.split("[")[0] not in spec.splits:
            raise ValueError(
                f"data.split={split!r} for {name}; valid: {list(spec.splits)} (optionally sliced)"
            )
        h, w, c = spec.image_shape
        if cfg["resize"] not in transforms.RESIZE_METHODS:
            raise ValueError(f"data.resize={cfg['resize']!r}; valid: {list(transforms.RESIZE_METHODS)}")
        size = cfg["image_size"]
        if not _is_int(size) or size < 0:
            raise ValueError(f"data.image_size={size!r} must be an int >= 0 (0: native {h})")
        if size not in (0, h) and cfg["resize"] == "none":
            raise ValueError(
                f"data.image_size={size} differs from {name}'s {h}x{w}: set data.resize to one of "
                f"{list(transforms.RESIZE_METHODS[1:])}"
            )
        if cfg["resize"] == "pad" and 0 < size < h:
            raise ValueError(f"data.resize='pad' cannot shrink {h} to data.image_size={size}")
        if cfg["num_channels"] not in (0, c):
            raise ValueError(f"data.num_channels={cfg['num_channels']!r}; {name} has {c} (or 0 for native)")
    if source == "latents":
        if not isinstance(cfg["latents_path"], str) or not cfg["latents_path"].endswith(".npz"):
            raise ValueError(f"data.latents_path={cfg['latents_path']!r} must name a .npz latent cache")
    bs = cfg["batch_size"]
    if not _is_int(process_count) or process_count < 1:
        raise ValueError(f"process_count={process_count!r} must be an int >= 1")
    if not _is_int(bs) or bs <= 0 or bs % process_count:
        raise ValueError(
            f"data.batch_size={bs!r} must be a positive int divisible by process_count={process_count}"
        )
    for flag in ("dequantize", "random_flip", "shuffle", "prepare"):
        if not isinstance(cfg[flag], bool):
            raise ValueError(f"data.{flag}={cfg[flag]!r} must be True or False")
    ss = cfg["shuffle_seed"]
    if not _is_int(ss) or not -1 <= ss < 2**32:
        raise ValueError(f"data.shuffle_seed={ss!r} must be -1 (use the run seed) or in [0, 2**32)")
    for field in ("num_epochs", "num_threads", "prefetch"):
        if not _is_int(cfg[field]) or cfg[field] < 0:
            raise ValueError(f"data.{field}={cfg[field]!r} must be an int >= 0")
    for field in _OPTIONAL:
        if not isinstance(cfg.get(field, ""), str):
            raise ValueError(f"data.{field}={cfg[field]!r} must be a string ('' for none)")
    pp = cfg.get("pairs_path", "")
    if pp and not pp.endswith(".npz"):
        raise ValueError(
            f"data.pairs_path={pp!r} must name a .npz pairs file (python -m diffusion_jax.reflow)"
        )
    if pp and source == "latents":
        raise ValueError(
            "data.pairs_path: reflow pairs of a latent model are not supported (source='latents')"
        )
    if not isinstance(cfg["data_dir"], str):
        raise ValueError(f"data.data_dir={cfg['data_dir']!r} must be a string ('' for the default)")


def example_spec(
    data_cfg: ml_collections.ConfigDict | Mapping[str, Any],
) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Per-example ``{key: (shape, dtype)}`` of the batches of ``make_iterator(data_cfg)`` (no batch axis).

    For building models and sharding specs before any data is read; ``latents`` opens the cache file to
    read the latent shape. Example: fashion_mnist -> ``{'image': ((28, 28, 1), float32), 'label': ((),
    int32)}``; toy2d with ``pair_with`` -> ``{'x': ((2,), float32), 'x0': ((2,), float32)}``.
    """
    validate_data_config(data_cfg)
    spec = _example_spec(data_cfg)
    if data_cfg.get("pairs_path", ""):  # reflow pairs: the data key (x1) and its source draw x0, no label
        key = "image" if "image" in spec else "x"
        return {key: spec[key], "x0": spec[key]}
    return spec


def _example_spec(data_cfg):
    source, name = data_cfg["source"], data_cfg["name"]
    if source == "toy2d":
        spec = {"x": ((2,), np.float32)}
        if data_cfg["pair_with"]:
            spec["x0"] = ((2,), np.float32)
        return spec
    if source == "analytic":
        return {"x": ((analytic_sampler(name).dim,), np.float32)}
    if source == "latents":
        src = latents.LatentSource(data_cfg["latents_path"])
        spec = {"x": (src.latent_shape, np.float32)}
        return {**spec, "label": ((), np.int32)} if src.has_labels else spec
    h, _, c = TFDS_DATASETS[name].image_shape
    size = data_cfg["image_size"] or h
    spec = {"image": ((size, size, c), np.float32)}
    return {**spec, "label": ((), np.int32)} if TFDS_DATASETS[name].num_classes else spec


def _analytic_names() -> list[str]:
    from diffusion_jax import analytic  # Deferred: only analytic configs need it.

    return sorted(analytic.DISTRIBUTIONS)


@functools.cache
def analytic_sampler(name: str) -> Callable[[jax.Array, int], jax.Array]:
    """``fn(key, n) -> [n, D]`` exact samples of ``analytic.get_distribution(name)`` (default arguments).

    Cached per name so that iterators re-created (resume, several processes) share one compiled sampler.
    """
    from diffusion_jax import analytic

    dist = analytic.get_distribution(name)

    def sample(key: jax.Array, n: int) -> jax.Array:
        return dist.sample(key, n)

    sample.dim = int(dist.dim)
    return sample


def open_tfds_source(data_cfg: Mapping[str, Any] | ml_collections.ConfigDict):
    """Opens the random-access TFDS source of a (validated) ``source='tfds'`` config.

    Builds ``fashion_mnist`` into ``data_dir`` first when ``prepare`` is set and it is missing. Never
    downloads: other datasets must already be prepared as array_record in ``data_dir``.

    Returns:
      ``tfds`` ``ArrayRecordDataSource``; element ``i`` is ``{'image': uint8 [H, W, C], 'label': int}``.
    """
    spec = TFDS_DATASETS[data_cfg["name"]]
    data_dir = data_cfg["data_dir"] or default_data_dir()
    split = data_cfg["split"]
    if spec.builder is not None:  # Built locally: open through our (unregistered) builder class.
        builder = spec.prepare(data_dir) if data_cfg["prepare"] else spec.builder(data_dir)
        try:
            return builder.as_data_source(split=split)
        except KeyError as e:  # TFDS: "`splits` is empty ... has not been generated yet".
            raise FileNotFoundError(
                f"data.name={data_cfg['name']!r} is not built in data_dir={data_dir!r}: set data.prepare=True "
                "(builds it from local files, once)"
            ) from e
    try:
        return tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=False)
    except (NotImplementedError, AssertionError, FileNotFoundError) as e:
        # TFDS reports a missing dataset as "FileFormat.TFRECORD is not supported": say what to do instead.
        raise FileNotFoundError(
            f"data.name={data_cfg['name']!r}: TFDS dataset {spec.tfds_name!r} is not prepared as array_record "
            f"in data_dir={data_dir!r}: this project never downloads; build it where TensorFlow is installed "
            f"(`tfds build {spec.tfds_name} --file_format=array_record --data_dir=...`) and copy it there."
        ) from e


def make_iterator(
    data_cfg: ml_collections.ConfigDict | Mapping[str, Any],
    *,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
    source: Any = None,
) -> DataIterator:
    """Builds this process's batch iterator for ``data_cfg`` (see the module docstring for the layout).

    Args:
      data_cfg: a data config (``default_data_config`` documents the fields); validated first.
      process_index: this process, in ``[0, process_count)`` (``jax.process_index()``).
      process_count: number of processes (``jax.process_count()``); must divide ``batch_size``.
      seed: run seed: toy sampling, dequantization / flip noise, and shuffling when
        ``shuffle_seed == -1``.
      source: optional random-access source (``len`` + ``[i]`` -> example dict) used instead of opening
        the configured one, e.g. an in-memory array source in tests; its examples need the keys the
        configured ``source`` expects.

    Returns:
      A ``DataIterator``: ``next()`` -> ``{'image': float32 [b, H, W, C], 'label': int32 [b]}`` (tfds),
      ``{'x': float32 [b, ...], 'label'}`` (latents) or ``{'x': float32 [b, 2], 'x0'}`` (toy2d), with
      ``b = batch_size // process_count``; ``get_state`` / ``set_state`` for exact resumption.
    """
    validate_data_config(data_cfg, process_count)
    if not _is_int(process_index) or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index!r} must be in [0, process_count={process_count})")
    if not _is_int(seed):
        raise ValueError(f"seed={seed!r} must be an int")
    cfg = dict(data_cfg.items())
    kind = cfg["source"]
    if cfg.get("pairs_path", ""):
        return _pairs_iterator(cfg, source, seed, process_index, process_count)
    if kind == "toy2d":
        pair = cfg["pair_with"]
        return SamplerIterator(
            toy2d.get_toy_sampler(cfg["name"]),
            batch_size=cfg["batch_size"],
            process_index=process_index,
            process_count=process_count,
            seed=seed,
            pair_fn=toy2d.get_toy_sampler(pair) if pair else None,
            source="toy2d",
        )
    if kind == "analytic":
        return SamplerIterator(
            analytic_sampler(cfg["name"]),
            batch_size=cfg["batch_size"],
            process_index=process_index,
            process_count=process_count,
            seed=seed,
            source="analytic",
        )
    common = dict(cfg=cfg, seed=seed, process_index=process_index, process_count=process_count)
    if kind == "latents":
        src = source if source is not None else latents.LatentSource(cfg["latents_path"])
        batched = _grain_batches(src, _latent_example, random=False, **common)
    else:
        src = source if source is not None else open_tfds_source(cfg)
        spec = TFDS_DATASETS[cfg["name"]]
        size = cfg["image_size"] if cfg["image_size"] not in (0, spec.image_shape[0]) else 0
        transform = functools.partial(
            _image_example,
            size=size,
            resize=cfg["resize"],
            flip=cfg["random_flip"],
            dequantize=cfg["dequantize"],
        )
        batched = _grain_batches(src, transform, random=True, **common)
    if len(batched) == 0:
        raise ValueError(
            f"data.batch_size={cfg['batch_size']} is larger than the {len(src)} examples x num_epochs "
            "available"
        )
    return GrainIterator(
        batched,
        source=kind,
        global_batch_size=cfg["batch_size"],
        num_threads=cfg["num_threads"],
        prefetch=cfg["prefetch"],
    )


def _pairs_iterator(cfg, source, seed, process_index, process_count) -> DataIterator:
    """Grain iterator over a reflow pairs file (`data.pairs`): shuffled per epoch, batches of
    {data key: x1, 'x0': x0}; state = grain's, as for TFDS / latents."""
    from diffusion_jax.data.pairs import PairsSource

    key = "image" if cfg["source"] == "tfds" else "x"
    src = source if source is not None else PairsSource(cfg["pairs_path"], key)
    common = dict(cfg=cfg, seed=seed, process_index=process_index, process_count=process_count)
    batched = _grain_batches(src, _pairs_example, random=False, **common)
    if len(batched) == 0:
        raise ValueError(
            f"data.batch_size={cfg['batch_size']} is larger than the {len(src)} pairs x num_epochs available"
        )
    return GrainIterator(
        batched,
        source="reflow_pairs",
        global_batch_size=cfg["batch_size"],
        num_threads=cfg["num_threads"],
        prefetch=cfg["prefetch"],
    )


def _pairs_example(example):
    return {k: np.asarray(v, np.float32) for k, v in example.items()}
