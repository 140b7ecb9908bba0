"""The data iterators: a `DataIterator` yields per-process batches and has a checkpointable
position (`GrainIterator` over a Grain dataset, `SamplerIterator` drawing from a jitted sampler in
graph, `make_sampler_iterator`), and the Grain pieces that batch a source per process. Split from
`pipeline.py`, which re-exports these names and keeps the data config schema and the sources.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.data import transforms


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------------------------
# Iterators


class DataIterator:
    """Iterator of per-process batches with a checkpointable position.

    ``next(it)`` -> dict of numpy arrays; ``get_state()`` -> JSON-serialisable dict; ``set_state(s)``
    makes the following ``next`` calls return exactly what they returned after ``s`` was taken.

    The position counts GLOBAL batches, so a state saved by any process of a ``P``-process run also
    restores a run with another number of processes (same global ``batch_size``): the resumed processes
    then split the same next global batches differently. A state of another source or global batch size
    is rejected.
    """

    source: str
    global_batch_size: int

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def set_state(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _check_state(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or state.get("source") != self.source:
            raise ValueError(f"iterator state {state!r} was not produced by a {self.source!r} iterator")
        saved = state.get("global_batch_size", self.global_batch_size)
        if saved != self.global_batch_size:
            raise ValueError(
                f"iterator state was saved with global batch_size={saved}, this iterator has "
                f"{self.global_batch_size}: resuming would change the data order"
            )


class GrainIterator(DataIterator):
    """Wraps a grain ``MapDataset`` of batches; the state is grain's (next batch index)."""

    def __init__(
        self,
        batched: grain.MapDataset,
        *,
        source: str,
        global_batch_size: int,
        num_threads: int,
        prefetch: int,
    ):
        self.source = source
        self.global_batch_size = global_batch_size
        read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch if num_threads else 0)
        self._dataset = batched.to_iter_dataset(read)
        self._it = iter(self._dataset)
        self.num_batches = len(batched)  # sys.maxsize when infinite.

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def get_state(self) -> dict[str, Any]:
        # Round-trip through JSON so the state is plain Python (grain may hold numpy ints).
        grain_state = json.loads(json.dumps(self._it.get_state(), default=int))
        return {"source": self.source, "global_batch_size": self.global_batch_size, "grain": grain_state}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._check_state(state)
        self._it.set_state(dict(state["grain"]))


class SamplerIterator(DataIterator):
    """Infinite batches from ``fn(key, n) -> [n, d]``; batch ``k`` depends only on ``(seed, k, p, b)``.

    Element ``r`` of global batch ``k`` uses key ``fold_in(fold_in(key(seed), k), r)`` and process ``p``
    draws rows ``r in [p b, (p+1) b)``, so the processes' batches concatenate to the 1-process batch. With
    ``pair_fn`` each element also gets ``'x0'`` from ``pair_fn`` under ``fold_in(element_key, 1)``.
    """

    source = "sampler"

    def __init__(
        self,
        sample_fn: Callable[[jax.Array, int], jax.Array],
        *,
        batch_size: int,
        process_index: int = 0,
        process_count: int = 1,
        seed: int = 0,
        pair_fn: Callable[[jax.Array, int], jax.Array] | None = None,
        source: str = "sampler",
    ):
        if not _is_int(batch_size) or batch_size <= 0 or batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size!r} must be a positive int divisible by {process_count=}"
            )
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index={process_index!r} must be in [0, {process_count})")
        self.source = source
        self.global_batch_size = batch_size
        self._local = batch_size // process_count
        self._offset = process_index * self._local
        self._seed = int(seed)
        self._step = 0
        self._cpu = jax.local_devices(backend="cpu")[0]  # this process's (multi-host)
        self._draw = _jitted_draw(sample_fn, pair_fn, self._local)

    def __next__(self) -> dict[str, np.ndarray]:
        # Host-side sampling: keep the tiny per-batch computation off accelerators.
        with jax.default_device(self._cpu):
            out = self._draw(jnp.uint32(self._seed % 2**32), jnp.uint32(self._step), jnp.uint32(self._offset))
        self._step += 1
        return {k: np.asarray(v, np.float32) for k, v in out.items()}

    def get_state(self) -> dict[str, Any]:
        return {"source": self.source, "global_batch_size": self.global_batch_size, "step": self._step}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._check_state(state)
        self._step = int(state["step"])


def _jitted_draw(sample_fn, pair_fn, n):
    try:
        return _cached_jitted_draw(sample_fn, pair_fn, n)
    except TypeError:  # Unhashable sampler (e.g. a bound method of a pytree dataclass): no caching.
        return jax.jit(functools.partial(_draw_elements, sample_fn, pair_fn, n))


@functools.lru_cache(maxsize=64)
def _cached_jitted_draw(sample_fn, pair_fn, n):
    # One compiled function per (sampler, pair sampler, local batch): iterators re-created on resume or per
    # process reuse it instead of recompiling.
    return jax.jit(functools.partial(_draw_elements, sample_fn, pair_fn, n))


