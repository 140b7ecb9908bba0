"""The `Checkpointer`: Orbax `CheckpointManager` with exact resume, proven-damage fallback and
preemption saves, and its errors (`CheckpointMismatch`, `NoIntactCheckpoint`). The layout of a
workdir, the save / retention / resume rules: see `checkpoints.py` (which re-exports these names and
keeps the config files and the read-only loaders).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from diffusion_jax.training import integrity

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"


# ------------------------------------------------------------------------------------------------
# The checkpointer


class CheckpointMismatch(ValueError):
    """An intact checkpoint whose arrays (or iterator position) do not fit the requested state:
    a config or code mismatch, never grounds for quarantine."""


class NoIntactCheckpoint(FileNotFoundError):
    """Checkpoints existed but every one is damaged."""


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _leaf_table(tree) -> dict[str, tuple]:
    """{'params/hidden/0/bias/value': (shape, dtype)} for array-like leaves of `tree`."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): (tuple(x.shape), np.dtype(x.dtype)) for path, x in leaves}


def _iterator_step(data_state) -> int | None:
    """Global batches an iterator state has consumed, when its format says so."""
    if not isinstance(data_state, dict):
        return None
    if isinstance(data_state.get("step"), int):
        return data_state["step"]
    grain_state = data_state.get("grain")
    if isinstance(grain_state, dict) and isinstance(grain_state.get("next_index"), int):
        return grain_state["next_index"]
    return None


class _DropNotice(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record) -> bool:
        return self.text not in record.getMessage()


class _ShortOrbaxErrors(logging.Filter):
    """Orbax logs each failing background write with a full traceback (dozens for a full disk);
    keep its one-line message, drop the traceback: the error reaches the caller as one OSError."""

    def filter(self, record) -> bool:
        if "orbax" in record.pathname and record.exc_info:
            record.exc_info, record.exc_text = None, None
        return True


_SHORT_ORBAX_ERRORS = _ShortOrbaxErrors()


