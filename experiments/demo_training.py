"""Demo part 3: the same model trained under each formulation, through the command-line entry points.

Every row trains the same 3 x 64 SELU MLP (`configs/toy2d/*.py:gmm`) on the same data stream with the
same optimizer and budget; the only differences are the config's objective preset and the sampler
that suits its path (`configs/toy2d/common.py:FORMULATIONS`). Training runs
`python -m diffusion_jax.train` (two runs at a time: the machine has two cores), the samples come
from the EMA weights of each checkpoint, and the dataset is the analytic 8-mode mixture, so the
same sampler run on the *exact* denoiser of the data gives each row's target: the W2 a perfect model
would reach with that sampler and sample size. Finally `python -m diffusion_jax.sample` draws
fixed-seed samples from one checkpoint twice (seeds `0-7` and `3`) to show that a sample depends
only on its seed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from configs.toy2d import common as toy_common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_cmd(form: str, workdir: str, steps: int) -> list[str]:
    return [
        sys.executable, "-m", "diffusion_jax.train",
        f"--config={REPO}/configs/toy2d/{form}.py:gmm",
        f"--workdir={workdir}",
        f"--config.training.num_steps={steps}",
        f"--config.training.ckpt_every={steps}",
        "--config.training.sample_every=0",
        "--config.training.eval_every=0",
        "--config.training.log_every=250",
        "--noprogress",
    ]  # fmt: skip


def _one_device_env() -> dict[str, str]:
    """The environment without the simulated-device flag: on a 2-core CPU, 8 simulated devices only
    add overhead to a tiny MLP's step (5.6x at batch 256, benchmarks/train_step.py), and the tests
    cover the sharded path. The runs are data parallel over whatever devices they see."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _run_parallel(cmds: dict[str, list[str]], logdir: str, jobs: int = 2) -> dict[str, float]:
    """Run the commands `jobs` at a time; raise with the log's tail if any fails. Returns wall times."""
    pending, running, times, env = list(cmds.items()), {}, {}, _one_device_env()
    while pending or running:
        while pending and len(running) < jobs:
            name, cmd = pending.pop(0)
            log = open(os.path.join(logdir, f"{name}.log"), "w")
            running[name] = (
                subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env),
                log,
                time.time(),
            )
        for name, (proc, log, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[name]
            times[name] = time.time() - t0
            if proc.returncode != 0:
                tail = open(os.path.join(logdir, f"{name}.log")).read()[-3000:]
                raise RuntimeError(f"training {name} failed (exit {proc.returncode}):\n{tail}")
        time.sleep(0.2)
    return times


def part_training(out: str, steps: int = 3000, n: int = 2000, reuse_runs: bool = False) -> str:
    import jax
    import matplotlib.pyplot as plt

    from diffusion_jax import objectives
    from diffusion_jax.data import toy2d
    from diffusion_jax.training import checkpoints, periodic
    from experiments.demo import table

    runs = os.path.join(out, "runs")
    if not reuse_runs:
        # Results computed on the spot: a previous demo's runs would otherwise be resumed (the train
        # CLI continues a workdir to its config's num_steps).
        shutil.rmtree(runs, ignore_errors=True)
    os.makedirs(runs, exist_ok=True)
    forms = list(toy_common.FORMULATIONS)
    cmds = {f: _train_cmd(f, os.path.join(runs, f), steps) for f in forms}
    print(
        f"\n[part 3] training {len(forms)} formulations x {steps} steps with diffusion_jax.train ...",
        flush=True,
    )
    times = _run_parallel(cmds, runs)

    dist = toy2d.toy_gmm()
    rows, panels = [], []
    for f in forms:
        wd = os.path.join(runs, f)
        state, cfg, net = checkpoints.load_train_state(wd)
        cfg.eval.num_samples = n
        den = objectives.make_denoiser_from_config(
            cfg.objective, net.net_fn, checkpoints.select_params(state, "")
        )
        samples = periodic.generate_samples(cfg, den, n)
        m = periodic.evaluate_samples(cfg, samples)
        # The same sampler, grid and seeds on the exact denoiser of the data: what a perfect model gets.
        exact = dist.denoiser(den.schedule, den.kind)
        m_exact = periodic.evaluate_samples(cfg, periodic.generate_samples(cfg, exact, n))
        with open(os.path.join(wd, "metrics.jsonl")) as fh:
            last = [ln for ln in fh if ln.strip()][-1]
        loss = json.loads(last)["train/loss"]
        nfe = periodic.plan_for(cfg, den).meta["nfe"]  # the run's sampling settings, as drawn above
        rows.append(
            {
                "formulation": f,
                "objective": f"{cfg.objective.schedule}/{cfg.objective.prediction}/{cfg.objective.weighting}",
                "t ~": cfg.objective.time_distribution,
                "coupling": cfg.objective.coupling,
                "sampler (NFE)": f"{cfg.sampling.sampler}/{cfg.sampling.grid} ({nfe})",
                "final loss": float(loss),
                "train s": round(times[f], 1),
                "W2 trained": m["w2"],
                "W2 exact denoiser": m_exact["w2"],
                "MMD trained": m["mmd"],
            }
        )
        panels.append((f, samples))

    ref = periodic.reference_samples(cfg, n)
    fig, axes = plt.subplots(
        1, len(panels) + 1, figsize=(2.6 * (len(panels) + 1), 2.8), sharex=True, sharey=True
    )
    for ax, (title, pts) in zip(axes, [("data", ref), *panels], strict=True):
        ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5)
        ax.set_title(title, fontsize=8)
        ax.set(xlim=(-3.2, 3.2), ylim=(-3.2, 3.2), aspect="equal")
    fig.savefig(os.path.join(out, "training.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)

    text = table(
        rows,
        list(rows[0]),
        f"3. One MLP, six formulations: {steps} steps each on the analytic GMM, EMA weights, {n} samples "
        "(W2 exact denoiser = the same sampler on the optimal denoiser)",
    )
    floor = np.asarray(jax.device_get(dist.sample(jax.random.key(7), n)))
    from diffusion_jax.metrics.ot import w2_exact

    text += f"\n\nW2 between two exact draws of {n} points (noise floor): {w2_exact(floor, ref):.4f}"
    text += "\n" + _seed_demo(out, os.path.join(runs, "vp_eps"))
    return text


def _seed_demo(out: str, workdir: str) -> str:
    """Fixed seeds through the sampling CLI: seed 3 alone equals seed 3 of the batch 0-7, bitwise."""
    outs = {}
    for seeds in ("0-7", "3"):
        d = os.path.join(out, f"seeds_{seeds}")
        cmd = [
            sys.executable, "-m", "diffusion_jax.sample", f"--workdir={workdir}",
            "--config.denoiser.source=checkpoint", "--config.sampler.name=dpmpp_2m",
            "--config.grid.name=logsnr", "--config.grid.num_steps=10", f"--config.seeds={seeds}",
            "--config.num_devices=-1", f"--config.output_dir={d}",
        ]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        outs[seeds] = np.load(os.path.join(d, "000003.npz"))
    a, b = (outs[s]["sample"] for s in ("0-7", "3"))
    same = bool(np.array_equal(a, b))
    if not same:
        raise AssertionError(f"seed 3 differs between the batch 0-7 and alone: {a} vs {b}")
    return (
        "\nFixed seeds (`python -m diffusion_jax.sample`, DPM-Solver++ 2M, 10 logSNR steps, all devices): "
        f"seed 3 drawn alone equals seed 3 of the batch 0-7 bitwise: {same} ({a.ravel()[:2]})"
    )
