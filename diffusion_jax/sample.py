"""Sample with fixed seeds: `python -m diffusion_jax.sample --config=CFG.py --workdir=DIR`.

Writes `{seed:06d}.npz` (and `.png` for image samples) to `config.output_dir` (default
`DIR/samples`) plus `sampling.json` (the config, the NFE and the seeds). `--list` prints every
sampler and time grid and exits. Without `--config` the built-in `get_default_config()` is used (this
file is the default config file); any field can be overridden, e.g. `--config.sampler.name=dpmpp_2m --config.grid.num_steps=10`.

Config fields (`get_default_config`):
  denoiser.source        'analytic' (exact denoiser of `analytic.DISTRIBUTIONS`) or 'checkpoint'
                         (the run in --workdir; denoiser.ema / denoiser.step pick the weights)
  denoiser.distribution  analytic distribution name;  denoiser.distribution_kwargs: its options
  denoiser.kind          prediction kind the analytic denoiser emits (any of predictions.KINDS)
  schedule.name / .kwargs / .shift   the path (`schedules.get_schedule`)
  sampler.name / .kwargs             any sampler of `samplers.registry`
  grid.name / .num_steps / .kwargs   any grid of `samplers.grids` (kwargs: t_min, t_max, rho, ...)
  seeds ('0-63,100'), base_seed, chunk_size, num_devices (1; -1 = all local devices)
  output_dir ('' = workdir/samples), dtype ('float32' | 'float64')
  conditioning.labels    checkpoint of a class-conditional model: '3' or '0-9' (cycled over the seeds)
  conditioning.caption   checkpoint of a text model (model.text_encoder): one caption for every seed
  conditioning.guidance_scale  classifier-free guidance (Ho & Salimans 2022) against the null label /
                         an empty caption; 1 = plain conditional sampling
Everything is validated before anything is compiled.
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections
from absl import app, flags
from ml_collections import config_flags

SOURCES = ("analytic", "checkpoint")
DTYPES = ("float32", "float64")


def define_flags() -> None:
    """Define the CLI flags (only when run as a program, so importing this module, e.g. next to
    `diffusion_jax.train` in one test process, never registers duplicate absl flags)."""
    # Default: this module's own `get_config`, so `--config.x=...` overrides work without a file.
    config_flags.DEFINE_config_file("config", os.path.abspath(__file__), "Sampling config file (path[:arg]).")
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints in, samples out).")
    flags.DEFINE_bool("list", False, "Print the available samplers and grids and exit.")


def get_default_config() -> ml_collections.ConfigDict:
    """The default sampling config: the exact denoiser of the 8-Gaussian ring, Euler on a Karras grid."""
    cfg = ml_collections.ConfigDict()
    cfg.imports = ()  # modules of one's own parts (samplers, grids, ...), imported first
    d = cfg.denoiser = ml_collections.ConfigDict()
    d.source = "analytic"
    d.distribution = "gmm_2d_ring"
    d.distribution_kwargs = ml_collections.ConfigDict()
    d.kind = "eps"
    d.ema = ml_collections.config_dict.placeholder(str)  # checkpoint weights: None = first EMA copy
    d.step = ml_collections.config_dict.placeholder(int)  # checkpoint step: None = newest
    s = cfg.schedule = ml_collections.ConfigDict()
    s.name = "vp_linear"
    s.kwargs = ml_collections.ConfigDict()
    s.shift = ml_collections.config_dict.placeholder(float)
    cfg.sampler = ml_collections.ConfigDict({"name": "euler", "kwargs": ml_collections.ConfigDict()})
    g = cfg.grid = ml_collections.ConfigDict()
    g.name = "karras"
    g.num_steps = 20
    g.kwargs = ml_collections.ConfigDict()
    cfg.seeds = "0-63"
    cfg.base_seed = 0
    cfg.chunk_size = 16
    cfg.num_devices = 1
    cfg.output_dir = ""
    cfg.dtype = "float32"
    c = cfg.conditioning = ml_collections.ConfigDict()
    c.labels = ""
    c.caption = ""
    c.guidance_scale = 1.0
    return cfg


def get_config(arg=None) -> ml_collections.ConfigDict:
    """ml_collections entry point (so this file is itself the default `--config`)."""
    del arg
    return get_default_config()


def load_denoiser_from_checkpoint(workdir: str, cfg: ml_collections.ConfigDict):
    """Trained model of the run in `workdir`: returns (denoiser, sample_shape).

    Delegates to `training.checkpoints.load_denoiser_and_shape` (newest readable checkpoint unless
    `config.denoiser.step` is set; weights `config.denoiser.ema`: None = the first EMA copy,
    "params" = raw parameters, or an EMA name). The schedule / prediction kind / preconditioning are
    the ones the model was trained with (`config.schedule` is ignored for checkpoints).
    """
    from diffusion_jax.training import checkpoints

    denoiser, _, shape = checkpoints.load_denoiser_and_shape(
        workdir, ema=cfg.denoiser.get("ema"), step=cfg.denoiser.get("step")
    )
    return denoiser, tuple(int(s) for s in shape)


def _kwargs(c) -> dict:
    return dict(c.to_dict()) if isinstance(c, ml_collections.ConfigDict) else dict(c or {})


def build(cfg: ml_collections.ConfigDict, workdir: str | None):
    """Validate `cfg` and build (denoiser, sampler, grid [N+1] numpy, seeds, sample_shape, dtype).

    Raises ValueError naming the offending field (and the valid choices) before any compilation.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from diffusion_jax import analytic, extensions, predictions, schedules
    from diffusion_jax.samplers import registry, seeds

    extensions.import_modules(cfg.get("imports", ()))  # the sampling config's own parts, if any
    if cfg.dtype not in DTYPES:
        raise ValueError(f"config.dtype={cfg.dtype!r} unknown; valid: {list(DTYPES)}")
    if cfg.dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.dtype(cfg.dtype)
    src = cfg.denoiser.source
    if src not in SOURCES:
        raise ValueError(f"config.denoiser.source={src!r} unknown; valid: {list(SOURCES)}")
    try:
        schedule = schedules.get_schedule(
            cfg.schedule.name, shift=cfg.schedule.shift, **_kwargs(cfg.schedule.kwargs)
        )
    except ValueError as e:
        raise ValueError(f"config.schedule: {e}") from e
    if src == "analytic":
        predictions.check_kind(cfg.denoiser.kind, "config.denoiser.kind")
        try:
            dist = analytic.get_distribution(
                cfg.denoiser.distribution, **_kwargs(cfg.denoiser.distribution_kwargs)
            )
        except (ValueError, TypeError) as e:
            raise ValueError(f"config.denoiser.distribution: {e}") from e
        dist = dist.astype(dtype)
        denoiser = dist.denoiser(schedule, cfg.denoiser.kind)
        shape = (int(dist.dim),)
    else:
        if not workdir:
            raise ValueError("config.denoiser.source='checkpoint' needs --workdir")
        denoiser, shape = load_denoiser_from_checkpoint(workdir, cfg)
        schedule = denoiser.schedule  # the grid follows the path the model was trained on
    try:
        sampler = registry.get_sampler(cfg.sampler.name, **_kwargs(cfg.sampler.kwargs))
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.sampler: {e}") from e
    if not isinstance(cfg.grid.num_steps, int) or cfg.grid.num_steps < 1:
        raise ValueError(f"config.grid.num_steps must be an integer >= 1, got {cfg.grid.num_steps!r}")
    try:
        grid = np.asarray(
            registry.make_grid(cfg.grid.name, cfg.grid.num_steps, schedule, **_kwargs(cfg.grid.kwargs))
        )
    except (ValueError, TypeError) as e:
        raise ValueError(f"config.grid: {e}") from e
    try:
        seed_list = seeds.parse_seeds(cfg.seeds)
    except ValueError as e:
        raise ValueError(f"config.seeds: {e}") from e
    if not isinstance(cfg.chunk_size, int) or cfg.chunk_size < 1:
        raise ValueError(f"config.chunk_size must be an integer >= 1, got {cfg.chunk_size!r}")
    n_dev = len(jax.devices())
    if not (cfg.num_devices == -1 or 1 <= cfg.num_devices <= n_dev):
        raise ValueError(
            f"config.num_devices={cfg.num_devices} must be -1 or in [1, {n_dev}] (devices available)"
        )
    seeds.validate_sampling(denoiser, sampler, grid)  # sampler x schedule x grid checks
    return denoiser, sampler, grid, seed_list, shape, dtype


