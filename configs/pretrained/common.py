"""Shared pieces of the pretrained configs: the sampling fields and the file entries."""

import ml_collections

# DiT and DDPM share the DDPM schedule: 1000 steps of linear betas 1e-4 .. 0.02 (Ho et al. 2020,
# Sec. 4; DiT's `create_diffusion` default), our `vp_discrete`, whose network time input is the
# step index n - 1 = 1000 t - 1 (`ddpm_index`).
DDPM_SCHEDULE = dict(num_steps=1000, beta_start=1e-4, beta_end=0.02)


def entry(path: str, published: str, convert: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(path=path, published=published, convert=convert))


INCEPTION = "checkpoints/pt_inception.npz"  # python -m diffusion_jax.metrics.inception_weights ...


def eval_config(reference_stats: str, num_samples: int = 16) -> ml_collections.ConfigDict:
    """What `diffusion_jax.evaluate` reports for a pretrained config: FID of `num_samples` seeds
    (Inception weights `INCEPTION`) against `reference_stats` (an .npz with mu / sigma); any metric of
    `metrics.image_eval` can be asked for (`--config.eval.metrics`, with a TFDS dataset in data.*)."""
    from diffusion_jax.metrics import image_eval

    e = ml_collections.ConfigDict(dict(image_eval.DEFAULTS))
    e.update(
        num_samples=num_samples,
        metrics=("fid",),
        inception_weights=INCEPTION,
        reference_stats=reference_stats,
    )
    return e


def sampling_config(
    *, steps: int, labels: str = "", guidance: float = 1.0, reference_stats: str = ""
) -> ml_collections.ConfigDict:
    """A sampling request (`diffusion_jax.sample`'s fields) for a pretrained denoiser.

    Default sampler: DDIM (Song et al. 2021) on DDIM's 'leading' timesteps, `steps` steps ending on
    clean data (grid 'leading' with steps - 1 intervals plus final_zero), as diffusers' DDIMScheduler.
    `eval`: what `diffusion_jax.evaluate` reports (`eval_config`).
    """
    from diffusion_jax import sample

    cfg = sample.get_default_config()
    cfg.denoiser.source = "pretrained"
    cfg.schedule = ml_collections.ConfigDict(dict(name="vp_discrete", kwargs=DDPM_SCHEDULE, shift=None))
    cfg.sampler = ml_collections.ConfigDict(dict(name="ddim", kwargs={}))
    cfg.grid = ml_collections.ConfigDict(
        dict(name="leading", num_steps=steps - 1, kwargs=dict(final_zero=True))
    )
    cfg.seeds = "0-15"
    cfg.base_seed = 0
    cfg.chunk_size = 4
    cfg.dtype = "float32"
    cfg.conditioning = ml_collections.ConfigDict(dict(labels=labels, caption="", guidance_scale=guidance))
    cfg.eval = eval_config(reference_stats)
    return cfg
