"""Helpers shared by the paper image configs (cifar10/, imagenet64/): data, tiny test variants.

`per_step_ema(half_life_images, batch)`: EDM specifies its EMA by a half-life in training images
(Karras et al. 2022, App. F.1); with one update per batch the equivalent per-step decay is
0.5 ** (batch / half_life).
"""

import ml_collections

from configs.models import dit, unet_small


def per_step_ema(half_life_images: float, batch: int) -> float:
    """Per-step EMA decay with the given half-life in images."""
    return float(0.5 ** (batch / half_life_images))


def tfds_data(name: str, batch: int, *, flip: bool, dequantize: bool) -> ml_collections.ConfigDict:
    """A TFDS data config (the dataset must be prepared as array_record in data_dir; no download)."""
    from diffusion_jax.data.pipeline import default_data_config

    return default_data_config(
        "tfds", name, batch_size=batch, random_flip=flip, dequantize=dequantize, prepare=False
    )


def shrink_for_tests(cfg: ml_collections.ConfigDict, *, num_classes: int = 0, arch: str = "unet") -> None:
    """Make `cfg` test-sized in place: 8x8 images (area resize), a tiny network, batch 8, 2 steps,
    no periodic hooks, 2 sampling steps."""
    if arch == "dit":
        cfg.model = dit.get_config("tiny/2")
        cfg.model.update(in_channels=3, learn_sigma=False, num_classes=num_classes)
    else:
        cfg.model = unet_small.get_config("tiny")
        if num_classes:
            cfg.model.num_classes = num_classes
    cfg.data.image_size = 8
    cfg.data.resize = "area"
    cfg.data.batch_size = 8
    t = cfg.training
    t.num_steps = 2
    t.warmup_steps = 0
    t.log_every = 1
    t.ckpt_every = 100
    t.sample_every = 0
    t.eval_every = 0
    t.grad_accum = 1
    cfg.sampling.num_steps = 2
    cfg.sampling.num_samples = 4
