"""Fashion-MNIST, rectified flow with logit-normal(0, 1) times (Esser et al. 2024, SD3).

Network, data, optimizer and sampling budget are shared (configs/fashion_mnist/common.py).
Variants: None (unconditional), 'cond' (class-conditional + CFG dropout), 'tiny', 'cond_tiny'.
"""

from configs.fashion_mnist import common


def get_config(arg=None):
    return common.make("rf_logit_normal", arg)
