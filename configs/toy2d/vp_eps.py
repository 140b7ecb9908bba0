"""Toy 2-D, VP diffusion, eps-prediction, L_simple (Ho et al. 2020; Song et al. 2021 VP SDE, linear betas).

Everything except the objective and sampler is shared (configs/toy2d/common.py).
Variants: `get_config('moons')` (default), '8gaussians', 'checkerboard', 'spirals', 'gaussian';
append '_tiny' (or pass 'tiny') for the test-sized version.
"""

from configs.toy2d import common


def get_config(arg=None):
    return common.make("vp_eps", arg)
