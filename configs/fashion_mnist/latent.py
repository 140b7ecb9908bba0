"""Fashion-MNIST latent diffusion: rectified flow in the 7x7x4 latent space of a KL autoencoder
(Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"), with a
small class-conditional DiT (Peebles & Xie 2023; patch 1, 6 blocks x 256 wide) and CFG dropout.

Two stages: (1) train the autoencoder `configs/models/autoencoder_kl.py:fmnist` (f=4, z=4) and
encode the training set once with `diffusion_jax.data.latents.cache_latents` into
`data.latents_path` (scaled by `models.autoencoder.latent_scale_factor`); (2) this config trains
on the cached latents (`data.source='latents'`). Decoding samples back to pixels uses the
autoencoder's decoder.

Variants: None (rectified flow, uniform t), 'vp_eps', 'edm' (the objective presets), and 'tiny'
(test-sized: 2 blocks x 32, batch 8, 2 steps).
"""

from configs import base
from configs.models import dit

OBJECTIVES = {
    None: "rf_uniform",
    "rf_uniform": "rf_uniform",
    "vp_eps": "vp_eps",
    "edm": "edm",
    "tiny": "rf_uniform",
}


def get_config(arg=None):
    from diffusion_jax import objectives
    from diffusion_jax.data.pipeline import default_data_config

    if arg not in OBJECTIVES:
        raise ValueError(f"fashion_mnist/latent: arg {arg!r} unknown; valid: {list(OBJECTIVES)}")
    cfg = base.get_config()
    cfg.model = dit.get_config("S/1")
    cfg.model.update(
        image_size=7, in_channels=4, depth=6, hidden_size=256, num_heads=4, learn_sigma=False, num_classes=10
    )
    cfg.data = default_data_config(
        "latents", "fashion_mnist_klf4", batch_size=128, latents_path="latents/fashion_mnist_kl_fmnist.npz"
    )
    cfg.objective = objectives.objective_preset(OBJECTIVES[arg])
    if OBJECTIVES[arg] != "edm":
        cfg.objective.time_input = "t999"
    cfg.objective.label_dropout = 0.1
    t = cfg.training
    t.num_steps = 50_000
    t.optimizer = "adamw"
    t.lr = 1e-4
    t.warmup_steps = 1000
    t.ema_decays = (0.9999,)
    t.ckpt_every = 5000
    cfg.sampling.sampler = "heun" if OBJECTIVES[arg] != "rf_uniform" else "euler"
    cfg.sampling.grid = "edm" if OBJECTIVES[arg] == "edm" else "uniform"
    cfg.sampling.guidance_scale = 2.0
    cfg.eval.metrics = ()
    if arg == "tiny":
        cfg.model.update(depth=2, hidden_size=32, num_heads=2)
        cfg.data.batch_size = 8
        t.num_steps = 2
        t.warmup_steps = 0
        t.log_every = 1
        t.ckpt_every = 100
        cfg.sampling.num_steps = 2
    return cfg
