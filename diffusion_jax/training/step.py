"""The train step: loss and gradients (with optional accumulation), optimizer, EMA, non-finite skip.

`make_train_step` builds a pure `step(state, batch) -> (state, metrics)`; `jit_train_step` compiles
it with `NamedSharding` in/out shardings over a mesh and donates the incoming state, so parameters,
EMA copies and optimizer moments are updated in place on every device.

Non-finite handling: when the loss, the global gradient norm, or any number of the updated
parameters, EMA copies or optimizer state is not finite (e.g. a NaN or overflowing learning rate
poisons the state while the loss was still finite), the update is discarded (params, EMA and optimizer state are kept), `nonfinite_total` and `nonfinite_in_a_row`
count it, and the step counter still advances (so the next step sees a new batch and new noise).
The host halts the run with `NonFiniteError` once `nonfinite_in_a_row` reaches the configured K
(`check_nonfinite`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from diffusion_jax.training.state import TrainState, lr_schedule, update_ema

Array = jax.Array
LossFn = Callable[..., tuple[Array, dict]]

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class NonFiniteError(RuntimeError):
    """Raised on the host after too many consecutive non-finite updates."""


def _cast_floats(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x, tree
    )


def with_compute_dtype(net_fn: Callable, compute_dtype: str) -> Callable:
    """Run the network in `compute_dtype` (mixed precision, Micikevicius et al. 2018).

    Parameters, the noisy input and floating conditioning are cast to bfloat16 inside the network
    call; the time input stays float32 (t * 999 in bfloat16 keeps ~3 significant digits) and the
    output is cast back to the input dtype, so the loss, gradients w.r.t. the float32 master
    parameters, optimizer and EMA all stay float32.
    """
    if compute_dtype not in COMPUTE_DTYPES:
        raise ValueError(f"training.compute_dtype={compute_dtype!r}; valid: {list(COMPUTE_DTYPES)}")
    if compute_dtype == "float32":
        return net_fn
    dt = COMPUTE_DTYPES[compute_dtype]

    def net_fn_mixed(params, z, t_in, cond=None, rng=None):
        out = net_fn(_cast_floats(params, dt), z.astype(dt), t_in, _cast_floats(cond, dt), rng)
        return out.astype(z.dtype)

    return net_fn_mixed


def split_microbatches(batch: dict, num: int) -> dict:
    """[B, ...] leaves -> [num, B/num, ...]; microbatch i holds samples i, i+num, i+2 num, ...

    The strided split keeps each microbatch spread evenly over the data-sharded batch axis (a
    contiguous split would put a whole microbatch on a few devices).
    """

    def split(x):
        x = jnp.asarray(x)
        if x.shape[0] % num:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by training.grad_accum={num}")
        return jnp.swapaxes(x.reshape((x.shape[0] // num, num) + x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def all_finite(tree) -> Array:
    """bool []: every floating leaf of `tree` holds only finite numbers."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, training_cfg) -> Callable:
    """Build `step(state, batch) -> (state, metrics)`.

    Args:
      loss_fn: `loss_fn(params, batch, key) -> (scalar loss, metrics dict of scalars)`.
      tx: the optimizer (`state.make_optimizer`).
      training_cfg: the `training` config (grad_accum, ema_decays, ema_power, lr schedule fields).

    The per-step key is fold_in(key(state.rng), state.step) (and fold_in(., i) for microbatch i), so
    a resumed run draws exactly the noise the uninterrupted run would have drawn.

    Metrics: loss, grad_norm, lr, finite (1.0 if the update was applied), nonfinite_total,
    nonfinite_in_a_row, plus the objective's metrics (averaged over microbatches).
    """
    accum = int(training_cfg.grad_accum)
    decays = tuple(float(d) for d in training_cfg.ema_decays)
    power = training_cfg.ema_power
    power = None if power is None else float(power)
    sched = lr_schedule(training_cfg)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def loss_and_grads(params, batch, key):
        if accum == 1:
            (loss, metrics), grads = grad_fn(params, batch, key)
            return loss, metrics, grads
        micro = split_microbatches(batch, accum)

        def body(carry, xs):
            mb, i = xs
            (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(key, i))
            return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(lambda: grad_fn(params, first, key))
        (loss_s, met_s), grad_s = shapes
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), (loss_s, met_s, grad_s))
        total, _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
        loss, metrics, grads = jax.tree.map(lambda x: x / accum, total)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
        return loss, metrics, grads

    def step(state: TrainState, batch: dict):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        loss, metrics, grads = loss_and_grads(state.params, batch, key)
        grad_norm = optax.tree.norm(grads)

        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = update_ema(state.ema, params, state.step + 1, decays, power)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite((params, ema, opt_state))

        # One scalar-predicated pick of the whole new (or old) state. A per-leaf jnp.where on the
        # global `finite` flag gives the same values, but XLA:CPU took minutes and ~8 GB of RSS to
        # compile it for a tiny U-Net (every select waits on every leaf's finiteness reduction).
        params, ema, opt_state = jax.lax.cond(
            finite, lambda: (params, ema, opt_state), lambda: (state.params, state.ema, state.opt_state)
        )
        in_a_row = jnp.where(finite, 0, state.nonfinite_in_a_row + 1).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            ema=ema,
            opt_state=opt_state,
            nonfinite_total=state.nonfinite_total + (~finite).astype(jnp.int32),
            nonfinite_in_a_row=in_a_row,
        )
        out = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        out.update(
            loss=jnp.asarray(loss, jnp.float32),
            grad_norm=grad_norm.astype(jnp.float32),
            lr=jnp.asarray(sched(state.step), jnp.float32),
            finite=finite.astype(jnp.float32),
            nonfinite_total=new_state.nonfinite_total,
            nonfinite_in_a_row=in_a_row,
        )
        return new_state, out

    return step


def jit_train_step(
    step_fn: Callable, mesh: Mesh, state_sharding, batch_sharding, compiler_options: dict | None = None
) -> Callable:
    """Compile `step_fn` with explicit shardings; the incoming state's buffers are donated.

    Args:
      mesh: the device mesh (metrics come back replicated over it).
      state_sharding: a TrainState-shaped pytree of `NamedSharding` (from `sharding.state_shardings`).
      batch_sharding: a `NamedSharding` (or batch-shaped pytree of them) for the global batch.
      compiler_options: XLA options (e.g. `build.FAST_COMPILE` for CPU tests).
    """
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        step_fn,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, replicated),
        donate_argnums=(0,),
        compiler_options=compiler_options,
    )


def check_nonfinite(metrics: dict, max_in_a_row: int, step: int) -> None:
    """Raise `NonFiniteError` when the step's `nonfinite_in_a_row` reached `max_in_a_row` (> 0)."""
    run = int(np.asarray(metrics["nonfinite_in_a_row"]))
    if max_in_a_row > 0 and run >= max_in_a_row:
        total = int(np.asarray(metrics["nonfinite_total"]))
        raise NonFiniteError(
            f"halting at step {step}: {run} consecutive updates had a non-finite loss, gradient or state "
            f"(training.max_nonfinite_in_a_row={max_in_a_row}; {total} skipped in total). Parameters are "
            "those of the last finite update; the last checkpoint is intact. Lower training.lr, set "
            "training.grad_clip, or use compute_dtype='float32'."
        )


__all__ = [
    "COMPUTE_DTYPES",
    "NonFiniteError",
    "all_finite",
    "check_nonfinite",
    "jit_train_step",
    "make_train_step",
    "split_microbatches",
    "with_compute_dtype",
]
