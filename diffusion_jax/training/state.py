"""The train state: parameters, EMA copies, optimizer state, step, RNG and non-finite counters.

`TrainState` is a pytree of arrays only (no module objects, no callables), so it can be jitted,
sharded with `NamedSharding`, donated and checkpointed with Orbax as is. The network structure
(graphdef) and the optimizer (an optax `GradientTransformation`) live outside it and are rebuilt
from the config.

EMA: one copy per decay d in `training.ema_decays` (ema <- d ema + (1 - d) params after every
applied update, Polyak & Juditsky 1992; as in score_sde / EDM) and optionally the power-function
EMA of Karras et al. 2024 ("Analyzing and Improving the Training Dynamics of Diffusion Models",
EDM2, sec. 3.1, eq. 3): ema <- beta(t) ema + (1 - beta(t)) params with beta(t) = (1 - 1/t)^(gamma+1)
at update t = 1, 2, ..., whose averaging profile is proportional to t^gamma (relative width
sigma_rel = (gamma+1)^(1/2) (gamma+2)^(-1) (gamma+3)^(-1/2), eq. 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

Array = jax.Array

OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")


@struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree of arrays.

    Attributes:
      step: int32 [] number of train steps taken (attempted updates, skipped ones included).
      params: the network parameters (float32 master copy).
      ema: dict name -> params-shaped pytree (see `ema_names`).
      opt_state: the optax state.
      rng: uint32 [2] raw key data of the base training key; step i uses fold_in(key, i), so the
        noise of a step does not depend on how the run was interrupted.
      nonfinite_total: int32 [] updates skipped because the loss or a gradient was not finite.
      nonfinite_in_a_row: int32 [] current run of consecutive skipped updates.
    """

    step: Array
    params: Any
    ema: dict
    opt_state: Any
    rng: Array
    nonfinite_total: Array
    nonfinite_in_a_row: Array


def _fmt(x: float) -> str:
    # Orbax and TensorBoard treat '.' in tree keys / tags specially; keep names plain identifiers.
    return f"{x:g}".replace(".", "p").replace("-", "m")


def ema_names(ema_decays: Sequence[float], ema_power: float | None) -> tuple[str, ...]:
    """Names of the EMA copies: `ema_0p9999` per decay, then `power_0p05` for the EDM2 EMA."""
    names = [f"ema_{_fmt(float(d))}" for d in ema_decays]
    if ema_power is not None:
        names.append(f"power_{_fmt(float(ema_power))}")
    return tuple(names)


def lr_schedule(training_cfg) -> optax.Schedule:
    """Learning rate per step: linear warmup from 0 over `warmup_steps`, then constant or a cosine
    decay to 0 at `num_steps` (Loshchilov & Hutter 2017, SGDR, without restarts)."""
    t = training_cfg
    if t.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"training.lr_schedule={t.lr_schedule!r}; valid: {list(LR_SCHEDULES)}")
    warmup = int(t.warmup_steps)
    if t.lr_schedule == "constant":
        main = optax.constant_schedule(float(t.lr))
    else:
        main = optax.cosine_decay_schedule(float(t.lr), decay_steps=max(int(t.num_steps) - warmup, 1))
    if warmup <= 0:
        return main
    warm = optax.linear_schedule(0.0, float(t.lr), warmup)
    return optax.join_schedules([warm, main], [warmup])


def make_optimizer(training_cfg) -> optax.GradientTransformation:
    """Adam (Kingma & Ba 2015) or AdamW (Loshchilov & Hutter 2019) on `lr_schedule`, after
    clipping the global gradient norm to `grad_clip` (no clipping when grad_clip <= 0)."""
    t = training_cfg
    if t.optimizer not in OPTIMIZERS:
        raise ValueError(f"training.optimizer={t.optimizer!r}; valid: {list(OPTIMIZERS)}")
    sched = lr_schedule(t)
    eps = float(t.get("eps", 1e-8))
    if t.optimizer == "adam":
        opt = optax.adam(sched, b1=float(t.b1), b2=float(t.b2), eps=eps)
    else:
        opt = optax.adamw(sched, b1=float(t.b1), b2=float(t.b2), eps=eps, weight_decay=float(t.weight_decay))
    if t.grad_clip and float(t.grad_clip) > 0:
        return optax.chain(optax.clip_by_global_norm(float(t.grad_clip)), opt)
    return opt


def init_train_state(params, tx: optax.GradientTransformation, training_cfg, rng: Array) -> TrainState:
    """A fresh state at step 0: every EMA copy starts at `params`.

    Args:
      params: float32 parameter pytree.
      tx: the optimizer from `make_optimizer`.
      rng: a typed key or raw uint32 [2] key data.
    """
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    names = ema_names(training_cfg.ema_decays, training_cfg.ema_power)
    # Copies, not aliases: the step donates the state, and one buffer cannot be donated twice.
    ema = {n: jax.tree.map(jnp.copy, params) for n in names}
    # Separate zero scalars: donating one buffer under two leaves is an error.
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema=ema,
        opt_state=tx.init(params),
        rng=jnp.asarray(rng, jnp.uint32),
        nonfinite_total=jnp.zeros((), jnp.int32),
        nonfinite_in_a_row=jnp.zeros((), jnp.int32),
    )


def power_ema_beta(t: Array, gamma: float) -> Array:
    """EDM2 power-function EMA coefficient beta(t) = (1 - 1/t)^(gamma + 1) at update t >= 1
    (Karras et al. 2024, eq. 3); beta(1) = 0 so the average starts at the first iterate."""
    t = jnp.maximum(jnp.asarray(t, jnp.float32), 1.0)
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def update_ema(ema: dict, params, t: Array, ema_decays: Sequence[float], ema_power: float | None) -> dict:
    """One EMA update of every copy towards `params`; t is the 1-based update count (int [])."""
    names = ema_names(ema_decays, ema_power)
    betas = [jnp.float32(d) for d in ema_decays]
    if ema_power is not None:
        betas.append(power_ema_beta(t, float(ema_power)))
    out = {}
    for name, beta in zip(names, betas, strict=True):
        out[name] = jax.tree.map(
            lambda e, p, b=beta: (b * e.astype(jnp.float32) + (1.0 - b) * p.astype(jnp.float32)).astype(
                e.dtype
            ),
            ema[name],
            params,
        )
    return out


__all__ = [
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "TrainState",
    "ema_names",
    "init_train_state",
    "lr_schedule",
    "make_optimizer",
    "power_ema_beta",
    "update_ema",
]
