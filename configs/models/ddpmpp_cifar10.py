"""score_sde DDPM++ cont. (VP) for CIFAR-10 (Song et al. 2021, App. H; reference config
`configs/vp/cifar10_ddpmpp_continuous.py` of yang-song/score_sde): nf=128, ch_mult (1,2,2,2),
4 res blocks per level, attention at 16x16, BigGAN resblocks, skip rescale, no FIR, positional
embedding, dropout 0.1. The caller feeds t_in = 999 * t (the reference multiplies continuous t by 999).
Parameters: 61,804,419 (EDM, Karras et al. 2022, Table 7 lists 61.80M for this baseline).
`get_config('deep')` gives DDPM++ cont. deep (8 res blocks per level).
"""

import ml_collections


def get_config(arg=None):
    """arg None (DDPM++ cont.) or 'deep'."""
    if arg not in (None, "", "deep"):
        raise ValueError(f"ddpmpp_cifar10: arg {arg!r} unknown; valid: None, 'deep'")
    return ml_collections.ConfigDict(
        dict(
            name="unet",
            arch="ncsnpp",
            image_size=32,
            in_channels=3,
            nf=128,
            ch_mult=(1, 2, 2, 2),
            num_res_blocks=8 if arg == "deep" else 4,
            attn_resolutions=(16,),
            dropout=0.1,
            resblock_type="biggan",
            resamp_with_conv=True,
            fir=False,
            fir_kernel=(1, 3, 3, 1),
            skip_rescale=True,
            progressive_input="none",
            embedding_type="positional",
            emb_mult=4,
            num_heads=1,
            norm_eps=1e-6,
        )
    )
