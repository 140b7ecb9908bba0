"""Evaluate a trained run: `python -m diffusion_jax.evaluate --workdir=DIR [--config.x=...]`.

The config is the run's own `config.json` (or `--config=FILE`: a config file `path.py[:arg]` or a
run's `config.json`); any field is overridable with a dotted flag, nested kwargs included, e.g.
`--config.sampling.sampler=heun --config.sampling.grid_kwargs.t_min=0.001 --config.eval.num_samples=500`.

Draws seeds 0..eval.num_samples-1 of the run's sampling settings (`sampling.*`: sampler, grid,
steps, guidance, weights `sampling.ema`) from the newest readable checkpoint (or `--step`) through
the one sampling engine, so they are the samples `diffusion_jax.sample` gives for those seeds.
Computes the metrics on the streamed samples (toy 2-D: exact W2 with POT and MMD against fresh
data samples; images: FID, KID, the Fashion-MNIST feature distance, precision/recall and bits/dim
as `eval.metrics` asks, see `diffusion_jax.metrics.image_eval`), writes `eval/<step>.json` and a PNG
(image grid or 2-D scatter), and prints the metrics. `--config.eval.save_samples=true` also writes every seed's `.npz` to `eval/<step>_samples/`.
Nothing else in the run is touched. With `--config=configs/pretrained/...` (converted published
weights) it evaluates that model instead, writing into --workdir/eval (`evaluate_pretrained`). Multi-host: each process draws its own block of chunks; the
samples are gathered for the metrics.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from absl import logging as absl_logging


def define_flags() -> None:
    """The non-config flags (`--config` / `--config.*` are parsed by `training.overrides`)."""
    flags.DEFINE_string("workdir", None, "Run directory of a training run.")
    flags.DEFINE_string("ema", None, "Weights: '' (first EMA), 'params', or an EMA name (= sampling.ema).")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: newest).")
    flags.DEFINE_bool("progress", True, "Show a progress bar over chunks.")
    from diffusion_jax.sample import define_distributed_flags

    define_distributed_flags()


def _real_images(cfg):
    """(number of records, read(indices) -> uint8 [b, H, W, C]) of the eval reference split
    (`eval.reference_split`, default test) of a TFDS image dataset, resized as training resizes; else None."""
    import numpy as np

    from diffusion_jax.data import pipeline, transforms

    if cfg.data.source != "tfds":
        return None
    dcfg = dict(cfg.data)
    dcfg["split"] = cfg.eval.get("reference_split", "test")
    src = pipeline.open_tfds_source(dcfg)
    size, method = cfg.data.get("image_size", 0), cfg.data.get("resize", "")

    def one(i):
        im = np.asarray(src[int(i)]["image"])
        im = im[..., None] if im.ndim == 2 else im
        return transforms.resize_image(im, size, method) if size else im

    def read(idx):
        return np.stack([one(i) for i in idx]) if len(idx) else np.zeros((0, *one(0).shape), np.uint8)

    return len(src), read


def evaluate(
    cfg, workdir: str, *, ema: str | None = None, step: int | None = None, progress: bool = False
) -> dict:
    """Metrics of the run in `workdir` under the sampling/eval settings of `cfg` (module doc).

    cfg: the run config with any overrides (None = the run's config.json). ema: overrides
    `sampling.ema`. Returns {"step", "ema", "num_samples", "sampler", "grid", "nfe", <metric>: value};
    also written to `<workdir>/eval/<step>.json`.
    """
    import jax
    import numpy as np

    from diffusion_jax.metrics import image_eval
    from diffusion_jax.samplers import seeds as sd
    from diffusion_jax.training import checkpoints, distributed, periodic, sampling

    cfg = cfg if cfg is not None else checkpoints.load_config(workdir)
    image_eval.validate(cfg.eval)  # weight files exist before anything is compiled
    check_bpd_conditioning(cfg)
    if ema is not None:
        cfg.sampling.ema = ema
    n = int(cfg.eval.num_samples)
    denoiser, _, _, s, weights = sampling.load_run(workdir, step=step, ema=sampling.spec_from_run(cfg).ema)
    plan = periodic.plan_for(cfg, denoiser, step=s, weights=weights)  # validated before compiling
    save = bool(cfg.eval.get("save_samples", False))
    out_dir = os.path.join(workdir, "eval")
    pi, pc = jax.process_index(), jax.process_count()
    chunks = plan.stream(list(range(n)), devices=jax.local_devices(), process_index=pi, process_count=pc)
    if progress and pi == 0:
        from tqdm import tqdm

        chunks = tqdm(
            chunks, total=len(sd.chunk_block(-(-n // plan.chunk_size), pi, pc)), desc="evaluate", unit="chunk"
        )
    parts, nfes = [], []
    with sd.BackgroundWriter() as writer:
        for c in chunks:
            parts.append(c.samples)
            nfes.append(int(c.nfe))  # metrics below are one call on the streamed samples
            if save:
                conds = [plan.condition_of(x) for x in c.seeds]
                d = os.path.join(out_dir, f"{s:08d}_samples")
                writer.submit(sd.save_samples, d, c.seeds, c.samples, meta=plan.meta, conds=conds)
    local = np.concatenate(parts) if parts else np.zeros((0, *plan.shape), np.float32)
    samples = distributed.gather_rows(local)  # every process's samples, in seed order
    metrics = periodic.evaluate_samples(cfg, samples)
    if samples.ndim == 4:
        real = _real_images(cfg) if any(m in image_eval.IMAGE_METRICS for m in cfg.eval.metrics) else None
        metrics.update(
            image_eval.evaluate_images(cfg.eval, samples, real=real, denoiser=denoiser, progress=progress)
        )
    meta = plan.meta
    out = {"step": s, "ema": weights, "num_samples": n, "sampler": meta["sampler"], "grid": meta["grid"],
           "nfe": meta["nfe"] if meta["nfe"] >= 0 else max(nfes, default=-1), **metrics}  # fmt: skip
    if pi == 0:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"{s:08d}.json"), "w") as f:
            json.dump(out, f, indent=1)
        shown = samples[: int(cfg.sampling.num_samples)] if samples.ndim == 4 else samples
        ref = periodic.reference_samples(cfg, len(shown)) if samples.ndim == 2 else None
        periodic.save_samples_png(shown, os.path.join(out_dir, f"{s:08d}.png"), ref, f"step {s}")
    return out


def check_bpd_conditioning(cfg) -> None:
    """Bits/dim of a class- or caption-conditional run scores the unconditional model log p(x), i.e. the
    network with the null label / empty caption (the denoiser carries no condition). That model exists
    only if the run trained it (classifier-free guidance dropout, Ho & Salimans 2022): refuse bpd /
    bpd_elbo on a conditional run with objective.label_dropout = 0 before anything is compiled."""
    metrics = [m for m in cfg.eval.get("metrics", ()) if m in ("bpd", "bpd_elbo")]
    d = cfg.get("data") or {}
    conditional = bool(
        cfg.model.get("num_classes", 0) or d.get("captions", "") or d.get("embeddings_path", "")
    )
    if metrics and conditional and not cfg.objective.get("label_dropout", 0.0) > 0:
        raise ValueError(
            f"eval.metrics has {metrics}: on a conditional run bits/dim scores the unconditional model "
            "(null label / empty caption), which this run never trained (objective.label_dropout=0); "
            "drop bpd / bpd_elbo from eval.metrics or train with objective.label_dropout > 0"
        )


def _pretrained_eval_inputs(cfg):
    """Check the `eval` section of a pretrained config before anything is compiled and return the real
    images `evaluate_images` needs (None when FID runs against `eval.reference_stats`). A missing
    Inception weights or statistics file is a one-line FileNotFoundError naming the file and how to
    make it; metrics needing real images without a TFDS dataset in data.* are a ValueError."""
    from diffusion_jax.metrics import image_eval

    e = cfg.eval
    metrics = [m for m in e.get("metrics", ()) if m in image_eval.IMAGE_METRICS]
    if "fid" in metrics or "kid" in metrics:
        image_eval.require_file("inception_weights", e.get("inception_weights", ""))
    if e.get("reference_stats", ""):
        image_eval.require_file("reference_stats", e.reference_stats)
    image_eval.validate(e)
    if "bpd" in metrics or "bpd_elbo" in metrics:
        raise ValueError(f"eval.metrics={metrics}: bpd / bpd_elbo need a trained run's denoiser; valid "
                         f"for pretrained configs: {[m for m in image_eval.IMAGE_METRICS if 'bpd' not in m]}")  # fmt: skip
    if not image_eval.needs_real_images(e):
        return None
    if cfg.get("data") is None or cfg.data.get("source") != "tfds":
        raise ValueError(
            f"eval.metrics={metrics} need real images: set eval.reference_stats (FID only) or a TFDS "
            "image dataset in data.* (data.source='tfds')"
        )
    return _real_images(cfg)


def evaluate_pretrained(cfg, workdir: str, *, progress: bool = False) -> dict:
    """Draw seeds 0..eval.num_samples-1 of a pretrained config (`configs/pretrained/*`, converted
    published weights; latent models decoded through their VAE) through the one engine and write
    `<workdir>/eval/pretrained.json` and `pretrained.png`; `workdir` is an output folder, not a run.
    Metrics: the fraction of finite samples, the pixel mean / std and what `eval.metrics` asks for
    (FID / KID / precision-recall through `metrics.image_eval.evaluate_images`, against
    `eval.reference_stats` or the dataset in data.*); every file is checked before compiling."""
    import jax
    import numpy as np

    from diffusion_jax.convert import pretrained
    from diffusion_jax.metrics import image_eval
    from diffusion_jax.training import distributed, periodic

    real = _pretrained_eval_inputs(cfg)  # eval files and names checked before compiling
    plan = pretrained.make_plan(cfg)  # validated (files, names, labels) before compiling
    n = int(cfg.eval.num_samples)
    pi, pc = jax.process_index(), jax.process_count()
    chunks = plan.stream(list(range(n)), devices=jax.local_devices(), process_index=pi, process_count=pc)
    if progress and pi == 0:
        from tqdm import tqdm

        chunks = tqdm(chunks, desc="evaluate", unit="chunk")
    parts = [np.asarray(plan.decode(c.samples)) if plan.decode is not None else c.samples for c in chunks]
    local = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
    images = distributed.gather_rows(local)
    finite = np.all(np.isfinite(images), axis=tuple(range(1, images.ndim)))
    meta = plan.meta
    out = {"weights": meta["weights"], "num_samples": n, "sampler": meta["sampler"], "grid": meta["grid"],
           "nfe": meta["nfe"], "guidance_scale": meta["guidance_scale"], "frac_finite": float(np.mean(finite)),
           "pixel_mean": float(np.mean(images[finite])), "pixel_std": float(np.std(images[finite]))}  # fmt: skip
    out.update(image_eval.evaluate_images(cfg.eval, images, real=real, progress=progress))
    if pi == 0:
        out_dir = os.path.join(workdir, "eval")
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "pretrained.json"), "w") as f:
            json.dump(out, f, indent=1)
        periodic.save_samples_png(images[:64], os.path.join(out_dir, "pretrained.png"), None, meta["weights"])
    return out


def main(argv):
    fl = flags.FLAGS
    if not fl["verbosity"].present:
        # Orbax logs every save/restore at INFO; keep the console to warnings unless -v is given.
        absl_logging.set_verbosity(absl_logging.WARNING)
    if fl.workdir is None:
        raise app.UsageError("--workdir is required")
    from diffusion_jax.sample import init_distributed
    from diffusion_jax.training import checkpoints, overrides
    from diffusion_jax.training.config import validate_config

    init_distributed(fl)
    spec, sets = overrides.pop_config_args(argv)
    base = overrides.load_config_arg(spec) if spec else checkpoints.load_config(fl.workdir)
    cfg = overrides.apply_overrides(base, sets)
    if cfg.get("denoiser", {}).get("source") == "pretrained":  # configs/pretrained/*: no training run
        print(json.dumps(evaluate_pretrained(cfg, fl.workdir, progress=fl.progress), indent=1))
        return
    validate_config(cfg)
    out = evaluate(cfg, fl.workdir, ema=fl.ema, step=fl.step, progress=fl.progress)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    define_flags()
    from diffusion_jax.training import overrides

    overrides.run_cli(main, sys.argv, prog="diffusion_jax.evaluate")
