"""DiT on class-conditional ImageNet-64 pixels: the training recipe of Peebles & Xie 2023,
"Scalable Diffusion Models with Transformers" (sec. 4 and Table 4: DiT-XL/2, AdamW 1e-4 constant,
no weight decay, batch 256, EMA 0.9999, linear VP schedule with 1000 steps, eps-prediction,
classifier-free guidance with label dropout 0.1), transplanted from 32x32x4 SD-VAE latents to
64x64x3 pixels with patch 4, so the transformer sees the same 16 x 16 = 256 tokens.

This is an adaptation, not a published number: the paper's FIDs are for ImageNet-256/512 latents.
Differences: no learned variance (learn_sigma False; the paper's L_vlb term is not implemented),
continuous time (t * 1000 as the time input) instead of 1000 discrete steps. Variants: None
(XL/4), 'B/4', 'S/4', 'tiny'.
"""

from configs import base, images
from configs.models import dit

BATCH = 256


def get_config(arg=None):
    from diffusion_jax import objectives

    if arg not in (None, "XL/4", "B/4", "S/4", "tiny"):
        raise ValueError(f"imagenet64/dit: arg {arg!r} unknown; valid: None, 'XL/4', 'B/4', 'S/4', 'tiny'")
    cfg = base.get_config()
    cfg.model = dit.get_config(arg if arg and arg != "tiny" else "XL/4")
    cfg.model.update(image_size=64, in_channels=3, learn_sigma=False, num_classes=1000)
    cfg.data = images.tfds_data("imagenet64", BATCH, flip=True, dequantize=False)
    cfg.objective = objectives.objective_preset("vp_eps")
    cfg.objective.time_input = "t1000"
    cfg.objective.label_dropout = 0.1
    t = cfg.training
    t.num_steps = 400_000
    t.optimizer = "adamw"
    t.lr = 1e-4
    t.weight_decay = 0.0
    t.grad_clip = 0.0
    t.ema_decays = (0.9999,)
    t.log_every = 100
    t.ckpt_every = 10_000
    t.keep_every = 50_000
    t.sample_every = 10_000
    cfg.mesh.data = -1
    cfg.mesh.fsdp = 1
    cfg.sampling.sampler = "ddim"
    cfg.sampling.grid = "uniform"
    cfg.sampling.num_steps = 250
    cfg.sampling.guidance_scale = 1.5
    cfg.eval.metrics = ()
    if arg == "tiny":
        images.shrink_for_tests(cfg, num_classes=1000, arch="dit")
    return cfg
