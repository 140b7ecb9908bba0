"""The training loop keeps step metrics on the device between logging steps: they are read back
to the host in one transfer per logging (or checkpoint) step, never once per step."""

import jax
import numpy as np
import pytest

from diffusion_jax.training import loop
from diffusion_jax.training.logging import read_jsonl
from tests.test_faults import tiny_config


def test_metrics_are_read_back_once_per_logging_window(tmp_path, monkeypatch):
    drained = []
    real = loop._Session._drain

    def counting(self):
        if self.pending:
            drained.append((self.step, len(self.pending)))
        real(self)

    monkeypatch.setattr(loop._Session, "_drain", counting)
    cfg = tiny_config(num_steps=12)
    cfg.training.log_every, cfg.training.ckpt_every = 4, 100
    losses = []  # read by the test's own hook, per step (the loop itself does not)
    hook = lambda step, state, m: losses.append(float(np.asarray(m["loss"])))  # noqa: E731
    r = loop.train(cfg, str(tmp_path / "run"), progress=False, devices=jax.devices()[:1], hooks=[hook])
    assert drained == [(4, 4), (8, 4), (12, 4)]
    logged = read_jsonl(str(tmp_path / "run" / "metrics.jsonl"))
    assert [row["step"] for row in logged] == [4, 8, 12]
    for i, row in enumerate(logged):  # each line is the mean over its window
        assert row["train/loss"] == pytest.approx(np.mean(losses[4 * i : 4 * i + 4]), rel=1e-6)
    assert r.last_metrics["loss"] == logged[-1]["train/loss"]
