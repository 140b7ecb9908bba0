"""Sample fixed seeds: `python -m diffusion_jax.sample --workdir=RUN [--config.x=...]`.

With `--workdir` of a training run, samples its newest readable checkpoint with the run's own
`sampling` settings (sampler and kwargs, grid and kwargs, steps, guidance, labels / caption, base
seed, chunk size, weights); any of them is overridden with a dotted flag, e.g.
`--config.sampler.name=heun --config.grid.num_steps=20 --config.grid.kwargs.t_min=0.001
--config.sampler.kwargs.order=3`. Seed s is the sample `evaluate`, the periodic samples and
`pipeline.Pipeline` give for seed s (one engine, `samplers.seeds.stream`).

Sampling the exact denoiser of an analytic distribution is asked for explicitly
(`--config.denoiser.source=analytic`) and never writes into a run: it needs `--config.output_dir`
(or a --workdir that is not a run).

Output: `{seed:06d}.npz` (the sample, its seed and condition, and the settings: sampler, grid, NFE,
checkpoint step, weights, guidance scale, ...) and `.png` for image samples, written as each chunk
finishes, in `config.output_dir` (default `RUN/samples/<step>_<weights>_<sampler>_<grid><N>[_cfg<w>]`),
plus `sampling.json`; a 2-D scatter `samples.png` for 2-D samples, an image grid `grid.png` with
`--config.grid_png=true`. Re-running skips seeds whose files are complete with the same settings
(resumable); a file with other settings is an error (choose another output_dir). `--list` prints
every sampler and time grid. Multi-host (`--coordinator_address`, `--num_processes`,
`--process_id`): each process draws its own contiguous block of chunks and writes its own files.

Config fields (`get_default_config`; unset = the run's value):
  denoiser.source        '' (checkpoint if --workdir is a run, else analytic), 'checkpoint', 'analytic',
                         'pretrained' (converted published weights: --config=configs/pretrained/...)
  denoiser.ema / .step   weights ('' first EMA, 'params', an EMA name) / checkpoint step (newest)
  denoiser.distribution, .distribution_kwargs, .kind   analytic: distribution and output kind
  schedule.name / .kwargs / .shift   analytic: the path (checkpoints use their own)
  sampler.name / .kwargs             any sampler of `samplers.registry` and its options
  grid.name / .num_steps / .kwargs   any grid of `samplers.grids` (kwargs: t_min, t_max, rho, ...)
  seeds ('0-63,100'), base_seed, chunk_size, num_devices (1; -1 = all local devices), dtype
  output_dir, grid_png (bool), progress (bool)
  conditioning.labels    class-conditional runs: label of seed s = labels[s mod len(labels)]
                         (e.g. '0-9'; default: s mod num_classes)
  conditioning.caption   text runs: one caption for every seed
  conditioning.guidance_scale  classifier-free guidance (Ho & Salimans 2022); 1 = conditional
Everything is validated before anything is compiled or written.
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections
from absl import app, flags

SOURCES = ("", "analytic", "checkpoint", "pretrained")
GRID_PNG_MAX = 64  # samples shown in grid.png


def define_flags() -> None:
    """Define the CLI flags (only when run as a program, so importing this module never registers
    absl flags); `--config` / `--config.*` are parsed by `training.overrides`."""
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints in, samples out).")
    flags.DEFINE_bool("list", False, "Print the available samplers and grids and exit.")
    define_distributed_flags()


def define_distributed_flags() -> None:
    """The multi-host flags of `sample` and `evaluate` (as `train`'s)."""
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
    flags.DEFINE_integer("num_cpu_devices", None, "CPU devices of this process (jax_num_cpu_devices).")
    flags.DEFINE_string("cpu_collectives", None, "CPU cross-process collectives, e.g. 'gloo'.")


def _placeholder(t):
    return ml_collections.config_dict.placeholder(t)


def get_default_config() -> ml_collections.ConfigDict:
    """The sampling request: unset (None) fields take the run's saved `sampling` settings."""
    cfg = ml_collections.ConfigDict()
    cfg.imports = ()  # modules of one's own parts (samplers, grids, ...), imported first
    d = cfg.denoiser = ml_collections.ConfigDict()
    d.source = ""
    d.distribution = "gmm_2d_ring"
    d.distribution_kwargs = ml_collections.ConfigDict()
    d.kind = "eps"
    d.ema = _placeholder(str)
    d.step = _placeholder(int)
    s = cfg.schedule = ml_collections.ConfigDict()
    s.name = "vp_linear"
    s.kwargs = ml_collections.ConfigDict()
    s.shift = _placeholder(float)
    cfg.sampler = ml_collections.ConfigDict(
        {"name": _placeholder(str), "kwargs": ml_collections.ConfigDict()}
    )
    g = cfg.grid = ml_collections.ConfigDict()
    g.name = _placeholder(str)
    g.num_steps = _placeholder(int)
    g.kwargs = ml_collections.ConfigDict()
    cfg.seeds = "0-63"
    cfg.base_seed = _placeholder(int)
    cfg.chunk_size = _placeholder(int)
    cfg.num_devices = 1
    cfg.output_dir = ""
    cfg.dtype = _placeholder(str)
    cfg.grid_png = False
    cfg.progress = True
    c = cfg.conditioning = ml_collections.ConfigDict()
    c.labels = _placeholder(str)
    c.caption = _placeholder(str)
    c.guidance_scale = _placeholder(float)
    return cfg


# The analytic denoiser's defaults where the request leaves a field unset.
ANALYTIC_SPEC = dict(sampler="euler", grid="karras", num_steps=20)


def get_config(arg=None) -> ml_collections.ConfigDict:
    """ml_collections entry point (so this file can itself be given as `--config`)."""
    del arg
    return get_default_config()


def _kwargs(c) -> dict:
    return dict(c.to_dict()) if isinstance(c, ml_collections.ConfigDict) else dict(c or {})


def _is_run(path: str) -> bool:
    from diffusion_jax.training.checkpoints import CONFIG_FILE

    return bool(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def _inside_run(path: str) -> str:
    p = os.path.abspath(path)
    while True:
        if _is_run(p):
            return p
        parent = os.path.dirname(p)
        if parent == p:
            return ""
        p = parent


def request_overrides(cfg) -> dict:
    """The request's set fields as `SamplingSpec.override` arguments (None = keep the run's)."""
    c = cfg.conditioning
    grid = cfg.grid.name
    if cfg.sampler.name and not grid:  # a combined name users type, e.g. dpmpp_2m_karras / "DPM++ 2M Karras"
        from diffusion_jax.samplers import registry

        try:
            grid = registry.resolve_alias(cfg.sampler.name)[1]
        except ValueError as e:
            raise ValueError(f"config.sampler.name: {e}") from None
    return dict(
        sampler=cfg.sampler.name, sampler_kwargs=_kwargs(cfg.sampler.kwargs) or None,
        grid=grid, num_steps=cfg.grid.num_steps, grid_kwargs=_kwargs(cfg.grid.kwargs) or None,
        guidance_scale=c.guidance_scale, base_seed=cfg.base_seed, chunk_size=cfg.chunk_size,
        ema=cfg.denoiser.ema, dtype=cfg.dtype, labels=c.labels, caption=c.caption,
    )  # fmt: skip


def source_of(cfg, workdir: str | None) -> str:
    src = cfg.denoiser.source or ("checkpoint" if workdir and _is_run(workdir) else "analytic")
    if src not in SOURCES:
        raise ValueError(f"config.denoiser.source={src!r} unknown; valid: {list(SOURCES)}")
    return src


def _analytic_plan(cfg, spec):
    """The Plan of the exact denoiser of `config.denoiser.distribution` (no run, no condition)."""
    import jax
    import jax.numpy as jnp

    from diffusion_jax import analytic, predictions, schedules
    from diffusion_jax.training import sampling

    if spec.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    try:
        schedule = schedules.get_schedule(
            cfg.schedule.name, shift=cfg.schedule.shift, **_kwargs(cfg.schedule.kwargs)
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.schedule: {e}") from e
    predictions.check_kind(cfg.denoiser.kind, "config.denoiser.kind")
    try:
        dist = analytic.get_distribution(
            cfg.denoiser.distribution, **_kwargs(cfg.denoiser.distribution_kwargs)
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.denoiser.distribution: {e}") from e
    for field, value in (("labels", spec.labels), ("caption", spec.caption)):
        if value:
            raise ValueError(f"config.conditioning.{field}: the analytic denoiser is unconditional")
    if spec.guidance_scale != 1.0:
        raise ValueError(
            "config.conditioning.guidance_scale: the analytic denoiser is unconditional (use 1.0)"
        )
    denoiser = dist.astype(jnp.dtype(spec.dtype)).denoiser(schedule, cfg.denoiser.kind)
    run_like = ml_collections.ConfigDict({"data": {}, "model": {}, "objective": {}})
    return sampling.make_plan(
        run_like, denoiser, (int(dist.dim),), spec, weights=f"analytic:{cfg.denoiser.distribution}"
    )


def build_plan(cfg, workdir: str | None):
    """Validate the request and build (plan, seeds, output_dir) before anything is compiled or written.

    Raises ValueError naming the offending field (and the valid choices).
    """
    import jax

    from diffusion_jax import extensions
    from diffusion_jax.samplers import seeds as sd
    from diffusion_jax.training import checkpoints, sampling

    extensions.import_modules(cfg.get("imports", ()))  # the sampling config's own parts, if any
    try:
        seed_list = sd.parse_seeds(cfg.seeds)
    except ValueError as e:
        raise ValueError(f"config.seeds: {e}") from e
    n_dev = len(jax.local_devices())
    if not (cfg.num_devices == -1 or 1 <= cfg.num_devices <= n_dev):
        raise ValueError(
            f"config.num_devices={cfg.num_devices} must be -1 or in [1, {n_dev}] (devices available)"
        )
    src = source_of(cfg, workdir)
    if src == "pretrained":  # converted published weights (configs/pretrained/*): no run involved
        from diffusion_jax.convert import pretrained

        if workdir and _is_run(workdir) and not cfg.output_dir:
            raise ValueError(
                "config.denoiser.source='pretrained' never writes into a run: give --config.output_dir"
            )
        return pretrained.make_plan(cfg), seed_list, cfg.output_dir or os.path.join(workdir or ".", "samples")
    if src == "analytic":
        if workdir and _is_run(workdir) and not cfg.output_dir:
            raise ValueError(
                f"config.denoiser.source='analytic' never writes into the run {workdir!r}: give "
                "--config.output_dir=DIR outside any run (or drop --workdir)"
            )
        out_dir = cfg.output_dir or os.path.join(workdir or ".", "samples")
        run = _inside_run(out_dir)
        if run:
            raise ValueError(
                f"config.output_dir={out_dir!r} lies inside the run {run!r}; analytic samples go elsewhere"
            )
        spec = sampling.SamplingSpec(**{**ANALYTIC_SPEC, "chunk_size": 16}).override(**request_overrides(cfg))
        return _analytic_plan(cfg, spec), seed_list, out_dir
    if not workdir:
        raise ValueError("config.denoiser.source='checkpoint' needs --workdir (a training run)")
    run_cfg = checkpoints.load_config(workdir)
    spec = sampling.spec_from_run(run_cfg).override(**request_overrides(cfg))
    sampler, _ = sampling.build_sampler_and_grid(
        spec, _cheap_schedule(workdir), prefix="config"
    )  # names, before loading weights
    sampling.check_score_head(run_cfg, sampler, spec.sampler, prefix="config")
    den, run_cfg, shape, step, weights = sampling.load_run(workdir, step=cfg.denoiser.step, ema=spec.ema)
    plan = sampling.make_plan(run_cfg, den, shape, spec, step=step, weights=weights)
    m = plan.meta
    name = f"{step:08d}_{weights}_{m['sampler']}_{m['grid']}{m['num_steps']}"
    name += f"_cfg{m['guidance_scale']:g}" if m["guidance_scale"] != 1.0 else ""
    return plan, seed_list, cfg.output_dir or os.path.join(workdir, "samples", name)


def _cheap_schedule(workdir):
    from diffusion_jax import objectives
    from diffusion_jax.training import checkpoints

    run = checkpoints.load_config(workdir)
    return objectives.resolve_objective(run.objective).schedule


def _todo(plan, seed_list, out_dir) -> list[int]:
    """Seeds without a complete file of the same settings; ValueError if a file has other ones."""
    from diffusion_jax.samplers import seeds as sd

    todo = []
    for s in seed_list:
        state = sd.existing_sample(out_dir, s, {**plan.meta, **plan.condition_of(s)})
        if state == "different":
            raise ValueError(
                f"config.output_dir={out_dir!r}: {sd.sample_path(out_dir, s)} was drawn with other settings; "
                "choose another output_dir (or remove the old files)"
            )
        if state != "complete":
            todo.append(s)
    return todo


def run_sampling(cfg: ml_collections.ConfigDict, workdir: str | None) -> dict:
    """Build and validate from `cfg`, draw this process's seeds chunk by chunk, write each chunk as it
    finishes (background thread); returns a summary dict."""
    import jax
    import numpy as np

    from diffusion_jax.samplers import seeds as sd
    from diffusion_jax.training import periodic

    plan, seed_list, out_dir = build_plan(cfg, workdir)
    pi, pc = jax.process_index(), jax.process_count()
    cs = plan.chunk_size
    block = sd.chunk_block(-(-len(seed_list) // cs), pi, pc)
    mine = seed_list[block.start * cs : block.stop * cs]
    todo = _todo(plan, mine, out_dir)
    local = jax.local_devices()
    devices = local if cfg.num_devices == -1 else local[: cfg.num_devices]
    shown, points, written, nfes = [], [], 0, []
    if todo:
        chunks = plan.stream(todo, devices=devices)
        if cfg.progress and pi == 0:
            from tqdm import tqdm

            chunks = tqdm(chunks, total=-(-len(todo) // cs), desc="sample", unit="chunk")
        with sd.BackgroundWriter() as writer:
            for c in chunks:
                conds = [plan.condition_of(s) for s in c.seeds]
                if plan.decode is not None:  # latent models: write images
                    c = c._replace(samples=np.asarray(plan.decode(c.samples)))
                writer.submit(sd.save_samples, out_dir, c.seeds, c.samples, meta=plan.meta, conds=conds)
                written += len(c.seeds)
                nfes.append(int(c.nfe))
                if c.samples.ndim == 2 and c.samples.shape[1] == 2:
                    points.append(c.samples)
                elif cfg.grid_png and sum(len(x) for x in shown) < GRID_PNG_MAX:
                    shown.append(c.samples)
    os.makedirs(out_dir, exist_ok=True)
    if points:
        periodic.save_samples_png(np.concatenate(points), os.path.join(out_dir, "samples.png"))
    if shown and sd.is_image(plan.shape):
        periodic.save_samples_png(np.concatenate(shown)[:GRID_PNG_MAX], os.path.join(out_dir, "grid.png"))
    summary = {
        **{
            k: plan.meta[k]
            for k in ("sampler", "grid", "num_steps", "nfe", "guidance_scale", "checkpoint_step", "weights")
        },
        "num_samples": len(seed_list),
        # Adaptive solvers: the NFE is known after the solve (max over this process's chunks).
        **({"nfe": max(nfes)} if plan.meta["nfe"] < 0 and nfes else {}),
        "drawn": written,
        "skipped": len(mine) - len(todo),
        "output_dir": out_dir,
    }
    if pi == 0:
        with open(os.path.join(out_dir, "sampling.json"), "w") as f:
            json.dump(
                {**summary, "seeds": cfg.seeds, "meta": plan.meta, "config": cfg.to_dict()},
                f,
                indent=1,
                default=str,
            )
    return summary


def init_distributed(fl) -> None:
    """Multi-host / simulated-CPU setup from the flags `define_flags` adds (sample and evaluate)."""
    if fl.num_cpu_devices:
        import jax

        jax.config.update("jax_num_cpu_devices", int(fl.num_cpu_devices))
    if fl.coordinator_address or fl.num_processes:
        from diffusion_jax.training import distributed

        distributed.initialize(
            fl.coordinator_address, fl.num_processes, fl.process_id, cpu_collectives=fl.cpu_collectives
        )


def format_listing() -> str:
    """The `--list` text: one whole line per sampler (family, order, NFE rule, what it is) and per
    grid (options, what it is), from `samplers.registry.describe_samplers` / `describe_grids`."""
    from diffusion_jax.samplers import registry

    lines = ["samplers:"]
    lines.extend(f"  {line}" for line in registry.describe_samplers())
    lines.append("grids:")
    lines.extend(f"  {line}" for line in registry.describe_grids())
    return "\n".join(lines)


def main(argv):
    fl = flags.FLAGS
    if not fl["verbosity"].present:
        # Orbax logs every restore at INFO; keep the console to warnings unless -v is given (as train).
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    if fl.list:
        print(format_listing())
        return
    from diffusion_jax.training import overrides

    cfg = overrides.config_from_argv(argv, default=get_default_config)
    if fl.workdir is None and not cfg.output_dir:
        raise app.UsageError("--workdir (or config.output_dir) is required")
    init_distributed(fl)
    summary = run_sampling(cfg, fl.workdir)
    print(f"[diffusion_jax.sample] {json.dumps(summary)}", file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    from diffusion_jax.training import overrides

    overrides.run_cli(main, sys.argv, prog="diffusion_jax.sample")
