"""Published checkpoints in JAX: converters from PyTorch layouts into our NNX models, and back.

Supported (see each module's docstring for the exact key layout):
  dit         official facebookresearch/DiT `.pt` state dicts and diffusers `DiTTransformer2DModel`
  unet        diffusers `UNet2DModel` (the DDPM CIFAR-10 family)
  vae         diffusers `AutoencoderKL` (SD 1.x / 2.x / SDXL, and the 16-channel SD3 VAE)
  clip_text   transformers `CLIPTextModel`;  t5_encoder  transformers `T5EncoderModel`

API: `convert`, `load_module`, `export`, `save_model` (in `api`); CLI: `python -m diffusion_jax.convert`.
Converted files are safetensors of our state + JSON metadata, with a `.sha256` sidecar.
"""

from diffusion_jax.convert.api import LAYOUTS, build_module, convert, export, load_module, save_model
from diffusion_jax.convert.common import ConversionError, Converted, read_converted

__all__ = [
    "LAYOUTS",
    "ConversionError",
    "Converted",
    "build_module",
    "convert",
    "export",
    "load_module",
    "read_converted",
    "save_model",
]
