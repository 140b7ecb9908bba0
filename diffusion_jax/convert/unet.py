"""diffusers `UNet2DModel` (the DDPM family, e.g. `google/ddpm-cifar10-32`) <-> our `models.unet`.

Layout: `conv_in`, `time_embedding.linear_{1,2}`, `down_blocks.i.resnets.j.{norm1, conv1,
time_emb_proj, norm2, conv2, conv_shortcut}`, `down_blocks.i.attentions.j.{group_norm, to_q, to_k,
to_v, to_out.0}` (AttnDownBlock2D), `down_blocks.i.downsamplers.0.conv`, `mid_block.{resnets.0,
attentions.0, resnets.1}`, `up_blocks.i` (deepest first, `layers_per_block + 1` resnets, attention
after each in AttnUpBlock2D, `upsamplers.0.conv`), `conv_norm_out`, `conv_out`.

This is Ho et al. 2020's network: our U-Net with `resblock_type='ddpm'`, no skip rescaling,
sinusoidal time embedding [sin, cos] with frequencies 1e4^(-k/(half-1)) (diffusers'
`flip_sin_to_cos=False, freq_shift=1`), attention after every decoder block
(`decoder_attention='per_block'`), stride-2 downsampling convs padded (0, 1)
(`downsample_padding=0`). Configs outside that family are refused with the field that differs.
The DDPM CIFAR-10 model predicts eps on the 1000-step linear-beta schedule (betas 1e-4 .. 0.02).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from diffusion_jax.convert import common as C
from diffusion_jax.convert.vae import _attn

REQUIRED = dict(
    act_fn="silu", center_input_sample=False, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    time_embedding_type="positional", mid_block_scale_factor=1, resnet_time_scale_shift="default",
    class_embed_type=None, num_class_embeds=None, add_attention=True, attn_norm_num_groups=None,
    downsample_type="conv", upsample_type="conv",
)  # fmt: skip
DOWN, UP = ("DownBlock2D", "AttnDownBlock2D"), ("UpBlock2D", "AttnUpBlock2D")


def config_from_diffusers(cj: dict) -> ml_collections.ConfigDict:
    """Our U-Net config from a `UNet2DModel` config.json (refusing fields we cannot express)."""
    bad = {k: cj[k] for k, v in REQUIRED.items() if k in cj and cj[k] != v}
    down, up = list(cj.get("down_block_types", ())), list(cj.get("up_block_types", ()))
    if bad or any(t not in DOWN for t in down) or any(t not in UP for t in up) or len(down) != len(up):
        raise C.ConversionError(
            f"diffusers UNet2DModel: fields {bad} / blocks {down} {up} are outside the DDPM family we "
            f"convert (needs {REQUIRED} and blocks from {DOWN} / {UP})"
        )
    boc = tuple(cj.get("block_out_channels", (224, 448, 672, 896)))
    nf, size = boc[0], int(cj.get("sample_size", 32))
    down_attn = [t == "AttnDownBlock2D" for t in down]
    if down_attn != [t == "AttnUpBlock2D" for t in reversed(up)]:
        raise C.ConversionError(
            f"diffusers UNet2DModel: attention blocks of {down} and {up} are not mirrored"
        )
    groups = cj.get("norm_num_groups", 32)
    off = [c for c in boc if min(c // 4, 32) != groups or c % nf]
    if off:
        raise C.ConversionError(
            f"diffusers UNet2DModel: widths {off} are not multiples of {nf} or use norm_num_groups={groups} "
            "where our GroupNorm has min(C//4, 32) groups"
        )
    hd = cj.get("attention_head_dim")
    return ml_collections.ConfigDict(
        dict(
            name="unet",
            arch="ncsnpp",
            image_size=size,
            in_channels=cj.get("in_channels", 3),
            out_channels=cj.get("out_channels", 3),
            nf=nf,
            ch_mult=tuple(c // nf for c in boc),
            num_res_blocks=cj.get("layers_per_block", 2),
            attn_resolutions=tuple(size >> i for i, a in enumerate(down_attn) if a),
            dropout=float(cj.get("dropout", 0.0)),
            resblock_type="ddpm",
            resamp_with_conv=True,
            fir=False,
            fir_kernel=(1, 3, 3, 1),
            skip_rescale=False,
            progressive_input="none",
            embedding_type="positional",
            fourier_scale=16.0,
            emb_mult=4,
            num_heads=1,
            head_channels=int(hd) if hd else 0,
            scale_shift=False,
            norm_eps=float(cj.get("norm_eps", 1e-5)),
            num_classes=0,
            learned_null=False,
            decoder_attention="per_block",
            context_dim=0,
            text_encoder=None,
        )  # fmt: skip
    )


def _res(ours: str, theirs: str, has_skip: bool) -> list[C.Rule]:
    r = C.norm(f"{ours}.norm0", f"{theirs}.norm1") + C.conv(f"{ours}.conv0", f"{theirs}.conv1")
    r += C.linear(f"{ours}.emb", f"{theirs}.time_emb_proj")
    r += C.norm(f"{ours}.norm1", f"{theirs}.norm2") + C.conv(f"{ours}.conv1", f"{theirs}.conv2")
    return r + (C.conv(f"{ours}.skip", f"{theirs}.conv_shortcut") if has_skip else [])


def rules(cfg) -> list[C.Rule]:
    """Rules between our (DDPM-family) U-Net state and diffusers' `UNet2DModel` state dict."""
    mult, nrb, nf = tuple(cfg.ch_mult), cfg.num_res_blocks, cfg.nf
    res = [cfg.image_size >> i for i in range(len(mult))]
    r = C.conv("conv_in", "conv_in") + C.linear("emb0", "time_embedding.linear_1")
    r += C.linear("emb1", "time_embedding.linear_2")
    i, c, skips = 0, nf, [nf]
    for lvl, m in enumerate(mult):
        for j in range(nrb):
            r += _res(f"enc.{i}", f"down_blocks.{lvl}.resnets.{j}", c != nf * m)
            c, i = nf * m, i + 1
            if res[lvl] in cfg.attn_resolutions:
                r += _attn(f"enc.{i}", f"down_blocks.{lvl}.attentions.{j}")
                i += 1
            skips.append(c)
        if lvl != len(mult) - 1:
            r += C.conv(f"enc.{i}.conv", f"down_blocks.{lvl}.downsamplers.0.conv")
            i += 1
            skips.append(c)
    r += _res("mid.0", "mid_block.resnets.0", False) + _attn("mid.1", "mid_block.attentions.0")
    r += _res("mid.2", "mid_block.resnets.1", False)
    i = 0
    for b, lvl in enumerate(reversed(range(len(mult)))):
        for j in range(nrb + 1):
            cin = c + skips.pop()
            r += _res(f"dec.{i}", f"up_blocks.{b}.resnets.{j}", cin != nf * mult[lvl])
            c, i = nf * mult[lvl], i + 1
            if res[lvl] in cfg.attn_resolutions:
                r += _attn(f"dec.{i}", f"up_blocks.{b}.attentions.{j}")
                i += 1
        if lvl != 0:
            r += C.conv(f"dec.{i}.conv", f"up_blocks.{b}.upsamplers.0.conv")
            i += 1
    return r + C.norm("norm_out", "conv_norm_out") + C.conv("conv_out", "conv_out")


