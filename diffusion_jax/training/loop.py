"""The training loop: config -> sharded, checkpointed, logged training run.

`train(cfg, workdir)` validates the config, builds the mesh, network, loss, optimizer and state,
restores the newest readable checkpoint (exact resume: parameters, EMA, optimizer state, step, RNG
and every process's data-iterator position), then runs the jitted step until `training.num_steps`.

Per step the host: reads the next per-process batch, assembles the global batch
(`make_array_from_process_local_data`), dispatches the step, and then inspects the *previous* step's
metrics (one step of lag, so the device is never idle waiting for the host) for the non-finite halt
and logging. Checkpoints every `ckpt_every` steps and at the end; on SIGTERM a checkpoint of the
current step is saved and the run returns with `preempted=True`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np

from diffusion_jax.training import checkpoints as ckpt_lib
from diffusion_jax.training import distributed, sharding
from diffusion_jax.training.build import (
    FAST_COMPILE,
    build_loss,
    build_network,
    build_state,
    expand_shardings,
    to_model_batch,
)
from diffusion_jax.training.config import validate_config
from diffusion_jax.training.fsdp import fsdp_net_fn
from diffusion_jax.training.logging import MetricsLogger
from diffusion_jax.training.state import TrainState
from diffusion_jax.training.step import check_nonfinite, jit_train_step, make_train_step

log = logging.getLogger(__name__)

Hook = Callable[[int, TrainState, dict], None]


@dataclasses.dataclass
class TrainResult:
    """state: final TrainState (global jax.Arrays); step: steps completed; preempted: stopped by
    SIGTERM after saving; last_metrics: host floats of the last logged window."""

    state: TrainState
    step: int
    preempted: bool
    last_metrics: dict


@dataclasses.dataclass
class Runtime:
    """The compiled pieces of a run (exposed for tests and tools)."""

    cfg: object
    mesh: object
    rules: object
    network: object
    denoiser: object
    state_sharding: object
    batch_sharding: object
    step_fn: Callable
    host_state: TrainState


def build_runtime(cfg, devices=None) -> Runtime:
    """Mesh, network, loss, optimizer, fresh state, shardings and the jitted step for `cfg`.

    The fresh state (`host_state`, kept under its old name) is created on the mesh with its
    shardings by the initialising programs (born sharded; `build.network_initializer`).

    devices: the devices of the mesh (default: all, `jax.devices()`); the mesh sizes in `cfg.mesh`
    must multiply to their number (one size may be -1).
    """
    mesh = sharding.make_mesh(cfg.mesh, devices=devices)
    rules = sharding.rules_from_config(cfg, mesh, fsdp_min_size=int(cfg.training.get("fsdp_min_size", 2**18)))
    net = build_network(cfg, mesh=mesh, rules=rules)  # born sharded: created on the mesh
    loss_fn, denoiser = build_loss(cfg, net.net_fn)
    host_state, tx = build_state(cfg, net.params, mesh=mesh, rules=rules)
    state_sh = expand_shardings(sharding.state_shardings(host_state, mesh, rules), host_state)
    if rules.fsdp_axes:  # ZeRO-3: gather weights in the network call, reduce-scatter their gradients
        loss_fn, _ = build_loss(cfg, fsdp_net_fn(net.net_fn, state_sh.params, mesh, rules))
    batch_sh = sharding.batch_sharding(mesh, rules, 1)
    opts = FAST_COMPILE if cfg.training.get("fast_compile", False) else None
    step_fn = jit_train_step(make_train_step(loss_fn, tx, cfg.training), mesh, state_sh, batch_sh, opts)
    return Runtime(cfg, mesh, rules, net, denoiser, state_sh, batch_sh, step_fn, host_state)


def _host_batch_transform(cfg):
    """Host-side batch processing before the device: rename keys for the objective, and pair on the
    host for a coupling that does so (`Coupling.pair_host`, e.g. exact minibatch OT), in numpy, so the
    device step never waits for the assignment solver. The pairing randomness of step s on process p
    is `default_rng([seed, 7, s, p])`, hence reproducible across resumes."""
    from diffusion_jax.couplings import make_coupling
    from diffusion_jax.data.captions import make_text_transform

    obj = cfg.objective
    coupling = make_coupling(obj.get("coupling", "independent"), obj.get("coupling_kwargs", None))
    conditional = bool(cfg.model.get("num_classes", 0))
    text = make_text_transform(cfg)  # captions -> byte tokens, or per-label embeddings (or None)
    if not coupling.host_side:
        return lambda batch, step: to_model_batch(batch, conditional, text, step)

    def transform(batch, step):
        rng = np.random.default_rng([int(cfg.seed), 0x07, int(step), jax.process_index()])
        return coupling.pair_host(to_model_batch(batch, conditional, text, step), rng)

    return transform


def _should(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _any_process(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def train(
    cfg,
    workdir: str,
    *,
    hooks: Sequence[Hook] = (),
    data_source=None,
    progress: bool = True,
    eval_fn: Callable | None = None,
    devices=None,
) -> TrainResult:
    """Train (or resume) the run in `workdir` to `cfg.training.num_steps`.

    Args:
      cfg: a full experiment config (validated here, before anything compiles).
      workdir: run directory (config.json, checkpoints/, metrics.jsonl, tensorboard/, samples/).
      hooks: called as `hook(step, state, metrics)` after each dispatched step (metrics are device
        arrays; reading them synchronises).
      data_source: optional random-access source passed to `data.pipeline.make_iterator` (tests).
      progress: show a tqdm bar (steps/s, ETA) on process 0.
      eval_fn: `eval_fn(runtime, state, step, workdir, logger)` for sample_every / eval_every
        (default: `training.periodic.run_periodic`).
      devices: mesh devices (default all; e.g. `jax.devices()[:1]` for a single-device run).
    Returns: TrainResult. Raises `step.NonFiniteError` after too many non-finite updates in a row.
    """
    from diffusion_jax.data.pipeline import make_iterator

    validate_config(cfg)
    t = cfg.training
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    ckpt_lib.save_config(cfg, workdir)

    transform = _host_batch_transform(cfg)  # loads any embeddings file before compiling
    rt = build_runtime(cfg, devices)
    pid, nproc = jax.process_index(), jax.process_count()
    it = make_iterator(
        cfg.data, process_index=pid, process_count=nproc, seed=int(cfg.seed), source=data_source
    )
    ckpt = ckpt_lib.Checkpointer(
        workdir, keep=int(t.keep), keep_every=int(t.keep_every), async_save=bool(t.async_checkpointing)
    )
    abstract = ckpt_lib.abstract_like(rt.host_state, rt.state_sharding)
    restored = ckpt.restore_latest(abstract)
    if restored is not None:
        state, data_states, start = restored
        if not data_states:
            raise ValueError(f"checkpoint {start} has no data-iterator state; cannot resume exactly")
        # Iterator states count global batches, so process 0's state also positions a process that
        # did not exist in the saved run (the data layer refuses incompatible batch sizes).
        it.set_state(data_states.get(str(pid), data_states["0"]))
        log.warning("resumed from checkpoint %d in %s", start, ckpt.directory)
    else:
        state = distributed.global_from_host(rt.host_state, rt.state_sharding)
        start = 0
    del rt.host_state  # the fresh host copy is no longer needed (large models)
    rt.host_state = None

    if eval_fn is None:
        from diffusion_jax.training.periodic import run_periodic as eval_fn

    logger = MetricsLogger(workdir)
    preempt = ckpt_lib.PreemptionFlag()
    num_steps = int(t.num_steps)
    bar = None
    if progress and pid == 0 and start < num_steps:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    window: dict[str, float] = {}
    window_n = 0
    last: dict = {}
    pending = None  # (step number after the update, metrics on device)
    preempted = False
    t_window = time.time()

    def consume(step_done: int, metrics) -> None:
        nonlocal window, window_n, last, t_window
        host = {k: float(np.asarray(v)) for k, v in metrics.items()}
        check_nonfinite(host, int(t.max_nonfinite_in_a_row), step_done)
        for k, v in host.items():
            window[k] = window.get(k, 0.0) + v
        window_n += 1
        if _should(step_done, int(t.log_every)) or step_done == num_steps:
            avg = {k: v / window_n for k, v in window.items()}
            # Counters are states, not rates: report their latest value.
            for k in ("nonfinite_total", "nonfinite_in_a_row", "lr"):
                avg[k] = host[k]
            now = time.time()
            avg["steps_per_sec"] = window_n / max(now - t_window, 1e-9)
            logger.write(step_done, avg, prefix="train/")
            last = avg
            window, window_n, t_window = {}, 0, now
            if bar is not None:
                bar.set_postfix(loss=f"{avg['loss']:.4g}")

    try:
        step = start
        while step < num_steps:
            batch = distributed.global_batch(transform(next(it), step), rt.batch_sharding)
            state, metrics = rt.step_fn(state, batch)
            step += 1
            if pending is not None:
                consume(*pending)
            pending = (step, metrics)
            for hook in hooks:
                hook(step, state, metrics)
            if bar is not None:
                bar.update(1)
            if _should(step, int(t.ckpt_every)) and step < num_steps:
                # A state whose last update was skipped may be the start of a divergence: saving it
                # could rotate good checkpoints out (keep-N), so periodic saves wait for a finite one.
                if int(np.asarray(state.nonfinite_in_a_row)) == 0:
                    ckpt.save(step, state, ckpt_lib.gather_data_states(it.get_state()))
                else:
                    log.warning("step %d: last update was non-finite; skipping this checkpoint", step)
            if _should(step, int(t.sample_every)) or _should(step, int(t.eval_every)):
                consume(*pending)
                pending = None
                eval_fn(rt, state, step, workdir, logger)
            check_now = nproc == 1 or _should(step, int(t.log_every))
            if check_now and _any_process(preempt.is_set()):
                if pending is not None:
                    consume(*pending)
                    pending = None
                log.warning("preemption: saving checkpoint %d and stopping", step)
                ckpt.save(step, state, ckpt_lib.gather_data_states(it.get_state()), force=True)
                preempted = True
                break
        if pending is not None:
            consume(*pending)
            pending = None
        if not preempted and start < num_steps:
            ckpt.save(step, state, ckpt_lib.gather_data_states(it.get_state()), force=True)
        ckpt.wait()
    finally:
        preempt.close()
        if bar is not None:
            bar.close()
        logger.close()
        # Let pending async saves finish; a failing run never deletes saved checkpoints.
        ckpt.close()
    return TrainResult(state=state, step=step, preempted=preempted, last_metrics=last)


__all__ = ["Hook", "Runtime", "TrainResult", "build_runtime", "train"]
