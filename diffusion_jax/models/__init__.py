"""Denoiser networks (Flax NNX): MLP, U-Net (DDPM++/NCSN++/ADM), DiT, KL autoencoder.

`build_model(cfg, rngs=...)` dispatches on `cfg.name` through the explicit dict `MODELS`. Each
model has a complete table of fields with defaults (`DEFAULTS`); unknown names or fields raise
ValueError listing the valid ones before anything is traced or compiled.

A network from outside the package: an `nnx.Module` class built as ``cls(cfg, rngs=rngs)`` (cfg the
completed `model` section) and called as ``model(x, t_in, label=, context=, context_mask=,
deterministic=, rngs=)``; add it with `register_network(name, cls, defaults)` or name it as
``model.name = 'package.module:Class'`` (its fields then come from the class attribute ``DEFAULTS``).
Parameters carry logical axis names (`layers.meta`); the mapping to mesh axes is the training layer's.

Text conditioning: the U-Net and DiT take `text_encoder` (None, or a dict with the fields of
`conditioning.TEXT_ENCODER_DEFAULTS`: dim, depth, num_heads, max_len). When set, the network is
`conditioning.TextConditioned`: a trainable `ByteTextEncoder` feeding the denoiser's cross-attention
(`context_dim` defaults to the encoder's `dim` and must equal it).
"""

from __future__ import annotations

import ml_collections
from flax import nnx

from diffusion_jax import extensions
from diffusion_jax.models.autoencoder import AutoencoderKL
from diffusion_jax.models.conditioning import TEXT_ENCODER_DEFAULTS, ByteTextEncoder, TextConditioned
from diffusion_jax.models.dit import DiT
from diffusion_jax.models.mlp import MLP
from diffusion_jax.models.unet import UNet

MODELS = {"mlp": MLP, "unet": UNet, "dit": DiT, "autoencoder": AutoencoderKL}

DEFAULTS = {
    "mlp": dict(
        dim=2,
        out_dim=0,
        width=64,
        num_layers=3,
        activation="selu",
        time_embedding="concat",
        time_dim=32,
        fourier_scale=16.0,
        num_classes=0,
    ),
    "unet": dict(
        arch="ncsnpp",
        image_size=32,
        in_channels=3,
        out_channels=0,
        nf=128,
        ch_mult=(1, 2, 2, 2),
        num_res_blocks=4,
        attn_resolutions=(16,),
        dropout=0.1,
        resblock_type="biggan",
        resamp_with_conv=True,
        fir=False,
        fir_kernel=(1, 3, 3, 1),
        skip_rescale=True,
        progressive_input="none",
        embedding_type="positional",
        fourier_scale=16.0,
        emb_mult=4,
        num_heads=1,
        head_channels=0,
        scale_shift=False,
        norm_eps=1e-6,
        num_classes=0,
        learned_null=False,
        decoder_attention="arch",
        context_dim=0,
        text_encoder=None,
    ),
    "dit": dict(
        image_size=32,
        in_channels=4,
        out_channels=0,
        patch_size=2,
        hidden_size=1152,
        depth=28,
        num_heads=16,
        mlp_ratio=4.0,
        learn_sigma=True,
        num_classes=1000,
        frequency_embedding_size=256,
        timestep_freq_shift=0,
        mlp_norm_eps=1e-6,
        context_dim=0,
        text_encoder=None,
    ),
    "autoencoder": dict(
        image_size=32,
        in_channels=3,
        out_channels=0,
        ch=128,
        ch_mult=(1, 2, 4, 4),
        num_res_blocks=2,
        attn_resolutions=(),
        z_channels=4,
        dropout=0.0,
    ),
}


