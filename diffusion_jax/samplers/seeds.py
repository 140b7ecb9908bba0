"""The sampling engine: sample s depends only on seed s and the sampler settings, whoever asks.

Every sample the project draws (sampling CLI, `evaluate`, periodic samples in training, `Pipeline`,
demos, benchmarks, notebooks) goes through `stream` (or `sample`, which collects it).

Keys (DESIGN.md "Randomness"): seed s's key is `fold_in(key(base_seed), s)` (`sample_keys`). Its
initial state is drawn by the source from `fold_in(sample_key, INIT_TAG)` (`initial_state`; the
default source is sigma(t0) N(0, I)) and its step-j noise from `fold_in(sample_key, j)` (`base.run`);
INIT_TAG = 2^32 - 1 can never be a step index. Nothing else is random.

Bitwise invariance. XLA on CPU may round a matmul differently for different batch shapes, so
"same keys" is not enough for identical bits across batch sizes and device counts. Seeds are
therefore always evaluated in fixed-size chunks of `chunk_size` (the last chunk padded, the padding
dropped). Every chunk runs one jitted single-device program (initial state + the sampler's whole
`lax.scan` over the grid) on a [chunk_size, ...] array, so every sample is computed by the same
executable on the same shape whatever the number of seeds, devices or processes. Chunks go
round-robin to the local devices and run concurrently through asynchronous dispatch; process p of
P draws the p-th contiguous block of chunks (multi-host). Not shard_map / SPMD: a partitioned
program compiles to different code than the one-device program (measured: ~1e-6 float32
differences), which would break 1 vs 8 device equality. No pmap.

Streaming: `stream` yields each chunk as it finishes while the next ones compute, so memory is
bounded by the chunks in flight; `BackgroundWriter` writes files on a second thread.

Outputs: `save_samples` writes `{seed:06d}.npz` (`sample`, `seed`, and the settings and condition of
the sample) for every sample and `{seed:06d}.png` for images ([H, W, C] with C in 1/3/4, values in
[-1, 1] mapped to uint8); `existing_sample` tells whether a seed's file is complete (resuming).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import itertools
import math
import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffusion_jax.predictions import Denoiser
from diffusion_jax.samplers.base import SampleOutput, Sampler

# The file half (writing / resuming per-seed files) lives in `outputs.py`; re-exported here.
from diffusion_jax.samplers.outputs import (
    BackgroundWriter,
    existing_sample,
    is_image,
    sample_path,
    save_samples,
    to_uint8,
)

Array = jax.Array

INIT_TAG = 0xFFFFFFFF  # fold_in data of the initial noise; step indices are far below it
MAX_SEED = 0xFFFFFFFF
MAX_COUNT = 10_000_000
DEFAULT_CHUNK_SIZE = 16  # samples per compiled chunk; part of what defines a sample's bits  # a guard against typos such as "0-4000000000"

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """Seeds from a spec such as "0-63,100" (inclusive ranges, comma separated), an int, or a list.

    Returns the seeds in the given order. Raises ValueError for malformed ranges, descending ranges,
    seeds outside [0, 2^32 - 1], duplicates (their output files would collide) or an empty spec.
    """
    if isinstance(spec, int | np.integer):
        seeds = [int(spec)]
    elif isinstance(spec, str):
        seeds = []
        for part in spec.split(","):
            m = _RANGE.match(part)
            if m is None:
                raise ValueError(f"seeds: cannot parse {part!r} in {spec!r}; expected e.g. '0-63,100'")
            lo = int(m.group(1))
            hi = lo if m.group(2) is None else int(m.group(2))
            if hi < lo:
                raise ValueError(f"seeds: range {part.strip()!r} is descending")
            if hi > MAX_SEED or len(seeds) + hi - lo + 1 > MAX_COUNT:
                raise ValueError(
                    f"seeds: range {part.strip()!r} exceeds {MAX_SEED} or {MAX_COUNT} seeds in total"
                )
            seeds.extend(range(lo, hi + 1))
    else:
        seeds = [int(s) for s in spec]
    if not seeds:
        raise ValueError(f"seeds: {spec!r} gives no seeds")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ValueError(f"seeds must lie in [0, {MAX_SEED}], got {bad[:5]}")
    if len(set(seeds)) != len(seeds):
        dup = sorted(s for s, n in collections.Counter(seeds).items() if n > 1)[:5]  # linear, not quadratic
        raise ValueError(f"seeds: duplicates {dup} (each seed names one output file)")
    return seeds


def parse_labels(spec: str | int | Sequence[int]) -> list[int]:
    """Class labels from a spec such as "0-9" or "3,3,7" (like `parse_seeds`, repeats allowed)."""
    if isinstance(spec, str):
        out = []
        for part in spec.split(","):
            try:
                out.extend(parse_seeds(part))
            except ValueError:
                raise ValueError(
                    f"labels: cannot parse {part!r} in {spec!r}; expected e.g. '0-9' or '3,3,7'"
                ) from None
        return out
    return [int(y) for y in ([spec] if isinstance(spec, int | np.integer) else spec)]


def sample_keys(seeds, base_seed=0) -> Array:
    """[n] typed keys fold_in(key(base_seed), seed) for integer seeds [n] (uint32).

    The one key derivation of the project (DESIGN.md "Randomness"): every sample drawn anywhere
    (sampling CLI, evaluate, periodic samples, Pipeline, demos, benchmarks) uses it.
    """
    base = jax.random.key(base_seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.asarray(seeds, jnp.uint32))


GAUSSIAN_SCALES = ("sigma", "marginal")


@dataclasses.dataclass(frozen=True)
class GaussianSource:
    """The default source: z(t0) = sigma(t0) * eps, eps ~ N(0, I) (the alpha(t0) x term is neglected,
    as in every reference sampler; it is exactly 0 where alpha = 0, e.g. rectified flow at t = 1).

    scale="marginal": z(t0) = sqrt(alpha(t0)^2 + sigma(t0)^2) * eps, the marginal at t0 of zero-mean,
    unit-variance data. On a VP path (alpha^2 + sigma^2 = 1) that is z(t0) = eps, the x_T ~ N(0, I) from
    which DDPM / DDIM reference code (Ho et al. 2020, Alg. 2; Song et al. 2021; diffusers' schedulers,
    DiT's sample.py) starts at its first timestep, whatever that timestep is. The same eps is drawn
    from the same key under either scale; only the factor differs (sigma(t0) = 0.9983 at DDIM's
    first of 4 'leading' steps on DiT's schedule).

    A source is any hashable object with `draw(key, shape, schedule, t0, dtype) -> [*shape]`: the
    state at grid time t0 of ONE sample from its own key (non-Gaussian sources plug in here).
    """

    scale: str = "sigma"

    def __post_init__(self):
        if self.scale not in GAUSSIAN_SCALES:
            raise ValueError(f"GaussianSource.scale={self.scale!r}; valid: {list(GAUSSIAN_SCALES)}")

    @property
    def name(self) -> str:
        return "gaussian" if self.scale == "sigma" else f"gaussian_{self.scale}"

    def draw(self, key: Array, shape: tuple[int, ...], schedule, t0, dtype) -> Array:
        eps = jax.random.normal(key, shape, dtype)
        t = jnp.asarray(t0, dtype)
        if self.scale == "marginal":
            return jnp.sqrt(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2).astype(dtype) * eps
        return schedule.sigma(t).astype(dtype) * eps


GAUSSIAN = GaussianSource()


def initial_state(keys: Array, source, shape: tuple[int, ...], schedule, t0, dtype) -> Array:
    """[n, *shape] initial states; row i drawn by `source` from fold_in(keys[i], INIT_TAG) only.

    keys: [n] per-sample keys (`sample_keys`); source: None (= `GAUSSIAN`) or a source object.
    """
    source = GAUSSIAN if source is None else source
    return jax.vmap(lambda k: source.draw(jax.random.fold_in(k, INIT_TAG), shape, schedule, t0, dtype))(keys)


def initial_noise(keys: Array, shape: tuple[int, ...], scale, dtype) -> Array:
    """[n, *shape] = scale * N(0, I), row i from fold_in(keys[i], INIT_TAG) only."""
    draw = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, INIT_TAG), shape, dtype))(keys)
    return jnp.asarray(scale, dtype) * draw


def _concrete_grid(grid) -> np.ndarray:
    try:
        g = np.asarray(grid, dtype=np.float64)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError) as e:
        raise ValueError("sample(): `grid` must be concrete (numpy or a jax array outside jit)") from e
    if g.ndim != 1 or g.shape[0] < 2:
        raise ValueError(f"sample(): grid must be 1-D with >= 2 times, got shape {g.shape}")
    return g


def validate_sampling(denoiser: Denoiser, sampler: Sampler, grid) -> np.ndarray:
    """All checks a sampling run needs, on the host, before anything is compiled. Returns the grid."""
    if not isinstance(sampler, Sampler):
        raise ValueError(f"sampler must be a samplers.base.Sampler instance, got {type(sampler).__name__}")
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a predictions.Denoiser, got {type(denoiser).__name__}")
    g = _concrete_grid(grid)
    # Eager even when called while tracing (e.g. editing functions under jit).
    with jax.ensure_compile_time_eval():
        sampler.validate(denoiser.schedule, g.shape[0] - 1)
        check = getattr(sampler, "check_grid", None)
        if check is not None:
            check(denoiser, g)
    return g


class Chunk(NamedTuple):
    """One finished chunk: seeds [m] (padding dropped), samples [m, *shape] (host numpy),
    trajectory [N+1, m, *shape] or None, nfe (int)."""

    seeds: list[int]
    samples: np.ndarray
    trajectory: np.ndarray | None
    nfe: int


def chunk_block(num_chunks: int, process_index: int = 0, process_count: int = 1) -> range:
    """The contiguous block of chunk indices process `process_index` of `process_count` draws."""
    per = math.ceil(num_chunks / process_count)
    return range(min(process_index * per, num_chunks), min((process_index + 1) * per, num_chunks))


def _per_seed_cond(cond, seeds: list[int]):
    """`cond` as a function of a seed array: a callable is used as is; a pytree with leading axis
    len(seeds) (row i belongs to seeds[i]) is looked up by seed."""
    if cond is None or callable(cond):
        return cond
    n = len(seeds)
    for leaf in jax.tree.leaves(cond):
        if np.shape(leaf)[:1] != (n,):
            raise ValueError(f"cond leaves need leading axis len(seeds) = {n}, got shape {np.shape(leaf)}")
    row = {s: i for i, s in enumerate(seeds)}
    host = jax.tree.map(np.asarray, cond)
    return lambda chunk: jax.tree.map(lambda x: x[[row[int(s)] for s in chunk]], host)


def _check_common(denoiser, sampler, grid, seeds, shape, chunk_size, base_seed, dtype):
    seeds = parse_seeds(seeds)
    g = validate_sampling(denoiser, sampler, grid)
    shape = tuple(int(s) for s in shape)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if not isinstance(base_seed, int | np.integer) or not 0 <= base_seed <= MAX_SEED:
        raise ValueError(f"base_seed must be an integer in [0, {MAX_SEED}], got {base_seed!r}")
    return seeds, g, shape, jnp.dtype(dtype or jnp.result_type(float))


def stream(
    denoiser: Denoiser,
    sampler: Sampler,
    grid,
    seeds,
    shape: Sequence[int],
    *,
    base_seed: int = 0,
    devices: Sequence[jax.Device] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    cond=None,
    dtype=None,
    source=None,
    return_trajectory: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    prefetch: int | None = None,
) -> Iterator[Chunk]:
    """THE sampling engine: draw one sample per seed, yielding each chunk (in seed order) as it finishes.

    Seeds are cut into chunks of `chunk_size` (the last one padded by repeating its last seed; the
    padding is dropped). Every chunk runs one cached single-device jitted program (initial state +
    the sampler's whole `lax.scan`) on a [chunk_size, ...] array, so a seed's bits depend on its seed,
    the settings and chunk_size, never on the other seeds, the number of devices or of processes.
    Process p of `process_count` draws the contiguous block `chunk_block(C, p, process_count)` of the
    C chunks. Chunks are dispatched ahead round-robin over `devices` (asynchronous dispatch, up to
    `prefetch` in flight, default 2 per device), so the next chunks compute while the caller handles
    this one: memory stays bounded by the chunks in flight, whatever the number of seeds.

    Args:
      denoiser: any `Denoiser` (copied once to each device).
      sampler: any `Sampler`; stochastic ones get the per-sample keys (module doc).
      grid: [N+1] concrete descending times.
      seeds: "0-63,100", an int, or a list of ints (`parse_seeds`).
      shape: per-sample shape, e.g. (D,) or (H, W, C).
      base_seed: sample key = fold_in(key(base_seed), seed).
      devices: local devices to run chunks on (default: the first local device).
      chunk_size: samples per compiled evaluation (part of what defines a sample's bits).
      cond: None, a function `seeds [m] (uint32 numpy) -> conditioning pytree [m, ...]` (the
        condition of a sample is a function of its seed), or a pytree with leading axis len(seeds)
        (row i belongs to seeds[i]); set on the denoiser chunk by chunk (`Denoiser.with_cond`).
      dtype: sample dtype (default: JAX's default float).
      source: initial-state source (None = `GAUSSIAN`; see `initial_state`).
      return_trajectory: also return z at every grid time.
      process_index, process_count: this process's block of chunks (multi-host sampling).
    Yields:
      `Chunk`s of this process's block, in order.
    """
    seeds, g, shape, dtype = _check_common(
        denoiser, sampler, grid, seeds, shape, chunk_size, base_seed, dtype
    )
    cond_fn = _per_seed_cond(cond, seeds)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must lie in [0, process_count={process_count})")
    devices = list(devices) if devices is not None else jax.local_devices()[:1]
    return _stream(denoiser, sampler, g, seeds, shape, base_seed, devices, int(chunk_size), cond_fn,
                   dtype, source, return_trajectory, process_index, process_count, prefetch)  # fmt: skip


def _stream(
    den, sampler, g, seeds, shape, base_seed, devices, cs, cond_fn, dtype, source, traj, pi, pc, prefetch
):
    n = len(seeds)
    num_chunks = math.ceil(n / cs)
    padded = np.asarray(seeds + [seeds[-1]] * (num_chunks * cs - n), np.uint32).reshape(num_chunks, cs)
    program = _chunk_program(
        sampler, tuple(g.tolist()), shape, dtype.name, bool(traj), cond_fn is not None, source
    )
    base = np.uint32(base_seed)
    dens = {}
    pending = collections.deque()
    depth = prefetch or 2 * len(devices)

    def dispatch(c):
        dev = devices[c % len(devices)]
        if dev not in dens:
            dens[dev] = jax.device_put(den, dev)
        cond_c = None if cond_fn is None else jax.device_put(cond_fn(padded[c]), dev)
        out = program(dens[dev], jax.device_put(base, dev), jax.device_put(padded[c], dev), cond_c)
        pending.append((c, out))

    block = chunk_block(num_chunks, pi, pc)
    todo = iter(block)
    for c in itertools.islice(todo, depth):
        dispatch(c)
    while pending:
        c, (x, tr, nfe) = pending.popleft()
        m = min(cs, n - c * cs)
        chunk = Chunk(
            [int(s) for s in padded[c, :m]],
            np.asarray(x)[:m],
            None if tr is None else np.asarray(tr)[:, :m],
            int(nfe),
        )
        nxt = next(todo, None)
        if nxt is not None:
            dispatch(nxt)
        yield chunk


def sample(
    denoiser: Denoiser,
    sampler: Sampler,
    grid,
    seeds,
    shape: Sequence[int],
    *,
    base_seed: int = 0,
    mesh: Mesh | None = None,
    devices: Sequence[jax.Device] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    return_trajectory: bool = False,
    cond=None,
    dtype=None,
    source=None,
) -> SampleOutput:
    """Every seed's sample at once: `stream` collected (see `stream` for the arguments; `mesh` is an
    alternative way to give `devices`: its devices in order).

    Returns:
      SampleOutput(samples [n, *shape], trajectory [N+1, n, *shape] or None, nfe int32 scalar), as
      arrays on the default device.
    """
    if mesh is not None and devices is None:
        devices = list(mesh.devices.flat)
    chunks = list(
        stream(
            denoiser,
            sampler,
            grid,
            seeds,
            shape,
            base_seed=base_seed,
            devices=devices,
            chunk_size=chunk_size,
            cond=cond,
            dtype=dtype,
            source=source,
            return_trajectory=return_trajectory,
        )  # fmt: skip
    )
    samples = np.concatenate([c.samples for c in chunks], axis=0)
    traj = None
    if return_trajectory:
        traj = jnp.asarray(np.concatenate([c.trajectory for c in chunks], axis=1))
    return SampleOutput(jnp.asarray(samples), traj, jnp.asarray(max(c.nfe for c in chunks), jnp.int32))


@functools.lru_cache(maxsize=32)
def _chunk_program(sampler, grid, shape, dtype_name, return_trajectory, has_cond, source):
    """The jitted per-chunk program: seeds [chunk] -> (samples [chunk, *shape], trajectory, nfe).

    Cached on the static settings so repeated calls reuse it. Every chunk on every device runs this
    one program on the same shape, which is what makes the bits independent of the number of seeds,
    devices and processes. (An SPMD-partitioned program over several devices compiles to different
    code than the one-device program: XLA rewrote x / sqrt(y) as x * rsqrt(y) in one of them in our
    tests, changing float32 samples by ~1e-6, hence no shard_map here.)
    """
    dtype = jnp.dtype(dtype_name)
    grid_np = np.asarray(grid, np.float64).astype(dtype)  # compile-time constant: samplers may inspect it

    @jax.jit
    def run_chunk(den, base_seed, seed_chunk, cond_chunk):
        keys = sample_keys(seed_chunk, base_seed)
        z = initial_state(keys, source, shape, den.schedule, grid_np[0], dtype)
        if has_cond:
            den = den.with_cond(cond_chunk)
        out = sampler.run(
            den, z, jnp.asarray(grid_np), keys if sampler.stochastic else None, return_trajectory
        )
        return out.samples, out.trajectory, out.nfe

    return run_chunk


__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "GAUSSIAN",
    "INIT_TAG",
    "BackgroundWriter",
    "Chunk",
    "GaussianSource",
    "chunk_block",
    "existing_sample",
    "initial_state",
    "sample_path",
    "stream",
    "initial_noise",
    "is_image",
    "parse_labels",
    "parse_seeds",
    "sample",
    "sample_keys",
    "save_samples",
    "to_uint8",
    "validate_sampling",
]
