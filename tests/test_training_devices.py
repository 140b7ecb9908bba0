"""8 simulated devices (data parallel, and FSDP 4 x 2) give the same losses and parameters as 1.

The global batch, the per-step keys and the data stream do not depend on the mesh, so only the
order of floating-point reductions differs (per-device partial sums + all-reduce). Tolerance:
rtol 2e-5 / atol 1e-6 on parameters and logged losses after 3 Adam steps.
"""

import sys

import jax
import numpy as np

from diffusion_jax.training import loop
from diffusion_jax.training.logging import read_jsonl
from tests.test_training_multihost import REPO


def _cfg(data, fsdp):
    sys.path.insert(0, REPO)
    from configs.toy2d import rf_logit_normal

    cfg = rf_logit_normal.get_config("moons_tiny")
    cfg.training.num_steps = 3
    cfg.training.log_every = 1
    cfg.training.ckpt_every = 100
    cfg.training.fsdp_min_size = 16  # shard even the tiny MLP's matrices under FSDP
    cfg.data.batch_size = 64
    cfg.training.fast_compile = True  # unoptimised XLA: same values, less compile time
    cfg.mesh.data, cfg.mesh.fsdp = data, fsdp
    return cfg


def _run(tmp_path, name, data, fsdp, devices):
    wd = str(tmp_path / name)
    r = loop.train(_cfg(data, fsdp), wd, progress=False, devices=devices)
    losses = [row["train/loss"] for row in read_jsonl(f"{wd}/metrics.jsonl")]
    return r, losses


def test_eight_devices_match_one(tmp_path):
    assert jax.device_count() == 8
    one, l1 = _run(tmp_path, "one", 1, 1, jax.devices()[:1])
    dp, l8 = _run(tmp_path, "dp", 8, 1, None)
    fsdp, lf = _run(tmp_path, "fsdp", 4, 2, None)
    # FSDP really shards: some parameter is split across devices.
    specs = [x.sharding.spec for x in jax.tree.leaves(fsdp.state.params)]
    assert any(any(a is not None for a in spec) for spec in specs)
    np.testing.assert_allclose(l8, l1, rtol=2e-5)
    np.testing.assert_allclose(lf, l1, rtol=2e-5)
    ref = jax.tree.leaves(jax.tree.map(np.asarray, one.state.params))
    for other in (dp, fsdp):
        got = jax.tree.leaves(jax.tree.map(np.asarray, other.state.params))
        for g, w in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)
