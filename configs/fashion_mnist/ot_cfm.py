"""Fashion-MNIST, OT-CFM, minibatch OT pairs by in-graph Sinkhorn (Tong et al. 2024).

Network, data, optimizer and sampling budget are shared (configs/fashion_mnist/common.py).
Variants: None (unconditional), 'cond' (class-conditional + CFG dropout), 'tiny', 'cond_tiny'.
"""

from configs.fashion_mnist import common


def get_config(arg=None):
    return common.make("ot_cfm", arg)
