"""Toy 2-D, reflow (Liu et al. 2023, "Flow Straight and Fast", Alg. 1): rectified flow trained on
(x0, x1) pairs drawn from a trained flow, so its paths straighten (k-rectified flow).

    python -m diffusion_jax.train --config=configs/toy2d/rf_uniform.py --workdir=runs/rf1     # 1-RF
    python -m diffusion_jax.reflow --workdir=runs/rf1 --out=pairs1.npz --num=100000           # (x0, ODE(x0))
    python -m diffusion_jax.train --config=configs/toy2d/reflow.py --workdir=runs/rf2 \\
        --config.data.pairs_path=pairs1.npz                                                    # 2-RF

`data.pairs_path` (required: `objective.coupling='reflow'` refuses to train without it) names the
pairs file; the batches are its pairs (x1 as the data, x0 as the paired source sample); `data.name`
still names the target distribution that `evaluate` scores against. The network, optimizer and
sampler are those of every toy2d config (configs/toy2d/common.py); the new flow is trained from a
fresh initialisation. Variants: the dataset (`moons`, `8gaussians`, ...; `_tiny` for tests).
"""

from configs.toy2d import common


def get_config(arg=None):
    return common.make("reflow", arg)
