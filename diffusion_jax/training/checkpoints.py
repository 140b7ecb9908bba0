"""Checkpoints: Orbax `CheckpointManager` with exact resume, corruption fallback and preemption saves.

Layout of a workdir:
  config.json                   the resolved config of the run (written once at start)
  checkpoints/<step>/state      the TrainState (params, EMA, optimizer state, step, RNG, counters)
  checkpoints/<step>/data       JSON: every process's data-iterator state {"<process>": state}
  checkpoints_corrupt/<step>    checkpoints that failed to restore, moved aside (never deleted)

Saves are asynchronous (Orbax writes in a background thread into a temporary directory and renames
it when complete, so a run killed mid-save leaves no half-written `<step>`). Retention: the newest
`keep` checkpoints plus every checkpoint whose step is a multiple of `keep_every`.

Resume (`Checkpointer.restore_latest`): the newest checkpoint is restored; if that fails (truncated
or corrupted files), the directory is moved to `checkpoints_corrupt/`, a warning is logged, and the
next older one is tried. Nothing is deleted by a failing run: Orbax only garbage-collects old steps
after a newer save succeeded, and a halted run (non-finite loss) does not save.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CKPT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"


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
# The checkpointer


class Checkpointer:
    """Orbax-backed saving and restoring of (TrainState, data-iterator states).

    Args:
      workdir: run directory; checkpoints go to `<workdir>/checkpoints`.
      keep: newest checkpoints kept (max_to_keep).
      keep_every: also keep steps that are multiples of this (0 = none).
      async_save: write in the background (Orbax async checkpointing).
    """

    def __init__(self, workdir: str, *, keep: int = 3, keep_every: int = 0, async_save: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, CKPT_DIR)
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_every or None,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._mngr = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options)

    # -- save -------------------------------------------------------------------------------------
    def save(self, step: int, state, data_states: dict | None = None, *, force: bool = False) -> bool:
        """Start saving `state` (+ all processes' data states) as checkpoint `step` (async).

        Returns whether a save was started (False if `step` is already saved).
        """
        if step in self._mngr.all_steps():
            return False
        args = {"state": ocp.args.StandardSave(state)}
        args["data"] = ocp.args.JsonSave(data_states if data_states is not None else {})
        return bool(self._mngr.save(int(step), args=ocp.args.Composite(**args), force=force))

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    # -- restore ----------------------------------------------------------------------------------
    def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
        """Restore checkpoint `step` onto `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with
        shardings: the restored arrays get those shardings, whatever the saving device count)."""
        out = self._mngr.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        state = out["state"]
        # Reading every array back forces the full read now, so truncated files fail here (inside
        # the fallback) and not at the first train step.
        jax.block_until_ready(state)
        _check_structure(state, abstract_state)
        return state, dict(out["data"] or {})

    def restore_latest(self, abstract_state) -> tuple[Any, dict, int] | None:
        """Restore the newest readable checkpoint: (state, data_states, step), or None if none.

        A checkpoint that fails to restore is moved to `<workdir>/checkpoints_corrupt/<step>` (kept
        for inspection) with a warning, and the previous one is tried.
        """
        while True:
            steps = self.all_steps()
            if not steps:
                return None
            step = steps[-1]
            try:
                state, data = self.restore(step, abstract_state)
                return state, data, step
            except Exception as e:  # noqa: BLE001 - any read/parse failure means "unusable"
                msg = (
                    f"checkpoint {step} in {self.directory} could not be restored "
                    f"({type(e).__name__}: {str(e)[:300]}); moving it to {CORRUPT_DIR}/ and falling "
                    f"back to the previous checkpoint"
                )
                log.warning(msg)
                import warnings

                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                self._quarantine(step)

    def _quarantine(self, step: int) -> None:
        self._mngr.wait_until_finished()
        if jax.process_index() == 0:
            src = os.path.join(self.directory, str(step))
            dst_root = os.path.join(self.workdir, CORRUPT_DIR)
            os.makedirs(dst_root, exist_ok=True)
            dst = os.path.join(dst_root, str(step))
            k = 1
            while os.path.exists(dst):
                dst = os.path.join(dst_root, f"{step}.{k}")
                k += 1
            shutil.move(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"quarantine_{step}")
        self._mngr.close()
        self._mngr = self._open()


def _check_structure(state, abstract_state) -> None:
    got = jax.tree.structure(state)
    want = jax.tree.structure(abstract_state)
    if got != want:
        raise ValueError(f"restored state structure {got} differs from the expected {want}")


def abstract_like(tree, shardings=None):
    """Pytree of `jax.ShapeDtypeStruct` (with `shardings`, a matching pytree, when given)."""
    if shardings is None:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=getattr(x, "sharding", None)), tree
        )
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings)


# ------------------------------------------------------------------------------------------------
# Preemption


class PreemptionFlag:
    """Set by SIGTERM (the signal a scheduler sends before preempting); the loop polls it, saves a
    checkpoint at the current step and exits cleanly. The previous handler is restored on `close`."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self._event = threading.Event()
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._old[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        del frame
        log.warning("received signal %d: will save a checkpoint and stop after the current step", signum)
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


# ------------------------------------------------------------------------------------------------
# Loading a trained denoiser


def load_train_state(workdir: str, step: int | None = None):
    """Restore the TrainState of a run on the local default device (no mesh needed).

    Returns:
      (state, cfg, network): host-side `TrainState`, the run's config, and its `build.Network`.
    """
    from diffusion_jax.training.build import build_network, build_state

    cfg = load_config(workdir)
    net = build_network(cfg, compute_dtype="float32")
    state, _ = build_state(cfg, net.params)
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=dev), state)
    ckpt = Checkpointer(workdir, async_save=False)
    try:
        if step is None:
            got = ckpt.restore_latest(abstract)
            if got is None:
                raise FileNotFoundError(f"no checkpoint under {ckpt.directory}")
            state, _, _ = got
        else:
            state, _ = ckpt.restore(step, abstract)
    finally:
        ckpt.close()
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
    "Checkpointer",
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
