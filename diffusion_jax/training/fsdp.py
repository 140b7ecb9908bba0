"""Fully sharded data parallelism (ZeRO-3, Rajbhandari et al. 2020) with explicit collectives.

Under plain `jax.jit` sharding propagation (GSPMD / Shardy) the CPU backend partitions an FSDP
train step into full-size gradient all-reduces followed by a slice (the pass that fuses them into a
reduce-scatter runs on GPU/TPU pipelines only), and it may re-gather weights for the backward pass.
`fsdp_net_fn` writes the ZeRO-3 data flow down instead, so every backend compiles the same program:

- the network runs inside `jax.shard_map`, manual over the batch axes of the mesh, on its local
  slice of the batch;
- each parameter sharded over the FSDP axes is all-gathered (tiled) once, where the network starts;
- the transpose of that all-gather is a reduce-scatter (`psum_scatter`): each device receives only
  its shard of the summed gradient; parameters replicated over the batch axes (small ones, below
  `rules.fsdp_min_size`) get their gradient all-reduced, as in data parallelism;
- mesh axes that are not batch axes (e.g. 'model', the tensor-parallel axis of the logical rules)
  stay automatic inside the network's map, so GSPMD partitions the heads / MLP hidden dimension as
  before; the weights are gathered in a separate map manual over every axis, so only each weight's
  tensor-parallel block moves (tests/test_training_tensor_parallel_fsdp.py).

Only the network is mapped: the objective (time and noise draws, couplings, batch means) stays a
global-batch computation under `jax.jit`, so a step draws the same noise on any mesh. Dropout keys
are folded with the batch-shard index (each shard draws its own masks).

Per device, parameters, gradients, optimizer moments and EMA copies all live sharded (the train
step's `in_shardings` / `out_shardings` from `sharding.state_shardings`); only the gathered weights
of the network call exist whole, for the duration of the step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.sharding import Mesh, PartitionSpec

from diffusion_jax.training.sharding import ShardingRules


def _gather_axes(spec: PartitionSpec, manual: frozenset) -> list[tuple[int, tuple[str, ...]]]:
    """[(dim, manual mesh axes sharding it)] for one parameter's spec."""
    out = []
    for dim, entry in enumerate(spec):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        names = tuple(n for n in names if n in manual)
        if names:
            out.append((dim, names))
    return out


def _drop_axes(spec: PartitionSpec, axes: frozenset) -> PartitionSpec:
    """`spec` without the mesh axes `axes` (the sharding of a weight once gathered over them)."""
    out = []
    for entry in spec:
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        names = tuple(n for n in names if n not in axes)
        out.append(None if not names else names[0] if len(names) == 1 else names)
    return PartitionSpec(*out)


def fsdp_net_fn(net_fn: Callable, param_shardings, mesh: Mesh, rules: ShardingRules) -> Callable:
    """Wrap `net_fn(params, z, t_in, cond, rng)` for ZeRO-3 over `rules.batch_axes` (module docstring).

    Args:
      net_fn: the network (`models.functional.make_net_fn`, optionally mixed precision).
      param_shardings: pytree of `NamedSharding` with the structure of the params the wrapped
        function will receive (e.g. `build.expand_shardings(state_shardings(params, ...), params)`).
      mesh, rules: the mesh and sharding rules of the run.
    Returns `net_fn` with the same signature; z [B, ...], t_in [B] and every cond leaf [B, ...] must
    have B divisible by the number of batch shards.
    """
    # Batch axes of size 1 stay automatic: mapping them would only add one-device collectives.
    axes = tuple(a for a in rules.batch_axes if mesh.shape[a] > 1)
    if not axes:
        return net_fn
    manual = frozenset(axes)
    batch = PartitionSpec(axes if len(axes) > 1 else axes[0])
    per_device = jax.tree.map(lambda s: batch, param_shardings)
    gathers = jax.tree.map(lambda s: _gather_axes(s.spec, manual), param_shardings)
    n_shards = 1
    for a in axes:
        n_shards *= mesh.shape[a]

    def gather(x, plan):
        for dim, names in plan:
            x = jax.lax.all_gather(x, names if len(names) > 1 else names[0], axis=dim, tiled=True)
        return x

    # The gathers run in their own map, manual over every mesh axis: a weight's tensor-parallel
    # split ('model') is then just its local block, which the gather leaves alone. (Gathered inside
    # the network's map, where 'model' is automatic, the partitioner replicates the weight over
    # 'model' first: one more all-gather per weight.) Each device's gathered copy leaves this map
    # along a new leading axis split over the batch axes, i.e. as a per-device value (varying), so
    # the network's map needs no implicit all-reduce of its gradient: the backward pass of the
    # all-gather is the reduce-scatter, and the replicated-over-'data' part's is one all-reduce
    # of the shard (the transpose of `pcast`).
    def gather_one(x, plan, spec):
        x = gather(x, plan)
        named = {n for e in spec if e is not None for n in ((e,) if isinstance(e, str) else e)}
        missing = tuple(a for a in axes if a not in named)  # batch axes the weight is replicated over
        return (jax.lax.pcast(x, missing, to="varying") if missing else x)[None]

    specs = jax.tree.map(lambda s: s.spec, param_shardings)
    stacked = lambda s: PartitionSpec(batch[0], *_drop_axes(s.spec, manual))  # noqa: E731
    gather_all = jax.shard_map(
        lambda p: jax.tree.map(gather_one, p, gathers, specs, is_leaf=lambda v: isinstance(v, PartitionSpec)),
        mesh=mesh,
        in_specs=(specs,),
        out_specs=jax.tree.map(stacked, param_shardings),
    )

    def local(stacked_params, z, t_in, cond, rng):
        full = jax.tree.map(lambda x: x[0], stacked_params)
        if rng is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axes))
        return net_fn(full, z, t_in, cond, rng)

    def wrapped(params, z, t_in, cond=None, rng=None):
        if z.shape[0] % n_shards:
            raise ValueError(f"FSDP network call: batch {z.shape[0]} is not divisible by {n_shards} shards")
        rng_spec = None if rng is None else PartitionSpec()
        mapped = jax.shard_map(
            local,
            mesh=mesh,
            in_specs=(per_device, batch, batch, batch, rng_spec),
            out_specs=batch,
            axis_names=manual,
        )
        return mapped(gather_all(params), z, t_in, cond, rng)

    return wrapped


__all__ = ["fsdp_net_fn"]
