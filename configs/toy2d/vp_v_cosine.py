"""Toy 2-D, VP cosine schedule, v-prediction, v-MSE (Nichol & Dhariwal 2021; Salimans & Ho 2022).

Everything except the objective and sampler is shared (configs/toy2d/common.py).
Variants: `get_config('moons')` (default), '8gaussians', 'checkerboard', 'spirals', 'gaussian';
append '_tiny' (or pass 'tiny') for the test-sized version.
"""

from configs.toy2d import common


def get_config(arg=None):
    return common.make("vp_v_cosine", arg)
