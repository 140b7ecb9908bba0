"""Metrics logging: TensorBoard event files (tensorboardX, no TensorFlow) and a JSONL log.

Only process 0 writes. `metrics.jsonl` has one JSON object per logged step, `{"step": s, ...}`,
appended (a resumed run continues the same file; rows with a step beyond the resume point come from
the interrupted run and are superseded by later rows with the same step). Event files go to
`<workdir>/tensorboard`.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping

import jax
import numpy as np

JSONL_FILE = "metrics.jsonl"
TB_DIR = "tensorboard"


def _summary_writer_class():
    """tensorboardX's `SummaryWriter`, imported without pulling in torch.

    tensorboardX's writer module imports torch whenever it is installed (the `parity` extra does),
    only so it can accept torch tensors, which we never log; that import costs ~1.8 s per training
    process. While torch is not loaded yet, `import torch` is made to fail for this one import (a
    `None` entry in `sys.modules` raises ImportError), then torch is importable again as before.
    """
    if "torch" in sys.modules or "tensorboardX.writer" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _scalar(v):
    v = np.asarray(v)
    if v.size != 1:
        return None
    v = v.reshape(()).item()
    if isinstance(v, bool):
        return float(v)
    return v


class MetricsLogger:
    """Write scalars (and images) for step `s` to TensorBoard and `metrics.jsonl`.

    Args:
      workdir: run directory.
      tensorboard: also write TensorBoard event files.
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, JSONL_FILE)
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            self._tb = _summary_writer_class()(logdir=os.path.join(workdir, TB_DIR))

    def write(self, step: int, metrics: Mapping[str, object], prefix: str = "") -> None:
        """Log scalar metrics (arrays of size 1 or python numbers) at `step`."""
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in metrics.items():
            s = _scalar(v)
            if s is None:
                continue
            name = f"{prefix}{k}"
            # JSON has no NaN/inf: write them as strings so the file stays valid JSON.
            row[name] = s if not (isinstance(s, float) and not math.isfinite(s)) else str(s)
            if self._tb is not None:
                self._tb.add_scalar(name, float(s), int(step))
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Log an HWC uint8 image to TensorBoard."""
        if self.enabled and self._tb is not None:
            self._tb.add_image(tag, np.asarray(image), int(step), dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self._file.flush()
            if self._tb is not None:
                self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def read_jsonl(path: str) -> list[dict]:
    """All rows of a metrics.jsonl file (e.g. `os.path.join(workdir, 'metrics.jsonl')`)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = ["JSONL_FILE", "TB_DIR", "MetricsLogger", "read_jsonl"]
