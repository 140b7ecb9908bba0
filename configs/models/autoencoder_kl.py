"""KL autoencoder configs (Rombach et al. 2022, App. G).

- None / 'kl-f4': f=4, z=3 (LDM 'kl-f4': ch 128, ch_mult (1,2,4), 2 blocks) for 256x256 RGB.
- 'kl-f8': f=8, z=4 (ch 128, ch_mult (1,2,4,4)).
- 'fmnist': f=4, z=4 on 28x28x1 (ch 32, ch_mult (1,2,2)).
- 'tiny': 8x8x3, f=2, z=2 (tests).
"""

import ml_collections

VARIANTS = ("kl-f4", "kl-f8", "fmnist", "tiny")


def get_config(arg=None):
    """arg in None, 'kl-f4', 'kl-f8', 'fmnist', 'tiny'."""
    arg = arg or "kl-f4"
    if arg not in VARIANTS:
        raise ValueError(f"autoencoder_kl: arg {arg!r} unknown; valid: {VARIANTS}")
    cfg = {
        "kl-f4": dict(
            image_size=256, in_channels=3, ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=3
        ),
        "kl-f8": dict(
            image_size=256, in_channels=3, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4
        ),
        "fmnist": dict(
            image_size=28, in_channels=1, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4
        ),
        "tiny": dict(image_size=8, in_channels=3, ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=2),
    }[arg]
    return ml_collections.ConfigDict(dict(name="autoencoder", attn_resolutions=(), dropout=0.0, **cfg))
