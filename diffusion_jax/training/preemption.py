"""SIGTERM, the signal a scheduler sends before preempting a job, as a flag the loop polls.

Light on purpose (no JAX import): `python -m diffusion_jax.train` installs it as the first thing the
process does, so a SIGTERM during start-up (imports, config parsing, building, restoring) is not
lost; the loop then saves a checkpoint at its first safe point and exits with status 0.
"""

from __future__ import annotations

import logging
import signal
import threading

log = logging.getLogger(__name__)


class PreemptionFlag:
    """Set by SIGTERM; the loop polls it, saves a checkpoint at the current step and exits cleanly.
    The previous handler is restored on `close`. Installs nothing outside the main thread."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self._event = threading.Event()
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in signals:
                self._old[sig] = signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        del frame
        log.warning("received signal %d: will save a checkpoint and stop at the next safe point", signum)
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def close(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


__all__ = ["PreemptionFlag"]