class Checkpointer:
    """Orbax-backed saving and restoring of (TrainState, data-iterator states).

    Args:
      workdir: run directory; checkpoints go to `<workdir>/checkpoints`, their checksum manifests
        to `<workdir>/checksums` (`integrity`).
      keep: newest checkpoints kept (max_to_keep).
      keep_every: also keep steps that are multiples of this (0 = none).
      async_save: write in the background (Orbax async checkpointing).
      read_only: open without creating, moving, deleting or writing anything (loaders).
    """

    def __init__(
        self,
        workdir: str,
        *,
        keep: int = 3,
        keep_every: int = 0,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, CKPT_DIR)
        self.read_only = read_only
        if read_only:
            self._options = ocp.CheckpointManagerOptions(
                read_only=True, save_interval_steps=0, create=False, save_root_metadata=False
            )
        else:
            self._options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                keep_period=keep_every or None,
                enable_async_checkpointing=async_save,
                create=True,
            )
        self._pending: list[int] = []  # committed or committing steps without a manifest yet
        if not read_only:
            logging.getLogger("absl").addFilter(_SHORT_ORBAX_ERRORS)  # idempotent (one instance)
        self._mngr = self._open()

    def _open(self) -> ocp.CheckpointManager:
        if self.read_only and not os.path.isdir(self.directory):
            return None
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
        quiet = _DropNotice("is read only")  # Orbax's notice for every read-only open
        logging.getLogger("absl").addFilter(quiet)
        try:
            return ocp.CheckpointManager(self.directory, options=self._options, item_handlers=handlers)
        finally:
            logging.getLogger("absl").removeFilter(quiet)

    # -- save -------------------------------------------------------------------------------------
    def save(self, step: int, state, data_states: dict | None = None, *, force: bool = False) -> bool:
        """Start saving `state` (+ all processes' data states) as checkpoint `step` (async).

        Returns whether a save was started (False if `step` is already saved). The checksum
        manifest of a save is written once it is committed (at the next save, `wait` or `close`).
        """
        if self.read_only:
            raise PermissionError(f"{self.directory} was opened read-only")
        if step in self._mngr.all_steps():
            return False
        if self._pending:
            self._finish_pending()
        args = {"state": ocp.args.StandardSave(state)}
        args["data"] = ocp.args.JsonSave(data_states if data_states is not None else {})
        try:
            started = bool(self._mngr.save(int(step), args=ocp.args.Composite(**args), force=force))
        except Exception as e:
            raise self._write_error(int(step), e) from e
        if started:
            self._pending.append(int(step))
        return started

    def _finish_pending(self) -> None:
        try:
            self._mngr.wait_until_finished()
        except Exception as e:
            raise self._write_error(self._pending[-1] if self._pending else None, e) from e
        self._write_manifests()

    def _write_error(self, step, exc: BaseException) -> OSError:
        """A one-line OSError for a failed save (disk full, unwritable, ...); the write never
        became visible (Orbax commits by renaming a temporary directory)."""
        # The failed save's other pending writes report to asyncio's logger when collected.
        logging.getLogger("asyncio").addFilter(_DropNotice("Task exception was never retrieved"))
        text = f"{exc}"
        code = next(
            (c for c, m in ((errno.ENOSPC, "No space left"), (errno.EROFS, "Read-only")) if m in text), None
        )
        reason = os.strerror(code) if code else f"{type(exc).__name__}: {text[:300]}"
        kept = [s for s in self.all_steps() if s != step]
        return OSError(
            code or errno.EIO,
            f"saving checkpoint {step} in {self.directory} failed: {reason}. Nothing partial is visible; "
            f"the checkpoints saved before ({', '.join(map(str, kept)) or 'none'}) are intact",
        )

    def _write_manifests(self) -> None:
        if jax.process_index() == 0:
            for step in self._pending:
                integrity.write_manifest(self.workdir, self.directory, step)
            self._drop_stale_manifests()
        self._pending = []

    def _drop_stale_manifests(self) -> None:
        mdir = os.path.join(self.workdir, integrity.MANIFEST_DIR)
        if not os.path.isdir(mdir):
            return
        for name in os.listdir(mdir):
            stem = name.removesuffix(".json")
            if stem.isdigit() and not os.path.isdir(os.path.join(self.directory, stem)):
                os.remove(os.path.join(mdir, name))  # its checkpoint was rotated out (keep-N)

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk (and their manifests written)."""
        if self._mngr is not None and not self.read_only:
            self._finish_pending()

    def close(self) -> None:
        if self._mngr is None:
            return
        try:
            self.wait()
        finally:
            mngr, self._mngr, self._pending = self._mngr, None, []
            try:
                mngr.close()
            except Exception as e:  # noqa: BLE001 - the save error was raised by wait() already
                log.warning("closing the checkpoint manager: %s: %s", type(e).__name__, str(e)[:200])

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps()) if self._mngr is not None else []

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # -- restore ----------------------------------------------------------------------------------
    def _read(self, step: int, vouched: bool, what: str, fn):
        """`fn()` with damage classification (unvouched files only) and retries."""

        def attempt():
            try:
                return fn()
            except Exception as e:
                if not vouched and integrity.is_damage_error(e):
                    raise integrity.CheckpointDamaged(step, f"{type(e).__name__}: {str(e)[:300]}") from e
                raise

        return integrity.with_retries(attempt, f"{what} of checkpoint {step} in {self.directory}")

    def _check_metadata(self, step: int, abstract_state, vouched: bool) -> None:
        meta = self._read(step, vouched, "reading the metadata", lambda: self._mngr.item_metadata(step))
        saved = _leaf_table(meta["state"])
        want = _leaf_table(abstract_state)
        if saved == want:
            return
        diff = sorted(set(saved) ^ set(want))[:5] or [k for k in want if saved.get(k) != want[k]][:5]
        detail = "; ".join(
            f"{k}: saved {saved.get(k, 'absent')} vs expected {want.get(k, 'absent')}" for k in diff
        )
        if not vouched:
            raise integrity.CheckpointDamaged(
                step, f"its array metadata disagrees with the run's config ({detail})"
            )
        raise CheckpointMismatch(
            f"checkpoint {step} in {self.directory} is intact (checksums match) but its arrays do not fit "
            f"the state the config describes: {detail}"
        )

    def restore(self, step: int, abstract_state) -> tuple[Any, dict]:
        """Restore checkpoint `step` onto `abstract_state` (a pytree of `jax.ShapeDtypeStruct` with
        shardings: the restored arrays get those shardings, whatever the saving device count).

        Raises `integrity.CheckpointDamaged` on proof of damage, `CheckpointMismatch` when intact
        files do not fit `abstract_state`, `integrity.CheckpointUnavailable` when reading keeps
        failing for another reason (after retries).
        """
        integrity.silence_closed_loop_callbacks()
        reason, vouched = integrity.verify(self.workdir, self.directory, step)
        if reason is not None:
            raise integrity.CheckpointDamaged(step, reason)
        self._check_metadata(step, abstract_state, vouched)

        def read():
            args = ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            )
            out = self._mngr.restore(int(step), args=args)
            # Reading every array forces the full read now, so a truncated file fails here.
            return jax.block_until_ready(out["state"]), dict(out["data"] or {})

        state, data = self._read(step, vouched, "reading", read)
        _check_structure(state, abstract_state)
        self._check_steps(step, state, data, vouched)
        return state, data

    def _check_steps(self, step: int, state, data: dict, vouched: bool) -> None:
        model_step = int(np.asarray(jax.device_get(state.step))) if hasattr(state, "step") else step
        seen = {p: _iterator_step(s) for p, s in data.items()}
        bad = {p: s for p, s in seen.items() if s is not None and s != model_step}
        if model_step == step and not bad:
            return
        detail = f"directory step {step}, model step {model_step}, data-iterator steps {seen}"
        if not vouched:
            raise integrity.CheckpointDamaged(step, f"its steps disagree ({detail})")
        raise CheckpointMismatch(f"checkpoint {step} in {self.directory}: steps disagree ({detail})")

    def restore_latest(self, abstract_state, *, quarantine: bool = False) -> tuple[Any, dict, int] | None:
        """Restore the newest intact checkpoint: (state, data_states, step), or None if there is none.

        A provably damaged checkpoint is skipped with a warning; with `quarantine` (the training run,
        which holds the workdir lock) it is also moved to `<workdir>/checkpoints_corrupt/<step>`.
        Raises `NoIntactCheckpoint` if checkpoints exist and all are damaged; other failures
        propagate (`CheckpointMismatch`, `integrity.CheckpointUnavailable`): never a silent fallback.
        """
        damaged = []
        for step in reversed(self.all_steps()):
            try:
                state, data = self.restore(step, abstract_state)
                return state, data, step
            except integrity.CheckpointDamaged as e:
                action = f"moving it to {CORRUPT_DIR}/" if quarantine else "skipping it (left in place)"
                msg = f"{e} ({self.directory}); {action} and trying the previous checkpoint"
                log.warning(msg)
                warnings.warn(msg, RuntimeWarning, stacklevel=2)
                damaged.append(str(e))
                if quarantine:
                    self._quarantine(step)
        if damaged:
            raise NoIntactCheckpoint(f"no intact checkpoint in {self.directory}: " + "; ".join(damaged))
        return None

    def _quarantine(self, step: int) -> None:
        self._mngr.wait_until_finished()
        if jax.process_index() == 0:
            dst_root = os.path.join(self.workdir, CORRUPT_DIR)
            os.makedirs(dst_root, exist_ok=True)
            dst = os.path.join(dst_root, str(step))
            k = 1
            while os.path.exists(dst):
                dst = os.path.join(dst_root, f"{step}.{k}")
                k += 1
            shutil.move(os.path.join(self.directory, str(step)), dst)
            manifest = integrity.manifest_path(self.workdir, step)
            if os.path.exists(manifest):
                shutil.move(manifest, os.path.join(dst, "checksums.json"))
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
