"""Functional use of NNX denoisers: split once, then pure functions of the parameter pytree.

DESIGN.md: library code never holds module objects in hot paths. `split` separates the static
graph definition from trainable parameters (`nnx.Param`) and the rest (fixed buffers such as DiT's
position table); `make_net_fn` returns `net_fn(params, z, t_in, cond, rng) -> out`, which merges
inside and is therefore pure and `jax.jit`-friendly.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_jax.conditioning import COND_KEYS
from diffusion_jax.models.conditioning import TextConditioned

TEXT_KEYS = ("tokens", "tokens_mask")  # only models built with `model.text_encoder` accept these


def split(model: nnx.Module):
    """model -> (graphdef, params, rest): `nnx.Param` leaves and everything else (buffers)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def make_net_fn(graphdef, rest=None) -> Callable:
    """Return `net_fn(params, z, t_in, cond=None, rng=None) -> out` (same shape rules as the model).

    z: [B, ...] network input; t_in: [B] already-transformed time input (e.g. t*999, EDM c_noise);
    cond: None or a dict with optional keys 'label' [B] int, 'context' [B, L, E],
    'context_mask' [B, L] bool, and for a model with a text encoder (`conditioning.TextConditioned`)
    'tokens' [B, L] int / 'tokens_mask' [B, L] bool; rng: None (deterministic, no dropout) or a PRNG
    key for dropout.
    """

    def net_fn(params, z, t_in, cond=None, rng=None):
        cond = {} if cond is None else dict(cond)
        bad = sorted(set(cond) - set(COND_KEYS))
        if bad:
            raise ValueError(f"cond has unknown keys {bad}; valid keys: {COND_KEYS}")
        states = (params,) if rest is None else (params, rest)
        model = nnx.merge(graphdef, *states)
        rngs = None if rng is None else nnx.Rngs(dropout=rng)
        text = {k: cond[k] for k in TEXT_KEYS if k in cond}
        if text and not isinstance(model, TextConditioned):
            raise ValueError(
                f"cond has {sorted(text)} but the model has no text encoder (model.text_encoder)"
            )
        return model(
            z,
            t_in,
            label=cond.get("label"),
            context=cond.get("context"),
            context_mask=cond.get("context_mask"),
            deterministic=rng is None,
            rngs=rngs,
            **text,
        )

    return net_fn


def param_count(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))


def init_split(cfg, *, seed: int = 0, mesh=None, rules=None, compiler_options=None):
    """Build `cfg` (a `model` ConfigDict) and split it -> (graphdef, params, rest), initialising
    inside one `jax.jit` (same values as eager construction with `nnx.Rngs(seed)`).

    compiler_options: for that jit, e.g. `training.build.FAST_COMPILE` (a U-Net's init compiles in
    ~2 s instead of ~6 s, bitwise the same parameters; see FAST_COMPILE for where values can differ).

    With `mesh` and `rules` (a `training.sharding.ShardingRules`, which map the parameters' logical
    axis names onto the mesh), the initialiser's outputs get `rules.state_shardings(..., mesh)` as
    out_shardings: FSDP-sharded parameters are created in place on their devices and never
    materialised whole on one device. (Networks only declare logical names; the training layer
    owns the rules, so this module imports nothing from it.)
    """
    from diffusion_jax.models import build_model, complete_config

    complete_config(cfg)  # validate names/fields before tracing anything

    def make():
        return build_model(cfg, rngs=nnx.Rngs(seed))

    graphdef, aparams, arest = split(nnx.eval_shape(make))
    out_shardings = None
    if mesh is not None:
        if rules is None:
            raise ValueError("init_split: `mesh` needs `rules` (training.sharding.make_rules(mesh, mode))")
        out_shardings = (rules.state_shardings(aparams, mesh), rules.state_shardings(arest, mesh))
    params, rest = jax.jit(
        lambda: tuple(split(make())[1:]), out_shardings=out_shardings, compiler_options=compiler_options
    )()
    return graphdef, params, rest


class _ShapeOnlyRngs:
    """Stand-in for `nnx.Rngs` during abstract construction: any stream (`rngs.params()`, ...) returns
    `fold_in(key, n)` with a Python counter. `nnx.Rngs` would update a traced counter Variable per
    draw, and each update's sharding check costs time that grows with the traced graph (about 10x
    the whole construction for ADM-64). Values never matter here: only shapes are produced."""

    def __init__(self, seed: int = 0):
        self._key, self._n = jax.random.key(seed), 0

    def _next(self):
        self._n += 1
        return jax.random.fold_in(self._key, self._n)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return self._next

    def __call__(self):
        return self._next()


def abstract_split(cfg):
    """(graphdef, params, rest) with `jax.ShapeDtypeStruct` leaves (via `nnx.eval_shape`): nothing is
    allocated or compiled. For parameter counts, sharding plans and shape checks."""
    from diffusion_jax.models import build_model

    return split(nnx.eval_shape(lambda: build_model(cfg, rngs=_ShapeOnlyRngs(0))))


def host_random_like(tree, *, seed: int = 0, scale: float = 0.3):
    """Fill a pytree of shapes with N(0, scale^2 / fan_in) values drawn on the host (NumPy).

    fan_in = product of all but the last dim (1 for vectors). For tests and smoke runs: no XLA
    initialisation program is compiled, and zero-initialised layers (adaLN-Zero, output convs) become
    non-trivial so that every path of the network influences the output.
    """
    rng = np.random.default_rng(seed)

    def fill(s):
        fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
        return jnp.asarray(rng.normal(0.0, scale / np.sqrt(fan_in), s.shape).astype(s.dtype))

    return jax.tree.map(fill, tree)
