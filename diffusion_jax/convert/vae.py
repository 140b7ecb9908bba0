"""diffusers `AutoencoderKL` (Stable Diffusion's KL-f8 VAE family) <-> our `models.autoencoder`.

Layout (diffusers `AutoencoderKL`): `encoder.conv_in`, `encoder.down_blocks.i.resnets.j.{norm1,
conv1, norm2, conv2, conv_shortcut}`, `encoder.down_blocks.i.downsamplers.0.conv`,
`encoder.mid_block.{resnets.0, attentions.0.{group_norm, to_q, to_k, to_v, to_out.0}, resnets.1}`,
`encoder.{conv_norm_out, conv_out}`, `quant_conv`, `post_quant_conv`, and the decoder mirrored
(`decoder.up_blocks.i` from the deepest level, `nrb + 1` resnets, `upsamplers.0.conv`).

Published configs: SD 1.x / 2.x (`block_out_channels` 128, 256, 512, 512, latent 4, scaling factor
0.18215), SDXL (the same network, 0.13025), SD3 (latent 16, no quant / post-quant convs, scaling
1.5305, shift 0.0609). Our autoencoder always has the two 1x1 quant convs; a VAE without them is
converted with identity 1x1 convs (exact: 1 * x + 0), and export refuses unless they still are.
The latent scale / shift are kept in the converted file's extras: diffusion runs on
`(z - shift) * scale` and decoding uses `z / scale + shift` (Rombach et al. 2022, Sec. 4.3.2).

Our GroupNorms use min(C // 4, 32) groups; a config whose `norm_num_groups` differs at some width
is refused (every published VAE uses 32 groups at widths >= 128, which is the same).
"""

from __future__ import annotations

import numpy as np

from diffusion_jax.convert import common as C


def _res(ours: str, theirs: str, has_skip: bool) -> list[C.Rule]:
    r = C.norm(f"{ours}.norm0", f"{theirs}.norm1") + C.conv(f"{ours}.conv0", f"{theirs}.conv1")
    r += C.norm(f"{ours}.norm1", f"{theirs}.norm2") + C.conv(f"{ours}.conv1", f"{theirs}.conv2")
    return r + (C.conv(f"{ours}.skip", f"{theirs}.conv_shortcut") if has_skip else [])


def _attn(ours: str, theirs: str) -> list[C.Rule]:
    r = C.norm(f"{ours}.norm", f"{theirs}.group_norm")
    r += C.fused_qkv(f"{ours}.attn.qkv", (f"{theirs}.to_q", f"{theirs}.to_k", f"{theirs}.to_v"))
    return r + C.linear(f"{ours}.attn.proj", f"{theirs}.to_out.0")


def _mid(ours: str, idx: int, theirs: str) -> list[C.Rule]:
    return (
        _res(f"{ours}.{idx}", f"{theirs}.resnets.0", False)
        + _attn(f"{ours}.{idx + 1}", f"{theirs}.attentions.0")
        + _res(f"{ours}.{idx + 2}", f"{theirs}.resnets.1", False)
    )


def rules(cfg) -> list[C.Rule]:
    """Rules between our autoencoder state and diffusers' `AutoencoderKL` state dict."""
    mult, nrb, ch = tuple(cfg.ch_mult), cfg.num_res_blocks, cfg.ch
    levels = len(mult)
    r = C.conv("enc_in", "encoder.conv_in")
    i, c = 0, ch
    for lvl, m in enumerate(mult):
        for j in range(nrb):
            r += _res(f"enc.{i}", f"encoder.down_blocks.{lvl}.resnets.{j}", c != ch * m)
            c, i = ch * m, i + 1
        if lvl != levels - 1:
            r += C.conv(f"enc.{i}.conv", f"encoder.down_blocks.{lvl}.downsamplers.0.conv")
            i += 1
    r += _mid("enc", i, "encoder.mid_block")
    r += C.norm("enc_norm", "encoder.conv_norm_out") + C.conv("enc_out", "encoder.conv_out")
    r += C.conv("quant", "quant_conv") + C.conv("post_quant", "post_quant_conv")
    r += C.conv("dec_in", "decoder.conv_in") + _mid("dec", 0, "decoder.mid_block")
    i = 3
    for b, lvl in enumerate(reversed(range(levels))):
        for j in range(nrb + 1):
            r += _res(f"dec.{i}", f"decoder.up_blocks.{b}.resnets.{j}", c != ch * mult[lvl])
            c, i = ch * mult[lvl], i + 1
        if lvl != 0:
            r += C.conv(f"dec.{i}.conv", f"decoder.up_blocks.{b}.upsamplers.0.conv")
            i += 1
    return r + C.norm("dec_norm", "decoder.conv_norm_out") + C.conv("dec_out", "decoder.conv_out")


PUBLISHED_SCALE = {"sd": 0.18215, "sdxl": 0.13025, "sd3": 1.5305}  # diffusers config `scaling_factor`


