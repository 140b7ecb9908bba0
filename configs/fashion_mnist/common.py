"""Shared Fashion-MNIST setup: a small U-Net, identical for every formulation.

Data: the local TFDS build of Debian's `dataset-fashion-mnist` (28x28x1, 60k train images),
uniformly dequantized to [-1, 1], batch 128. Network: `configs/models/unet_small.py:fmnist`
(DDPM++-style, nf 32, ch_mult (1,2,2), attention at 7x7, dropout 0.1). Optimizer: Adam 2e-4,
warmup 1000, grad clip 1, EMA 0.999 and 0.9999, 50k steps. Network time input t * 999 (score_sde /
RectifiedFlow convention) except EDM (c_noise). Sampling: 50-step ODE sampler (Euler on straight
paths, Heun on curved ones).

Variants (`get_config(arg)`):
  None / 'uncond'  unconditional;
  'cond'           class-conditional (10 classes + a learned null class) with classifier-free
                   guidance dropout 0.1 (Ho & Salimans 2022), sampled with guidance scale 2;
  'tiny' / 'cond_tiny'  test-sized: 8x8 (area-resized) images, nf 8, batch 8, 2 steps.
"""

import ml_collections

from configs import base
from configs.models import unet_small
from configs.toy2d.common import FORMULATIONS

VARIANTS = ("uncond", "cond", "tiny", "cond_tiny")


def make(formulation: str, arg=None) -> ml_collections.ConfigDict:
    """The Fashion-MNIST config of `formulation` (a `configs.toy2d.common.FORMULATIONS` key)."""
    from diffusion_jax import objectives
    from diffusion_jax.data.pipeline import default_data_config

    if formulation not in FORMULATIONS:
        raise ValueError(f"fashion_mnist formulation {formulation!r} unknown; valid: {sorted(FORMULATIONS)}")
    arg = arg or "uncond"
    if arg not in VARIANTS:
        raise ValueError(f"fashion_mnist variant {arg!r} unknown; valid: {list(VARIANTS)}")
    preset, sampler, grid = FORMULATIONS[formulation]
    cond = arg.startswith("cond")
    tiny = arg.endswith("tiny")

    cfg = base.get_config()
    cfg.model = unet_small.get_config("fmnist")
    cfg.data = default_data_config("tfds", "fashion_mnist", batch_size=128)
    cfg.objective = objectives.objective_preset(preset)
    if formulation != "edm":
        cfg.objective.time_input = "t999"
    if cond:
        cfg.model.num_classes = 10
        cfg.model.learned_null = True
        cfg.objective.label_dropout = 0.1
        cfg.sampling.guidance_scale = 2.0

    t = cfg.training
    t.num_steps = 50_000
    t.lr = 2e-4
    t.warmup_steps = 1000
    t.grad_clip = 1.0
    t.ema_decays = (0.999, 0.9999)
    t.log_every = 100
    t.ckpt_every = 5000
    t.sample_every = 5000
    cfg.sampling.sampler = sampler
    cfg.sampling.grid = grid
    cfg.sampling.num_steps = 50
    cfg.sampling.num_samples = 64
    cfg.eval.metrics = ()

    if tiny:
        cfg.model.nf = 8
        cfg.model.ch_mult = (1, 2)
        cfg.model.num_res_blocks = 1
        cfg.model.attn_resolutions = ()
        cfg.model.dropout = 0.0
        cfg.model.image_size = 8
        cfg.data.image_size = 8
        cfg.data.resize = "area"
        cfg.data.batch_size = 8
        t.num_steps = 2
        t.warmup_steps = 0
        t.lr = 1e-3
        t.log_every = 1
        t.ckpt_every = 100
        t.sample_every = 0
        t.ema_decays = (0.999,)
        cfg.sampling.num_steps = 2
        cfg.sampling.num_samples = 4
    return cfg
