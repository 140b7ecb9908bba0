"""Megatron tensor parallelism of the DiT (`training.sharding.TENSOR_PARALLEL`) on 8 simulated devices,
a (data 4, model 2) mesh: assertions on the compiled train step (HLO collectives, input shardings and
`memory_analysis()`), against independent figures (Shoeybi et al. 2019, Sec. 3): every attention and
MLP weight is split 1/tp per device (heads for q, k, v and the output projection's rows, hidden units
for fc1's columns and fc2's rows); the only collectives over 'model' are one all-reduce of the
activations [b, T, D] after the attention output projection and one after fc2 per block in the
forward pass, and their two mirror images (at the qkv and fc1 inputs) in the backward pass; nothing
is gathered, scattered or permuted inside the attention or the MLP.
"""

import jax
import numpy as np
import pytest

from configs.imagenet64 import dit as dit_cfg
from diffusion_jax.training import sharding
from diffusion_jax.training.build import data_shape
from diffusion_jax.training.collectives import parse_collectives
from tests.test_training_fsdp import compile_train_step

N_DEV, TP, BATCH = 8, 2, 16
SPLIT = ("attn.qkv.kernel", "attn.qkv.bias", "attn.proj.kernel", "fc1.kernel", "fc1.bias", "fc2.kernel")
REPLICATED = ("attn.proj.bias", "fc2.bias")  # added after the all-reduce


def _config():
    cfg = dit_cfg.get_config("tiny")
    cfg.data.batch_size = BATCH
    cfg.training.fast_compile = True
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.model = N_DEV // TP, 1, TP
    return cfg


@pytest.fixture(scope="module")
def program():
    return compile_train_step(_config())


def _params(rt, compiled):
    """[(dotted path, full shape, per-device shard shape)] of the parameters, from the compiled
    program's own input shardings."""
    in_sh = compiled.input_shardings[0][0].params
    flat = jax.tree_util.tree_flatten_with_path(rt.host_state.params)[0]
    out = []
    for (path, x), s in zip(flat, jax.tree.leaves(in_sh), strict=True):
        name = ".".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
        out.append((name, tuple(x.shape), tuple(s.shard_shape(x.shape))))
    return out


def test_attention_and_mlp_weights_are_split_one_over_tp(program):
    rt, compiled = program
    ps = _params(rt, compiled)
    depth = rt.cfg.model.depth
    split = [p for p in ps if p[0].endswith(SPLIT) and ".blocks." in f".{p[0]}"]
    assert len(split) == len(SPLIT) * depth
    full = sum(int(np.prod(f)) for _, f, _ in split) * 4
    per_device = sum(int(np.prod(s)) for _, _, s in split) * 4
    print(f"attention + MLP weights: {per_device} B per device vs {full} B replicated (tp={TP})")
    assert per_device * TP == full
    for name, f, s in split:  # whole heads / hidden units: the split axis is the heads or hidden one
        if "qkv" in name:
            axis = f.index(rt.cfg.model.num_heads, 1 if "kernel" in name else 0)
            assert s[axis] == f[axis] // TP
            assert all(a == b for i, (a, b) in enumerate(zip(f, s, strict=True)) if i != axis)
    assert all(f == s for n, f, s in ps if n.endswith(REPLICATED))
    # params + 2 Adam moments + EMA, per device, from XLA's memory analysis: the replicated figure
    # minus (1 - 1/tp) of the split weights, 4 times
    total = sum(int(np.prod(f)) for _, f, _ in ps) * 4
    batch_per_device = BATCH // (N_DEV // TP) * (int(np.prod(data_shape(rt.cfg))) * 4 + 4)
    state = compiled.memory_analysis().argument_size_in_bytes - batch_per_device
    want = 4 * (total - full * (1 - 1 / TP))
    print(f"per-device params+opt+EMA {state} B, expected {want:.0f} B (replicated {4 * total} B)")
    assert state == pytest.approx(want, rel=0.01)


def test_collectives_are_the_megatron_pattern(program):
    rt, compiled = program
    m = rt.cfg.model
    tokens = (m.image_size // m.patch_size) ** 2
    act = (BATCH // (N_DEV // TP), tokens, m.hidden_size)
    cs = [c for c in parse_collectives(compiled.as_text()) if c.group > 1]
    kinds = sorted({c.kind for c in cs})
    print("collectives:", {k: sum(c.kind == k for c in cs) for k in kinds})
    # nothing gathered, scattered or permuted: attention and MLP run on local heads / hidden units
    assert kinds == ["all-reduce"]
    over_model = [c for c in cs if c.group == TP]
    assert len(over_model) == 4 * m.depth  # per block: attention out + MLP out, forward and backward
    for c in over_model:  # one [b, T, D] activation each (XLA may fuse scalar reductions into it)
        shapes = [sh for _, sh in c.shapes]
        assert [sh for sh in shapes if sh] == [act], c.shapes
    # the rest: the gradients' all-reduce over 'data' (groups of 4), of this device's shards only
    ps = _params(rt, compiled)
    grad_bytes = sum(int(np.prod(s)) for _, _, s in ps) * 4
    over_data = [c for c in cs if c.group != TP]
    assert {c.group for c in over_data} <= {N_DEV // TP, N_DEV}
    moved = sum(c.bytes for c in over_data)
    n = N_DEV // TP
    print(
        f"gradient all-reduce {moved:.0f} B vs ring cost of the local shards {2 * grad_bytes * (n - 1) / n:.0f} B"
    )
    assert moved == pytest.approx(2 * grad_bytes * (n - 1) / n, rel=0.02)


def test_tensor_parallel_is_refused_for_other_models():
    from configs.imagenet64 import edm_adm

    cfg = edm_adm.get_config("tiny")
    cfg.mesh.data, cfg.mesh.model = N_DEV // TP, TP
    mesh = sharding.make_mesh(cfg.mesh)
    with pytest.raises(ValueError, match=r"mesh.model=2 \(tensor parallel\) needs model.name in \['dit'\]"):
        sharding.rules_from_config(cfg, mesh)
    assert sharding.rules_from_config(_config(), mesh).logical == sharding.TENSOR_PARALLEL
