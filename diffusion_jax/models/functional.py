"""Functional use of NNX denoisers: split once, then pure functions of the parameter pytree.

DESIGN.md: library code never holds module objects in hot paths. `split` separates the static
graph definition from trainable parameters (`nnx.Param`) and the rest (fixed buffers such as DiT's
position table); `make_net_fn` returns `net_fn(params, z, t_in, cond, rng) -> out`, which merges
inside and is therefore pure and `jax.jit`-friendly.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

COND_KEYS = ("label", "context", "context_mask")


def split(model: nnx.Module):
    """model -> (graphdef, params, rest): `nnx.Param` leaves and everything else (buffers)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def make_net_fn(graphdef, rest=None) -> Callable:
    """Return `net_fn(params, z, t_in, cond=None, rng=None) -> out` (same shape rules as the model).

    z: [B, ...] network input; t_in: [B] already-transformed time input (e.g. t*999, EDM c_noise);
    cond: None or a dict with optional keys 'label' [B] int, 'context' [B, L, E],
    'context_mask' [B, L] bool; rng: None (deterministic, no dropout) or a PRNG key for dropout.
    """

    def net_fn(params, z, t_in, cond=None, rng=None):
        cond = {} if cond is None else dict(cond)
        bad = sorted(set(cond) - set(COND_KEYS))
        if bad:
            raise ValueError(f"cond has unknown keys {bad}; valid keys: {COND_KEYS}")
        states = (params,) if rest is None else (params, rest)
        model = nnx.merge(graphdef, *states)
        rngs = None if rng is None else nnx.Rngs(dropout=rng)
        return model(
            z,
            t_in,
            label=cond.get("label"),
            context=cond.get("context"),
            context_mask=cond.get("context_mask"),
            deterministic=rng is None,
            rngs=rngs,
        )

    return net_fn


def param_count(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(x.size for x in jax.tree.leaves(params)))
