"""Draw reflow pairs from a trained run: `python -m diffusion_jax.reflow --workdir=RUN --out=P.npz --num=N`.

Rectified flow's reflow (Liu et al. 2023, "Flow Straight and Fast", Sec. 2.2, Alg. 1): the pairs
(X0, X1) with X0 the source draw and X1 = ODE[v](X0) the trained flow's endpoint are the coupling
the next flow trains on (``objective.coupling='reflow'``, ``data.pairs_path=P.npz``). Pair i is
seed i of the one sampling engine (`samplers.seeds.stream`, the key derivation every entry point
uses): x1[i] is bitwise the sample `python -m diffusion_jax.sample` draws for that seed with the
same settings, and x0[i] the engine's initial state of that seed (`seeds.initial_state`), evaluated
in chunks of the same `chunk_size` as the samples.

Sampling settings are the run's `sampling` section, overridden by the same dotted flags as the
sampling CLI (`--config.sampler.name=rk4 --config.grid.num_steps=20 ...`); the sampler must be
deterministic (an ODE) and the grid must run from t = 1 (the source) to t = 0 (the data).
Chunks are spread over `--config.num_devices` local devices; in a multi-process job each process
draws its block of chunks and process 0 writes the file. The file (`data.pairs.write_pairs`) holds
x0, x1 [N, ...], seed [N] and the settings; it is written atomically and never inside a run.
Everything is validated before anything is compiled or written.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags


def define_flags() -> None:
    """The CLI flags (only when run as a program); `--config.*` are the sampling CLI's fields."""
    from diffusion_jax import sample

    flags.DEFINE_string("workdir", None, "The trained run to draw pairs from (read-only).")
    flags.DEFINE_string("out", None, "Pairs file to write (.npz, outside the run).")
    flags.DEFINE_integer("num", None, "Number of pairs (seeds first_seed .. first_seed + num - 1).")
    flags.DEFINE_integer("first_seed", 0, "First seed.")
    sample.define_distributed_flags()


def check_request(workdir: str | None, out: str | None, num, first_seed) -> str:
    """One-line errors for the reflow flags (before loading or compiling); returns the seeds spec."""
    from diffusion_jax import sample

    if not workdir or not sample._is_run(workdir):  # noqa: SLF001
        raise ValueError(f"--workdir={workdir!r} is not a training run (no config.json)")
    if not out or not out.endswith(".npz"):
        raise ValueError(f"--out={out!r} must name a .npz file")
    if os.path.exists(out):
        raise ValueError(f"--out={out!r} exists; choose another file (pairs files are never overwritten)")
    if sample._inside_run(os.path.dirname(os.path.abspath(out))):  # noqa: SLF001
        raise ValueError(f"--out={out!r} lies inside a run; reflow pairs go elsewhere")
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"--num={num!r} must be an integer >= 2")
    if isinstance(first_seed, bool) or not isinstance(first_seed, int) or first_seed < 0:
        raise ValueError(f"--first_seed={first_seed!r} must be an integer >= 0")
    return f"{first_seed}-{first_seed + num - 1}"


def check_sampler(cfg, workdir: str) -> None:
    """The requested sampler (or the run's) is deterministic: reflow pairs come from the ODE. Checked
    from the names alone, before any weight is loaded."""
    from diffusion_jax import sample
    from diffusion_jax.samplers import registry
    from diffusion_jax.training import checkpoints, sampling

    spec = sampling.spec_from_run(checkpoints.load_config(workdir)).override(**sample.request_overrides(cfg))
    try:
        stochastic = registry.get_sampler(spec.sampler, **dict(spec.sampler_kwargs)).stochastic
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.sampler: {e}") from None
    if stochastic:
        raise ValueError(
            f"config.sampler.name={spec.sampler!r} is stochastic: reflow pairs need an ODE sampler "
            "(euler, heun, rk4, dopri5, ...)"
        )


def check_plan(plan) -> None:
    """Reflow pairs come from the probability-flow ODE between the source (t = 1) and the data (t = 0)."""
    g0, g1 = float(plan.grid[0]), float(plan.grid[-1])
    if g0 != 1.0 or g1 != 0.0:
        raise ValueError(
            f"config.grid: reflow pairs need a grid from t = 1 (source) to t = 0 (data), got [{g0}, ..., {g1}] "
            "(set config.grid.kwargs.t_max=1.0 / t_min=0.0)"
        )
    if float(plan.denoiser.schedule.alpha(1.0)) != 0.0:
        raise ValueError(
            f"the run's schedule {plan.denoiser.schedule.name!r} has alpha(1) != 0: its t = 1 state is not a "
            "pure source draw, so there is no (x0, x1) coupling to reflow (train a flow-matching run)"
        )


