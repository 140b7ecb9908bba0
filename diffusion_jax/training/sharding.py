"""Device mesh, parameter sharding rules and batch sharding (jax.make_mesh + NamedSharding; no pmap).

Strategies (`ShardingRules`):
- data parallel: every parameter replicated, the batch split over the batch axes;
- FSDP / ZeRO-3 (Rajbhandari et al. 2020): each parameter with at least `fsdp_min_size` entries has
  its largest dimension that divides evenly sharded over the FSDP mesh axes; XLA's SPMD partitioner
  inserts the all-gathers / reduce-scatters inside `jax.jit`;
- logical rules (tensor parallel): parameters carry logical axis names (`models.layers.meta`);
  `logical` maps a name (e.g. 'ffn', 'heads') to a mesh axis (e.g. 'model'). FSDP then uses
  the remaining dims. `TENSOR_PARALLEL` is the DiT's Megatron layout (`mesh.model > 1` in a config).

`state_shardings` works on any pytree (nnx.State, a TrainState, optimizer state): leaves that are NNX
Variables contribute their logical names, plain arrays are sharded by shape only. The result is a
pytree of `NamedSharding` usable as `jax.jit` in/out shardings and in `jax.device_put`.

Multi-host: the mesh spans all processes' devices; use `distributed.global_batch` to assemble
per-host batches. `shard_batch` here places a host-global batch (single process).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DEFAULT_AXIS_NAMES = {1: ("data",), 2: ("data", "model"), 3: ("data", "fsdp", "model")}


def _resolve_sizes(sizes: Sequence[int], n_devices: int) -> tuple[int, ...]:
    sizes = [int(s) for s in sizes]
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes {sizes}: positive ints with at most one -1 (= all remaining devices)")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(f"mesh sizes {sizes}: {n_devices} devices not divisible by {known}")
        sizes[sizes.index(-1)] = n_devices // known
    if int(np.prod(sizes)) != n_devices:
        raise ValueError(
            f"mesh sizes {sizes} use {int(np.prod(sizes))} devices, but {n_devices} are available"
        )
    return tuple(sizes)


def make_mesh(cfg_or_shape, axis_names: Sequence[str] | None = None, *, devices=None) -> Mesh:
    """Build a `Mesh` with `jax.make_mesh` (explicitly Auto axes: GSPMD sharding propagation).

    cfg_or_shape: a shape tuple (names default to ('data',), ('data','model'), ('data','fsdp','model')),
    a mapping {axis_name: size}, a mesh ConfigDict (e.g. base config's `mesh`: data=-1, fsdp=1) or a
    full experiment config with a `mesh` section. One size may be -1 (all remaining devices).
    """
    if hasattr(cfg_or_shape, "mesh") and not isinstance(cfg_or_shape, Mapping | tuple | list):
        cfg_or_shape = cfg_or_shape.mesh
    if isinstance(cfg_or_shape, int):
        cfg_or_shape = (cfg_or_shape,)
    if isinstance(cfg_or_shape, tuple | list):
        sizes = tuple(cfg_or_shape)
        names = tuple(axis_names) if axis_names is not None else DEFAULT_AXIS_NAMES.get(len(sizes))
        if names is None or len(names) != len(sizes):
            raise ValueError(f"make_mesh: need one axis name per size, got sizes {sizes}, names {axis_names}")
    else:
        items = list(cfg_or_shape.items())
        names, sizes = tuple(k for k, _ in items), tuple(v for _, v in items)
    n = len(devices) if devices is not None else jax.device_count()
    sizes = _resolve_sizes(sizes, n)
    return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(sizes), devices=devices)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """How parameters and batches map onto mesh axes (see the module docstring).

    batch_axes: mesh axes the batch's leading dimension is split over.
    fsdp_axes: mesh axes FSDP shards parameters over (empty: pure data parallel, replicated params).
    fsdp_min_size: parameters with fewer entries stay replicated (all-gathering them costs more).
    logical: logical axis name -> mesh axis (tensor-parallel rules; names absent here are unsharded).
    """

    batch_axes: tuple[str, ...] = ("data",)
    fsdp_axes: tuple[str, ...] = ()
    fsdp_min_size: int = 2**18
    logical: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def state_shardings(self, tree, mesh: Mesh):
        """`state_shardings(tree, mesh, self)`: lets code below the training layer (e.g.
        `models.functional.init_split`) place a tree by these rules without importing this module."""
        return state_shardings(tree, mesh, self)


MODES = ("dp", "fsdp")


def make_rules(mesh: Mesh, mode: str = "dp", *, fsdp_min_size: int = 2**18, logical=None) -> ShardingRules:
    """Rules for `mesh`: 'dp' replicates parameters; 'fsdp' shards big parameters over 'fsdp' if the
    mesh has that axis, else over 'data'. The batch is split over the 'data' and 'fsdp' axes present."""
    if mode not in MODES:
        raise ValueError(f"sharding mode {mode!r} unknown; valid: {MODES}")
    names = mesh.axis_names
    batch_axes = tuple(a for a in ("data", "fsdp") if a in names)
    if not batch_axes:
        raise ValueError(f"mesh axes {names} have neither 'data' nor 'fsdp' to split the batch over")
    fsdp_axes = ()
    if mode == "fsdp":
        fsdp_axes = (
            ("fsdp",) if "fsdp" in names and mesh.shape["fsdp"] > 1 else ("data",) if "data" in names else ()
        )
    logical = dict(logical or {})
    bad = {k: v for k, v in logical.items() if v not in names}
    if bad:
        raise ValueError(f"logical rules {bad} name mesh axes not in the mesh {names}")
    return ShardingRules(batch_axes, fsdp_axes, int(fsdp_min_size), logical)


TENSOR_PARALLEL = {"heads": "model", "ffn": "model"}
"""Megatron-style tensor parallelism of the DiT (Shoeybi et al. 2019, Sec. 3) over a 'model' mesh axis:
attention split by heads (the head-major qkv kernel [D, 3, heads, D/heads] and the output projection's
rows; a cross-attention's q columns, head-major k / v [E, 2, heads, D/heads] and output rows) and the
MLP by its hidden units (fc1's columns, fc2's rows); the byte text encoder's blocks the same way. Each
block then all-reduces once after each output projection (attention, cross-attention, MLP; and the
same in the backward pass); everything else is replicated over 'model'. With `mesh.fsdp > 1` as well,
FSDP splits each weight over 'fsdp' along another dimension (`leaf_spec`) and gathers only its
tensor-parallel block (`training.fsdp`)."""
TP_MODELS = ("dit",)


def rules_from_config(cfg, mesh: Mesh, **kw) -> ShardingRules:
    """Rules from an experiment config: FSDP when `mesh.fsdp > 1`, else data parallel; plus the
    tensor-parallel rules `TENSOR_PARALLEL` when `mesh.model > 1` (DiT only: ValueError otherwise)."""
    m = cfg.mesh if hasattr(cfg, "mesh") else cfg
    mode = "fsdp" if int(m.get("fsdp", 1)) > 1 else "dp"
    if int(m.get("model", 1)) > 1:
        name = cfg.model.get("name") if hasattr(cfg, "model") else None
        if name not in TP_MODELS:
            raise ValueError(
                f"mesh.model={m.model} (tensor parallel) needs model.name in {list(TP_MODELS)}, got {name!r}"
            )
        kw.setdefault("logical", TENSOR_PARALLEL)
    return make_rules(mesh, mode, **kw)


def _variable_names(x) -> tuple | None:
    if isinstance(x, nnx.Variable):
        md = x.get_metadata()
        return md.get("out_sharding") or md.get("sharding_names")
    return None


def leaf_spec(shape: Sequence[int], names, mesh: Mesh, rules: ShardingRules) -> PartitionSpec:
    """PartitionSpec for one array: logical names through `rules.logical`, then FSDP on the largest
    remaining dimension divisible by the FSDP axes' size (if the array is big enough)."""
    spec: list = [None] * len(shape)
    used = set()
    if names is not None and len(names) == len(shape):
        for i, n in enumerate(names):
            ax = rules.logical.get(n) if n is not None else None
            if ax is not None and ax not in used and shape[i] % mesh.shape[ax] == 0:
                spec[i] = ax
                used.add(ax)
    fsdp = tuple(a for a in rules.fsdp_axes if a not in used)
    if fsdp and int(np.prod(shape, dtype=np.int64)) >= rules.fsdp_min_size:
        k = int(np.prod([mesh.shape[a] for a in fsdp]))
        free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % k == 0]
        if free:
            i = max(free, key=lambda j: (shape[j], -j))
            spec[i] = fsdp if len(fsdp) > 1 else fsdp[0]
    return PartitionSpec(*spec)


def state_shardings(state, mesh: Mesh, rules: ShardingRules):
    """Pytree of `NamedSharding` for `state` (arrays, ShapeDtypeStructs or NNX Variables as leaves).

    Non-array leaves (None, Python scalars) get a replicated sharding.
    """

    def one(x):
        names = _variable_names(x)
        shape = np.shape(x) if not hasattr(x, "shape") else tuple(x.shape)
        return NamedSharding(mesh, leaf_spec(shape, names, mesh, rules))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, rules: ShardingRules, ndim: int = 1) -> NamedSharding:
    """NamedSharding splitting the leading axis over `rules.batch_axes` (other axes replicated)."""
    axes = rules.batch_axes if len(rules.batch_axes) > 1 else rules.batch_axes[0]
    return NamedSharding(mesh, PartitionSpec(axes, *([None] * (ndim - 1))))


def shard_batch(batch, mesh: Mesh, rules: ShardingRules | None = None):
    """Place a host batch pytree (leading axis = global batch) onto the mesh, split over the batch axes.

    Raises ValueError if a leaf's batch size is not divisible by the number of batch shards.
    """
    rules = rules or make_rules(mesh, "dp")
    k = int(np.prod([mesh.shape[a] for a in rules.batch_axes]))

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim == 0 or x.shape[0] % k:
            raise ValueError(
                f"batch leaf of shape {x.shape}: leading axis must be divisible by {k} batch shards"
            )
        return jax.device_put(x, batch_sharding(mesh, rules, x.ndim))

    return jax.tree.map(put, batch)
