"""DiT-XL/2 (Peebles & Xie 2023) with the Stable Diffusion VAE, class-conditional ImageNet.

  get_config('256')  DiT-XL/2 256x256 (FID-50K 2.27 with cfg 1.5, 250 DDPM steps; paper Table 4)
  get_config('512')  DiT-XL/2 512x512 (FID-50K 3.04, Table 5)
  get_config('tiny') a 2-block random-weight DiT + 2-level VAE for the tests (paths set by the test)

The published files are converted once (no download at run time), e.g.
  python -m diffusion_jax.convert dit DiT-XL-2-256x256.pt --out checkpoints/pretrained/dit_xl2_256.safetensors
  python -m diffusion_jax.convert vae sd-vae-ft-ema --out checkpoints/pretrained/sd_vae_ft_ema.safetensors
Sampling: DDIM 50 steps on DiT's schedule, classifier-free guidance 4.0 on all latent channels against
the learned null class 1000 (the official sampling script guides only the first three channels; the
diffusers pipeline guides all four, as here). Learned-sigma channels are dropped. Sampling starts from
x_T = eps ~ N(0, I) at the first timestep, as the official and diffusers samplers do
(`pretrained.init_noise='marginal'`; 'sigma' gives the engine's default sigma(t0) eps).
"""

from configs.pretrained import common

DIR = "checkpoints/pretrained"
VARIANTS = ("256", "512", "tiny")


def get_config(arg=None):
    arg = arg or "256"
    if arg not in VARIANTS:
        raise ValueError(f"pretrained/dit_xl2: variant {arg!r} unknown; valid: {VARIANTS}")
    tiny = arg == "tiny"
    # FID reference: the ADM evaluation suite's ImageNet reference batches (Dhariwal & Nichol 2021), which
    # DiT reports against; their .npz holds mu / sigma of the same Inception pool3 features
    ref = (
        "tiny_stats.npz"
        if tiny
        else {"256": "VIRTUAL_imagenet256_labeled.npz", "512": "VIRTUAL_imagenet512.npz"}[arg]
    )
    cfg = common.sampling_config(steps=4 if tiny else 50, labels="0-9" if tiny else "0-999", guidance=4.0,
                                 reference_stats=f"checkpoints/reference/{ref}")  # fmt: skip
    if tiny:
        den = common.entry(f"{DIR}/dit_tiny.safetensors", "(random weights, written by the tests)",
                           "python -m diffusion_jax.convert dit <tiny DiT folder> --out ...")  # fmt: skip
        ae = common.entry(f"{DIR}/vae_tiny.safetensors", "(random weights, written by the tests)",
                          "python -m diffusion_jax.convert vae <tiny VAE folder> --out ...")  # fmt: skip
    else:
        name = f"DiT-XL-2-{arg}x{arg}.pt"
        den = common.entry(
            f"{DIR}/dit_xl2_{arg}.safetensors",
            f"https://dl.fbaipublicfiles.com/DiT/models/{name} (or the diffusers folder facebook/DiT-XL-2-{arg})",
            f"python -m diffusion_jax.convert dit {name} --out {DIR}/dit_xl2_{arg}.safetensors",
        )
        ae = common.entry(
            f"{DIR}/sd_vae_ft_ema.safetensors",
            "https://huggingface.co/stabilityai/sd-vae-ft-ema (the VAE DiT was trained with)",
            f"python -m diffusion_jax.convert vae sd-vae-ft-ema --out {DIR}/sd_vae_ft_ema.safetensors",
        )
    cfg.pretrained = dict(denoiser=den, autoencoder=ae, kind="eps", time_input="ddpm_index",
                          latent_scale=None, latent_shift=None, init_noise="marginal")  # fmt: skip
    return cfg