def from_diffusers(cj: dict, sd: dict[str, np.ndarray], *, allow_partial: bool = False):
    """diffusers config.json dict + state dict -> (config, {our key: array}, problems)."""
    from flax import nnx

    from diffusion_jax.models import build_model

    cfg = config_from_diffusers(cj)
    shapes = C.flat_shapes(nnx.state(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))))
    params, problems = C.apply_rules(
        rules(cfg), sd, shapes, what="diffusers UNet2DModel", allow_partial=allow_partial
    )
    return cfg, params, problems


def to_diffusers(cfg, params: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Our DDPM-family U-Net -> (UNet2DModel config.json dict, state dict)."""
    want = dict(arch="ncsnpp", resblock_type="ddpm", skip_rescale=False, embedding_type="positional",
                progressive_input="none", fir=False, resamp_with_conv=True, scale_shift=False, num_classes=0,
                context_dim=0, emb_mult=4, decoder_attention="per_block")  # fmt: skip
    bad = {k: cfg.get(k) for k, v in want.items() if cfg.get(k) != v}
    if bad:
        raise ValueError(f"U-Net export to UNet2DModel: fields {bad} differ from the DDPM family ({want})")
    n = len(cfg.ch_mult)
    res = [cfg.image_size >> i for i in range(n)]
    attn = [r in cfg.attn_resolutions for r in res]
    cj = {
        "_class_name": "UNet2DModel", "sample_size": cfg.image_size, "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels or cfg.in_channels, "block_out_channels": [cfg.nf * m for m in cfg.ch_mult],
        "layers_per_block": cfg.num_res_blocks, "down_block_types": [DOWN[a] for a in attn],
        "up_block_types": [UP[a] for a in reversed(attn)], "norm_eps": cfg.norm_eps,
        "norm_num_groups": min(cfg.nf // 4, 32), "attention_head_dim": cfg.head_channels or None,
        "flip_sin_to_cos": False, "freq_shift": 1, "downsample_padding": 0, "act_fn": "silu",
        "time_embedding_type": "positional", "center_input_sample": False, "mid_block_scale_factor": 1,
    }  # fmt: skip
    return cj, C.export_rules(rules(cfg), params)


def ddpm_cifar10_config() -> dict:
    """The published `google/ddpm-cifar10-32` UNet2DModel config (Ho et al. 2020, CIFAR-10, 35.7M)."""
    return {
        "_class_name": "UNet2DModel", "sample_size": 32, "in_channels": 3, "out_channels": 3,
        "block_out_channels": [128, 256, 256, 256], "layers_per_block": 2,
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        "norm_eps": 1e-6, "norm_num_groups": 32, "attention_head_dim": None, "flip_sin_to_cos": False,
        "freq_shift": 1, "downsample_padding": 0, "act_fn": "silu", "time_embedding_type": "positional",
        "center_input_sample": False, "mid_block_scale_factor": 1,
    }  # fmt: skip
