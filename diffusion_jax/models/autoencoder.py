"""KL-regularised convolutional autoencoder for latent diffusion (Rombach et al. 2022, LDM).

Encoder: conv_in -> per level `num_res_blocks` residual blocks (+ attention at `attn_resolutions`)
and a stride-2 conv downsample (all levels but the last) -> mid [res, attn, res] -> GroupNorm,
SiLU, conv to 2 * z_channels (mean, log-variance) -> 1x1 "quant" conv. Decoder mirrors it with
nearest+conv upsampling. Downsampling factor f = 2 ** (len(ch_mult) - 1); latents are
[B, H/f, W/f, z_channels] (LDM Sec. 3, App. G, "KL-reg., f = 4/8, c = 3/4").

Loss (LDM Sec. 3 / App. G, perceptual-free variant): per-pixel L1 or L2 reconstruction divided by a
(learnable or fixed) exp(logvar) plus logvar, summed over pixels and averaged over the batch, plus
kl_weight * KL(q(z|x) || N(0, I)) (Kingma & Welling 2014, Eq. 10 closed form). Diffusion runs on
z * scale_factor with scale_factor = 1 / std(z) over a data sample (LDM Sec. 4.3.2 / App. G).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.models import layers as L
from diffusion_jax.models.unet import AttnBlock


class AEResBlock(nnx.Module):
    """GroupNorm-SiLU-conv residual block without time embedding (LDM `ResnetBlock`, temb=None)."""

    def __init__(self, cin, cout, *, dropout=0.0, rngs):
        self.dropout = dropout
        self.norm0 = L.group_norm(cin, rngs=rngs)
        self.conv0 = L.conv(cin, cout, 3, rngs=rngs)
        self.norm1 = L.group_norm(cout, rngs=rngs)
        self.conv1 = L.conv(cout, cout, 3, rngs=rngs)
        self.skip = L.conv(cin, cout, 1, rngs=rngs) if cin != cout else None

    def __call__(self, x, deterministic=True, rngs=None):
        h = self.conv0(jax.nn.silu(self.norm0(x)))
        h = L.dropout(jax.nn.silu(self.norm1(h)), self.dropout, deterministic=deterministic, rngs=rngs)
        h = self.conv1(h)
        return (self.skip(x) if self.skip is not None else x) + h


def validate_autoencoder_config(cfg) -> None:
    """Raise ValueError naming the field for an inconsistent autoencoder config."""
    mult = tuple(cfg.ch_mult)
    if not mult or any((not isinstance(m, int)) or m < 1 for m in mult):
        raise ValueError(f"model.ch_mult={mult!r} must be a non-empty sequence of positive ints")
    f = 2 ** (len(mult) - 1)
    if cfg.image_size % f:
        raise ValueError(
            f"model.image_size={cfg.image_size} must be divisible by the downsampling factor {f}"
        )
    for m in mult:
        c = cfg.ch * m
        if c < 4 or c % min(c // 4, 32):
            raise ValueError(f"model.ch*ch_mult = {c} channels do not fit GroupNorm(min(C//4, 32) groups)")
    if cfg.z_channels < 1:
        raise ValueError(f"model.z_channels={cfg.z_channels} must be >= 1")


class AutoencoderKL(nnx.Module):
    """x [B,H,W,C] <-> z [B,H/f,W/f,z_channels]; see the module docstring."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        validate_autoencoder_config(cfg)
        ch, mult, nrb, z = cfg.ch, tuple(cfg.ch_mult), cfg.num_res_blocks, cfg.z_channels
        self.image_size, self.in_channels, self.z_channels = cfg.image_size, cfg.in_channels, z
        self.factor = 2 ** (len(mult) - 1)
        res = [cfg.image_size >> i for i in range(len(mult))]
        attn = tuple(cfg.attn_resolutions)
        drop = cfg.dropout
        # encoder
        self.enc_in = L.conv(cfg.in_channels, ch, 3, rngs=rngs)
        enc, c = [], ch
        for lvl, m in enumerate(mult):
            for _ in range(nrb):
                enc.append(AEResBlock(c, ch * m, dropout=drop, rngs=rngs))
                c = ch * m
                if res[lvl] in attn:
                    enc.append(AttnBlock(c, 1, rngs=rngs))
            if lvl != len(mult) - 1:
                enc.append(L.Resample(c, up=False, with_conv=True, fir=False, fir_kernel=(1, 1), rngs=rngs))
        enc += [
            AEResBlock(c, c, dropout=drop, rngs=rngs),
            AttnBlock(c, 1, rngs=rngs),
            AEResBlock(c, c, dropout=drop, rngs=rngs),
        ]
        self.enc = nnx.List(enc)
        self.enc_norm = L.group_norm(c, rngs=rngs)
        self.enc_out = L.conv(c, 2 * z, 3, rngs=rngs)
        self.quant = L.conv(2 * z, 2 * z, 1, rngs=rngs)
        # decoder
        self.post_quant = L.conv(z, z, 1, rngs=rngs)
        c = ch * mult[-1]
        self.dec_in = L.conv(z, c, 3, rngs=rngs)
        dec = [
            AEResBlock(c, c, dropout=drop, rngs=rngs),
            AttnBlock(c, 1, rngs=rngs),
            AEResBlock(c, c, dropout=drop, rngs=rngs),
        ]
        for lvl in reversed(range(len(mult))):
            for _ in range(nrb + 1):
                dec.append(AEResBlock(c, ch * mult[lvl], dropout=drop, rngs=rngs))
                c = ch * mult[lvl]
                if res[lvl] in attn:
                    dec.append(AttnBlock(c, 1, rngs=rngs))
            if lvl != 0:
                dec.append(L.Resample(c, up=True, with_conv=True, fir=False, fir_kernel=(1, 1), rngs=rngs))
        self.dec = nnx.List(dec)
        self.dec_norm = L.group_norm(c, rngs=rngs)
        self.dec_out = L.conv(c, cfg.out_channels or cfg.in_channels, 3, rngs=rngs)

    @staticmethod
    def _run(mods, h, deterministic, rngs):
        for m in mods:
            h = m(h, deterministic, rngs) if isinstance(m, AEResBlock) else m(h)
        return h

    def encode(self, x, *, deterministic=True, rngs=None):
        """x [B,H,W,C] -> (mean, logvar), each [B, H/f, W/f, z_channels]; logvar clipped to [-30, 20]."""
        s = self.image_size
        if x.ndim != 4 or x.shape[1:] != (s, s, self.in_channels):
            raise ValueError(f"autoencoder input must be [B,{s},{s},{self.in_channels}], got {x.shape}")
        h = self._run(self.enc, self.enc_in(x), deterministic, rngs)
        h = self.quant(self.enc_out(jax.nn.silu(self.enc_norm(h))))
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z, *, deterministic=True, rngs=None):
        """z [B, h, w, z_channels] -> x [B, h*f, w*f, out_channels]."""
        if z.ndim != 4 or z.shape[-1] != self.z_channels:
            raise ValueError(f"latent must be [B,h,w,{self.z_channels}], got {z.shape}")
        h = self._run(self.dec, self.dec_in(self.post_quant(z)), deterministic, rngs)
        return self.dec_out(jax.nn.silu(self.dec_norm(h)))

    def __call__(self, x, *, sample_posterior=True, deterministic=True, rngs=None):
        """x -> (reconstruction, mean, logvar); z ~ N(mean, exp(logvar)) needs rngs with a 'sample' stream."""
        mean, logvar = self.encode(x, deterministic=deterministic, rngs=rngs)
        z = mean
        if sample_posterior:
            if rngs is None:
                raise ValueError("sample_posterior=True needs rngs with a 'sample' stream")
            z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rngs.sample(), mean.shape, mean.dtype)
        return self.decode(z, deterministic=deterministic, rngs=rngs), mean, logvar


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over all but the batch axis -> [B]."""
    kl = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    return kl.reshape(kl.shape[0], -1).sum(-1)


RECON_LOSSES = ("l1", "l2")


def kl_autoencoder_loss(x, recon, mean, logvar, *, kl_weight=1e-6, recon_loss="l1", nll_logvar=0.0):
    """LDM autoencoder loss without perceptual/GAN terms -> (scalar loss, dict of parts).

    nll = sum_pixels(rec / exp(nll_logvar) + nll_logvar) / B with rec = |x - recon| (l1) or
    (x - recon)^2 (l2); loss = nll + kl_weight * mean_B KL(q(z|x) || N(0, I)).
    """
    if recon_loss not in RECON_LOSSES:
        raise ValueError(f"recon_loss={recon_loss!r} unknown; valid: {RECON_LOSSES}")
    diff = x - recon
    rec = jnp.abs(diff) if recon_loss == "l1" else jnp.square(diff)
    nll = (rec / jnp.exp(nll_logvar) + nll_logvar).reshape(x.shape[0], -1).sum(-1).mean()
    kl = gaussian_kl(mean, logvar).mean()
    loss = nll + kl_weight * kl
    return loss, {"nll": nll, "kl": kl, "rec": rec.mean()}


def latent_scale_factor(latents: jax.Array) -> jax.Array:
    """1 / std of all latent entries (LDM's `scale_factor`, fitted on a batch of encodings)."""
    return 1.0 / jnp.std(latents.astype(jnp.float32))
