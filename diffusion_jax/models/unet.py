"""U-Net denoisers: score_sde DDPM++ / NCSN++ and ADM (as ported in EDM), one skeleton.

References
- Ho et al. 2020 (DDPM), Sec. 4 / App. B: the wide-ResNet U-Net with attention at 16x16.
- Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. H: DDPM++ / NCSN++
  (BigGAN residual up/down blocks, skip rescaling by 1/sqrt(2), FIR resampling with kernel
  [1,3,3,1] (Zhang 2019 / StyleGAN2), progressive growing of the input, Gaussian Fourier
  noise embedding). Layer list mirrors `models/ncsnpp.py` of yang-song/score_sde.
- Dhariwal & Nichol 2021 (ADM), Sec. 3: attention at several resolutions with 64 channels per
  head, BigGAN up/down blocks, adaptive group norm ("scale-shift norm"), dropout. Layout mirrors
  EDM's `DhariwalUNet` (Karras et al. 2022, `training/networks.py`), whose class embedding is a
  bias-free linear map of the one-hot label (so the null label embeds to zero).

Both layouts share one encoder / middle / decoder skeleton; `arch` selects the two details that
differ: where decoder attention sits (ncsnpp: once per level, adm: after every block) and whether
up/down residual blocks always carry a 1x1 skip conv (ncsnpp BigGAN blocks) or only when the
channel count changes (adm). All other options are config fields; `decoder_attention`
('per_level' / 'per_block', default 'arch') overrides the first, e.g. for DDPM (Ho et al. 2020 and
diffusers' `UNet2DModel`: attention after every decoder block at the attention resolutions).

Call: `model(x [B,H,W,C], t_in [B], *, label=None, context=None, context_mask=None,
deterministic=True, rngs=None) -> [B,H,W,out_channels]`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.models import layers as L
from diffusion_jax.models.conditioning import ClassEmbedding

ARCHS = ("ncsnpp", "adm")
RESBLOCK_TYPES = ("biggan", "ddpm")
PROGRESSIVE_INPUTS = ("none", "input_skip", "residual")
EMBEDDING_TYPES = ("positional", "fourier")
DECODER_ATTENTION = ("arch", "per_level", "per_block")


class ResBlock(nnx.Module):
    """Residual block with time embedding, optional 2x up/down (BigGAN style) and scale-shift norm."""

    def __init__(
        self,
        cin,
        cout,
        emb_dim,
        *,
        up=False,
        down=False,
        fir=False,
        fir_kernel=(1, 3, 3, 1),
        dropout=0.0,
        skip_rescale=False,
        scale_shift=False,
        skip_on_resample=True,
        eps=1e-6,
        rngs,
    ):
        self.up, self.down, self.fir, self.fir_kernel = up, down, fir, tuple(fir_kernel)
        self.dropout, self.skip_rescale, self.scale_shift = dropout, skip_rescale, scale_shift
        self.norm0 = L.group_norm(cin, eps=eps, rngs=rngs)
        self.conv0 = L.conv(cin, cout, 3, rngs=rngs)
        self.emb = L.linear(emb_dim, cout * (2 if scale_shift else 1), rngs=rngs)
        self.norm1 = L.group_norm(cout, eps=eps, rngs=rngs)
        self.conv1 = L.conv(cout, cout, 3, zero=True, rngs=rngs)
        need_skip = cin != cout or (skip_on_resample and (up or down))
        self.skip = L.conv(cin, cout, 1, rngs=rngs) if need_skip else None

    def _resample(self, x):
        if self.up:
            return L.fir_upsample(x, self.fir_kernel) if self.fir else L.naive_upsample(x)
        if self.down:
            return L.fir_downsample(x, self.fir_kernel) if self.fir else L.naive_downsample(x)
        return x

    def __call__(self, x, emb, *, deterministic=True, rngs=None):
        h = self._resample(jax.nn.silu(self.norm0(x)))
        x = self._resample(x)
        h = self.conv0(h)
        e = self.emb(emb)[:, None, None, :]
        if self.scale_shift:
            scale, shift = jnp.split(e, 2, axis=-1)
            h = jax.nn.silu(self.norm1(h) * (1 + scale) + shift)
        else:
            h = jax.nn.silu(self.norm1(h + e))
        h = self.conv1(L.dropout(h, self.dropout, deterministic=deterministic, rngs=rngs))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class AttnBlock(nnx.Module):
    """Spatial self-attention (+ optional cross-attention over a context) with a residual connection."""

    def __init__(self, c, num_heads, *, skip_rescale=False, eps=1e-6, context_dim=0, rngs):
        self.skip_rescale = skip_rescale
        self.norm = L.group_norm(c, eps=eps, rngs=rngs)
        self.attn = L.SelfAttention(c, num_heads, zero_out=True, rngs=rngs)
        self.cross = L.CrossAttention(c, context_dim, num_heads, rngs=rngs) if context_dim else None

    def __call__(self, x, context=None, context_mask=None):
        b, hh, ww, c = x.shape
        h = self.attn(self.norm(x).reshape(b, hh * ww, c)).reshape(x.shape)
        x = (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h
        if self.cross is not None and context is not None:
            tok = x.reshape(b, hh * ww, c)
            x = (tok + self.cross(tok, context, context_mask)).reshape(x.shape)
        return x


def validate_unet_config(cfg) -> None:
    """Raise ValueError naming the field and constraint for an inconsistent U-Net config."""
    if cfg.arch not in ARCHS:
        raise ValueError(f"model.arch={cfg.arch!r} unknown; valid: {ARCHS}")
    if cfg.resblock_type not in RESBLOCK_TYPES:
        raise ValueError(f"model.resblock_type={cfg.resblock_type!r} unknown; valid: {RESBLOCK_TYPES}")
    if cfg.progressive_input not in PROGRESSIVE_INPUTS:
        raise ValueError(f"model.progressive_input={cfg.progressive_input!r}; valid: {PROGRESSIVE_INPUTS}")
    if cfg.embedding_type not in EMBEDDING_TYPES:
        raise ValueError(f"model.embedding_type={cfg.embedding_type!r} unknown; valid: {EMBEDDING_TYPES}")
    if cfg.get("decoder_attention", "arch") not in DECODER_ATTENTION:
        raise ValueError(
            f"model.decoder_attention={cfg.decoder_attention!r} unknown; valid: {DECODER_ATTENTION}"
        )
    mult = tuple(cfg.ch_mult)
    if not mult or any((not isinstance(m, int)) or m < 1 for m in mult):
        raise ValueError(f"model.ch_mult={mult!r} must be a non-empty sequence of positive ints")
    n_down = len(mult) - 1
    if cfg.image_size % (2**n_down):
        raise ValueError(
            f"model.image_size={cfg.image_size} must be divisible by 2**(len(ch_mult)-1)={2**n_down} "
            f"(the U-Net downsamples {n_down} times)"
        )
    for m in mult:
        c = cfg.nf * m
        if c < 4 or c % min(c // 4, 32):
            raise ValueError(f"model.nf*ch_mult = {c} channels do not fit GroupNorm(min(C//4, 32) groups)")
        heads = cfg.num_heads if cfg.head_channels <= 0 else c // cfg.head_channels
        if heads < 1 or c % heads or (cfg.head_channels > 0 and c % cfg.head_channels):
            raise ValueError(f"model.head_channels/num_heads do not divide {c} channels (ch_mult={mult})")
    resolutions = [cfg.image_size >> i for i in range(len(mult))]
    bad = [r for r in cfg.attn_resolutions if r not in resolutions]
    if bad:
        raise ValueError(f"model.attn_resolutions {bad} not among the U-Net resolutions {resolutions}")
    if cfg.num_res_blocks < 1:
        raise ValueError(f"model.num_res_blocks={cfg.num_res_blocks} must be >= 1")


class UNet(nnx.Module):
    """DDPM++ / NCSN++ / ADM U-Net; see the module docstring. `cfg` is the `model` ConfigDict."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        validate_unet_config(cfg)
        self.cfg_image_size = cfg.image_size
        self.in_channels = cfg.in_channels
        adm = cfg.arch == "adm"
        nf, mult, nrb = cfg.nf, tuple(cfg.ch_mult), cfg.num_res_blocks
        self.num_levels, self.nrb = len(mult), nrb
        self.adm, self.biggan = adm, cfg.resblock_type == "biggan"
        self.progressive_input, self.embedding_type = cfg.progressive_input, cfg.embedding_type
        self.skip_rescale, self.fir, self.fir_kernel = cfg.skip_rescale, cfg.fir, tuple(cfg.fir_kernel)
        self.dropout = cfg.dropout
        eps = cfg.norm_eps
        emb_dim = nf * cfg.emb_mult
        self.attn_res = tuple(cfg.attn_resolutions)
        self.resolutions = tuple(cfg.image_size >> i for i in range(len(mult)))
        out_ch = cfg.out_channels or cfg.in_channels

        # Noise embedding: (positional | fourier) -> Linear -> SiLU -> Linear (Song et al. App. H).
        self.nf = nf
        if cfg.embedding_type == "fourier":
            self.fourier = L.GaussianFourierProjection(nf, cfg.fourier_scale, rngs=rngs)
            ed = 2 * nf
        else:
            self.fourier = None
            ed = nf
        self.emb0 = L.linear(ed, emb_dim, rngs=rngs)
        self.emb1 = L.linear(emb_dim, emb_dim, rngs=rngs)
        self.num_classes = cfg.num_classes
        self.label_emb = (
            ClassEmbedding(cfg.num_classes, emb_dim, learned_null=cfg.learned_null, rngs=rngs)
            if cfg.num_classes
            else None
        )
        self.context_dim = cfg.context_dim

        rb = dict(
            fir=cfg.fir,
            fir_kernel=cfg.fir_kernel,
            dropout=cfg.dropout,
            skip_rescale=cfg.skip_rescale,
            scale_shift=cfg.scale_shift,
            skip_on_resample=not adm,
            eps=eps,
            rngs=rngs,
        )

        def heads(c):
            return c // cfg.head_channels if cfg.head_channels > 0 else cfg.num_heads

        def attn(c):
            return AttnBlock(
                c, heads(c), skip_rescale=cfg.skip_rescale, eps=eps, context_dim=cfg.context_dim, rngs=rngs
            )

        def down(c):
            if self.biggan:
                return ResBlock(c, c, emb_dim, down=True, **rb)
            return L.Resample(
                c, up=False, with_conv=cfg.resamp_with_conv, fir=cfg.fir, fir_kernel=cfg.fir_kernel, rngs=rngs
            )

        def up(c):
            if self.biggan:
                return ResBlock(c, c, emb_dim, up=True, **rb)
            return L.Resample(
                c, up=True, with_conv=cfg.resamp_with_conv, fir=cfg.fir, fir_kernel=cfg.fir_kernel, rngs=rngs
            )

        self.conv_in = L.conv(cfg.in_channels, nf * (mult[0] if adm else 1), 3, rngs=rngs)
        enc, pyr = [], []
        c = nf * (mult[0] if adm else 1)
        skips = [c]
        pyr_c = cfg.in_channels
        for lvl, m in enumerate(mult):
            for _ in range(nrb):
                enc.append(ResBlock(c, nf * m, emb_dim, **rb))
                c = nf * m
                if self.resolutions[lvl] in self.attn_res:
                    enc.append(attn(c))
                skips.append(c)
            if lvl != len(mult) - 1:
                enc.append(down(c))
                if cfg.progressive_input == "residual":
                    pyr.append(
                        L.Resample(
                            pyr_c,
                            c,
                            up=False,
                            with_conv=True,
                            fir=cfg.fir,
                            fir_kernel=cfg.fir_kernel,
                            rngs=rngs,
                        )
                    )
                    pyr_c = c
                elif cfg.progressive_input == "input_skip":
                    pyr.append(L.conv(cfg.in_channels, c, 1, rngs=rngs))
                skips.append(c)
        self.enc, self.pyr = nnx.List(enc), nnx.List(pyr)
        self.mid = nnx.List([ResBlock(c, c, emb_dim, **rb), attn(c), ResBlock(c, c, emb_dim, **rb)])
        dec = []
        dec_attn = cfg.get("decoder_attention", "arch")
        per_block = adm if dec_attn == "arch" else dec_attn == "per_block"
        for lvl in reversed(range(len(mult))):
            for _ in range(nrb + 1):
                dec.append(ResBlock(c + skips.pop(), nf * mult[lvl], emb_dim, **rb))
                c = nf * mult[lvl]
                if per_block and self.resolutions[lvl] in self.attn_res:
                    dec.append(attn(c))
            if not per_block and self.resolutions[lvl] in self.attn_res:
                dec.append(attn(c))
            if lvl != 0:
                dec.append(up(c))
        assert not skips
        self.dec = nnx.List(dec)
        self.norm_out = L.group_norm(c, eps=eps, rngs=rngs)
        self.conv_out = L.conv(c, out_ch, 3, zero=True, rngs=rngs)

    def _time_embedding(self, t_in, label):
        if self.fourier is not None:
            e = self.fourier(t_in)
        elif self.adm:
            e = L.positional_embedding(t_in, self.nf, endpoint=False, sin_first=False)
        else:
            e = L.positional_embedding(t_in, self.nf, endpoint=True, sin_first=True)
        e = self.emb1(jax.nn.silu(self.emb0(e)))
        if self.label_emb is not None:
            e = e + self.label_emb(label, batch=t_in.shape[0])
        elif label is not None:
            raise ValueError("label given but model.num_classes == 0 (unconditional model)")
        return jax.nn.silu(e)

    def __call__(
        self, x, t_in, *, label=None, context=None, context_mask=None, deterministic=True, rngs=None
    ):
        """x [B,H,W,C], t_in [B] -> [B,H,W,out_channels]."""
        s = self.cfg_image_size
        if x.ndim != 4 or x.shape[1:] != (s, s, self.in_channels):
            raise ValueError(f"UNet input x must be [B,{s},{s},{self.in_channels}], got {x.shape}")
        if context is not None and not self.context_dim:
            raise ValueError("context given but model.context_dim == 0 (no cross-attention)")
        emb = self._time_embedding(t_in, label)
        kw = dict(deterministic=deterministic, rngs=rngs)
        ctx = dict(context=context, context_mask=context_mask)

        def run(mod, h):
            if isinstance(mod, ResBlock):
                return mod(h, emb, **kw)
            if isinstance(mod, AttnBlock):
                return mod(h, **ctx)
            return mod(h)

        h = self.conv_in(x)
        hs, pyramid, i, p = [h], x, 0, 0
        for lvl in range(self.num_levels):
            for _ in range(self.nrb):
                h = run(self.enc[i], h)
                i += 1
                if self.resolutions[lvl] in self.attn_res:
                    h = run(self.enc[i], h)
                    i += 1
                hs.append(h)
            if lvl != self.num_levels - 1:
                h = run(self.enc[i], h)
                i += 1
                if self.progressive_input == "residual":
                    pyramid = self.pyr[p](pyramid)
                    h = (pyramid + h) / math.sqrt(2.0) if self.skip_rescale else pyramid + h
                    pyramid = h
                    p += 1
                elif self.progressive_input == "input_skip":
                    pyramid = (
                        L.fir_downsample(pyramid, self.fir_kernel)
                        if self.fir
                        else L.naive_downsample(pyramid)
                    )
                    h = h + self.pyr[p](pyramid)
                    p += 1
                hs.append(h)
        for mod in self.mid:
            h = run(mod, h)
        for mod in self.dec:
            if isinstance(mod, ResBlock) and not (mod.up or mod.down):
                h = jnp.concatenate([h, hs.pop()], axis=-1)
            h = run(mod, h)
        assert not hs
        return self.conv_out(jax.nn.silu(self.norm_out(h)))
