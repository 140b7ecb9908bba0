"""Small U-Nets for tests and Fashion-MNIST (28x28x1).

- None / 'fmnist': DDPM++-style (ncsnpp layout), nf=32, ch_mult (1,2,2), 2 blocks, attention at 7x7.
- 'tiny': 8x8x3, nf=8, ch_mult (1,2), one block per level, attention at 4x4 (tests).
- 'tiny_adm': the same size in the ADM layout with scale-shift norm, 10 classes and cross-attention.
"""

import ml_collections

VARIANTS = ("fmnist", "tiny", "tiny_adm")


def get_config(arg=None):
    """arg in None, 'fmnist', 'tiny', 'tiny_adm'."""
    arg = arg or "fmnist"
    if arg not in VARIANTS:
        raise ValueError(f"unet_small: arg {arg!r} unknown; valid: {VARIANTS}")
    if arg == "fmnist":
        return ml_collections.ConfigDict(
            dict(
                name="unet",
                arch="ncsnpp",
                image_size=28,
                in_channels=1,
                nf=32,
                ch_mult=(1, 2, 2),
                num_res_blocks=2,
                attn_resolutions=(7,),
                dropout=0.1,
                num_heads=1,
            )
        )
    cfg = dict(
        name="unet",
        image_size=8,
        in_channels=3,
        nf=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
        num_heads=1,
    )
    if arg == "tiny_adm":
        cfg.update(
            arch="adm",
            head_channels=8,
            scale_shift=True,
            skip_rescale=False,
            norm_eps=1e-5,
            num_classes=10,
            context_dim=6,
        )
    return ml_collections.ConfigDict(cfg)
