"""Checkpoints: Orbax `CheckpointManager` with exact resume, proven-damage fallback, preemption saves.

Layout of a workdir:
  config.json                   the resolved config of the run
  run.lock                      who is training in this workdir (`training.lock`)
  checkpoints/<step>/state      the TrainState (params, EMA, optimizer state, step, RNG, counters)
  checkpoints/<step>/data       JSON: every process's data-iterator state {"<process>": state}
  checksums/<step>.json         size and SHA-256 of every file of checkpoint <step> (`integrity`)
  checkpoints_corrupt/<step>    checkpoints proven damaged, moved aside by a training run (never deleted)

Saves are asynchronous (Orbax writes in a background thread into a temporary directory and renames
it when complete, so a run killed mid-save leaves no half-written `<step>`). Retention: the newest
`keep` checkpoints plus every checkpoint whose step is a multiple of `keep_every`.

Resume (`Checkpointer.restore_latest`): the newest checkpoint is verified (`integrity.verify`:
required files, checksums, array metadata, model step == data-iterator step) and restored. Only a
checkpoint *proven* damaged is skipped (and, by the training run, moved to `checkpoints_corrupt/`);
any other read failure (memory, filesystem) is retried and then fatal; intact files that do not fit
the config raise `CheckpointMismatch`. Loaders (`load_train_state`, `load_denoiser_*`) open runs
read-only. Nothing is deleted by a failing run: Orbax only garbage-collects old steps after a newer
save succeeded, and a halted run (non-finite loss) does not save.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from diffusion_jax.training.checkpointer import (  # noqa: F401  (re-exported)
    CKPT_DIR,
    CORRUPT_DIR,
    Checkpointer,
    CheckpointMismatch,
    NoIntactCheckpoint,
    abstract_like,
)
from diffusion_jax.training.preemption import PreemptionFlag  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"


# ------------------------------------------------------------------------------------------------
# Config files


def _tuplify(x):
    if isinstance(x, dict):
        return {k: _tuplify(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuplify(v) for v in x)
    return x


def save_config(cfg: ml_collections.ConfigDict, workdir: str) -> str:
    """Write `cfg` as JSON to `<workdir>/config.json` (process 0 only); returns the path."""
    path = os.path.join(workdir, CONFIG_FILE)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(cfg.to_json(indent=1, sort_keys=True))
        os.replace(tmp, path)
    return path


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """Read `<workdir>/config.json` back (JSON lists become tuples, as configs write them) and import
    the modules it lists in ``imports``, so the run's own parts resolve by name."""
    from diffusion_jax.training.config import import_extensions

    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a training run?")
    with open(path) as f:
        cfg = ml_collections.ConfigDict(_tuplify(json.load(f)))
    import_extensions(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------
# Data-iterator states of all processes


def gather_data_states(local_state: Any) -> dict[str, Any]:
    """{"<process index>": state} for every process; states are JSON-serialisable dicts.

    With several processes the JSON texts are exchanged with `process_allgather` (padded to the
    longest), so process 0 can write every process's iterator position into one checkpoint.
    """
    if jax.process_count() == 1:
        return {"0": local_state}
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(local_state).encode(), np.uint8)
    n = int(np.max(multihost_utils.process_allgather(np.array([raw.size], np.int32))))
    buf = np.zeros((n,), np.uint8)
    buf[: raw.size] = raw
    every = np.asarray(multihost_utils.process_allgather(buf)).reshape(jax.process_count(), n)
    return {str(p): json.loads(bytes(row).rstrip(b"\0").decode()) for p, row in enumerate(every)}


# ------------------------------------------------------------------------------------------------
# Loading a trained denoiser


