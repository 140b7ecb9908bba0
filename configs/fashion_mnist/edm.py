"""Fashion-MNIST, EDM preconditioning, log-normal sigma, lambda(sigma) weighting (Karras et al. 2022, Table 1).

Network, data, optimizer and sampling budget are shared (configs/fashion_mnist/common.py).
Variants: None (unconditional), 'cond' (class-conditional + CFG dropout), 'tiny', 'cond_tiny'.
"""

from configs.fashion_mnist import common


def get_config(arg=None):
    return common.make("edm", arg)
