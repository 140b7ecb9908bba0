"""Mesh construction, sharding rules, and sharded (FSDP over 8 simulated devices) forward passes.

Reference for the sharded forwards: the same jitted `net_fn` on unsharded (single-device) inputs.
Tolerance: max abs difference <= 1e-5 on outputs of magnitude ~1 (float32; the partitioner may
reorder reductions across shards, so bitwise equality is not guaranteed).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs.models import dit, unet_small
from diffusion_jax.models.functional import abstract_split, host_random_like, make_net_fn
from diffusion_jax.training import sharding as S


def test_make_mesh_shapes_and_names():
    assert jax.device_count() == 8
    m = S.make_mesh((8,))
    assert m.axis_names == ("data",) and m.shape["data"] == 8
    m = S.make_mesh((-1, 2))
    assert m.axis_names == ("data", "model") and (m.shape["data"], m.shape["model"]) == (4, 2)
    base_mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=4))
    m = S.make_mesh(base_mesh)
    assert (m.shape["data"], m.shape["fsdp"]) == (2, 4)
    m = S.make_mesh(ml_collections.ConfigDict(dict(mesh=base_mesh)))
    assert m.shape["fsdp"] == 4


@pytest.mark.parametrize("shape", [(3,), (-1, -1), (16,), (0, 8)])
def test_make_mesh_rejects_bad_sizes(shape):
    with pytest.raises(ValueError, match="mesh sizes"):
        S.make_mesh(shape)


def test_leaf_spec_rules():
    mesh = S.make_mesh((4, 2))
    fsdp = S.make_rules(mesh, "fsdp", fsdp_min_size=100, logical={"mlp": "model"})
    # largest divisible dim goes to 'data'; logical 'mlp' -> 'model' first
    assert S.leaf_spec((64, 128), ("embed", "mlp"), mesh, fsdp) == P("data", "model")
    assert S.leaf_spec((3, 3, 16, 64), None, mesh, fsdp) == P(None, None, None, "data")
    assert S.leaf_spec((10,), None, mesh, fsdp) == P(None)  # small: replicated
    assert S.leaf_spec((6, 7), None, mesh, fsdp) == P(None, None)  # nothing divisible by 4 ... 6x7=42 < 100
    dp = S.make_rules(mesh, "dp")
    assert S.leaf_spec((1024, 1024), ("embed", "mlp"), mesh, dp) == P(None, None)
    with pytest.raises(ValueError, match="mode"):
        S.make_rules(mesh, "zero9")
    with pytest.raises(ValueError, match="mesh axes"):
        S.make_rules(mesh, "dp", logical={"mlp": "tensor"})


def test_rules_from_base_config():
    cfg = ml_collections.ConfigDict(dict(mesh=dict(data=-1, fsdp=2)))
    mesh = S.make_mesh(cfg)
    r = S.rules_from_config(cfg, mesh)
    assert r.fsdp_axes == ("fsdp",) and r.batch_axes == ("data", "fsdp")


def test_shard_batch_divisibility():
    mesh = S.make_mesh((8,))
    out = S.shard_batch({"x": np.zeros((16, 3))}, mesh)
    assert out["x"].sharding.spec == P("data", None)
    with pytest.raises(ValueError, match="divisible by 8"):
        S.shard_batch({"x": np.zeros((12, 3))}, mesh)


@pytest.mark.parametrize(
    "cfg", [unet_small.get_config("tiny_adm"), dit.get_config("tiny/2")], ids=["unet", "dit"]
)
def test_sharded_forward_equals_single_device(cfg):
    graphdef, aparams, arest = abstract_split(cfg)
    params = host_random_like(aparams, seed=1)
    rest = host_random_like(arest, seed=2)
    net_fn = jax.jit(make_net_fn(graphdef, rest))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, cfg.image_size, cfg.image_size, cfg.in_channels)), jnp.float32)
    t = jnp.linspace(0.0, 999.0, 8)
    label = jnp.arange(8) % (cfg.num_classes + 1)
    ref = net_fn(params, x, t, {"label": label})

    mesh = S.make_mesh((8,))
    rules = S.make_rules(mesh, "fsdp", fsdp_min_size=256)
    shardings = S.state_shardings(params, mesh, rules)
    n_sharded = sum(any(a is not None for a in s.spec) for s in jax.tree.leaves(shardings))
    assert n_sharded >= 10, "FSDP rule should shard the larger parameters"
    sparams = jax.device_put(params, shardings)
    sx, st, slabel = S.shard_batch((x, t, label), mesh, rules)
    out = net_fn(sparams, sx, st, {"label": slabel})
    assert out.sharding.spec[0] == "data"
    err = float(jnp.max(jnp.abs(out - ref)))
    print(
        f"sharded vs single-device max abs diff: {err:.2e} (output scale {float(jnp.max(jnp.abs(ref))):.2f})"
    )
    assert err <= 1e-5


def test_init_split_creates_sharded_params():
    from diffusion_jax.models.functional import init_split

    cfg = dit.get_config("tiny/4")
    cfg.update(depth=1)
    mesh = S.make_mesh((8,))
    rules = S.make_rules(mesh, "fsdp", fsdp_min_size=1024)
    _, params, rest = init_split(cfg, seed=0, mesh=mesh, rules=rules)
    fc1 = params["blocks"][0]["fc1"]["kernel"]
    assert fc1.shape == (64, 256) and fc1.sharding.spec == P(None, "data")
    assert rest["pos_embed"].sharding.spec == P(None, None)  # 4 x 64 = 256 entries: replicated


def test_tensor_parallel_logical_rules_forward_equality():
    """2-D mesh (data=4, model=2): the DiT's 'heads' / 'ffn' logical axes on 'model' (TENSOR_PARALLEL),
    FSDP on 'data'; the head-major qkv kernel [D, 3, H, D/H] is split over heads."""
    cfg = dit.get_config("tiny/4")
    cfg.update(depth=1)
    graphdef, aparams, arest = abstract_split(cfg)
    params, rest = host_random_like(aparams, seed=3), host_random_like(arest, seed=4)
    net_fn = jax.jit(make_net_fn(graphdef, rest))
    x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 8, 8, 4)), jnp.float32)
    t, label = jnp.array([1.0, 10.0, 100.0, 900.0]), jnp.array([0, 3, 10, 7])
    ref = net_fn(params, x, t, {"label": label})
    mesh = S.make_mesh((4, 2))
    rules = S.make_rules(mesh, "fsdp", fsdp_min_size=1024, logical=S.TENSOR_PARALLEL)
    shardings = S.state_shardings(params, mesh, rules)
    assert shardings["blocks"][0]["attn"]["qkv"]["kernel"].spec == P("data", None, "model", None)
    assert shardings["blocks"][0]["fc1"]["kernel"].spec == P("data", "model")
    sx, st, sl = S.shard_batch((x, t, label), mesh, rules)
    out = net_fn(jax.device_put(params, shardings), sx, st, {"label": sl})
    assert float(jnp.max(jnp.abs(out - ref))) <= 1e-5
