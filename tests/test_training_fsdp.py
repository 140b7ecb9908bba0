"""ZeRO-3 FSDP on 8 simulated devices: the compiled train steps of the U-Net and the DiT.

Assertions on the compiled HLO (collectives and the bytes each moves, `training.collectives`) and on
`compiled.memory_analysis()`, against independent figures: the parameter bytes of the model (sum of
shapes x 4) and the ring-algorithm cost of data parallelism, 2 N (n-1)/n for an all-reduce of N
bytes over n devices. ZeRO-3 (Rajbhandari et al. 2020, sec. 5) moves N (n-1)/n in all-gathers of
the weights plus N (n-1)/n in reduce-scatters of the gradients: the same total as data parallelism,
with no full-size gradient all-reduce, and per-device state 1/n of the replicated one.
The FSDP step's numbers (same losses and parameters as one device) are tested in
`test_training_devices.py`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.imagenet64 import dit as dit_cfg
from configs.imagenet64 import edm_adm as unet_cfg
from diffusion_jax.training.build import data_shape
from diffusion_jax.training.collectives import collective_stats, parse_collectives
from diffusion_jax.training.loop import build_runtime

N_DEV, BATCH = 8, 16


def _config(kind: str, mode: str):
    cfg = (dit_cfg if kind == "dit" else unet_cfg).get_config("tiny")
    cfg.data.batch_size = BATCH
    cfg.training.fsdp_min_size = 1  # shard every parameter with a dimension divisible by 8
    cfg.training.fast_compile = True
    cfg.mesh.data, cfg.mesh.fsdp = (N_DEV, 1) if mode == "dp" else (1, N_DEV)
    return cfg


def compile_train_step(cfg):
    """(runtime, compiled train step) of `cfg` for a class-labelled image batch, from abstract inputs
    carrying the runtime's state shardings (nothing is materialised)."""
    rt = build_runtime(cfg)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), rt.host_state, rt.state_sharding
    )
    batch = {
        "x": jax.ShapeDtypeStruct((cfg.data.batch_size, *data_shape(cfg)), jnp.float32),
        "label": jax.ShapeDtypeStruct((cfg.data.batch_size,), jnp.int32),
    }
    return rt, rt.step_fn.lower(state, batch).compile()


def _compile(kind: str, mode: str):
    return compile_train_step(_config(kind, mode))


@pytest.fixture(scope="module", params=["unet", "dit"])
def programs(request):
    return request.param, _compile(request.param, "dp"), _compile(request.param, "fsdp")


def _nbytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def test_fsdp_collectives_gather_once_and_reduce_scatter(programs):
    kind, (dp_rt, dp), (rt, fsdp) = programs
    n = N_DEV
    param_bytes = _nbytes(rt.host_state.params)
    sharded = [
        (x, s)
        for x, s in zip(
            jax.tree.leaves(rt.host_state.params), jax.tree.leaves(rt.state_sharding.params), strict=True
        )
        if any(a is not None for a in s.spec)
    ]
    sharded_bytes = _nbytes([x for x, _ in sharded])
    assert sharded_bytes > 0.95 * param_bytes

    d = collective_stats(dp.as_text())
    f = collective_stats(fsdp.as_text())
    print(kind, "dp", d, "\nfsdp", f)
    # Data parallel: the whole gradient is all-reduced (ring cost 2 N (n-1)/n), nothing else moves.
    assert d["all-reduce"]["bytes"] == pytest.approx(2 * param_bytes * (n - 1) / n, rel=0.01)
    assert d["all-gather"]["count"] == d["reduce-scatter"]["count"] == 0

    # ZeRO-3: each sharded weight is all-gathered exactly once per step ...
    assert f["all-gather"]["count"] == len(sharded)
    assert f["all-gather"]["bytes"] == pytest.approx(sharded_bytes * (n - 1) / n, rel=0.01)
    gathered = sorted(c.result_bytes for c in parse_collectives(fsdp.as_text()) if c.kind == "all-gather")
    assert gathered == sorted(_nbytes(x) for x, _ in sharded)
    # ... its gradient is reduce-scattered (a few gradients are structurally zero and elided by XLA) ...
    assert 0.95 * len(sharded) <= f["reduce-scatter"]["count"] <= len(sharded)
    assert f["reduce-scatter"]["bytes"] == pytest.approx(f["all-gather"]["bytes"], rel=0.05)
    # ... and no gradient is all-reduced whole: only metrics, norms and the few replicated leftovers.
    assert f["all-reduce"]["bytes"] <= 0.01 * d["all-reduce"]["bytes"]
    total_f = sum(v["bytes"] for v in f.values())
    total_d = sum(v["bytes"] for v in d.values())
    assert total_f <= 1.01 * total_d


def test_fsdp_state_is_one_eighth_per_device(programs):
    kind, (dp_rt, dp), (rt, fsdp) = programs
    batch_per_device = BATCH // N_DEV * (int(np.prod(data_shape(rt.cfg))) * 4 + 4)
    dp_state = dp.memory_analysis().argument_size_in_bytes - batch_per_device
    fsdp_state = fsdp.memory_analysis().argument_size_in_bytes - batch_per_device
    # Independent reference for the replicated figure: params + 2 Adam moments + 1 EMA copy (+ scalars).
    assert dp_state == pytest.approx(4 * _nbytes(dp_rt.host_state.params), rel=0.01)
    ratio = fsdp_state / dp_state
    print(
        f"{kind}: per-device params+opt+EMA {fsdp_state} B (FSDP) vs {dp_state} B (replicated): {ratio:.4f}"
    )
    assert abs(ratio - 1 / N_DEV) <= 0.1 / N_DEV
