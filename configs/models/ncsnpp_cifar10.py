"""score_sde NCSN++ cont. (VE) for CIFAR-10 (Song et al. 2021, App. H; reference config
`configs/ve/cifar10_ncsnpp_continuous.py` of yang-song/score_sde): as DDPM++ but FIR resampling
with kernel [1,3,3,1], progressive input 'residual' (combine 'sum'), Gaussian Fourier noise
embedding with scale 16 (fed log sigma: the caller passes t_in = log(sigma)).
Parameters: 62,758,915 including the 128 fixed Fourier frequencies (EDM Table 7: 62.76M).
`get_config('deep')` gives NCSN++ cont. deep (8 res blocks per level).
"""

import ml_collections

from configs.models import ddpmpp_cifar10


def get_config(arg=None):
    """arg None (NCSN++ cont.) or 'deep'."""
    cfg = ddpmpp_cifar10.get_config(arg)
    cfg.fir = True
    cfg.progressive_input = "residual"
    cfg.embedding_type = "fourier"
    cfg.fourier_scale = 16.0
    return ml_collections.ConfigDict(cfg.to_dict())
