"""Fashion-MNIST, VP cosine schedule, v-prediction, v-MSE (Nichol & Dhariwal 2021; Salimans & Ho 2022).

Network, data, optimizer and sampling budget are shared (configs/fashion_mnist/common.py).
Variants: None (unconditional), 'cond' (class-conditional + CFG dropout), 'tiny', 'cond_tiny'.
"""

from configs.fashion_mnist import common


def get_config(arg=None):
    return common.make("vp_v_cosine", arg)
