"""Build the pieces of a run from its config: network, loss, optimizer, train state, batches.

One place turns a config into (graphdef, params, rest, net_fn, loss_fn, denoiser, optimizer, state),
so training, evaluation and checkpoint loading build exactly the same objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from diffusion_jax.training.state import TrainState, init_train_state, make_optimizer
from diffusion_jax.training.step import with_compute_dtype

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
"""XLA options for programs that run once (initialisation) or in CPU tests (`training.fast_compile`):
compile time drops ~5x (a tiny U-Net's init: 20 s -> 3 s of CPU). The operations are the same, only
less optimised, so values agree with the optimised program's up to float rounding: a U-Net's init is
bitwise the same, a toy MLP's kernels differ by <= 3e-7 relative (1-2 ulp of float32). Training and
every checkpoint loader initialise with these options, so a run is consistent with itself."""


@dataclasses.dataclass
class Network:
    """A split network: `net_fn(params, z, t_in, cond, rng) -> out` is pure in `params`."""

    graphdef: Any
    params: Any
    rest: Any
    net_fn: Callable


def network_initializer(cfg, mesh=None, rules=None):
    """(graphdef, init) for `cfg.model`: `init()` -> (params, rest), one jitted program.

    With `mesh` (and `rules`, default data parallel), the program's out_shardings are the rules'
    shardings of the parameters (`sharding.state_shardings`; the fixed buffers `rest` replicated):
    each device generates only its own shards (threefry random bits are partitionable), so no
    parameter is ever materialised whole on one device ("born sharded").
    """
    from diffusion_jax.models import build_model
    from diffusion_jax.models.functional import split

    seed = int(cfg.seed)

    def init():
        _, params, rest = split(build_model(cfg.model, rngs=nnx.Rngs(seed)))
        return params, rest

    # Initialise under one jit: eager NNX construction compiles every initializer op separately
    # (tens of seconds for a U-Net on CPU); the graph definition comes from an abstract build.
    graphdef, aparams, arest = split(nnx.eval_shape(lambda: build_model(cfg.model, rngs=nnx.Rngs(seed))))
    out_shardings = None
    if mesh is not None:
        from diffusion_jax.training.sharding import make_rules, state_shardings

        rules = rules or make_rules(mesh, "dp")
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        out_shardings = (
            expand_shardings(state_shardings(aparams, mesh, rules), aparams),
            jax.tree.map(lambda _: replicated, arest),
        )
    return graphdef, jax.jit(init, out_shardings=out_shardings, compiler_options=FAST_COMPILE)


def build_network(cfg, *, compute_dtype: str | None = None, mesh=None, rules=None) -> Network:
    """Instantiate `cfg.model` with seed `cfg.seed` and split it (models.functional).

    Args:
      compute_dtype: wrap net_fn for mixed precision (None -> `cfg.training.compute_dtype`).
      mesh, rules: create the parameters sharded on `mesh` (`network_initializer`); None: one device.
    """
    graphdef, init = network_initializer(cfg, mesh, rules)
    params, rest = init()
    dtype = cfg.training.compute_dtype if compute_dtype is None else compute_dtype
    return assemble_network(graphdef, params, rest, dtype)


def assemble_network(graphdef, params, rest, compute_dtype: str) -> Network:
    """The `Network` of a split model (`build_network`'s, or a checkpoint loader's with restored params)."""
    from diffusion_jax.models.functional import make_net_fn

    return Network(graphdef, params, rest, with_compute_dtype(make_net_fn(graphdef, rest), compute_dtype))


def build_loss(cfg, net_fn: Callable):
    """`objectives.make_loss(cfg.objective, net_fn) -> (loss_fn, denoiser)` (the null label of CFG
    dropout defaults to `model.num_classes`; captions / embeddings are dropped by emptying their mask)."""
    from diffusion_jax import objectives

    num_classes = int(cfg.model.get("num_classes", 0) or 0)
    has_text = bool(cfg.data.get("captions", "") or cfg.data.get("embeddings_path", ""))
    # A text-conditioned model without classes passes 0: its CFG dropout empties caption masks only.
    return objectives.make_loss(cfg.objective, net_fn, num_classes=num_classes or (0 if has_text else None))


def init_key(seed: int) -> jax.Array:
    """Base key of the training noise; an independent stream from the parameter init (seed)."""
    return jax.random.fold_in(jax.random.key(int(seed)), 0x7A11)


def build_state(cfg, params, *, mesh=None, rules=None) -> tuple[TrainState, optax.GradientTransformation]:
    """A fresh TrainState and its optimizer; with `mesh`, created with the rules' shardings
    (`train_state_shardings`) by the initialising program itself (born sharded)."""
    tx = make_optimizer(cfg.training)
    key = jax.random.key_data(init_key(cfg.seed))

    def init(p, k):
        return init_train_state(p, tx, cfg.training, k)

    out_shardings = None
    if mesh is not None:
        out_shardings = train_state_shardings(jax.eval_shape(init, params, key), mesh, rules)
    state = jax.jit(init, out_shardings=out_shardings, compiler_options=FAST_COMPILE)(params, key)
    return state, tx


def train_state_shardings(state, mesh, rules=None):
    """Leaf-level `NamedSharding` pytree for a TrainState (arrays or `jax.ShapeDtypeStruct`s)."""
    from diffusion_jax.training.sharding import make_rules, state_shardings

    rules = rules or make_rules(mesh, "dp")
    return expand_shardings(state_shardings(state, mesh, rules), state)


def abstract_train_state(cfg, mesh=None, rules=None, params=None):
    """The TrainState of `cfg` as `jax.ShapeDtypeStruct`s (with the rules' shardings on `mesh`, or on
    the first local device), from `jax.eval_shape`: nothing is allocated. The restore target that
    puts a checkpoint saved on any mesh onto this one (Orbax reads each device's slices).

    params: the network's parameters (arrays or ShapeDtypeStructs) when the caller has them already;
    None traces the network's initialiser for them."""
    if params is None:
        _, init = network_initializer(cfg)
        params, _ = jax.eval_shape(init)
    tx = make_optimizer(cfg.training)
    key = jax.ShapeDtypeStruct((2,), np.uint32)
    state = jax.eval_shape(lambda p, k: init_train_state(p, tx, cfg.training, k), params, key)
    if mesh is None:
        dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: dev, state)
    else:
        shardings = train_state_shardings(state, mesh, rules)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def to_model_batch(batch: dict, conditional: bool = True, text=None, step: int = 0) -> dict:
    """Data-pipeline batch -> objective batch: `image` becomes `x`; a toy pair's `x0` (a sample of
    the source distribution, which sits at t = 1 in our convention) becomes `noise`; `label` is
    dropped for an unconditional model (`conditional=False`, i.e. model.num_classes == 0).

    text: None or `fn(batch, step) -> batch` (`data.captions.make_text_transform(cfg)`) adding caption
    tokens or per-label embeddings, applied first, since it reads the label that may then be dropped.
    """
    if text is not None:
        batch = text(batch, step)
    out = {}
    for k, v in batch.items():
        if k == "label" and not conditional:
            continue
        if k == "image":
            out["x"] = v
        elif k == "x0":
            out["noise"] = v
        else:
            out[k] = v
    return out


def data_shape(cfg) -> tuple[int, ...]:
    """Per-sample shape of the data the model sees ([2] for toys, [H, W, C] for images; latents
    take the shape the model is built for)."""
    d = cfg.data
    if d.source == "toy2d":
        return (2,)
    if d.source == "tfds":
        from diffusion_jax.data.pipeline import TFDS_DATASETS

        h, w, c = TFDS_DATASETS[d.name].image_shape
        size = d.image_size or h
        return (size, size if d.image_size else w, d.num_channels or c)
    m = cfg.model
    if m.name == "mlp":
        return (int(m.dim),)
    if m.name in ("unet", "dit"):
        return (int(m.image_size), int(m.image_size), int(m.in_channels))
    raise ValueError(f"data.source='latents' with model.name={m.name!r}: expected 'mlp', 'unet' or 'dit'")


def as_numpy(tree):
    """Device arrays -> host numpy (fully replicated or addressable arrays only)."""
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


__all__ = [
    "Network",
    "abstract_train_state",
    "as_numpy",
    "build_loss",
    "build_network",
    "build_state",
    "data_shape",
    "init_key",
    "network_initializer",
    "to_model_batch",
    "train_state_shardings",
]


def expand_shardings(shardings, tree):
    """Expand a sharding pytree that is a prefix of `tree` (e.g. one NamedSharding per NNX
    Variable, as `sharding.state_shardings` returns) to `tree`'s full structure."""
    treedef = jax.tree.structure(tree)
    subtrees = jax.tree.structure(shardings).flatten_up_to(tree)
    flat = []
    for sh, sub in zip(jax.tree.leaves(shardings), subtrees, strict=True):
        flat.extend([sh] * len(jax.tree.leaves(sub)))
    return jax.tree.unflatten(treedef, flat)