def _initial_program(plan):
    """Jitted seeds [chunk] -> the engine's initial states [chunk, *shape] (same keys, same source)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffusion_jax.samplers import seeds as sd

    dtype = jnp.dtype(plan.dtype)
    t0 = np.asarray(plan.grid[0], np.float64).astype(dtype)

    @jax.jit
    def draw(seed_chunk):
        keys = sd.sample_keys(seed_chunk, plan.base_seed)
        return sd.initial_state(keys, plan.source, plan.shape, plan.denoiser.schedule, t0, dtype)

    return draw


def draw_pairs(plan, seeds, *, devices=None, process_index=0, process_count=1, progress=False):
    """This process's pairs: (seeds [m], x0 [m, *shape], x1 [m, *shape]) for its block of chunks.

    x1 comes from `plan.stream` (the engine); x0 from `seeds.initial_state` on the same padded
    chunk of seeds (chunk_size rows), i.e. the state the engine started that seed from.
    """
    import numpy as np

    draw0 = _initial_program(plan)
    out_s, out0, out1 = [], [], []
    chunks = plan.stream(seeds, devices=devices, process_index=process_index, process_count=process_count)
    if progress:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="reflow pairs", unit="chunk")
    cs = plan.chunk_size
    for c in chunks:
        padded = np.asarray(c.seeds + [c.seeds[-1]] * (cs - len(c.seeds)), np.uint32)
        out_s.extend(c.seeds)
        out0.append(np.asarray(draw0(padded))[: len(c.seeds)])
        out1.append(c.samples)
    if not out_s:
        empty = np.zeros((0, *plan.shape), np.float32)
        return np.zeros(0, np.int64), empty, empty
    return np.asarray(out_s, np.int64), np.concatenate(out0), np.concatenate(out1)


def run_reflow(cfg, workdir: str, out: str, num: int, first_seed: int = 0) -> dict:
    """Validate, draw `num` pairs through the engine, write `out` (process 0); returns a summary."""
    import jax

    from diffusion_jax import sample
    from diffusion_jax.data.pairs import write_pairs
    from diffusion_jax.training import distributed

    cfg.seeds = check_request(workdir, out, num, first_seed)
    if cfg.denoiser.source not in ("", "checkpoint"):
        raise ValueError("config.denoiser.source: reflow pairs come from a trained run ('checkpoint')")
    check_sampler(cfg, workdir)
    plan, seed_list, _ = sample.build_plan(cfg, workdir)
    check_plan(plan)
    local = jax.local_devices()
    devices = local if cfg.num_devices == -1 else local[: cfg.num_devices]
    pi, pc = jax.process_index(), jax.process_count()
    s, x0, x1 = draw_pairs(
        plan,
        seed_list,
        devices=devices,
        process_index=pi,
        process_count=pc,
        progress=cfg.progress and pi == 0,
    )
    s, x0, x1 = distributed.gather_rows((s, x0, x1))  # every process's block, in seed order
    meta = {**plan.meta, "workdir": os.path.abspath(workdir), "first_seed": first_seed, "num": num}
    if pi == 0:
        write_pairs(out, x0, x1, s, meta)
    return {"out": out, "num_pairs": int(len(s)), "shape": list(plan.shape), **plan.meta}


def main(argv):
    fl = flags.FLAGS
    if not fl["verbosity"].present:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    from diffusion_jax import sample
    from diffusion_jax.training import overrides

    cfg = overrides.config_from_argv(argv, default=sample.get_default_config)
    check_request(fl.workdir, fl.out, fl.num, fl.first_seed)  # before initialising anything
    sample.init_distributed(fl)
    summary = run_reflow(cfg, fl.workdir, fl.out, fl.num, fl.first_seed)
    print(f"[diffusion_jax.reflow] {json.dumps(summary, default=str)}", file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    from diffusion_jax.training import overrides

    overrides.run_cli(main, sys.argv, prog="diffusion_jax.reflow")
