"""Fashion-MNIST, rectified flow / I-CFM, velocity MSE, uniform t (Liu et al. 2023; Lipman et al. 2023).

Network, data, optimizer and sampling budget are shared (configs/fashion_mnist/common.py).
Variants: None (unconditional), 'cond' (class-conditional + CFG dropout), 'tiny', 'cond_tiny'.
"""

from configs.fashion_mnist import common


def get_config(arg=None):
    return common.make("rf_uniform", arg)