def build_conditioning(cfg: ml_collections.ConfigDict, workdir: str | None, denoiser, num_seeds: int):
    """Per-seed conditioning from `config.conditioning` for a trained model: returns (denoiser, cond)
    where cond is None or a pytree with leading axis num_seeds (row i belongs to seed i), and the
    denoiser is wrapped in classifier-free guidance when guidance_scale != 1. Validated against the
    run's own config (classes, null label, text encoder) before anything compiles."""
    import numpy as np

    from diffusion_jax.samplers import guidance, seeds

    c = cfg.get("conditioning") or ml_collections.ConfigDict(
        {"labels": "", "caption": "", "guidance_scale": 1.0}
    )
    labels, caption, scale = str(c.get("labels", "") or ""), str(c.get("caption", "") or ""), c.guidance_scale
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not np.isfinite(scale):
        raise ValueError(f"config.conditioning.guidance_scale must be a finite number, got {scale!r}")
    if not labels and not caption:
        if float(scale) != 1.0:
            raise ValueError("config.conditioning.guidance_scale != 1 needs conditioning.labels or .caption")
        return denoiser, None
    if cfg.denoiser.source != "checkpoint":
        raise ValueError(
            "config.conditioning applies to trained models (config.denoiser.source='checkpoint')"
        )
    from diffusion_jax.training import checkpoints

    run = checkpoints.load_config(workdir)
    cond, null = {}, None
    if labels:
        num_classes = int(run.model.get("num_classes", 0) or 0)
        if not num_classes:
            raise ValueError("config.conditioning.labels: the model of this run is not class-conditional")
        try:
            lab = seeds.parse_seeds(labels)
        except ValueError as e:
            raise ValueError(f"config.conditioning.labels: {e}") from e
        bad = [y for y in lab if not 0 <= y < num_classes]
        if bad:
            raise ValueError(
                f"config.conditioning.labels {bad} outside [0, {num_classes}) (model.num_classes)"
            )
        null = int(run.objective.get("null_label", -1))
        null = num_classes if null < 0 else null
        cond["label"] = np.resize(np.asarray(lab, np.int32), num_seeds)
    if caption:
        te = run.model.get("text_encoder")
        if te is None:
            raise ValueError("config.conditioning.caption: the model of this run has no text encoder")
        from diffusion_jax.data.text import tokenize_bytes

        tokens, mask = tokenize_bytes([caption] * num_seeds, int(te.get("max_len", 64)))
        cond["tokens"], cond["tokens_mask"] = np.asarray(tokens), np.asarray(mask)
    if float(scale) == 1.0:
        return denoiser, cond
    # The guided denoiser's per-seed conditioning is the {cond, uncond} pair (guidance.guidance_cond).
    uncond = {k: np.asarray(v) for k, v in guidance.null_condition(cond, null).items()}
    first = {k: v[:1] for k, v in cond.items()}
    guided = guidance.cfg_denoiser(denoiser, first, {k: v[:1] for k, v in uncond.items()}, float(scale))
    return guided, guidance.guidance_cond(cond, uncond)