def _draw_elements(sample_fn, pair_fn, n, seed, step, offset):
    base = jax.random.fold_in(jax.random.key(seed), step)
    keys = jax.vmap(lambda r: jax.random.fold_in(base, r))(offset + jnp.arange(n, dtype=jnp.uint32))
    out = {"x": jax.vmap(lambda k: sample_fn(k, 1)[0])(keys)}
    if pair_fn is not None:
        out["x0"] = jax.vmap(lambda k: pair_fn(jax.random.fold_in(k, 1), 1)[0])(keys)
    return out


def make_sampler_iterator(
    sample_fn: Callable[[jax.Array, int], jax.Array],
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
) -> SamplerIterator:
    """Seeded infinite iterator over any JAX sampler ``fn(key, n) -> [n, ...]`` (e.g. an analytic GMM).

    Args:
      sample_fn: called as ``sample_fn(key, 1)`` under ``vmap`` (one key per element).
      batch_size: GLOBAL batch; this process yields ``batch_size // process_count`` rows.

    Returns:
      A ``SamplerIterator`` yielding ``{'x': float32 [b, ...]}``, state ``{'source': 'sampler', 'step': k}``.
    """
    return SamplerIterator(
        sample_fn, batch_size=batch_size, process_index=process_index, process_count=process_count, seed=seed
    )


def _derive_seed(seed: int, stream: int) -> int:
    """A 32-bit seed for an independent random stream (``stream`` 0, 1, ...) of the run seed ``seed``."""
    return int(np.random.SeedSequence([int(seed) % 2**63, stream]).generate_state(1, np.uint32)[0])


# ----------------------------------------------------------------------------------------------------
# grain pieces


class _BatchedReads:
    """Adapter giving a source with ``__getitems__`` (TFDS, ``LatentSource``) grain's batched-read hook.

    grain reads through ``_getitems`` only for sources that define it; TFDS's ``ArrayRecordDataSource``
    spells it ``__getitems__``. One ``array_record`` call per batch is ~3x faster than one per example.
    """

    def __init__(self, source):
        self._source = source
        self._batched = True

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        return self._source[index]

    def _getitems(self, indices: Sequence[int]):
        if self._batched:
            try:
                return self._source.__getitems__(list(indices))
            except TypeError:
                # tfds 4.9.10's `tfds.testing.mock_data` installs a `__getitems__` with the wrong
                # signature; per-example reads return the same elements.
                self._batched = False
        return [self._source[i] for i in indices]

    def __repr__(self) -> str:
        return f"_BatchedReads({self._source!r})"


class _ProcessBatches(grain.MapDataset):
    """Process ``p``'s part of every global batch, stacked: element ``k`` is the numpy batch of parent
    elements ``k B + p b + r``, ``r = 0..b-1`` (``B`` global, ``b = B / P`` local batch size).

    Only whole global batches exist, so the ``P`` processes' batches are disjoint and together cover the
    first ``floor(len / B) * B`` parent elements. Reads go through ``_getitems`` (batched source reads).
    """

    def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int, process_count: int):
        super().__init__(parent)
        self._global = global_batch
        self._local = global_batch // process_count
        self._offset = process_index * self._local
        n = len(parent)
        self._length = sys.maxsize if n >= sys.maxsize else n // global_batch

    def __len__(self) -> int:
        return self._length

    def parent_indices(self, index: int) -> list[int]:
        """Global stream indices of the rows of this process's batch ``index``."""
        start = index * self._global + self._offset
        return list(range(start, start + self._local))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        rows = self._parent._getitems(self.parent_indices(index))  # noqa: SLF001
        return {key: np.stack([row[key] for row in rows]) for key in rows[0]}

    def __str__(self) -> str:
        return f"_ProcessBatches(offset={self._offset}, local={self._local}, global={self._global})"


def _image_example(example, rng, *, size, resize, flip, dequantize):
    image = np.asarray(example["image"])
    if image.ndim == 2:
        image = image[..., None]
    if size:
        image = transforms.resize_image(image, size, resize)
    if flip:
        image = transforms.random_flip_left_right(image, rng)
    if dequantize:
        image = transforms.uniform_dequantize(image, rng)
    else:
        image = transforms.scale_to_unit_interval(image)
    out = {"image": np.ascontiguousarray(image)}
    if "label" in example:
        out["label"] = np.int32(example["label"])
    return out


def _latent_example(example):
    out = {"x": np.asarray(example["x"], np.float32)}
    if "label" in example:
        out["label"] = np.int32(example["label"])
    return out


def _grain_batches(source, transform, *, cfg, seed, process_index, process_count, random: bool):
    """source -> shuffle -> repeat -> (random_)map -> this process's batches, as a ``MapDataset``."""
    if hasattr(source, "__getitems__") and not hasattr(source, "_getitems"):
        source = _BatchedReads(source)
    ds = grain.MapDataset.source(source)
    if cfg["shuffle"]:
        shuffle_seed = cfg["shuffle_seed"] if cfg["shuffle_seed"] >= 0 else _derive_seed(seed, 0)
        ds = ds.shuffle(seed=shuffle_seed)
    ds = ds.repeat(cfg["num_epochs"] or None)
    ds = ds.random_map(transform, seed=_derive_seed(seed, 1)) if random else ds.map(transform)
    return _ProcessBatches(ds, cfg["batch_size"], process_index, process_count)
