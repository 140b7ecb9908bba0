"""Fashion-MNIST, VP diffusion, eps-prediction, L_simple (Ho et al. 2020).

Network, data, optimizer and sampling budget are shared (configs/fashion_mnist/common.py).
Variants: None (unconditional), 'cond' (class-conditional + CFG dropout), 'tiny', 'cond_tiny'.
"""

from configs.fashion_mnist import common


def get_config(arg=None):
    return common.make("vp_eps", arg)
