"""Fixed-seed sampling: sample i depends only on seed i and the sampler settings.

Keys (DESIGN.md "Randomness"): sample i's key is `fold_in(key(base_seed), seeds[i])`. Its initial
noise is drawn from `fold_in(sample_key, INIT_TAG)` and its step-j noise from `fold_in(sample_key, j)`
(`base.run`); INIT_TAG = 2^32 - 1 can never be a step index. Nothing else is random.

Bitwise invariance. XLA on CPU may round a matmul differently for different batch shapes, so
"same keys" is not enough for identical bits across batch sizes and device counts. `sample` therefore
always evaluates samples in fixed-size chunks of `chunk_size`: the seeds are padded to a whole number
of chunks per device and the padding is dropped. Every chunk runs one jitted single-device program
(the sampler's whole `lax.scan` over the grid) on a [chunk_size, ...] array, so every sample is computed
by the same executable on the same shape whatever the number of seeds or devices. Devices of `mesh`
each own a contiguous block of chunks (the block layout of NamedSharding(mesh, P(axes)) over the
batch) and run concurrently through asynchronous dispatch; the denoiser's parameters are copied to
each device. Not shard_map / SPMD: a partitioned program compiles to different code than the
one-device program (measured: ~1e-6 float32 differences), which would break 1 vs 8 device equality.
No pmap. Tested bitwise for 1, 7 and 64 seeds and for 1 vs 8 devices (tests/test_samplers_seeds.py).
Single host: the result is gathered to the host (multi-host runs would gather per process).

Outputs: `save_samples` writes `{seed:06d}.npz` (key `sample`) for every sample and `{seed:06d}.png`
for images ([H, W, C] with C in 1/3/4, values in [-1, 1] mapped to uint8).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from diffusion_jax.predictions import Denoiser
from diffusion_jax.samplers.base import SampleOutput, Sampler

Array = jax.Array

INIT_TAG = 0xFFFFFFFF  # fold_in data of the initial noise; step indices are far below it
MAX_SEED = 0xFFFFFFFF
MAX_COUNT = 10_000_000  # a guard against typos such as "0-4000000000"

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
        dup = sorted({s for s in seeds if seeds.count(s) > 1})[:5]
        raise ValueError(f"seeds: duplicates {dup} (each seed names one output file)")
    return seeds


def sample_keys(seeds: Array, base_seed: int = 0) -> Array:
    """[n] typed keys fold_in(key(base_seed), seed) for integer seeds [n] (uint32)."""
    base = jax.random.key(base_seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.asarray(seeds, jnp.uint32))


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


def sample(
    denoiser: Denoiser,
    sampler: Sampler,
    grid,
    seeds,
    shape: Sequence[int],
    *,
    base_seed: int = 0,
    mesh: Mesh | None = None,
    chunk_size: int = 16,
    return_trajectory: bool = False,
    cond=None,
    dtype=None,
) -> SampleOutput:
    """Draw one sample per seed, bitwise independent of the number of seeds and of devices.

    Args:
      denoiser: any `Denoiser`; its params are replicated over `mesh`.
      sampler: any `Sampler` (stochastic ones get the per-sample keys described in the module doc).
      grid: [N+1] concrete descending times.
      seeds: "0-63,100", an int, or a list of ints (see `parse_seeds`).
      shape: per-sample shape, e.g. (D,) or (H, W, C).
      base_seed: the run's base key is key(base_seed).
      mesh: devices to shard the batch over (every mesh axis); None = the first local device.
      chunk_size: samples per compiled evaluation; results depend on it, never on len(seeds) or the
        device count. Keep it fixed to reproduce a run.
      return_trajectory: also return z at every grid time.
      cond: optional conditioning pytree whose leaves have leading axis len(seeds) (row i belongs to
        seed i); set on the denoiser chunk by chunk (`Denoiser.with_cond`).
      dtype: sample dtype (default: JAX's default float).
    Returns:
      SampleOutput(samples [n, *shape], trajectory [N+1, n, *shape] or None, nfe int32 scalar), as
      arrays on the default device (gathered from the mesh).
    """
    seeds = parse_seeds(seeds)
    g = validate_sampling(denoiser, sampler, grid)
    shape = tuple(int(s) for s in shape)
    if not isinstance(chunk_size, int | np.integer) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if mesh is None:
        mesh = Mesh(np.asarray(jax.devices()[:1]), ("data",))
    dtype = jnp.dtype(dtype or jnp.result_type(float))
    n, n_dev = len(seeds), mesh.size
    per_dev = math.ceil(n / (chunk_size * n_dev))
    total = per_dev * n_dev * chunk_size
    pad = total - n
    seeds_arr = np.asarray(seeds + [seeds[-1]] * pad, np.uint32).reshape(per_dev * n_dev, chunk_size)
    if cond is not None:
        for leaf in jax.tree.leaves(cond):
            if np.shape(leaf)[:1] != (n,):
                raise ValueError(
                    f"cond leaves need leading axis len(seeds) = {n}, got shape {np.shape(leaf)}"
                )

        def chunked(x):
            x = np.asarray(x)
            x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)], axis=0)
            return x.reshape((per_dev * n_dev, chunk_size) + x.shape[1:])

        cond = jax.tree.map(chunked, cond)

    devices = list(mesh.devices.flat)
    if not isinstance(base_seed, int | np.integer) or not 0 <= base_seed <= MAX_SEED:
        raise ValueError(f"base_seed must be an integer in [0, {MAX_SEED}], got {base_seed!r}")
    base = np.uint32(base_seed)
    chunk_fn = _chunk_program(
        sampler, tuple(g.tolist()), shape, dtype.name, bool(return_trajectory), cond is not None
    )
    # Device k owns the contiguous block of chunks [k * per_dev, (k + 1) * per_dev): the block layout of
    # NamedSharding(mesh, P(mesh.axis_names)) over the batch. Dispatch is asynchronous, so the devices
    # run concurrently; every chunk runs the same single-device executable.
    outs = []
    for k, dev in enumerate(devices):
        den_k = jax.device_put(denoiser, dev)
        for c in range(k * per_dev, (k + 1) * per_dev):
            cond_c = None if cond is None else jax.device_put(jax.tree.map(lambda x, c=c: x[c], cond), dev)
            outs.append(chunk_fn(den_k, jax.device_put(base, dev), jax.device_put(seeds_arr[c], dev), cond_c))
    samples = np.concatenate([np.asarray(o[0]) for o in outs], axis=0)[:n]
    traj = None
    if return_trajectory:
        traj = jnp.asarray(np.concatenate([np.asarray(o[1]) for o in outs], axis=1)[:, :n])
    nfe = max(int(o[2]) for o in outs)
    return SampleOutput(jnp.asarray(samples), traj, jnp.asarray(nfe, jnp.int32))


@functools.lru_cache(maxsize=32)
def _chunk_program(sampler, grid, shape, dtype_name, return_trajectory, has_cond):
    """The jitted per-chunk program: seeds [chunk] -> (samples [chunk, *shape], trajectory, nfe).

    Cached on the static settings so repeated `sample` calls reuse it. Every chunk on every device
    runs this one program on the same shape, which is what makes the bits independent of the
    number of seeds and devices. (An SPMD-partitioned program over several devices compiles to
    different code than the one-device program: XLA rewrote x / sqrt(y) as x * rsqrt(y) in one of
    them in our tests, changing float32 samples by ~1e-6, hence no shard_map here.)
    """
    dtype = jnp.dtype(dtype_name)
    grid_np = np.asarray(grid, np.float64).astype(dtype)  # compile-time constant: samplers may inspect it

    @jax.jit
    def run_chunk(den, base_seed, seed_chunk, cond_chunk):
        keys = sample_keys(seed_chunk, base_seed)
        scale = den.schedule.sigma(jnp.asarray(grid_np[0]))
        z = initial_noise(keys, shape, scale, dtype)
        if has_cond:
            den = den.with_cond(cond_chunk)
        out = sampler.run(
            den, z, jnp.asarray(grid_np), keys if sampler.stochastic else None, return_trajectory
        )
        return out.samples, out.trajectory, out.nfe

    return run_chunk


def to_uint8(x) -> np.ndarray:
    """Images in [-1, 1] -> uint8 in [0, 255] (round to nearest, clip)."""
    return np.clip(np.rint((np.asarray(x, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def is_image(sample_shape: Sequence[int]) -> bool:
    """True for per-sample shapes [H, W, C] with C in (1, 3, 4)."""
    return len(sample_shape) == 3 and sample_shape[-1] in (1, 3, 4)


def save_samples(outdir: str, seeds: Sequence[int], samples, *, image: bool | None = None) -> list[str]:
    """Write `{seed:06d}.npz` (array `sample`, float) for every sample, plus `{seed:06d}.png` when the
    samples are images ([n, H, W, C], C in 1/3/4, values in [-1, 1]). Returns the written paths.

    `image=None` decides from the shape; `image=True` on a non-image shape raises ValueError.
    """
    from PIL import Image  # local: only needed when writing files

    samples = np.asarray(samples)
    seeds = list(seeds)
    if samples.shape[0] != len(seeds):
        raise ValueError(f"save_samples: {len(seeds)} seeds for {samples.shape[0]} samples")
    img = is_image(samples.shape[1:]) if image is None else image
    if img and not is_image(samples.shape[1:]):
        raise ValueError(
            f"save_samples: image=True needs samples [n, H, W, C] with C in 1/3/4, got {samples.shape}"
        )
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for seed, x in zip(seeds, samples, strict=True):
        p = os.path.join(outdir, f"{seed:06d}.npz")
        np.savez(p, sample=x, seed=np.int64(seed))
        paths.append(p)
        if img:
            u8 = to_uint8(x)
            pil = Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8)
            p = os.path.join(outdir, f"{seed:06d}.png")
            pil.save(p)
            paths.append(p)
    return paths


__all__ = [
    "INIT_TAG",
    "initial_noise",
    "is_image",
    "parse_seeds",
    "sample",
    "sample_keys",
    "save_samples",
    "to_uint8",
    "validate_sampling",
]