def register_network(name: str, cls: type, defaults: dict, *, overwrite: bool = False) -> type:
    """Make the network class `cls` available as ``model.name=name`` with fields `defaults` (every
    field the class reads, with its default). An explicit call; see `extensions`."""
    if not (isinstance(cls, type) and issubclass(cls, nnx.Module)):
        raise ValueError(f"register_network({name!r}): expected an nnx.Module subclass, got {cls!r}")
    if not isinstance(defaults, dict) or "name" in defaults:
        raise ValueError(f"register_network({name!r}): defaults must be a dict of fields (without 'name')")
    if name in MODELS and MODELS[name] is not cls and not overwrite:
        raise ValueError(f"network {name!r} is already registered; pass overwrite=True to replace it")
    DEFAULTS[name] = dict(defaults)
    return extensions.register(MODELS, "network", name, cls, overwrite=True)


def network_class(name) -> tuple[type, dict]:
    """(class, field defaults) of the network `name` (a registered name or 'package.module:Class')."""
    try:
        cls = extensions.lookup(MODELS, "network", name)
    except ValueError as e:
        raise ValueError(f"model.name={name!r} unknown; {str(e).split('; ', 1)[-1]}") from None
    defaults = DEFAULTS.get(name) if name in MODELS else getattr(cls, "DEFAULTS", None)
    if not isinstance(defaults, dict):
        raise ValueError(f"model.name={name!r}: the class needs a DEFAULTS dict of its fields")
    return cls, defaults


def complete_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Validate `cfg.name` and field names; return a copy with every field (defaults filled in)."""
    name = cfg.get("name", None)
    _, valid = network_class(name)
    unknown = sorted(k for k in cfg.keys() if k != "name" and k not in valid)
    if unknown:
        raise ValueError(
            f"model fields {unknown} are not valid for model.name={name!r}; valid: {sorted(valid)}"
        )
    full = ml_collections.ConfigDict(dict(valid))
    for k in cfg.keys():
        if k != "name":
            v = cfg[k]
            full[k] = tuple(v) if isinstance(v, list) else v
    full.name = name
    if full.get("text_encoder") is not None:
        full.text_encoder = _complete_text_encoder(full.text_encoder)
        dim = full.text_encoder.dim
        if full.context_dim == 0:
            full.context_dim = dim
        elif full.context_dim != dim:
            raise ValueError(
                f"model.context_dim={full.context_dim} must equal model.text_encoder.dim={dim} "
                f"(the encoder output is the cross-attention context); set it to 0 or {dim}"
            )
    return full


def _complete_text_encoder(te) -> ml_collections.ConfigDict:
    te = dict(te.items()) if hasattr(te, "items") else te
    if not isinstance(te, dict):
        raise ValueError(f"model.text_encoder must be None or a dict of {sorted(TEXT_ENCODER_DEFAULTS)}")
    unknown = sorted(set(te) - set(TEXT_ENCODER_DEFAULTS))
    if unknown:
        raise ValueError(
            f"model.text_encoder fields {unknown} are not valid; valid: {sorted(TEXT_ENCODER_DEFAULTS)}"
        )
    full = {**TEXT_ENCODER_DEFAULTS, **te}
    for k, v in full.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"model.text_encoder.{k}={v!r} must be an integer >= 1")
    if full["dim"] % full["num_heads"]:
        raise ValueError(
            f"model.text_encoder.dim={full['dim']} is not divisible by num_heads={full['num_heads']}"
        )
    return ml_collections.ConfigDict(full)


def build_model(cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs) -> nnx.Module:
    """Construct the network described by the `model` config (see `DEFAULTS` for the fields)."""
    full = complete_config(cfg)
    cls, _ = network_class(full.name)
    te = full.get("text_encoder")
    if te is None:
        return cls(full, rngs=rngs)
    encoder = ByteTextEncoder(te.dim, te.depth, te.num_heads, te.max_len, rngs=rngs)
    return TextConditioned(encoder, cls(full, rngs=rngs))


__all__ = [
    "AutoencoderKL",
    "DEFAULTS",
    "DiT",
    "MLP",
    "MODELS",
    "TextConditioned",
    "UNet",
    "build_model",
    "complete_config",
    "network_class",
    "register_network",
]
