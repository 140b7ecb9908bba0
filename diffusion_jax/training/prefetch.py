"""Host batches prepared ahead of the device step, in background threads.

The training loop dispatches the jitted step asynchronously, but reading the next batch and the
host-side batch transform (key renaming, caption tokens, and above all the exact minibatch-OT pairing
of `couplings.ExactOT`, POT's network simplex, which releases the GIL) would otherwise run on the main
thread between two dispatches, i.e. in series with the device. `Prefetcher` moves them off it: one
reader thread pulls batches from the data iterator in order, `workers` threads transform them
(batch k + 1, ..., k + depth while step k runs), and the main thread takes the results in order.

Determinism: the transform of step s is a function of (batch s, s) alone (its randomness is seeded
by the step, `training.loop._host_batch_transform`), and results are consumed in step order, so the
batches are the same bits whatever the number of threads or their timing. Resume stays exact:
`get_state()` is the data iterator's state just after the last batch *consumed* (recorded by the
reader next to each batch), not after the batches read ahead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor


class Prefetcher:
    """Iterator of `transform(next(it), step)` for step = start, start + 1, ... prepared ahead.

    Args:
      it: the data iterator (``next`` -> dict of numpy arrays; ``get_state()``), positioned at
        `start` (restore its state before building the prefetcher).
      transform: ``fn(batch, step) -> batch``, thread-safe and a pure function of its arguments.
      start: the step of the first batch.
      depth: batches prepared ahead (>= 1).
      workers: threads running `transform` concurrently (>= 1).

    `next()` re-raises an error of the iterator or the transform at the step it belongs to; `close()`
    stops the threads (always call it; also usable as a context manager).
    """

    def __init__(self, it, transform: Callable, start: int, depth: int = 2, workers: int = 1):
        if int(depth) < 1 or int(workers) < 1:
            raise ValueError(f"Prefetcher needs depth >= 1 and workers >= 1, got {depth} and {workers}")
        self._it, self._transform = it, transform
        self._state = it.get_state()
        self._pool = ThreadPoolExecutor(int(workers), thread_name_prefix="prefetch")
        self._queue: queue.Queue = queue.Queue(maxsize=int(depth))
        self._stop = threading.Event()
        self._reader = threading.Thread(
            target=self._read, args=(int(start),), daemon=True, name="prefetch-reader"
        )
        self._error: BaseException | None = None
        self._reader.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, step: int) -> None:
        while not self._stop.is_set():
            try:
                batch = next(self._it)
                state = self._it.get_state()
            except BaseException as e:  # noqa: BLE001  (StopIteration included: re-raised in next())
                failed: Future = Future()
                failed.set_exception(e)
                self._put((failed, None))
                return
            if not self._put((self._pool.submit(self._transform, batch, step), state)):
                return
            step += 1

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._error is not None:
            raise self._error
        future, state = self._queue.get()
        try:
            batch = future.result()  # re-raises the iterator's or the transform's error
        except BaseException as e:
            self._error = e
            raise
        self._state = state
        return batch

    def get_state(self):
        """The data iterator's state after the last batch returned by `next()` (for checkpoints)."""
        return self._state

    def close(self) -> None:
        """Stop the reader (it may be blocked on a full queue) and the workers; idempotent."""
        self._stop.set()
        while True:  # unblock a reader waiting to put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._reader.join(timeout=30)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Inline:
    """`Prefetcher`'s interface without threads (``training.prefetch = 0``): each `next()` reads and
    transforms on the calling thread."""

    def __init__(self, it, transform: Callable, start: int):
        self._it, self._transform, self._step = it, transform, int(start)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = self._transform(next(self._it), self._step)
        self._step += 1
        return batch

    def get_state(self):
        return self._it.get_state()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def host_batches(it, transform: Callable, start: int, depth: int, workers: int | None = None):
    """A `Prefetcher` (depth > 0; `workers` defaults to depth) or, for depth 0, `Inline`."""
    if int(depth) == 0:
        return Inline(it, transform, start)
    return Prefetcher(it, transform, start, depth, int(depth) if workers is None else workers)


__all__ = ["Inline", "Prefetcher", "host_batches"]
