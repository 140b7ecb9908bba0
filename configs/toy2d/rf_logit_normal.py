"""Toy 2-D, Rectified flow with logit-normal(0, 1) times (Esser et al. 2024, SD3 eq. 19).

Everything except the objective and sampler is shared (configs/toy2d/common.py).
Variants: `get_config('moons')` (default), '8gaussians', 'checkerboard', 'spirals', 'gaussian';
append '_tiny' (or pass 'tiny') for the test-sized version.
"""

from configs.toy2d import common


def get_config(arg=None):
    return common.make("rf_logit_normal", arg)
