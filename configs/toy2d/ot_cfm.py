"""Toy 2-D, OT-CFM: rectified flow with minibatch OT pairs, Sinkhorn in-graph (Tong et al. 2024).

Everything except the objective and sampler is shared (configs/toy2d/common.py).
Variants: `get_config('moons')` (default), '8gaussians', 'checkerboard', 'spirals', 'gaussian';
append '_tiny' (or pass 'tiny') for the test-sized version.
"""

from configs.toy2d import common


def get_config(arg=None):
    return common.make("ot_cfm", arg)
