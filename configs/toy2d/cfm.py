"""Toy 2-D, the conditional flow matching family in one file: every choice is a field.

Defaults: I-CFM (Tong et al. 2024, eq. 14) with path noise sigma = 0.1, from N(0, I) to the data,
Euler sampling. Switch by overriding fields, never files:

  --config.objective.coupling=independent | ot_sinkhorn | ot_exact | schrodinger   (I-CFM / OT-CFM / SB-CFM)
  --config.objective.path_sigma=0.1        (>= 0; the CFM path noise)
  --config.objective.path_noise=constant | bridge | none   (schrodinger needs bridge: SB-CFM's Brownian bridge)
  --config.data.pair_with=8gaussians       (the source at t = 1; '' = N(0, I); any toy2d name)
  --config.sampling.sampler=euler | heun | rk4 | dopri5 | tsit5   (sampling.rtol / atol for adaptive ones)

With objective.score_head=True the MLP needs model.out_dim=4 (velocity and score heads).
Variants: the dataset (`moons`, `8gaussians`, ...; append `_tiny` for tests), see common.py.
"""

from configs.toy2d import common


def get_config(arg=None):
    return common.make("cfm", arg)
