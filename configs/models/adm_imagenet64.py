"""ADM for class-conditional ImageNet-64 as used (and retrained) in EDM (Karras et al. 2022).

Dhariwal & Nichol 2021, Table 11 / EDM `DhariwalUNet` defaults (NVlabs/edm `training/networks.py`,
`--arch=adm`): model_channels 192, channel_mult (1,2,3,4), 3 blocks per level, attention at 32, 16
and 8 with 64 channels per head, scale-shift norm, dropout 0.1, 1000 classes embedded by a
bias-free linear map of the one-hot label (null label -> zero), embedding width 4 x 192.
Parameters: 295,899,267 (EDM Table 7: 295.90M).
"""

import ml_collections


def get_config(arg=None):
    """arg None only."""
    if arg:
        raise ValueError(f"adm_imagenet64: arg {arg!r} unknown; valid: None")
    return ml_collections.ConfigDict(
        dict(
            name="unet",
            arch="adm",
            image_size=64,
            in_channels=3,
            nf=192,
            ch_mult=(1, 2, 3, 4),
            num_res_blocks=3,
            attn_resolutions=(32, 16, 8),
            dropout=0.1,
            resblock_type="biggan",
            fir=False,
            skip_rescale=False,
            embedding_type="positional",
            emb_mult=4,
            head_channels=64,
            scale_shift=True,
            norm_eps=1e-5,
            num_classes=1000,
            learned_null=False,
        )
    )
