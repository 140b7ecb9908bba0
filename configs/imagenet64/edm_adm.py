"""EDM on class-conditional ImageNet-64 with the ADM network: Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", Table 2 (ImageNet-64 rows, configuration F)
and App. F.1 (Table 7 hyperparameters), network of Dhariwal & Nichol 2021 (295.9M parameters).

Full EDM preconditioning and training distribution (ln sigma ~ N(-1.2, 1.2^2)), sigma_data 0.5;
Adam 2e-4 with a 10 Mimg warmup, batch 4096 (as 8 x 512 gradient accumulation is possible with
training.grad_accum), 2500 Mimg, EMA half-life 50 Mimg, dropout 0.1, no augmentation; classifier-
free guidance is not used in the paper (label_dropout 0); sampling: Heun, 40 steps on the rho=7
grid (the paper's deterministic ImageNet-64 setting; its best result uses the stochastic sampler
`edm_stochastic`). 'tiny': test-sized.
"""

from configs import base, images
from configs.models import adm_imagenet64

BATCH = 4096


def get_config(arg=None):
    from diffusion_jax import objectives

    if arg not in (None, "tiny"):
        raise ValueError(f"imagenet64/edm_adm: arg {arg!r} unknown; valid: None, 'tiny'")
    cfg = base.get_config()
    cfg.model = adm_imagenet64.get_config()
    cfg.data = images.tfds_data("imagenet64", BATCH, flip=True, dequantize=False)
    cfg.objective = objectives.objective_preset("edm")
    t = cfg.training
    t.num_steps = 2_500_000_000 // BATCH
    t.lr = 2e-4
    t.warmup_steps = 10_000_000 // BATCH
    t.grad_clip = 0.0
    t.ema_decays = (images.per_step_ema(50_000_000, BATCH),)
    t.log_every = 100
    t.ckpt_every = 10_000
    t.keep_every = 50_000
    t.sample_every = 10_000
    cfg.mesh.data = -1
    cfg.mesh.fsdp = 1
    cfg.sampling.sampler = "heun"
    cfg.sampling.grid = "edm"
    cfg.sampling.num_steps = 40
    cfg.eval.metrics = ()
    if arg == "tiny":
        images.shrink_for_tests(cfg, num_classes=1000)
        cfg.model.arch = "adm"
        cfg.model.scale_shift = True
    return cfg
