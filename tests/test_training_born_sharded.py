"""Parameters and train state born sharded; checkpoints restored onto any mesh, bitwise.

- Initialisation on an 8-device FSDP mesh of a model sized to 4x one device's budget: no array the
  size of an unsharded parameter ever exists. Every instruction of the compiled per-device init
  program (the random bits, their conversion, every temporary, inside loops and fusions too) creates
  at most one shard of the largest parameter (1/8 of it), while the unsharded program creates the
  whole one; every parameter, optimizer moment and EMA array ends with its rule's sharding. The
  per-device footprint (`memory_analysis`: outputs + temporaries) is ~0.255 of the model, a hair
  over the 4x budget (0.25): the CPU backend keeps the random bits of every parameter as a
  temporary alongside the outputs (2/8, plus replicated leftovers); asserted against 1/3.
- A state saved from 8 devices (FSDP) restores on 1 device and on a 2 x 4 (data x fsdp) mesh with
  exactly the saved bits and the target shardings.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.imagenet64 import dit as dit_cfg
from diffusion_jax.training import build, sharding
from diffusion_jax.training.checkpoints import Checkpointer
from diffusion_jax.training.loop import build_runtime

N_DEV = 8


def _config(data=1, fsdp=N_DEV, hidden=128):
    cfg = dit_cfg.get_config("tiny")
    cfg.model.update(hidden_size=hidden, num_heads=4, num_classes=10)
    cfg.data.batch_size = N_DEV
    cfg.training.fsdp_min_size = 1
    cfg.training.fast_compile = True
    cfg.mesh.data, cfg.mesh.fsdp = data, fsdp
    return cfg


def _nbytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


_RESULT = re.compile(r"^\s*(?:ROOT\s+)?%?\S+\s*=\s*(?:pred|[subfc]\d+|bf16)\[([\d,]*)\]")


def largest_array(compiled) -> int:
    """Elements of the largest array any instruction of a compiled (per-device) HLO module creates."""
    sizes = [
        int(np.prod([int(d) for d in m.group(1).split(",") if d], dtype=np.int64))
        for m in map(_RESULT.match, compiled.as_text().splitlines())
        if m
    ]
    return max(sizes)


def test_init_never_holds_an_unsharded_model():
    cfg = _config()
    mesh = sharding.make_mesh(cfg.mesh)
    rules = sharding.rules_from_config(cfg, mesh, fsdp_min_size=1)
    _, init = build.network_initializer(cfg, mesh, rules)
    params, rest = init()
    model_bytes = _nbytes(params)
    budget = model_bytes / 4  # the model is 4x what one simulated device "holds"

    compiled = init.lower().compile()
    mem = compiled.memory_analysis()
    per_device = mem.output_size_in_bytes + mem.temp_size_in_bytes
    _, whole = build.network_initializer(cfg)
    whole = whole.lower().compile()
    unsharded = whole.memory_analysis().output_size_in_bytes
    biggest = max(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    print(
        f"init per device: {per_device} B ({per_device / model_bytes:.3f} of the model, budget 0.25); "
        f"largest array created {largest_array(compiled)} elements vs largest parameter {biggest}"
    )
    # no unsharded parameter ever exists on a device: every array created is at most one shard
    assert largest_array(compiled) <= biggest // N_DEV
    assert largest_array(whole) >= biggest  # the check can fail: the unsharded program creates it
    assert unsharded >= _nbytes(params)
    assert mem.output_size_in_bytes <= 1.05 * model_bytes / N_DEV <= budget
    assert per_device <= model_bytes / 3  # see the module docstring: 0.255 of the model here

    expected = build.expand_shardings(sharding.state_shardings(params, mesh, rules), params)
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)
        assert x.addressable_shards[0].data.shape == s.shard_shape(x.shape)
    sharded = [x for x in jax.tree.leaves(params) if x.addressable_shards[0].data.size < x.size]
    assert _nbytes(sharded) >= 0.99 * model_bytes

    state, _ = build.build_state(cfg, params, mesh=mesh, rules=rules)
    target = build.train_state_shardings(state, mesh, rules)
    for x, s in zip(jax.tree.leaves(state), jax.tree.leaves(target), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)
    per_dev_state = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))
    assert per_dev_state <= 1.1 * _nbytes(state) / N_DEV


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A state after one FSDP step on 8 devices (non-zero Adam moments, EMA != params), saved."""
    cfg = _config(hidden=64)
    rt = build_runtime(cfg)
    rng = np.random.default_rng(0)
    batch = {
        "x": jnp.asarray(rng.normal(size=(N_DEV, 8, 8, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, N_DEV), jnp.int32),
    }
    state, _ = rt.step_fn(rt.host_state, batch)
    wd = str(tmp_path_factory.mktemp("ckpt"))
    ck = Checkpointer(wd, async_save=False)
    ck.save(1, state, force=True)
    ck.close()
    return cfg, wd, jax.tree.map(np.asarray, state)


@pytest.mark.parametrize("target", ["one_device", "mesh_2x4"])
def test_checkpoint_restores_on_any_mesh_bitwise(saved, target):
    cfg, wd, ref = saved
    if target == "one_device":
        abstract = build.abstract_train_state(cfg)
    else:
        cfg2 = _config(data=2, fsdp=4, hidden=64)
        mesh = sharding.make_mesh(cfg2.mesh)
        abstract = build.abstract_train_state(
            cfg2, mesh, sharding.rules_from_config(cfg2, mesh, fsdp_min_size=1)
        )
    ck = Checkpointer(wd, async_save=False)
    state, _ = ck.restore(1, abstract)
    ck.close()
    n_sharded = 0
    for x, a, r in zip(jax.tree.leaves(state), jax.tree.leaves(abstract), jax.tree.leaves(ref), strict=True):
        assert x.sharding.is_equivalent_to(a.sharding, x.ndim)
        n_sharded += x.addressable_shards[0].data.size < x.size
        np.testing.assert_array_equal(np.asarray(x), r)
    assert (n_sharded > 0) == (target == "mesh_2x4")
    assert any(np.any(m != 0) for m in jax.tree.leaves(ref.opt_state) if m.ndim)  # moments were saved
