"""MLP configs for low-dimensional data.

- None / 'cfm': the 3 x 64 SELU network of the conditional flow matching 2-D experiments (Tong et al.
  2024, App. E; torchcfm `MLP(dim=2, w=64, time_varying=True)`): raw t appended to x,
  Linear(3,64)-SELU-Linear(64,64)-SELU-Linear(64,64)-SELU-Linear(64,2) = 8,706 parameters.
- 'wide': 4 x 256 SiLU with a 32-d sinusoidal time embedding (diffusion on toy data).
- 'tiny': 2 x 16 SiLU with Fourier time features and 3 classes (tests).
"""

import ml_collections

VARIANTS = ("cfm", "wide", "tiny")


def get_config(arg=None):
    """arg in None, 'cfm', 'wide', 'tiny'."""
    arg = arg or "cfm"
    if arg not in VARIANTS:
        raise ValueError(f"mlp: arg {arg!r} unknown; valid: {VARIANTS}")
    if arg == "cfm":
        cfg = dict(dim=2, width=64, num_layers=3, activation="selu", time_embedding="concat")
    elif arg == "wide":
        cfg = dict(
            dim=2, width=256, num_layers=4, activation="silu", time_embedding="positional", time_dim=32
        )
    else:
        cfg = dict(
            dim=2,
            width=16,
            num_layers=2,
            activation="silu",
            time_embedding="fourier",
            time_dim=8,
            num_classes=3,
        )
    # out_dim 0: the data dimension; 2 * dim for a two-head [velocity, score] network (score_head).
    return ml_collections.ConfigDict(dict(name="mlp", out_dim=0, **cfg))
