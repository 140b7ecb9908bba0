"""Run N local processes of one multi-process job (jax.distributed on 127.0.0.1, gloo) and collect
their output; a failing process fails the test with every process's stderr tail."""

from __future__ import annotations

import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cluster_flags(port: int, process_id: int, num_processes: int = 2, cpu_devices: int = 2) -> list[str]:
    """The multi-process flags of our CLIs for one local process of a gloo CPU cluster on 127.0.0.1."""
    return [
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={num_processes}",
        f"--process_id={process_id}",
        f"--num_cpu_devices={cpu_devices}",
        "--cpu_collectives=gloo",
    ]


def run_processes(argvs: list[list[str]], env: dict, timeout: float = 300) -> list[tuple[str, str]]:
    """Start every argv at once (cwd = the repository), wait for all, kill stragglers.

    Returns [(stdout, stderr)] in argv order; asserts every process exited 0.
    """
    procs = [
        subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p in procs:
        assert p.returncode == 0, "\n=====\n".join(e[-2500:] for _, e in outs)
    return outs
