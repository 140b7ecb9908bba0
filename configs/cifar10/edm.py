"""EDM on CIFAR-10 (unconditional, VP-architecture row): Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", Table 2, configuration F, and App. F.1
(Table 7 hyperparameters).

Sigma path with the full EDM preconditioning (c_in, c_skip, c_out, c_noise = ln(sigma)/4),
sigma_data 0.5, ln(sigma) ~ N(-1.2, 1.2^2), loss weight (sigma^2 + sigma_data^2)/(sigma sigma_data)^2;
DDPM++ network with channel_mult (2, 2, 2) and dropout 0.13; Adam 1e-3 with a 10 Mimg linear
warmup, batch 512, 200 Mimg, no gradient clipping; EMA half-life 0.5 Mimg (as a per-step decay);
sampling: Heun's 2nd-order method, 18 steps on the rho=7 grid (NFE 35).
Not reproduced here: EDM's non-leaking geometric augmentation (p = 0.12), which the paper uses for
CIFAR-10. 'tiny': test-sized.
"""

from configs import base, images
from configs.models import ddpmpp_cifar10

BATCH = 512


def get_config(arg=None):
    from diffusion_jax import objectives

    if arg not in (None, "tiny"):
        raise ValueError(f"cifar10/edm: arg {arg!r} unknown; valid: None, 'tiny'")
    cfg = base.get_config()
    cfg.model = ddpmpp_cifar10.get_config()
    cfg.model.ch_mult = (2, 2, 2)
    cfg.model.dropout = 0.13
    cfg.data = images.tfds_data("cifar10", BATCH, flip=True, dequantize=False)
    cfg.objective = objectives.objective_preset("edm")
    t = cfg.training
    t.num_steps = 200_000_000 // BATCH
    t.lr = 1e-3
    t.warmup_steps = 10_000_000 // BATCH
    t.grad_clip = 0.0
    t.ema_decays = (images.per_step_ema(500_000, BATCH),)
    t.log_every = 100
    t.ckpt_every = 20_000
    t.keep_every = 100_000
    t.sample_every = 20_000
    cfg.sampling.sampler = "heun"
    cfg.sampling.grid = "edm"
    cfg.sampling.num_steps = 18
    cfg.eval.metrics = ()
    if arg == "tiny":
        images.shrink_for_tests(cfg)
    return cfg
