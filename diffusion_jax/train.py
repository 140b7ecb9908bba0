"""Train a model: `python -m diffusion_jax.train --config=configs/toy2d/rf_uniform.py:moons --workdir=DIR`.

Any config field can be overridden, e.g. `--config.training.num_steps=100 --config.training.lr=3e-4`,
nested kwargs included (`--config.sampling.grid_kwargs.t_min=0.001`); a run's `config.json` is
accepted as `--config` (`training.overrides`). Config errors print one line, not a traceback.
Re-running with the same workdir resumes from the newest readable checkpoint (exactly: same final
parameters as an uninterrupted run). SIGTERM, from the first moment of the process, saves a
checkpoint and exits with status 0. A run that cannot start or continue safely (a workdir holding
another experiment or locked by a live run, no intact checkpoint, unreadable or unwritable files,
divergence) prints one line saying why and what to do, and exits with status 1.

Multi-host: pass --coordinator_address=host:port --num_processes=N --process_id=i (or set
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; --distributed_auto for TPU pods and
SLURM); each process then loads its own slice of every batch. On CPU, --cpu_collectives=gloo and
--num_cpu_devices=K simulate several hosts with K devices each.
"""

from __future__ import annotations

import logging
import sys

from diffusion_jax.training.preemption import PreemptionFlag

# Installed before anything slow (flag parsing, JAX): a SIGTERM during start-up is not lost.
_PREEMPT = PreemptionFlag() if __name__ == "__main__" else None

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

# --config=path.py[:arg] | DIR/config.json and --config.a.b=value are parsed by training.overrides.
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, samples).")
_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
_AUTO = flags.DEFINE_bool("distributed_auto", False, "Let JAX detect the cluster (TPU pods, SLURM).")
_CPU_COLL = flags.DEFINE_string("cpu_collectives", None, "CPU cross-process collectives, e.g. 'gloo'.")
_NCPU = flags.DEFINE_integer(
    "num_cpu_devices", None, "Number of CPU devices of this process (jax_num_cpu_devices)."
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def _fatal_errors() -> tuple[type[BaseException], ...]:
    """The errors a run reports in one line instead of a traceback (all leave the workdir intact)."""
    from diffusion_jax.training import checkpoints, integrity, lock, step, workdir

    return (
        OSError,
        lock.WorkdirLocked,
        checkpoints.NoIntactCheckpoint,
        integrity.CheckpointUnavailable,
        step.NonFiniteError,
        workdir.RunConfigMismatch,
    )


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        # Orbax logs every save/restore at INFO; keep the console to warnings unless -v is given.
        absl_logging.set_verbosity(absl_logging.WARNING)
    from diffusion_jax.training import overrides

    cfg = overrides.config_from_argv(argv)
    if _WORKDIR.value is None or cfg is None:
        raise app.UsageError("--config and --workdir are required")
    import jax

    if _NCPU.value:
        jax.config.update("jax_num_cpu_devices", int(_NCPU.value))
    from diffusion_jax.training import distributed

    distributed.initialize(
        _COORD.value, _NPROC.value, _PID.value, auto=_AUTO.value, cpu_collectives=_CPU_COLL.value
    )
    from diffusion_jax.training.config import validate_config
    from diffusion_jax.training.loop import train

    validate_config(cfg)
    logging.getLogger("diffusion_jax").setLevel(logging.INFO)
    try:
        result = train(cfg, _WORKDIR.value, progress=_PROGRESS.value, preempt=_PREEMPT)
    except _fatal_errors() as e:
        print(f"[diffusion_jax.train] error: {e}", file=sys.stderr)
        sys.exit(1)
    msg = "preempted: checkpoint saved at" if result.preempted else "finished at"
    print(f"[diffusion_jax.train] {msg} step {result.step}; workdir {_WORKDIR.value}", file=sys.stderr)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    from diffusion_jax.training import overrides

    overrides.run_cli(main, sys.argv, prog="diffusion_jax.train")
