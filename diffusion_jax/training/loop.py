"""The training loop: config -> sharded, checkpointed, logged training run.

`train(cfg, workdir)` validates the config, the devices and the workdir (nothing is written before
these pass), locks the workdir (one writer), restores the newest intact checkpoint (exact resume:
parameters, EMA, optimizer state, step, RNG and every process's data-iterator position), then runs
the jitted step until `training.num_steps`.

Per step the host takes the next per-process batch (read and transformed ahead, in background
threads, while the device runs the previous step: `prefetch`), assembles the global batch
(`make_array_from_process_local_data`) and dispatches the step; the step's metrics stay on the
device until the next logging, checkpoint or evaluation step, where all pending ones are read back
in one transfer (for the non-finite halt and the logs). Checkpoints every `ckpt_every` steps and at
the end, never from a non-finite state; on SIGTERM (from process start, see `preemption`) a
checkpoint of the current step is saved and the run returns with `preempted=True`.
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
from diffusion_jax.training import workdir as workdir_lib
from diffusion_jax.training.build import (
    FAST_COMPILE,
    build_loss,
    build_network,
    build_state,
    expand_shardings,
    to_model_batch,
)
from diffusion_jax.training.config import check_data_files, validate_config
from diffusion_jax.training.fsdp import fsdp_net_fn
from diffusion_jax.training.lock import RunLock, WorkdirLocked
from diffusion_jax.training.logging import MetricsLogger
from diffusion_jax.training.preemption import PreemptionFlag
from diffusion_jax.training.prefetch import host_batches
from diffusion_jax.training.state import TrainState
from diffusion_jax.training.step import all_finite, check_nonfinite, jit_train_step, make_train_step

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
    check_devices(cfg, mesh, rules)
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


def check_devices(cfg, mesh, rules) -> None:
    """The global batch must split evenly over the batch shards of the mesh and
    over the processes; checked before anything is written or compiled."""
    shards = int(np.prod([mesh.shape[a] for a in rules.batch_axes]))
    bs, nproc = int(cfg.data.batch_size), jax.process_count()
    if bs % shards:
        raise ValueError(
            f"data.batch_size={bs} is not divisible by the {shards} batch shards of the mesh "
            f"{dict(mesh.shape)} ({len(mesh.devices.flat)} devices); choose a multiple of {shards}"
        )
    if bs % nproc:
        raise ValueError(f"data.batch_size={bs} is not divisible by the {nproc} processes")


MAX_PENDING = 256  # steps whose metrics may wait on the device between logging steps


@dataclasses.dataclass
class _Session:
    """The mutable state of one training loop; each method is one concern of a step."""

    cfg: object
    rt: Runtime
    workdir: str
    batches: object  # transformed host batches in step order, `get_state()`: `prefetch.host_batches`
    ckpt: ckpt_lib.Checkpointer
    logger: MetricsLogger
    preempt: PreemptionFlag
    hooks: Sequence[Hook]
    eval_fn: Callable
    state: TrainState
    step: int
    bar: object = None
    pending: list = dataclasses.field(default_factory=list)  # [(step, device metrics)] not read yet
    window: list = dataclasses.field(default_factory=list)  # host metrics of the logging window
    t_window: float = dataclasses.field(default_factory=time.time)
    last: dict = dataclasses.field(default_factory=dict)

    @property
    def t(self):
        return self.cfg.training

    def run(self) -> bool:
        """Train to `num_steps`; returns whether the run stopped for a preemption."""
        start, num_steps = self.step, int(self.t.num_steps)
        if self._preempt_requested(always=True):  # SIGTERM during start-up
            return self._stop_for_preemption()
        while self.step < num_steps:
            self._advance()
            if _should(self.step, int(self.t.log_every)) or self.step == num_steps:
                self._log()
            if _should(self.step, int(self.t.ckpt_every)) and self.step < num_steps:
                self._periodic_checkpoint()
            if _should(self.step, int(self.t.sample_every)) or _should(self.step, int(self.t.eval_every)):
                self._drain()
                self.eval_fn(self.rt, self.state, self.step, self.workdir, self.logger)
            if self._preempt_requested():
                return self._stop_for_preemption()
        self._drain()
        if start < num_steps:
            self._save(force=True)
        self.ckpt.wait()
        return False

    def _advance(self) -> None:
        batch = distributed.global_batch(next(self.batches), self.rt.batch_sharding)
        self.state, metrics = self.rt.step_fn(self.state, batch)
        self.step += 1
        self.pending.append((self.step, metrics))  # stays on device until the next drain
        if len(self.pending) >= MAX_PENDING:  # bounds buffers and how late a divergence halts
            self._drain()
        for hook in self.hooks:
            hook(self.step, self.state, metrics)
        if self.bar is not None:
            self.bar.update(1)

    def _drain(self) -> None:
        """Read the pending metrics to the host in one transfer; halt on too many skipped updates."""
        if not self.pending:
            return
        steps = [s for s, _ in self.pending]
        host = jax.device_get([m for _, m in self.pending])
        self.pending = []
        for s, m in zip(steps, host, strict=True):
            m = {k: float(v) for k, v in m.items()}
            check_nonfinite(m, int(self.t.max_nonfinite_in_a_row), s)
            self.window.append(m)

    def _log(self) -> None:
        self._drain()
        if not self.window:
            return
        n = len(self.window)
        avg = {k: sum(m[k] for m in self.window) / n for k in self.window[0]}
        for k in ("nonfinite_total", "nonfinite_in_a_row", "lr"):  # states, not rates: the latest
            avg[k] = self.window[-1][k]
        now = time.time()
        avg["steps_per_sec"] = n / max(now - self.t_window, 1e-9)
        self.logger.write(self.step, avg, prefix="train/")
        self.last, self.window, self.t_window = avg, [], now
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{avg['loss']:.4g}")

    def _periodic_checkpoint(self) -> None:
        # A state whose last update was skipped may be the start of a divergence: saving it could
        # rotate good checkpoints out (keep-N), so periodic saves wait for a finite update.
        self._drain()
        if int(jax.device_get(self.state.nonfinite_in_a_row)) == 0:
            self._save()
        else:
            log.warning("step %d: last update was non-finite; skipping this checkpoint", self.step)

    def _save(self, force: bool = False) -> bool:
        if not bool(_state_finite(self.state)):
            log.error("step %d: the state holds non-finite numbers; not writing a checkpoint", self.step)
            return False
        data = ckpt_lib.gather_data_states(self.batches.get_state())
        return self.ckpt.save(self.step, self.state, data, force=force)

    def _preempt_requested(self, always: bool = False) -> bool:
        if not (always or jax.process_count() == 1 or _should(self.step, int(self.t.log_every))):
            return False
        return _any_process(self.preempt.is_set())

    def _stop_for_preemption(self) -> bool:
        self._drain()
        log.warning("preemption: saving checkpoint %d and stopping", self.step)
        self._save(force=True)
        self.ckpt.wait()
        return True


@jax.jit
def _state_finite(state: TrainState):
    """True when params, EMA copies and optimizer state hold only finite numbers."""
    return all_finite((state.params, state.ema, state.opt_state))


def _initial_state(cfg, rt: Runtime, ckpt: ckpt_lib.Checkpointer, it, workdir: str):
    """(state, step): the newest intact checkpoint (exact resume), or a fresh / fine-tuning start.

    Refuses to start over silently: when every checkpoint of the run is damaged, starting from step
    0 needs `resume='restart'`."""
    mode, source = workdir_lib.parse_resume(cfg)
    abstract = ckpt_lib.abstract_like(rt.host_state, rt.state_sharding)
    try:
        restored = ckpt.restore_latest(abstract, quarantine=True)
    except ckpt_lib.NoIntactCheckpoint as e:
        if mode != "restart":
            raise ckpt_lib.NoIntactCheckpoint(f"{e}. {_RESTART_HINT}") from e
        restored = None
    if restored is not None:
        state, data_states, start = restored
        if not data_states:
            raise ValueError(f"checkpoint {start} has no data-iterator state; cannot resume exactly")
        # Iterator states count global batches, so process 0's state also positions a process that
        # did not exist in the saved run (the data layer refuses incompatible batch sizes).
        it.set_state(data_states.get(str(jax.process_index()), data_states["0"]))
        log.warning("resumed from checkpoint %d in %s", start, ckpt.directory)
        return state, start
    if workdir_lib.corrupt_steps(workdir) and mode != "restart":
        raise ckpt_lib.NoIntactCheckpoint(
            f"{workdir} has no intact checkpoint but damaged ones in {ckpt_lib.CORRUPT_DIR}/. {_RESTART_HINT}"
        )
    host = rt.host_state
    if mode == "finetune":
        host = _finetune_start(host, source)
    return distributed.global_from_host(host, rt.state_sharding), 0


_RESTART_HINT = (
    "Not starting over silently: to train from step 0 in this workdir pass --config.resume=restart "
    "(the damaged checkpoints stay in checkpoints_corrupt/), or use a new --workdir"
)


def _finetune_start(host_state: TrainState, source: str) -> TrainState:
    """`host_state` with params and EMA copies from the newest intact checkpoint of run `source`."""
    src, _, _ = ckpt_lib.load_train_state(source)
    want = ckpt_lib.abstract_like(host_state.params)
    got = ckpt_lib.abstract_like(src.params)

    def sig(tree):
        return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]

    if sig(want) != sig(got):
        raise ValueError(
            f"resume=finetune:{source}: that run's parameters do not fit this model "
            "(fine-tuning keeps the network; change the objective, data or optimizer instead)"
        )
    params = jax.tree.map(np.asarray, src.params)
    ema = {n: jax.tree.map(np.asarray, src.ema.get(n, src.params)) for n in host_state.ema}
    log.warning("fine-tuning from the weights of %s (step %d)", source, int(src.step))
    return host_state.replace(params=params, ema=ema)


def _lock_workdir(workdir: str) -> RunLock | None:
    """Create the workdir and take its lock (process 0; the others follow its outcome)."""
    held, error = None, None
    if jax.process_index() == 0:
        try:
            os.makedirs(workdir, exist_ok=True)
            held = RunLock(workdir).acquire()
        except WorkdirLocked as e:
            error = e
        except OSError as e:
            error = OSError(e.errno, f"cannot write to --workdir {workdir}: {e.strerror}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        ok = multihost_utils.broadcast_one_to_all(np.int32(error is None))
        if not ok and error is None:
            error = WorkdirLocked(f"process 0 could not take the lock of {workdir} (see its log)")
    if error is not None:
        raise error
    return held


def train(
    cfg,
    workdir: str,
    *,
    hooks: Sequence[Hook] = (),
    data_source=None,
    progress: bool = True,
    eval_fn: Callable | None = None,
    devices=None,
    preempt: PreemptionFlag | None = None,
) -> TrainResult:
    """Train (or resume) the run in `workdir` to `cfg.training.num_steps`.

    Nothing is written to disk before the config, the devices and the workdir (not a file, not
    another experiment's run: `workdir.check_workdir`) pass their checks; then the workdir is locked
    for the life of the run (`lock.RunLock`).

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
      preempt: a `PreemptionFlag` installed earlier (the CLI installs one at process start);
        default: one installed now and removed on return.
    Returns: TrainResult. Raises `step.NonFiniteError` after too many non-finite updates in a row,
      `workdir.RunConfigMismatch`, `lock.WorkdirLocked`, `checkpoints.NoIntactCheckpoint`,
      `integrity.CheckpointUnavailable` (see the README, "What happens when things go wrong").
    """
    validate_config(cfg)
    check_data_files(cfg)
    workdir = workdir_lib.check_workdir(cfg, workdir)
    transform = _host_batch_transform(cfg)  # loads any embeddings file before compiling
    rt = build_runtime(cfg, devices)
    own_flag = preempt is None
    preempt = PreemptionFlag() if own_flag else preempt
    held = _lock_workdir(workdir)
    try:
        return _train_locked(cfg, workdir, rt, transform, preempt, hooks, data_source, progress, eval_fn)
    finally:
        if own_flag:
            preempt.close()
        if held is not None:
            held.release()


def _close_quietly(close: Callable, what: str) -> None:
    """`close()`, reporting (not raising) its error: used while another error propagates."""
    try:
        close()
    except Exception as e:  # noqa: BLE001
        log.warning("closing the %s after an error: %s: %s", what, type(e).__name__, str(e)[:300])


def _train_locked(cfg, workdir, rt, transform, preempt, hooks, data_source, progress, eval_fn) -> TrainResult:
    from diffusion_jax.data.pipeline import make_iterator

    t = cfg.training
    it = make_iterator(
        cfg.data,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        seed=int(cfg.seed),
        source=data_source,
    )
    ckpt = ckpt_lib.Checkpointer(
        workdir, keep=int(t.keep), keep_every=int(t.keep_every), async_save=bool(t.async_checkpointing)
    )
    closers = [(ckpt.close, "checkpoints")]  # closing lets pending saves finish
    try:
        state, start = _initial_state(cfg, rt, ckpt, it, workdir)
        rt.host_state = None  # the fresh host copy is no longer needed (large models)
        ckpt_lib.save_config(cfg, workdir)
        if eval_fn is None:
            from diffusion_jax.training.periodic import run_periodic as eval_fn
        logger = MetricsLogger(workdir)
        closers.append((logger.close, "logs"))
        bar = None
        if progress and jax.process_index() == 0 and start < int(t.num_steps):
            from tqdm.auto import tqdm

            bar = tqdm(total=int(t.num_steps), initial=start, desc="train", unit="step", dynamic_ncols=True)
            closers.append((bar.close, "progress bar"))
        # Batch k + 1 is read and transformed (e.g. OT-paired) in background threads while step k
        # runs; the data state saved with a checkpoint is that of the last batch consumed.
        batches = host_batches(it, transform, start, int(t.get("prefetch", 2)))
        closers.append((batches.close, "input threads"))
        session = _Session(
            cfg, rt, workdir, batches, ckpt, logger, preempt, hooks, eval_fn, state, start, bar
        )
        preempted = session.run()
    except BaseException:
        for close, what in reversed(closers):  # never hide the error that ended the run
            _close_quietly(close, what)
        raise
    for close, _ in reversed(closers):
        close()
    return TrainResult(state=session.state, step=session.step, preempted=preempted, last_metrics=session.last)


__all__ = ["Hook", "Runtime", "TrainResult", "build_runtime", "check_devices", "train"]
