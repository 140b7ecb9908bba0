"""Reflow pairs: (x0, x1) drawn from a trained flow, stored once, read back as a training source.

Rectified flow's reflow (Liu et al. 2023, "Flow Straight and Fast", Sec. 2.2 and Alg. 1): draw
X0 ~ source, solve the trained model's ODE to its endpoint X1 = ODE[v](X0), and train the next flow
on the coupling (X0, X1) instead of the independent one. In this project's convention the data sits
at t = 0 and the source at t = 1, so the pairs file holds

  ``x0``   [N, ...] float32: the source draw of each seed (the engine's initial state at t = 1),
  ``x1``   [N, ...] float32: the ODE endpoint of that seed (its sample at the grid's end),
  ``seed`` [N] int64: the seeds (``samplers.seeds.sample_keys``), and ``meta``: the JSON of the
           sampling settings and the run that drew them,

written by `write_pairs` (atomically) from `python -m diffusion_jax.reflow`. `PairsSource` is a
random-access source over the file; with ``data.pairs_path`` set, `data.pipeline.make_iterator`
reads it through grain (shuffled per epoch, checkpointable like any grain source) and yields the
data key (``x`` or ``image``) = x1 and ``x0`` = x0, which the training step turns into the batch's
``noise`` (`training.build.to_model_batch`), the paired source sample the ``reflow`` coupling
consumes.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

KEYS = ("x0", "x1", "seed", "meta")


def write_pairs(path: str, x0: np.ndarray, x1: np.ndarray, seeds, meta: dict) -> str:
    """Write a pairs file atomically (a crash leaves no file or a complete one); returns `path`.

    x0, x1: [N, ...] of equal shapes; seeds: [N] ints; meta: JSON-serialisable settings.
    """
    x0, x1 = np.asarray(x0, np.float32), np.asarray(x1, np.float32)
    seeds = np.asarray(seeds, np.int64)
    if x0.shape != x1.shape or seeds.shape != x0.shape[:1]:
        raise ValueError(f"write_pairs: x0 {x0.shape}, x1 {x1.shape} and seeds {seeds.shape} must agree")
    if not path.endswith(".npz"):
        raise ValueError(f"pairs path {path!r} must end with '.npz'")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path[:-4]}.tmp-{os.getpid()}.npz"
    np.savez(tmp, x0=x0, x1=x1, seed=seeds, meta=np.asarray(json.dumps(meta, sort_keys=True, default=str)))
    os.replace(tmp, path)
    return path


def pairs_shapes(path: str, field: str = "data.pairs_path") -> dict[str, tuple[int, ...]]:
    """{'x0': shape, 'x1': shape} of a pairs file, reading only the array headers (nothing is loaded).

    Raises FileNotFoundError / ValueError (one line, naming `field`) for a missing or malformed file.
    """
    if not path:
        raise ValueError(f"{field} is empty: give the .npz written by `python -m diffusion_jax.reflow`")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{field}={path!r}: no such file (draw pairs with `python -m diffusion_jax.reflow "
            "--workdir=RUN --out=PAIRS.npz --num=N`)"
        )
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for key in ("x0", "x1"):
                with z.open(f"{key}.npy") as f:
                    version = np.lib.format.read_magic(f)
                    read = getattr(np.lib.format, f"read_array_header_{version[0]}_{version[1]}")
                    shape, _, _ = read(f)
                out[key] = tuple(int(s) for s in shape)
    except (KeyError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(f"{field}={path!r} is not a pairs file with arrays 'x0' and 'x1' ({e})") from None
    if out["x0"] != out["x1"] or len(out["x1"]) < 2:
        raise ValueError(f"{field}={path!r}: x0 {out['x0']} and x1 {out['x1']} must be equal shapes [N, ...]")
    return out


def check_pairs(
    path: str, data_shape: tuple[int, ...], batch_size: int, field: str = "data.pairs_path"
) -> None:
    """Before compiling: the file exists, holds x0 / x1 of per-pair shape `data_shape` (the run's data
    shape) and at least one global batch of pairs. ValueError / FileNotFoundError naming `field`."""
    shapes = pairs_shapes(path, field)
    per = shapes["x1"][1:]
    if tuple(per) != tuple(data_shape):
        raise ValueError(
            f"{field}={path!r}: pairs have shape {tuple(per)} per sample, the run's data has {tuple(data_shape)}"
        )
    if shapes["x1"][0] < batch_size:
        raise ValueError(
            f"{field}={path!r} holds {shapes['x1'][0]} pairs, fewer than data.batch_size={batch_size}"
        )


class PairsSource:
    """Random-access source over a pairs file: element i is {data_key: x1[i], 'x0': x0[i]} (float32).

    The whole file is loaded into memory (2-D pairs: 16 bytes each; 10^5 Fashion-MNIST pairs: 630 MB).
    """

    def __init__(self, path: str, data_key: str = "x"):
        pairs_shapes(path)
        with np.load(path) as f:
            self._x0 = np.asarray(f["x0"], np.float32)
            self._x1 = np.asarray(f["x1"], np.float32)
        self.path, self.data_key = path, data_key

    def __len__(self) -> int:
        return len(self._x1)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {self.data_key: self._x1[index], "x0": self._x0[index]}

    def __getitems__(self, indices) -> list[dict[str, np.ndarray]]:
        return [self[i] for i in indices]

    def __repr__(self) -> str:
        return f"PairsSource({self.path!r}, n={len(self)}, shape={self._x1.shape[1:]})"


def read_pairs(path: str) -> dict:
    """{'x0', 'x1', 'seed', 'meta' (dict)} of a pairs file (numpy)."""
    pairs_shapes(path, "pairs file")
    with np.load(path) as f:
        return {"x0": f["x0"], "x1": f["x1"], "seed": f["seed"], "meta": json.loads(str(f["meta"]))}


__all__ = ["KEYS", "PairsSource", "check_pairs", "pairs_shapes", "read_pairs", "write_pairs"]