def run_sampling(cfg: ml_collections.ConfigDict, workdir: str | None) -> dict:
    """Build from `cfg`, sample every seed, write the files; returns a summary dict."""
    import jax
    import numpy as np

    from diffusion_jax.samplers import seeds

    denoiser, sampler, grid, seed_list, shape, dtype = build(cfg, workdir)
    denoiser, cond = build_conditioning(cfg, workdir, denoiser, len(seed_list))
    out_dir = cfg.output_dir or os.path.join(workdir or ".", "samples")
    k = len(jax.devices()) if cfg.num_devices == -1 else cfg.num_devices
    mesh = jax.make_mesh((k,), ("data",), devices=jax.devices()[:k])
    out = seeds.sample(
        denoiser, sampler, grid, seed_list, shape, base_seed=cfg.base_seed, mesh=mesh, chunk_size=cfg.chunk_size,
        dtype=dtype, cond=cond,
    )  # fmt: skip
    paths = seeds.save_samples(out_dir, seed_list, np.asarray(out.samples))
    summary = {
        "sampler": sampler.name,
        "grid": cfg.grid.name,
        "num_steps": int(grid.shape[0] - 1),
        "nfe": int(out.nfe),
        "num_samples": len(seed_list),
        "output_dir": out_dir,
        "files": len(paths),
    }
    with open(os.path.join(out_dir, "sampling.json"), "w") as f:
        json.dump({**summary, "seeds": cfg.seeds, "config": cfg.to_dict()}, f, indent=1, default=str)
    return summary


def format_listing() -> str:
    """The `--list` text: samplers (family, stochastic, first docstring line) and grid names."""
    from diffusion_jax.samplers import registry

    lines = ["samplers:"]
    for name, info in registry.sampler_info().items():
        tag = "stochastic" if info["stochastic"] else info["family"]
        lines.append(f"  {name:18s} [{tag}] {info['doc']}")
    lines.append("grids:")
    lines.extend(f"  {g}" for g in registry.list_grids())
    return "\n".join(lines)


def main(argv):
    del argv
    fl = flags.FLAGS
    if not fl["verbosity"].present:
        # Orbax logs every restore at INFO; keep the console to warnings unless -v is given (as train).
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    if fl.list:
        print(format_listing())
        return
    cfg = fl.config if fl.config is not None else get_default_config()
    if fl.workdir is None and not cfg.output_dir:
        raise app.UsageError("--workdir (or config.output_dir) is required")
    summary = run_sampling(cfg, fl.workdir)
    print(f"[diffusion_jax.sample] {json.dumps(summary)}", file=sys.stderr)


if __name__ == "__main__":
    define_flags()
    app.run(main)