def load_train_state(workdir: str, step: int | None = None):
    """Restore the TrainState of a run on the local default device (no mesh needed). Read-only:
    nothing inside `workdir` is created, moved, deleted or written; damaged checkpoints are skipped
    with a warning (the training run quarantines them).

    Returns:
      (state, cfg, network): host-side `TrainState`, the run's config, and its `build.Network` (float32
      compute; its `params` are the checkpoint's raw parameters, `state.params`; the step-0
      initialisation is `build.build_network(cfg).params`).
    """
    from diffusion_jax.training.build import abstract_train_state, assemble_network, network_initializer

    cfg = load_config(workdir)
    # The network's structure from one trace of its initialiser; no random parameters are made only to
    # be replaced by the checkpoint's (for a large model that would be a second copy in memory). The
    # non-parameter buffers (e.g. a fixed positional table; most models have none) come from the very
    # program that made them for training, so the restored network computes what the trained one did.
    graphdef, init = network_initializer(cfg)
    aparams, arest = jax.eval_shape(init)
    rest = init()[1] if jax.tree.leaves(arest) else arest
    # The restore target from `jax.eval_shape` (no optimizer state or EMA copy is materialised).
    abstract = abstract_train_state(cfg, params=aparams)
    ckpt = Checkpointer(workdir, read_only=True)
    try:
        if step is None:
            got = ckpt.restore_latest(abstract)
            if got is None:
                raise FileNotFoundError(f"no checkpoint under {ckpt.directory}")
            state, _, _ = got
        else:
            if step not in ckpt.all_steps():
                raise FileNotFoundError(
                    f"no checkpoint {step} under {ckpt.directory}; saved: {ckpt.all_steps()}"
                )
            state, _ = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
    net = assemble_network(graphdef, state.params, rest, "float32")
    return state, cfg, net


def select_params(state, which: str | None):
    """`which`: None or "" -> the first EMA copy (raw params if there is none); "params" -> raw
    params; otherwise an EMA name from `state.ema_names` (e.g. "ema_0p9999", "power_0p05")."""
    if which in (None, ""):
        return state.ema[next(iter(state.ema))] if state.ema else state.params
    if which == "params":
        return state.params
    if which not in state.ema:
        raise ValueError(
            f"ema={which!r} not in this checkpoint; valid: ['params', {', '.join(map(repr, state.ema))}]"
        )
    return state.ema[which]


def load_denoiser_from_checkpoint(workdir: str, ema: str | None = None, step: int | None = None):
    """The trained model of a run as a `predictions.Denoiser`, ready for any sampler.

    Args:
      workdir: the run directory (holds config.json and checkpoints/).
      ema: which weights: None -> the first EMA copy, "params" -> raw, or an EMA name.
      step: checkpoint step (None -> the newest readable one).

    Returns:
      (denoiser, cfg): the Denoiser (float32 network, params on the default device) and the config.
    """
    from diffusion_jax import objectives

    state, cfg, net = load_train_state(workdir, step)
    params = select_params(state, ema)
    denoiser = objectives.make_denoiser_from_config(cfg.objective, net.net_fn, params)
    return denoiser, cfg


def load_denoiser_and_shape(workdir: str, ema: str | None = None, step: int | None = None):
    """`load_denoiser_from_checkpoint` plus the per-sample shape: (denoiser, cfg, sample_shape),
    e.g. sample_shape (2,) for toy data or (32, 32, 3) for CIFAR-10 (what `diffusion_jax.sample`
    needs to draw the prior)."""
    from diffusion_jax.training.build import data_shape

    denoiser, cfg = load_denoiser_from_checkpoint(workdir, ema, step)
    return denoiser, cfg, data_shape(cfg)


__all__ = [
    "CKPT_DIR",
    "CONFIG_FILE",
    "CORRUPT_DIR",
    "CheckpointMismatch",
    "Checkpointer",
    "NoIntactCheckpoint",
    "PreemptionFlag",
    "abstract_like",
    "gather_data_states",
    "load_config",
    "load_denoiser_and_shape",
    "load_denoiser_from_checkpoint",
    "load_train_state",
    "save_config",
    "select_params",
]
