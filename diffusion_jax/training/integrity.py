"""Proving a checkpoint damaged (or intact) before trusting or quarantining it.

A checkpoint is declared *damaged* only on evidence: a file listed in its checksum manifest is
missing, has another size or another SHA-256; a file every checkpoint has is missing; the array
metadata disagrees with the state the run's config describes although the files are intact is NOT
damage (it is a config mismatch, reported as such); or, for a checkpoint without a manifest (killed
between commit and manifest), a read error of a kind that only damaged files produce. Every other
failure (out of memory, I/O errors of the filesystem, timeouts) is *transient*: retried, then fatal.

Manifests live outside Orbax's directory, in `<workdir>/checksums/<step>.json`
({"files": {relative path: [size, sha256]}}), written by process 0 once the save is committed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

MANIFEST_DIR = "checksums"
# Files every committed checkpoint of this layout has (relative to checkpoints/<step>).
REQUIRED_FILES = ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt", "data/metadata")
RETRY_DELAYS = (1.0, 4.0)  # seconds between the attempts at a transiently failing read
# Tensorstore / Orbax messages that only damaged files produce (truncated, garbled, missing chunks).
_DAMAGE_MARKERS = ("DATA_LOSS", "OUT_OF_RANGE", "Error decoding", "Error parsing", "corrupt", "checksum")
# Messages of conditions that are not about the files: retry, never quarantine.
_TRANSIENT_MARKERS = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "out of memory")
_TRANSIENT_ERRNOS = {
    errno.EIO,
    errno.EAGAIN,
    errno.ENOMEM,
    errno.ETIMEDOUT,
    errno.EBUSY,
    errno.ESTALE,
    errno.EINTR,
}


class CheckpointDamaged(Exception):
    """The checkpoint's files are provably damaged (`reason` says how)."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"checkpoint {step} is damaged: {reason}")
        self.step, self.reason = step, reason


class CheckpointUnavailable(RuntimeError):
    """Reading an intact (or not provably damaged) checkpoint kept failing: fatal, nothing moved."""


def manifest_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, MANIFEST_DIR, f"{int(step)}.json")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: str) -> list[str]:
    out = []
    for base, _, names in os.walk(root):
        out += [os.path.relpath(os.path.join(base, n), root) for n in names]
    return sorted(out)


def write_manifest(workdir: str, ckpt_dir: str, step: int) -> None:
    """Hash every file of the committed checkpoint `<ckpt_dir>/<step>`; atomic write (tmp + rename)."""
    root = os.path.join(ckpt_dir, str(int(step)))
    if not os.path.isdir(root):  # already rotated out by keep-N
        return
    files = {
        rel: [os.path.getsize(os.path.join(root, rel)), _sha256(os.path.join(root, rel))]
        for rel in _files(root)
    }
    path = manifest_path(workdir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"step": int(step), "files": files}, f, indent=0, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def verify(workdir: str, ckpt_dir: str, step: int) -> tuple[str | None, bool]:
    """(reason the checkpoint is damaged or None, whether a manifest vouched for every file)."""
    root = os.path.join(ckpt_dir, str(int(step)))
    for rel in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(root, rel)):
            return f"required file {rel} is missing", False
    mpath = manifest_path(workdir, step)
    if not os.path.isfile(mpath):
        return None, False
    try:
        with open(mpath) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError):
        return None, False  # a damaged manifest proves nothing about the checkpoint
    for rel, (size, digest) in files.items():
        p = os.path.join(root, rel)
        if not os.path.isfile(p):
            return f"file {rel} is missing", False
        got = os.path.getsize(p)
        if got != size:
            return f"file {rel} has {got} bytes, {size} when saved", False
        if _sha256(p) != digest:
            return f"file {rel} does not match its SHA-256 from save time", False
    return None, True


def is_damage_error(exc: BaseException) -> bool:
    """Whether a read failure of a checkpoint WITHOUT a manifest proves its files damaged."""
    if isinstance(exc, FileNotFoundError | json.JSONDecodeError | UnicodeDecodeError):
        return True
    msg = str(exc)
    if any(m in msg for m in _TRANSIENT_MARKERS):
        return False
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return False
    return isinstance(exc, ValueError | KeyError) and any(m in msg for m in _DAMAGE_MARKERS)


def with_retries(fn: Callable, what: str, delays=None):
    """Call `fn()`; on an exception retry after each of `delays` seconds, then raise
    `CheckpointUnavailable` (never a fallback or a restart)."""
    delays = RETRY_DELAYS if delays is None else delays
    for attempt in range(len(delays) + 1):
        try:
            return fn()
        except (CheckpointDamaged, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - anything not proven damage is retried
            if attempt == len(delays):
                raise CheckpointUnavailable(
                    f"{what} failed {attempt + 1} times ({type(e).__name__}: {str(e)[:300]}); the files "
                    "are not provably damaged, so nothing was moved or deleted. Fix the cause (memory, "
                    "filesystem) and run again."
                ) from e
            log.warning(
                "%s failed (%s: %s); retrying in %gs", what, type(e).__name__, str(e)[:200], delays[attempt]
            )
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


_HOOK_INSTALLED = False


def silence_closed_loop_callbacks() -> None:
    """Drop the `RuntimeError: Event loop is closed` reports of tensorstore reads that complete
    after Orbax gave up on a failed restore (they go to `sys.unraisablehook`, one per pending
    read). Every other unraisable exception still reaches the previous hook. Idempotent."""
    global _HOOK_INSTALLED
    if _HOOK_INSTALLED:
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        previous(unraisable)

    sys.unraisablehook = hook
    _HOOK_INSTALLED = True


__all__ = [
    "MANIFEST_DIR",
    "CheckpointDamaged",
    "CheckpointUnavailable",
    "is_damage_error",
    "manifest_path",
    "silence_closed_loop_callbacks",
    "verify",
    "with_retries",
    "write_manifest",
]
