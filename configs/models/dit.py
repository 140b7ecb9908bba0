"""DiT configs (Peebles & Xie 2023): `get_config('XL/2')`, sizes S/B/L/XL, patch 2/4/8, or 'tiny/2'.

Table 1 of the paper: S = 12 layers x 384 wide x 6 heads, B = 12 x 768 x 12, L = 24 x 1024 x 16,
XL = 28 x 1152 x 16. ImageNet-256 models run on 32x32x4 SD-VAE latents, 1000 classes (+1 null
row), learn_sigma=True (8 output channels). Parameter counts of the official code
(facebookresearch/DiT `models.py`, counting the fixed position table as its `nn.Parameter`):
S/2 32,963,360; B/2 130,512,416; L/2 458,102,816; XL/2 675,129,632 (paper: 33M, 130M, 458M, 675M).
"""

import ml_collections

SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16), "tiny": (2, 64, 4)}
PATCHES = (1, 2, 4, 8)


def get_config(arg=None):
    """arg 'SIZE/PATCH' with SIZE in S, B, L, XL, tiny and PATCH in 1, 2, 4, 8 (default 'XL/2')."""
    arg = arg or "XL/2"
    size, _, patch = arg.partition("/")
    if size not in SIZES or not patch.isdigit() or int(patch) not in PATCHES:
        raise ValueError(
            f"DiT config {arg!r}: expected SIZE/PATCH with SIZE in {sorted(SIZES)}, PATCH in {PATCHES}"
        )
    depth, hidden, heads = SIZES[size]
    tiny = size == "tiny"
    return ml_collections.ConfigDict(
        dict(
            name="dit",
            image_size=8 if tiny else 32,
            in_channels=4,
            patch_size=int(patch),
            hidden_size=hidden,
            depth=depth,
            num_heads=heads,
            mlp_ratio=4.0,
            learn_sigma=True,
            num_classes=10 if tiny else 1000,
            frequency_embedding_size=256,
            context_dim=0,
        )
    )
