"""Periodic sampling and evaluation during training, shared with `python -m diffusion_jax.evaluate`.

* `generate_samples`: draw samples from a denoiser with the config's sampler / grid / steps; sample
  i starts from noise drawn with fold_in(key(sampling.seed), i) and uses that key for any sampler
  noise, so it does not depend on the batch size or device count.
* `save_samples_png`: an image grid (images in [-1, 1]) or a 2-D scatter plot (low-dim data).
* `evaluate_samples`: for 2-D toy data, exact W2 (POT, on the host) and MMD against *fresh* data
  samples drawn with a key independent of training (`eval_data_key`).
* `run_periodic`: the training-loop hook for `training.sample_every` / `training.eval_every`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from diffusion_jax.training.build import data_shape


def sample_keys(seed: int, start: int, n: int) -> jax.Array:
    """Typed keys [n]: key i is fold_in(key(seed), start + i)."""
    base = jax.random.key(int(seed))
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(start, start + n, dtype=jnp.uint32))


def _sampler_and_grid(cfg, schedule):
    from diffusion_jax.samplers import grids, registry

    sampler = registry.get_sampler(cfg.sampling.sampler)
    grid = grids.make_grid(cfg.sampling.grid, int(cfg.sampling.num_steps), schedule)
    return sampler, grid


def generate_samples(cfg, denoiser, n: int, *, seed: int | None = None, labels=None, mesh=None) -> np.ndarray:
    """n samples [n, *data_shape] as a host numpy array.

    Args:
      denoiser: a `predictions.Denoiser` with params set.
      seed: base seed (default `cfg.sampling.seed`).
      labels: optional int [n] class labels (class-conditional models; default i % num_classes).
        With `sampling.guidance_scale != 1` the samples use classifier-free guidance against the
        null label (`objective.null_label`, default num_classes).
      mesh: if given, the batch is split over all its devices (replicated output); params must be
        placed compatibly (global arrays from the train state are).
    """
    seed = int(cfg.sampling.seed if seed is None else seed)
    shape = data_shape(cfg)
    schedule = denoiser.schedule
    sampler, grid = _sampler_and_grid(cfg, schedule)
    num_classes = int(cfg.model.get("num_classes", 0) or 0)
    null_label = int(cfg.objective.get("null_label", -1))
    null_label = num_classes if null_label < 0 else null_label
    text_cond = _text_conditioning(cfg, n, labels)
    if labels is None and num_classes:
        labels = np.arange(n) % num_classes
    t0 = grid[0]

    scale = float(cfg.sampling.guidance_scale)

    def run(params, keys, lab, txt):
        z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0x5EED), shape, jnp.float32))(keys)
        z = z * schedule.sigma(t0).astype(jnp.float32)
        d = denoiser.replace(params=params, cond=None)
        cond = {**(txt or {}), **({} if lab is None else {"label": lab})}
        if cond and scale != 1.0:
            # Classifier-free guidance (Ho & Salimans 2022) against the null label / empty captions.
            from diffusion_jax.samplers.guidance import cfg_denoiser, null_condition

            d = cfg_denoiser(d, cond, null_condition(cond, null_label), scale)
        elif cond:
            d = d.replace(cond=cond)
        return sampler.run(d, z, grid, keys).samples

    key_data = np.asarray(jax.random.key_data(sample_keys(seed, 0, n)))
    # Labels reach the network only if it has a label embedding (a text model uses them for captions).
    lab = None if labels is None or not num_classes else np.asarray(labels, np.int32)

    def run_raw(params, kd, lab, txt):
        return run(params, jax.random.wrap_key_data(kd), lab, txt)

    if mesh is not None:
        # Inputs become global (replicated) arrays so the same program runs on every process of a
        # multi-host mesh; the output is replicated, so each process can read it.
        from diffusion_jax.training.distributed import global_from_host

        rep = NamedSharding(mesh, PartitionSpec())
        key_data = global_from_host(key_data, rep)
        lab = None if lab is None else global_from_host(lab, rep)
        text_cond = None if text_cond is None else jax.tree.map(lambda a: global_from_host(a, rep), text_cond)
        fn = jax.jit(run_raw, out_shardings=rep)
    else:
        fn = jax.jit(run_raw)
    out = fn(denoiser.params, key_data, lab, text_cond)
    return np.asarray(jax.device_get(out))


def _text_conditioning(cfg, n: int, labels) -> dict | None:
    """Host-side caption tokens / per-label embeddings for n samples of a text-conditioned config
    (labels default to i % number of classes, captions to the first template, so samples are
    reproducible), or None for a config without text conditioning."""
    d = cfg.data
    if not (d.get("captions", "") or d.get("embeddings_path", "")):
        return None
    from diffusion_jax.data import captions
    from diffusion_jax.data.pipeline import TFDS_DATASETS

    if labels is None:
        labels = np.arange(n) % TFDS_DATASETS[d.name].num_classes
    labels = np.asarray(labels, np.int32)
    if d.get("captions", "") == "class_template":
        return {k: np.asarray(v) for k, v in captions.caption_tokens(cfg, labels).items()}
    out = captions.make_text_transform(cfg)({"label": labels}, 0)
    return {"context": np.asarray(out["context"]), "context_mask": np.asarray(out["context_mask"])}


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
    """Training hook: at `sample_every` write `samples/<step>.png`; at `eval_every` log eval metrics
    (toy2d: W2 / MMD of `eval.num_samples` EMA samples vs fresh data)."""
    from diffusion_jax.training.checkpoints import select_params

    cfg = rt.cfg
    t = cfg.training
    params = select_params(state, cfg.eval.get("ema", ""))
    denoiser = rt.denoiser.replace(params=params)
    out = {}
    do_sample = t.sample_every > 0 and step % t.sample_every == 0
    do_eval = t.eval_every > 0 and step % t.eval_every == 0
    n = int(cfg.eval.num_samples) if do_eval else int(cfg.sampling.num_samples)
    if do_eval and do_sample:
        n = max(n, int(cfg.sampling.num_samples))
    samples = generate_samples(cfg, denoiser, n, mesh=rt.mesh)
    if do_eval:
        out = evaluate_samples(cfg, samples)
        logger.write(step, out, prefix="eval/")
    if do_sample and jax.process_index() == 0:
        shown = samples[: int(cfg.sampling.num_samples)] if samples.ndim == 4 else samples
        ref = reference_samples(cfg, len(shown)) if samples.ndim == 2 else None
        path = save_samples_png(
            shown, os.path.join(workdir, "samples", f"{step:08d}.png"), ref, f"step {step}"
        )
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
    "run_periodic",
    "sample_keys",
    "save_samples_png",
    "to_uint8",
]
