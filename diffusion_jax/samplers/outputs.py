"""Sample files on disk, one per seed: `{seed:06d}.npz` (+ `.png` for images), written atomically, read
back to decide what a resumed run still has to draw (`existing_sample`), and a background writer so
writing one chunk overlaps drawing the next. Split from `seeds.py` (which re-exports these names): the
drawing of samples lives there, the files here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np


def to_uint8(x) -> np.ndarray:
    """Images in [-1, 1] -> uint8 in [0, 255] (round to nearest, clip)."""
    return np.clip(np.rint((np.asarray(x, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def is_image(sample_shape: Sequence[int]) -> bool:
    """True for per-sample shapes [H, W, C] with C in (1, 3, 4)."""
    return len(sample_shape) == 3 and sample_shape[-1] in (1, 3, 4)


def sample_path(outdir: str, seed: int) -> str:
    """The file of one seed: `{outdir}/{seed:06d}.npz`."""
    return os.path.join(outdir, f"{int(seed):06d}.npz")


def _meta_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype.kind == b.dtype.kind and bool(np.all(a == b))


def existing_sample(outdir: str, seed: int, meta: dict | None = None) -> str:
    """'complete' if the seed's file exists, reads back whole and holds `meta` (every key, equal
    values), 'different' if it is complete but was drawn with other settings, '' otherwise
    (missing or truncated: it is drawn again)."""
    p = sample_path(outdir, seed)
    if not os.path.exists(p):
        return ""
    try:
        with np.load(p) as f:
            if "sample" not in f.files or int(f["seed"]) != int(seed):
                return ""
            _ = f["sample"]
            for k, v in (meta or {}).items():
                if k not in f.files or not _meta_equal(f[k], v):
                    return "different"
    except Exception:  # noqa: BLE001  a truncated / corrupt file counts as absent
        return ""
    return "complete"


def save_samples(
    outdir: str,
    seeds: Sequence[int],
    samples,
    *,
    image: bool | None = None,
    meta: dict | None = None,
    conds: Sequence[dict] | None = None,
) -> list[str]:
    """Write `{seed:06d}.npz` for every sample, plus `{seed:06d}.png` when the samples are images
    ([n, H, W, C], C in 1/3/4, values in [-1, 1]). Returns the written paths.

    Each .npz holds `sample` [*shape], `seed`, the entries of `meta` (settings shared by all seeds:
    sampler, grid, nfe, checkpoint step, weights, guidance scale, ...) and of `conds[i]` (seed i's
    condition, e.g. `label`). Files are written to a temporary name and renamed, so a file that
    exists is complete. `image=None` decides from the shape; `image=True` on a non-image shape raises
    ValueError.
    """
    from PIL import Image  # local: only needed when writing files

    samples = np.asarray(samples)
    seeds = list(seeds)
    if samples.shape[0] != len(seeds):
        raise ValueError(f"save_samples: {len(seeds)} seeds for {samples.shape[0]} samples")
    if conds is not None and len(conds) != len(seeds):
        raise ValueError(f"save_samples: {len(conds)} conditions for {len(seeds)} seeds")
    img = is_image(samples.shape[1:]) if image is None else image
    if img and not is_image(samples.shape[1:]):
        raise ValueError(
            f"save_samples: image=True needs samples [n, H, W, C] with C in 1/3/4, got {samples.shape}"
        )
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for i, (seed, x) in enumerate(zip(seeds, samples, strict=True)):
        p = sample_path(outdir, seed)
        extra = {**(meta or {}), **(conds[i] if conds is not None else {})}
        tmp = p + ".tmp.npz"
        np.savez(tmp, sample=x, seed=np.int64(seed), **{k: np.asarray(v) for k, v in extra.items()})
        os.replace(tmp, p)
        paths.append(p)
        if img:
            u8 = to_uint8(x)
            pil = Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8)
            p = os.path.join(outdir, f"{seed:06d}.png")
            pil.save(p)
            paths.append(p)
    return paths


class BackgroundWriter:
    """Runs `fn(*args)` calls in order on one background thread, so writing chunk c overlaps drawing
    chunk c + 1. At most `max_pending` calls wait (the caller blocks beyond that: bounded memory).
    `close()` waits for every call and re-raises the first error."""

    def __init__(self, max_pending: int = 2):
        import queue
        import threading

        self._q = queue.Queue(maxsize=max_pending)
        self._error = None
        self._thread = threading.Thread(target=self._work, daemon=True)
        self._thread.start()

    def _work(self):
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is None:
                try:
                    item[0](*item[1])
                except BaseException as e:  # noqa: BLE001  re-raised in the caller's thread
                    self._error = e

    def submit(self, fn, *args, **kwargs) -> None:
        if self._error is not None:
            raise self._error
        self._q.put((functools.partial(fn, **kwargs), args))

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
