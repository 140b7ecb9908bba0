"""One writer per workdir: a lock file naming the host, PID and start time of the run holding it.

`<workdir>/run.lock` is created with O_CREAT | O_EXCL (atomic on local filesystems and NFSv3+), so
of two runs starting together exactly one gets it; the other fails at once naming the holder. The
holder refreshes the file's modification time every `HEARTBEAT` seconds.

A lock is *stale* when its holder is provably gone: on the same host, its PID no longer exists or
belongs to a process started at another time (PID reuse); on another host (shared filesystem),
its heartbeat is older than `STALE_AFTER` seconds. A stale lock is taken over with a warning (it is
renamed aside first, so of two runs taking it over only one succeeds). In a multi-host run
process 0 holds the lock for all; the others learn the outcome from it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import warnings

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
HEARTBEAT = 30.0
STALE_AFTER = 300.0


class WorkdirLocked(RuntimeError):
    """Another live run holds the workdir."""


def _start_time(pid: int) -> str | None:
    """Process start time (clock ticks since boot, /proc/<pid>/stat field 22), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now = _start_time(pid)
    return start is None or now is None or now == start


def _me() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid), "since": time.time()}


def _describe(info: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"host {info.get('host')!r}, PID {info.get('pid')}, started {since}"


class RunLock:
    """Held for the life of a training run: `acquire()` ... `release()` (or a `with` block)."""

    def __init__(self, workdir: str, *, heartbeat: float = HEARTBEAT, stale_after: float = STALE_AFTER):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self._info: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _create(self, me: dict) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _holder(self) -> dict | None:
        try:
            with open(self.path) as f:
                info = json.load(f)
            info["mtime"] = os.path.getmtime(self.path)
            return info
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # Being written right now, or garbage: judge by age alone.
            try:
                return {"host": None, "pid": None, "mtime": os.path.getmtime(self.path)}
            except FileNotFoundError:
                return None

    def _stale(self, info: dict) -> bool:
        if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
            return not _alive(info["pid"], info.get("start"))
        return time.time() - info["mtime"] > self.stale_after

    def acquire(self) -> RunLock:
        """Take the lock or raise `WorkdirLocked` naming its holder; take over a stale lock."""
        me = _me()
        for _ in range(3):
            if self._create(me):
                self._info = me
                self._start_heartbeat()
                return self
            info = self._holder()
            if info is None:
                continue  # released meanwhile
            if not self._stale(info):
                raise WorkdirLocked(
                    f"workdir {os.path.dirname(self.path)} is in use by another run ({_describe(info)}); "
                    f"wait for it to finish, stop it, or use another --workdir (lock file: {self.path})"
                )
            aside = f"{self.path}.stale.{os.getpid()}"
            try:
                os.rename(self.path, aside)  # only one of several racing runs succeeds
            except FileNotFoundError:
                continue
            os.remove(aside)
            msg = f"taking over the stale lock of a run that is gone ({_describe(info)}) in {self.path}"
            log.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        raise WorkdirLocked(f"could not take the lock {self.path}: it keeps changing hands")

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(self.heartbeat):
                try:
                    os.utime(self.path)
                except OSError:
                    pass

        self._stop.clear()
        self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Remove the lock if this process still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._info is None:
            return
        info = self._holder()
        if info and info.get("pid") == self._info["pid"] and info.get("host") == self._info["host"]:
            os.remove(self.path)
        self._info = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LOCK_FILE", "RunLock", "WorkdirLocked"]
