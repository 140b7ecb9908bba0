"""Periodic sampling and evaluation during training, shared with `python -m diffusion_jax.evaluate`.

* `generate_samples`: seeds 0..n-1 under the run's `sampling` settings through the one sampling
  engine (`training.sampling.make_plan` + `samplers.seeds.stream`): seed s is the sample the
  sampling CLI, `evaluate` and `Pipeline` give for seed s of the same weights.
* `save_samples_png`: an image grid (images in [-1, 1]) or a 2-D scatter plot (low-dim data).
* `evaluate_samples`: for 2-D toy data, exact W2 (POT, on the host) and MMD against *fresh* data
  samples drawn with a key independent of training (`eval_data_key`).
* `run_periodic`: the training-loop hook for `training.sample_every` / `training.eval_every`.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from diffusion_jax.training.build import data_shape


def plan_for(cfg, denoiser, *, seed: int | None = None, labels=None, step=None, weights=None):
    """The `sampling.Plan` of a run's config `cfg` for `denoiser` (params set): the run's sampling
    settings, base seed `seed` (default `sampling.seed`); `labels` (optional int array) overrides the
    label of seed s with labels[s]."""
    from diffusion_jax.training import sampling

    spec = sampling.spec_from_run(cfg)
    if seed is not None:
        spec = spec.override(base_seed=int(seed))
    label_of = None
    if labels is not None:
        table = np.asarray(labels, np.int32)

        def label_of(s):
            return table[np.asarray(s, np.int64)]

    return sampling.make_plan(
        cfg, denoiser, data_shape(cfg), spec, step=step, weights=weights or spec.ema, label_of=label_of
    )


def generate_samples(cfg, denoiser, n: int, *, seed: int | None = None, labels=None, mesh=None) -> np.ndarray:
    """Seeds 0..n-1 of the run's sampling settings, [n, *data_shape] host numpy, drawn by the one
    engine (`samplers.seeds.stream`): the same bits as `diffusion_jax.sample` / `evaluate` / Pipeline.

    Args:
      denoiser: a `predictions.Denoiser` with params set (global arrays of a training mesh are fine).
      seed: base seed (default `cfg.sampling.seed`).
      labels: optional int [n]: the label of seed i (class-conditional / text models; default: the
        run's `sampling.labels` mapped over the seeds, i.e. seed mod K). With `sampling.guidance_scale
        != 1` the samples use classifier-free guidance against the null condition.
      mesh: if given, the chunks run on this process's devices of the mesh; every process draws all n
        seeds (periodic sample counts are small), so each can read every sample.
    """
    from diffusion_jax.training import sampling

    denoiser = denoiser.replace(params=sampling.local_params(denoiser.params))
    plan = plan_for(cfg, denoiser, seed=seed, labels=labels)
    devices = None
    if mesh is not None:
        devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return plan.sample(list(range(int(n))), devices=devices)


def eval_data_key(cfg) -> jax.Array:
    """Key of the fresh reference data for evaluation (independent of the training stream)."""
    return jax.random.fold_in(jax.random.key(int(cfg.seed)), 0xE7A1)


def reference_samples(cfg, n: int) -> np.ndarray | None:
    """n fresh samples of the data distribution for low-dim metrics (toy2d), else None."""
    if cfg.data.source != "toy2d":
        return None
    from diffusion_jax.data import toy2d

    return np.asarray(toy2d.sample_toy(cfg.data.name, eval_data_key(cfg), n))


def evaluate_samples(cfg, samples: np.ndarray) -> dict[str, float]:
    """Metrics of `samples` vs fresh data (toy2d): any of `cfg.eval.metrics` in w2 (exact, POT),
    sinkhorn (debiased Sinkhorn divergence, ott-jax) and mmd (RBF, unbiased). Empty for image data."""
    ref = reference_samples(cfg, len(samples))
    if ref is None:
        return {}
    from diffusion_jax.metrics import mmd, ot

    out = {}
    finite = np.all(np.isfinite(samples), axis=tuple(range(1, samples.ndim)))
    out["frac_finite"] = float(np.mean(finite))
    s = samples[finite]
    if len(s) < 2:
        return out
    r = ref[: len(s)]
    for name in cfg.eval.metrics:
        if name == "w2":
            out["w2"] = ot.w2_exact(s, r)
        elif name == "sinkhorn":
            out["w2_sinkhorn"] = ot.w2_sinkhorn(s, r)
        elif name == "mmd":
            out["mmd"] = mmd.mmd(s, r)
    return out


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats -> uint8 [0, 255] (clipped)."""
    return np.clip(np.round((np.asarray(images) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, ncols: int | None = None) -> np.ndarray:
    """[N, H, W, C] in [-1, 1] -> one uint8 [rows*(H+1)+1, cols*(W+1)+1, 3] image with 1-px borders."""
    images = to_uint8(images)
    n, h, w, c = images.shape
    if c == 1:
        images = np.repeat(images, 3, axis=-1)
    elif c != 3:
        images = np.repeat(images[..., :1], 3, axis=-1)
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    grid = np.full((nrows * (h + 1) + 1, ncols * (w + 1) + 1, 3), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = images[i]
    return grid


def save_samples_png(
    samples: np.ndarray, path: str, reference: np.ndarray | None = None, title: str = ""
) -> str:
    """Write samples to `path`: an image grid for [N, H, W, C], a scatter plot for [N, 2]."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if samples.ndim == 4:
        from PIL import Image

        Image.fromarray(image_grid(samples)).save(path)
        return path
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.7", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=1, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=6, markerscale=4)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_periodic(rt, state, step: int, workdir: str, logger) -> dict:
    """Training hook: at `sample_every` write `samples/<step>.png` (image grid or 2-D scatter) and
    `samples/<step>.npz` (`samples` [n, ...], `seeds` [n], `labels` if any, and the settings); at
    `eval_every` log eval metrics (toy2d: W2 / MMD of `eval.num_samples` samples vs fresh data).
    Seeds 0..n-1 of the run's `sampling` settings and weights (`sampling.ema`)."""
    from diffusion_jax.training import sampling
    from diffusion_jax.training.checkpoints import select_params

    cfg = rt.cfg
    t = cfg.training
    which = sampling.spec_from_run(cfg).ema
    params = sampling.local_params(select_params(state, which))
    denoiser = rt.denoiser.replace(params=params)
    out = {}
    do_sample = t.sample_every > 0 and step % t.sample_every == 0
    do_eval = t.eval_every > 0 and step % t.eval_every == 0
    n = int(cfg.eval.num_samples) if do_eval else int(cfg.sampling.num_samples)
    if do_eval and do_sample:
        n = max(n, int(cfg.sampling.num_samples))
    plan = plan_for(cfg, denoiser, step=step, weights=sampling.weights_name(state, which))
    devices = [d for d in rt.mesh.devices.flat if d.process_index == jax.process_index()]
    samples = plan.sample(list(range(n)), devices=devices)
    if do_eval:
        out = evaluate_samples(cfg, samples)
        logger.write(step, out, prefix="eval/")
    if do_sample and jax.process_index() == 0:
        k = int(cfg.sampling.num_samples)
        shown = samples[:k] if samples.ndim == 4 else samples
        ref = reference_samples(cfg, len(shown)) if samples.ndim == 2 else None
        path = save_samples_png(
            shown, os.path.join(workdir, "samples", f"{step:08d}.png"), ref, f"step {step}"
        )
        conds = [plan.condition_of(i) for i in range(k)]
        extra = {"labels": np.asarray([c["label"] for c in conds])} if conds and "label" in conds[0] else {}
        np.savez(
            os.path.join(workdir, "samples", f"{step:08d}.npz"),
            samples=samples[:k], seeds=np.arange(k), **extra, **{a: np.asarray(b) for a, b in plan.meta.items()},
        )  # fmt: skip
        if samples.ndim == 4:
            from PIL import Image

            logger.write_image(step, "samples", np.asarray(Image.open(path).convert("RGB")))
    return out


__all__ = [
    "eval_data_key",
    "evaluate_samples",
    "generate_samples",
    "image_grid",
    "reference_samples",
    "plan_for",
    "run_periodic",
    "save_samples_png",
    "to_uint8",
]
