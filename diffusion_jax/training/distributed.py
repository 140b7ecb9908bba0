"""Multi-host setup: `jax.distributed.initialize` from flags or environment, and global batches.

Every process runs the same program (SPMD, multi-controller JAX). Each process loads only its own
rows of the global batch (`data.pipeline` gives process p rows [p b, (p+1) b)) and the global array
is assembled with `jax.make_array_from_process_local_data`, so no process ever holds the whole batch.
On CPU, several local processes talk through gloo collectives (`jax_cpu_collectives_implementation`),
which is how the tests run two "hosts" on one machine.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

log = logging.getLogger(__name__)

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
    cpu_collectives: str | None = None,
) -> bool:
    """Join a multi-process run; returns True if `jax.distributed.initialize` was called.

    Values come from the arguments, else from the environment (`JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`). With none set and `auto=False` this is a single-process
    run and nothing happens; `auto=True` lets JAX detect the cluster (TPU pods, SLURM, ...).

    Args:
      coordinator_address: "host:port" of process 0's coordination service.
      num_processes: total number of processes.
      process_id: this process's index in [0, num_processes).
      cpu_collectives: e.g. "gloo" for cross-process collectives between CPU devices.
    Must be called before any other JAX call that touches devices.
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if coordinator_address is None and not auto:
        if num_processes not in (None, 1):
            raise ValueError(f"num_processes={num_processes} needs a coordinator_address (host:port)")
        return False
    if coordinator_address is not None and (num_processes is None or process_id is None):
        raise ValueError(
            f"coordinator_address={coordinator_address!r} given but num_processes={num_processes} / "
            f"process_id={process_id}: set all three (flags or {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID})"
        )
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, num_processes={num_processes})")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    log.info(
        "process %d of %d, %d local devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
    )
    return True


def global_batch(local_batch: dict, sharding) -> dict:
    """Assemble this process's rows ({k: [b, ...] numpy}) into global jax.Arrays [b * P, ...].

    Args:
      local_batch: dict of numpy arrays, the rows of this process (in process order).
      sharding: a `NamedSharding` whose first axis is split over the data-parallel mesh axes.
    """
    out = {}
    p = jax.process_count()
    for k, v in local_batch.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_process_local_data(sharding, v, (v.shape[0] * p,) + v.shape[1:])
    return out


def global_from_host(tree, shardings):
    """Put a host pytree that is identical on every process onto global `shardings` (arrays that
    already have their target sharding are kept as they are).

    Each device takes its slice of the host array (`make_array_from_callback`), which works across
    processes where a plain `device_put` of a process-local array would not.
    """

    def put(x, s):
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(s, x.ndim):
            return x  # already global with this sharding (e.g. a state initialised on the mesh)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


def gather_rows(tree):
    """Every process's rows of a pytree of host arrays [n_local, ...] (one n_local per process, which
    may differ between processes), concatenated in process order on every process; the identity on
    one process. Rows are padded to the largest n_local for the allgather and trimmed after."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    n_local = len(jax.tree.leaves(tree)[0])
    counts = np.ravel(multihost_utils.process_allgather(np.asarray([n_local])))
    width = int(np.max(counts))

    def pad(a):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros((width - len(a), *a.shape[1:]), a.dtype)])

    every = multihost_utils.process_allgather(jax.tree.map(pad, tree))
    return jax.tree.map(lambda e: np.concatenate([e[p, : int(c)] for p, c in enumerate(counts)]), every)


__all__ = [
    "ENV_COORDINATOR",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "gather_rows",
    "global_batch",
    "global_from_host",
    "initialize",
]
