"""Toy 2-D, EDM: sigma path, c_in/c_skip/c_out preconditioning, log-normal sigma, lambda(sigma) weighting (Karras et al. 2022, Table 1).

Everything except the objective and sampler is shared (configs/toy2d/common.py).
Variants: `get_config('moons')` (default), '8gaussians', 'checkerboard', 'spirals', 'gaussian';
append '_tiny' (or pass 'tiny') for the test-sized version.
"""

from configs.toy2d import common


def get_config(arg=None):
    return common.make("edm", arg)
