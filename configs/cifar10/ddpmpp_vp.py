"""score_sde DDPM++ cont. (VP) on CIFAR-10: Song et al. 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations", Table 3 (row "DDPM++ cont. (VP)") and App. H; the
reference config is `configs/vp/cifar10_ddpmpp_continuous.py` of yang-song/score_sde.

VP SDE with beta_min 0.1, beta_max 20; eps-prediction with the unweighted (L_simple-style) denoising
score matching loss, t ~ U(1e-5, 1); network DDPM++ (61.8M parameters) fed t * 999; random
horizontal flips, data scaled to [-1, 1] without dequantization; Adam 2e-4, warmup 5000, gradient
clipping 1, batch 128, EMA 0.9999, 1.3M iterations; sampling with the Euler-Maruyama predictor,
1000 steps. `get_config('deep')`: the 8-blocks-per-level "deep" network; 'tiny': test-sized.
"""

from configs import base, images
from configs.models import ddpmpp_cifar10


def get_config(arg=None):
    from diffusion_jax import objectives

    if arg not in (None, "deep", "tiny"):
        raise ValueError(f"cifar10/ddpmpp_vp: arg {arg!r} unknown; valid: None, 'deep', 'tiny'")
    cfg = base.get_config()
    cfg.model = ddpmpp_cifar10.get_config("deep" if arg == "deep" else None)
    cfg.data = images.tfds_data("cifar10", 128, flip=True, dequantize=False)
    cfg.objective = objectives.objective_preset("vp_eps")
    cfg.objective.schedule_kwargs = {"beta_min": 0.1, "beta_max": 20.0}
    cfg.objective.t_eps = 1e-5
    cfg.objective.time_input = "t999"
    t = cfg.training
    t.num_steps = 1_300_000
    t.lr = 2e-4
    t.warmup_steps = 5000
    t.grad_clip = 1.0
    t.ema_decays = (0.9999,)
    t.log_every = 100
    t.ckpt_every = 50_000
    t.keep_every = 100_000
    t.sample_every = 50_000
    cfg.sampling.sampler = "euler_maruyama"
    cfg.sampling.grid = "uniform"
    cfg.sampling.num_steps = 1000
    cfg.eval.metrics = ()
    if arg == "tiny":
        images.shrink_for_tests(cfg)
    return cfg
