"""Tensor parallelism combined with ZeRO-3 FSDP: a 2-D (fsdp 2 x model 4) mesh of 8 simulated devices,
a tiny DiT with cross-attention, one compiled train step.

Independent figures (Shoeybi et al. 2019, Sec. 3; Rajbhandari et al. 2020, Sec. 5):
- every attention weight (self: head-major qkv [D, 3, H, D/H], output rows; cross: q columns, the
  head-major k / v [E, 2, H, D/H], output rows) and MLP weight (fc1 columns, fc2 rows) is split 1/4
  over 'model'; FSDP then splits each weight over 'fsdp' along another dimension, so a split matrix
  holds 1/8 per device, a split bias (1-D, its only axis taken by 'model') 1/4, every other
  parameter 1/2;
- over 'model' the only collectives are the Megatron all-reduces of a [b, T, D] activation: after the
  self-attention, cross-attention and MLP output projections in the forward pass and their three
  mirror images in the backward pass, 6 per block; nothing is gathered, scattered or permuted
  over 'model';
- over 'fsdp' each weight is all-gathered once (its tensor-parallel block, not the whole weight) and
  its gradient reduce-scattered; no gradient is all-reduced whole.
The numbers: one step of the 2-D program and of the (data 2 x model 4) tensor-parallel program give the
loss and the updated parameters of one device, in float32, from a random non-zero state (the
adaLN-Zero initial state has zero gradients for every split weight, which would test nothing).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.imagenet64 import dit as dit_cfg
from diffusion_jax.training.build import as_numpy, data_shape
from diffusion_jax.training.collectives import parse_collectives
from diffusion_jax.training.loop import build_runtime

N_DEV, FSDP, TP, BATCH, CTX_LEN, CTX_DIM = 8, 2, 4, 16, 4, 16
SPLIT = (  # the tensor-parallel weights of a block (by name, independent of the sharding code)
    *("attn.qkv.kernel", "attn.qkv.bias", "attn.proj.kernel", "fc1.kernel", "fc1.bias", "fc2.kernel"),
    *("cross.q.kernel", "cross.q.bias", "cross.kv.kernel", "cross.kv.bias", "cross.proj.kernel"),
)


def _config(data=1, fsdp=FSDP, model=TP):
    cfg = dit_cfg.get_config("tiny")
    cfg.model.context_dim = CTX_DIM  # a cross-attention sub-block in each DiT block
    cfg.model.depth = 1  # one block shows the per-block pattern; half the compile time
    cfg.data.batch_size = BATCH
    cfg.training.fast_compile = True
    cfg.training.fsdp_min_size = 1
    # Adam with eps = 1, lr = 1: the first update g / (|g| + 1) is smooth in the gradient (with the
    # default eps it is sign(g), where rounding-level gradient differences flip whole steps)
    cfg.training.eps, cfg.training.lr = 1.0, 1.0
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.model = data, fsdp, model
    return cfg


def _abstract_batch(cfg):
    f32 = jnp.float32
    return {
        "x": jax.ShapeDtypeStruct((BATCH, *data_shape(cfg)), f32),
        "label": jax.ShapeDtypeStruct((BATCH,), jnp.int32),
        "context": jax.ShapeDtypeStruct((BATCH, CTX_LEN, CTX_DIM), f32),
        "context_mask": jax.ShapeDtypeStruct((BATCH, CTX_LEN), jnp.bool_),
    }


def compile_step(cfg, devices=None):
    """(runtime, compiled train step) for a batch with labels and a context sequence."""
    rt = build_runtime(cfg, devices=devices)
    state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), rt.host_state, rt.state_sharding
    )
    return rt, rt.step_fn.lower(state, _abstract_batch(cfg)).compile()


@pytest.fixture(scope="module")
def program():
    return compile_step(_config())


def _params(rt):
    """[(dotted path, shape)] of the parameters."""
    return _params_of(rt.host_state.params)


def _params_of(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        (".".join(str(k.key) for k in p if isinstance(k, jax.tree_util.DictKey)), tuple(x.shape))
        for p, x in flat
    ]


def _is_split(name):
    parts = name.split(".")
    return parts[0] == "blocks" and ".".join(parts[2:]) in SPLIT


def _local_shape(name, shape):
    """(shape after the tensor-parallel split, whether FSDP also splits it) by the rule above."""
    if not _is_split(name):
        return shape, True
    heads = _config().model.num_heads
    if ".qkv." in name or ".kv." in name:  # [.., n, H, D/H]: the heads axis
        axis = len(shape) - 2
        assert shape[axis] == heads
    elif name.endswith(("proj.kernel", "fc2.kernel")):  # rows
        axis = 0
    else:  # q / fc1 columns (and their biases)
        axis = len(shape) - 1
    local = tuple(s // TP if i == axis else s for i, s in enumerate(shape))
    return local, len(shape) > 1


def test_tp_fsdp_state_per_device(program):
    rt, compiled = program
    ps = _params(rt)
    assert sum(_is_split(n) for n, _ in ps) == len(SPLIT) * rt.cfg.model.depth
    want_params = 0
    for name, shape in ps:
        local, fsdp = _local_shape(name, shape)
        want_params += int(np.prod(local)) // (FSDP if fsdp else 1) * 4
    full = sum(int(np.prod(s)) for _, s in ps) * 4
    # the compiled program's own input shardings agree with the rule
    in_sh = jax.tree.leaves(compiled.input_shardings[0][0].params)
    for (name, shape), s in zip(ps, in_sh, strict=True):
        local, fsdp = _local_shape(name, shape)
        got = s.shard_shape(shape)
        assert int(np.prod(got)) == int(np.prod(local)) // (FSDP if fsdp else 1), (name, got, local)
    batch_per_device = BATCH // FSDP * 4 * (int(np.prod(data_shape(rt.cfg))) + 1 + CTX_LEN * CTX_DIM)
    batch_per_device += BATCH // FSDP * CTX_LEN  # the bool mask
    state = compiled.memory_analysis().argument_size_in_bytes - batch_per_device
    # params + 2 Adam moments + 1 EMA copy, plus a few scalars (step, key, counters)
    print(
        f"per-device params+opt+EMA {state} B, expected {4 * want_params} B; replicated {4 * full} B "
        f"(fraction {state / (4 * full):.4f})"
    )
    assert state == pytest.approx(4 * want_params, rel=0.01)


def test_tp_fsdp_collectives(program):
    rt, compiled = program
    m = rt.cfg.model
    act = (BATCH // FSDP, (m.image_size // m.patch_size) ** 2, m.hidden_size)
    cs = [c for c in parse_collectives(compiled.as_text()) if c.group > 1]
    summary = {}
    for c in cs:
        k = (c.kind, c.group)
        summary[k] = summary.get(k, 0) + 1
    print("collectives (kind, group size): count", summary)
    assert not [c for c in cs if c.kind == "all-to-all"]
    assert sum(c.result_bytes for c in cs if c.kind == "collective-permute") <= 16  # a key word, no data
    # over 'model': only the Megatron activation all-reduces (XLA may fuse scalars into one)
    over_model = [c for c in cs if c.group == TP]
    assert {c.kind for c in over_model} == {"all-reduce"}
    with_act = [c for c in over_model if act in [sh for _, sh in c.shapes]]
    assert len(with_act) == 6 * m.depth
    for c in over_model:
        assert all(sh == act or np.prod(sh) <= 1 for _, sh in c.shapes), c.shapes
    # over 'fsdp': each weight's tensor-parallel block gathered once, its gradient reduce-scattered
    ps = _params(rt)
    blocks = [_local_shape(n, s) for n, s in ps]
    gathered_want = sorted(int(np.prod(loc)) * 4 for loc, fsdp in blocks if fsdp)
    gathers = [c for c in cs if c.kind == "all-gather"]
    assert {c.group for c in gathers} == {FSDP}
    assert sorted(c.result_bytes for c in gathers) == gathered_want
    rs = [c for c in cs if c.kind == "reduce-scatter"]
    assert {c.group for c in rs} == {FSDP}
    assert 0.95 * len(gathered_want) <= len(rs) <= len(gathered_want)
    rs_bytes, ag_bytes = sum(c.bytes for c in rs), sum(c.bytes for c in gathers)
    assert rs_bytes == pytest.approx(ag_bytes, rel=0.05)
    # no gradient all-reduced whole: what else is all-reduced is scalars (loss, norms, flags)
    param_bytes = sum(int(np.prod(s)) for _, s in ps) * 4
    others = [c for c in cs if c.kind == "all-reduce" and c.group != TP]
    assert sum(c.result_bytes for c in others) <= 0.01 * param_bytes
    print(f"all-gather {ag_bytes:.0f} B, reduce-scatter {rs_bytes:.0f} B per device; params {param_bytes} B")


def _random_state_and_batch(rt, seed=0):
    """A host state with every parameter perturbed (EMA = params, Adam moments zero) and a batch."""
    rng = np.random.default_rng(seed)
    st = as_numpy(rt.host_state)
    params = jax.tree.map(lambda p: (p + 0.05 * rng.standard_normal(p.shape)).astype(p.dtype), st.params)
    st = st.replace(params=params, ema={k: jax.tree.map(np.copy, params) for k in st.ema})
    mask = rng.random((BATCH, CTX_LEN)) < 0.7
    mask[0] = False  # one caption entirely masked: the cross-attention contributes nothing there
    batch = {
        "x": rng.standard_normal((BATCH, *data_shape(rt.cfg))).astype(np.float32),
        "label": rng.integers(0, rt.cfg.model.num_classes, BATCH).astype(np.int32),
        "context": rng.standard_normal((BATCH, CTX_LEN, CTX_DIM)).astype(np.float32),
        "context_mask": mask,
    }
    return st, batch


def _run(rt, compiled, st, batch):
    args = jax.device_put((st, batch), compiled.input_shardings[0])
    new, metrics = compiled(*args)
    return as_numpy(new), float(metrics["loss"])


@pytest.fixture(scope="module")
def reference(program):
    """One step on one device from the random state (compiled once for the module)."""
    rt, _ = program
    rt1, compiled1 = compile_step(_config(1, 1, 1), devices=jax.devices()[:1])
    st, batch = _random_state_and_batch(rt)
    return st, batch, _run(rt1, compiled1, st, batch)


def _assert_same_step(got, want, st):
    (new, loss), (new1, loss1) = got, want
    np.testing.assert_allclose(loss, loss1, rtol=1e-5)
    moved = 0.0
    names = [n for n, _ in _params_of(new.params)]
    for name, g, w, p0 in zip(
        names,
        jax.tree.leaves(new.params),
        jax.tree.leaves(new1.params),
        jax.tree.leaves(st.params),
        strict=True,
    ):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6, err_msg=name)
        if _is_split(name):
            moved = max(moved, float(np.max(np.abs(w - p0))))
    for g, w in zip(jax.tree.leaves(new.ema), jax.tree.leaves(new1.ema), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
    assert moved > 1e-2  # the split weights had real gradients: the comparison can fail


def test_tp_fsdp_step_equals_one_device(program, reference):
    rt, compiled = program
    st, batch, want = reference
    _assert_same_step(_run(rt, compiled, st, batch), want, st)


def test_tp_step_equals_one_device(reference):
    """Tensor parallel without FSDP (data 2 x model 4): GSPMD alone partitions the heads."""
    st, batch, want = reference
    rt, compiled = compile_step(_config(data=N_DEV // TP, fsdp=1, model=TP))
    _assert_same_step(_run(rt, compiled, st, batch), want, st)
