"""1-Rectified Flow on CIFAR-10: Liu, Gong & Liu 2023, "Flow Straight and Fast: Learning to
Generate and Transfer Data with Rectified Flow", Table 1 (row "1-Rectified Flow (+RK45)").

Straight path z_t = (1 - t) x + t eps (data at t = 0 in this package), velocity prediction with
the plain flow-matching MSE, t ~ U(eps, 1 - eps); the DDPM++ network of score_sde fed t * 999 (the
RectifiedFlow code's convention); the score_sde CIFAR-10 training recipe the RectifiedFlow code
builds on (Adam 2e-4, warmup 5000, gradient clipping 1, batch 128, random flips, EMA 0.999999);
sampling with the adaptive Dormand-Prince RK45 solver (`dopri5`). 'tiny': test-sized.
"""

from configs import base, images
from configs.models import ddpmpp_cifar10


def get_config(arg=None):
    from diffusion_jax import objectives

    if arg not in (None, "tiny"):
        raise ValueError(f"cifar10/rectified_flow: arg {arg!r} unknown; valid: None, 'tiny'")
    cfg = base.get_config()
    cfg.model = ddpmpp_cifar10.get_config()
    cfg.data = images.tfds_data("cifar10", 128, flip=True, dequantize=False)
    cfg.objective = objectives.objective_preset("rf_uniform")
    cfg.objective.time_input = "t999"
    cfg.objective.t_eps = 1e-3
    t = cfg.training
    t.num_steps = 1_300_000
    t.lr = 2e-4
    t.warmup_steps = 5000
    t.grad_clip = 1.0
    t.ema_decays = (0.999999, 0.9999)
    t.log_every = 100
    t.ckpt_every = 50_000
    t.keep_every = 100_000
    t.sample_every = 50_000
    cfg.sampling.sampler = "dopri5"
    cfg.sampling.grid = "uniform"
    cfg.sampling.num_steps = 1  # adaptive: the grid only fixes the endpoints
    cfg.eval.metrics = ()
    if arg == "tiny":
        images.shrink_for_tests(cfg)
        cfg.sampling.sampler = "euler"
    return cfg
