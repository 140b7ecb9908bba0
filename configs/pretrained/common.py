"""Shared pieces of the pretrained configs: the sampling fields and the file entries."""

import ml_collections

# DiT and DDPM share the DDPM schedule: 1000 steps of linear betas 1e-4 .. 0.02 (Ho et al. 2020,
# Sec. 4; DiT's `create_diffusion` default), our `vp_discrete`, whose network time input is the
# step index n - 1 = 1000 t - 1 (`ddpm_index`).
DDPM_SCHEDULE = dict(num_steps=1000, beta_start=1e-4, beta_end=0.02)


def entry(path: str, published: str, convert: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(path=path, published=published, convert=convert))


def sampling_config(*, steps: int, labels: str = "", guidance: float = 1.0) -> ml_collections.ConfigDict:
    """A sampling request (`diffusion_jax.sample`'s fields) for a pretrained denoiser.

    Default sampler: DDIM (Song et al. 2021) on DDIM's 'leading' timesteps, `steps` steps ending on
    clean data (grid 'leading' with steps - 1 intervals plus final_zero), as diffusers' DDIMScheduler.
    `eval.num_samples`: how many seeds `diffusion_jax.evaluate` draws.
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
    cfg.eval = ml_collections.ConfigDict(dict(num_samples=16))
    return cfg