def config_from_diffusers(cj: dict):
    """Our autoencoder config (and extras: latent scale / shift, quant conv flags) from `config.json`."""
    import ml_collections

    bad = [t for t in cj.get("down_block_types", ()) if t != "DownEncoderBlock2D"]
    bad += [t for t in cj.get("up_block_types", ()) if t != "UpDecoderBlock2D"]
    if bad or cj.get("act_fn", "silu") != "silu" or not cj.get("mid_block_add_attention", True):
        raise C.ConversionError(
            f"diffusers AutoencoderKL: block types {sorted(set(bad))} / act_fn {cj.get('act_fn')!r} / "
            "mid-block attention off are not expressible by our autoencoder (needs Down/UpDecoderBlock2D, silu)"
        )
    boc = tuple(cj.get("block_out_channels", (64,)))
    ch = boc[0]
    if any(c % ch for c in boc):
        raise C.ConversionError(
            f"diffusers AutoencoderKL: block_out_channels {boc} are not multiples of {ch}"
        )
    groups = cj.get("norm_num_groups", 32)
    off = [c for c in boc if min(c // 4, 32) != groups]
    if off:
        raise C.ConversionError(
            f"diffusers AutoencoderKL: norm_num_groups={groups} but our GroupNorm uses min(C//4, 32) groups, "
            f"which differs at widths {off}"
        )
    cfg = ml_collections.ConfigDict(
        dict(
            name="autoencoder",
            image_size=int(cj.get("sample_size", 32)),
            in_channels=cj.get("in_channels", 3),
            out_channels=cj.get("out_channels", 3),
            ch=ch,
            ch_mult=tuple(c // ch for c in boc),
            num_res_blocks=cj.get("layers_per_block", 1),
            attn_resolutions=(),
            z_channels=cj.get("latent_channels", 4),
            dropout=0.0,
        )  # fmt: skip
    )
    extra = dict(
        latent_scale=float(cj.get("scaling_factor", 0.18215)),
        latent_shift=float(cj.get("shift_factor") or 0.0),
        use_quant_conv=bool(cj.get("use_quant_conv", True)),
        use_post_quant_conv=bool(cj.get("use_post_quant_conv", True)),
    )
    return cfg, extra


def _identity_conv(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.eye(n, dtype=np.float32)[None, None], np.zeros(n, np.float32)


def from_diffusers(cj: dict, sd: dict[str, np.ndarray], *, allow_partial: bool = False):
    """diffusers config.json dict + state dict -> (config, {our key: array}, problems, extras)."""
    from flax import nnx

    from diffusion_jax.models import build_model

    cfg, extra = config_from_diffusers(cj)
    shapes = C.flat_shapes(nnx.state(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))))
    sd = dict(sd)
    z = cfg.z_channels
    for flag, name, n in (
        ("use_quant_conv", "quant_conv", 2 * z),
        ("use_post_quant_conv", "post_quant_conv", z),
    ):
        if not extra[flag]:  # SD3: no conv there; ours holds an exact identity
            w, b = _identity_conv(n)
            sd[f"{name}.weight"], sd[f"{name}.bias"] = w.transpose(3, 2, 0, 1), b
    params, problems = C.apply_rules(
        rules(cfg), sd, shapes, what="diffusers AutoencoderKL", allow_partial=allow_partial
    )
    return cfg, params, problems, extra


def to_diffusers(cfg, params: dict[str, np.ndarray], extra: dict | None = None) -> tuple[dict, dict]:
    """Our autoencoder -> (diffusers config.json dict, state dict)."""
    extra = extra or {}
    sd = C.export_rules(rules(cfg), params)
    for flag, name in (("use_quant_conv", "quant"), ("use_post_quant_conv", "post_quant")):
        if not extra.get(flag, True):
            w, b = _identity_conv(params[f"{name}.bias"].shape[0])
            if not (
                np.array_equal(params[f"{name}.kernel"], w) and np.array_equal(params[f"{name}.bias"], b)
            ):
                raise ValueError(f"VAE export: {flag}=False but our {name} conv is no longer the identity")
            key = "quant_conv" if name == "quant" else "post_quant_conv"
            del sd[f"{key}.weight"], sd[f"{key}.bias"]
    n = len(cfg.ch_mult)
    cj = {
        "_class_name": "AutoencoderKL", "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels or cfg.in_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult], "layers_per_block": cfg.num_res_blocks,
        "act_fn": "silu", "latent_channels": cfg.z_channels, "norm_num_groups": min(cfg.ch // 4, 32),
        "sample_size": cfg.image_size, "scaling_factor": extra.get("latent_scale", 0.18215),
        "shift_factor": extra.get("latent_shift") or None,
        "use_quant_conv": extra.get("use_quant_conv", True),
        "use_post_quant_conv": extra.get("use_post_quant_conv", True),
    }  # fmt: skip
    if cfg.attn_resolutions:
        raise ValueError(
            "VAE export: attn_resolutions must be empty (diffusers' encoder blocks have no attention)"
        )
    return cj, sd
