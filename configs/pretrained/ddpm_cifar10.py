"""DDPM on CIFAR-10 (Ho et al. 2020; FID 3.17 with 1000 ancestral steps, Table 1), pixel space,
unconditional, the diffusers `UNet2DModel` release `google/ddpm-cifar10-32` (35.7M parameters).

  get_config()       the published model: convert it once with
                     python -m diffusion_jax.convert unet ddpm-cifar10-32 --out checkpoints/pretrained/ddpm_cifar10.safetensors
  get_config('tiny') a random-weight tiny U-Net for the tests (path set by the test)
Sampling: DDIM 50 steps on the DDPM schedule (1000 linear betas 1e-4 .. 0.02), eps prediction.
"""

from configs.pretrained import common

DIR = "checkpoints/pretrained"


def get_config(arg=None):
    if arg not in (None, "", "tiny"):
        raise ValueError(f"pretrained/ddpm_cifar10: variant {arg!r} unknown; valid: None, 'tiny'")
    tiny = arg == "tiny"
    # FID reference: the CIFAR-10 training-set statistics published with TTUR / pytorch-fid
    ref = "tiny_stats.npz" if tiny else "fid_stats_cifar10_train.npz"
    cfg = common.sampling_config(steps=4 if tiny else 50, reference_stats=f"checkpoints/reference/{ref}")
    path = f"{DIR}/{'unet_tiny' if tiny else 'ddpm_cifar10'}.safetensors"
    den = common.entry(
        path,
        "(random weights, written by the tests)" if tiny else "https://huggingface.co/google/ddpm-cifar10-32",
        f"python -m diffusion_jax.convert unet ddpm-cifar10-32 --out {path}",
    )
    cfg.pretrained = dict(denoiser=den, autoencoder=None, kind="eps", time_input="ddpm_index",
                          latent_scale=None, latent_shift=None, init_noise="marginal")  # fmt: skip
    return cfg
