"""Toy 2-D, Rectified flow / I-CFM: straight path, velocity MSE, uniform t (Liu et al. 2023; Lipman et al. 2023).

Everything except the objective and sampler is shared (configs/toy2d/common.py).
Variants: `get_config('moons')` (default), '8gaussians', 'checkerboard', 'spirals', 'gaussian';
append '_tiny' (or pass 'tiny') for the test-sized version.
"""

from configs.toy2d import common


def get_config(arg=None):
    return common.make("rf_uniform", arg)
