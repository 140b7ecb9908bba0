"""A short training run on the real Fashion-MNIST (Debian's dataset-fashion-mnist files).

A tiny U-Net (nf 8, two levels, 16x16 area-downsampled images), batch 32, rectified-flow loss,
40 Adam steps at lr 2e-3: the mean logged loss of the last 8 steps must be below 85% of the mean
of the first 8 (measured: 0.46). The flow-matching loss of a network that outputs 0 is
E|eps - x|^2 = 1 + E|x|^2 per pixel; learning even the mean velocity lowers it substantially, so
this checks that data, model, loss and optimizer are wired together on real images.
"""

import os
import sys

import jax
import numpy as np
import pytest

from diffusion_jax.data import fashion_mnist
from diffusion_jax.training import loop
from diffusion_jax.training.logging import read_jsonl
from tests.test_training_multihost import REPO

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(fashion_mnist.DEBIAN_DIR, "train-images-idx3-ubyte.gz")),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


@pytest.mark.heavy  # the Fashion-MNIST U-Net's train step compiles in GBs of RSS (tests/conftest.py)
def test_loss_goes_down_on_real_fashion_mnist(tmp_path):
    sys.path.insert(0, REPO)
    from configs.fashion_mnist import rf_uniform

    cfg = rf_uniform.get_config("tiny")
    cfg.model.image_size = 16
    cfg.data.image_size = 16
    cfg.data.batch_size = 32
    # TFDS's default data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets): the local build (~25 s)
    # happens once and is reused by later runs, as for a user.
    cfg.data.data_dir = ""
    cfg.data.prepare = True
    cfg.training.num_steps = 40
    cfg.training.lr = 2e-3
    cfg.training.log_every = 1
    cfg.training.fast_compile = True
    workdir = str(tmp_path / "run")
    r = loop.train(cfg, workdir, progress=False, devices=jax.devices()[:2])
    assert r.step == 40
    losses = np.array([row["train/loss"] for row in read_jsonl(os.path.join(workdir, "metrics.jsonl"))])
    assert len(losses) == 40 and np.all(np.isfinite(losses))
    first, last = losses[:8].mean(), losses[-8:].mean()
    assert last < 0.85 * first, (first, last)
