"""Diffusion Transformer (DiT) with adaLN-Zero conditioning (Peebles & Xie 2023).

Architecture (paper Sec. 3.2, Fig. 3; sizes Table 1): patchify by a p x p stride-p conv, fixed 2-D
sin-cos position embeddings, N blocks of [LayerNorm (no affine) -> modulate(shift, scale) ->
multi-head self-attention -> gate] and the same for a 4x GELU(tanh) MLP, where the six
(shift, scale, gate) vectors come from a zero-initialised linear map of SiLU(c), c = t_emb + y_emb
("adaLN-Zero": every block starts as the identity). The final layer is adaLN-modulated LayerNorm +
zero-initialised linear to p*p*out_channels, then unpatchify. The timestep embedding is a 256-d
sinusoid (cos first, max period 1e4) -> Linear -> SiLU -> Linear; the label table has
num_classes + 1 rows (the last is the learned null label for classifier-free guidance).

Sizes (Table 1): S (12 layers, width 384, 6 heads), B (12, 768, 12), L (24, 1024, 16),
XL (28, 1152, 16). With learn_sigma=True the output has 2x the input channels.

Published-layout options (defaults = the official code): `timestep_freq_shift` 0 uses frequencies
1e4^(-k/half) (official DiT), 1 uses 1e4^(-k/(half-1)) (diffusers' `DiTTransformer2DModel`, whose
`Timesteps` has downscale_freq_shift=1); `mlp_norm_eps` is the LayerNorm epsilon before the MLP
(official 1e-6; diffusers' block uses its `norm_eps`, 1e-5 by default). Converted diffusers weights
set both so the network computes what diffusers computes.

Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): the qkv kernel is [D, 3, heads, D/heads] and
the output projection's input rows are head-major (logical axis `heads`), the MLP hidden axis is
`ffn`; sharding both over a 'model' mesh axis (`training.sharding.TENSOR_PARALLEL`) keeps whole heads
and hidden units per device, so a block needs one all-reduce after the attention output projection
and one after the MLP output projection. The converters map the published [3D, D] qkv into this layout.

Extension: `context_dim > 0` inserts a cross-attention sub-block (zero-initialised output) after the
self-attention of each block for sequence conditioning; it is absent in the published models. Its
k / v projection is head-major too (`layers.HeadsProjection` [E, 2, heads, D/heads]), so under the
same rules it splits by heads and adds one all-reduce per block after its output projection.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffusion_jax.models import layers as L
from diffusion_jax.models.conditioning import ClassEmbedding

SIZES = {  # name: (depth, hidden, heads), DiT Table 1
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


def sincos_pos_embed_2d(dim: int, grid: int) -> np.ndarray:
    """Fixed 2-D sin-cos table [grid*grid, dim] (MAE, He et al. 2022): half dims per axis."""
    if dim % 4:
        raise ValueError(f"DiT hidden size {dim} must be divisible by 4 for 2-D sin-cos embeddings")

    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    # first half encodes the column (w) coordinate, second half the row (h) coordinate
    return np.concatenate([one_axis(dim // 2, gw), one_axis(dim // 2, gh)], axis=1).astype(np.float32)


def _ln(dim, rngs, eps=1e-6):
    return nnx.LayerNorm(dim, epsilon=eps, use_bias=False, use_scale=False, rngs=rngs)


def modulate(x, shift, scale):
    """adaLN modulation x * (1 + scale) + shift, broadcast over tokens."""
    return x * (1 + scale[:, None]) + shift[:, None]


class HeadsQKV(L.HeadsProjection):
    """The DiT's fused q / k / v projection laid out by head: x [..., D] -> [..., 3, H, D/H], kernel
    [D, 3, H, D/H] (`layers.HeadsProjection` with num = 3): official DiT's [D, 3D] `attn.qkv`, reshaped."""

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
        super().__init__(dim, 3, dim, num_heads, rngs=rngs)


class DiTAttention(nnx.Module):
    """Multi-head self-attention over tokens [B, T, D] with the head-major qkv (`HeadsQKV`) and an
    output projection whose input rows are head-major (logical names heads, embed)."""

    def __init__(self, dim: int, num_heads: int, *, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"attention: dim={dim} not divisible by num_heads={num_heads}")
        self.qkv = HeadsQKV(dim, num_heads, rngs=rngs)
        self.proj = L.linear(dim, dim, rngs=rngs, names=("heads", "embed"))

    def __call__(self, x):
        b, t, c = x.shape
        qkv = self.qkv(x)  # [B, T, 3, H, D/H]
        out = L.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return self.proj(out.reshape(b, t, c))


class DiTBlock(nnx.Module):
    """One adaLN-Zero DiT block: tokens [B, T, D], conditioning c [B, D] -> [B, T, D]."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        context_dim: int = 0,
        mlp_norm_eps=1e-6,
        rngs,
    ):
        self.norm1, self.norm2 = _ln(dim, rngs), _ln(dim, rngs, mlp_norm_eps)
        self.attn = DiTAttention(dim, num_heads, rngs=rngs)
        hidden = int(dim * mlp_ratio)  # logical name 'ffn': the tensor-parallel MLP hidden axis
        self.fc1 = L.linear(dim, hidden, rngs=rngs, names=("embed", "ffn"))
        self.fc2 = L.linear(hidden, dim, rngs=rngs, names=("ffn", "embed"))
        self.ada = L.linear(dim, 6 * dim, rngs=rngs, zero=True)
        self.cross = L.CrossAttention(dim, context_dim, num_heads, rngs=rngs) if context_dim else None

    def __call__(self, x, c, context=None, context_mask=None):
        mods = jnp.split(self.ada(jax.nn.silu(c)), 6, axis=-1)
        sh_a, sc_a, g_a, sh_m, sc_m, g_m = mods
        x = x + g_a[:, None] * self.attn(modulate(self.norm1(x), sh_a, sc_a))
        if self.cross is not None and context is not None:
            x = x + self.cross(x, context, context_mask)
        h = self.fc2(jax.nn.gelu(self.fc1(modulate(self.norm2(x), sh_m, sc_m)), approximate=True))
        return x + g_m[:, None] * h


def validate_dit_config(cfg) -> None:
    """Raise ValueError naming the field and the constraint for an inconsistent DiT config."""
    if cfg.patch_size < 1 or cfg.image_size % cfg.patch_size:
        raise ValueError(
            f"model.image_size={cfg.image_size} must be divisible by model.patch_size={cfg.patch_size}"
        )
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(
            f"model.hidden_size={cfg.hidden_size} not divisible by model.num_heads={cfg.num_heads}"
        )
    if cfg.hidden_size % 4:
        raise ValueError(
            f"model.hidden_size={cfg.hidden_size} must be divisible by 4 (2-D sin-cos embedding)"
        )
    if cfg.get("timestep_freq_shift", 0) not in (0, 1):
        raise ValueError(
            f"model.timestep_freq_shift={cfg.timestep_freq_shift!r} must be 0 (official) or 1 (diffusers)"
        )
    if cfg.depth < 1:
        raise ValueError(f"model.depth={cfg.depth} must be >= 1")


class DiT(nnx.Module):
    """DiT denoiser: x [B,H,W,C], t_in [B] -> [B,H,W,out] with out = 2C if learn_sigma (else C)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        validate_dit_config(cfg)
        d, p = cfg.hidden_size, cfg.patch_size
        self.p, self.image_size, self.in_channels = p, cfg.image_size, cfg.in_channels
        self.out_channels = cfg.out_channels or (2 * cfg.in_channels if cfg.learn_sigma else cfg.in_channels)
        self.grid = cfg.image_size // p
        self.freq_dim = cfg.frequency_embedding_size
        self.freq_shift = int(cfg.get("timestep_freq_shift", 0))
        self.x_embed = nnx.Conv(
            cfg.in_channels,
            d,
            (p, p),
            strides=p,
            padding="VALID",
            kernel_init=nnx.initializers.xavier_uniform(),
            kernel_metadata=L.meta(None, None, "conv_in", "embed"),
            bias_metadata=L.meta("embed"),
            rngs=rngs,
        )
        self.pos_embed = L.FixedParam(jnp.asarray(sincos_pos_embed_2d(d, self.grid)), **L.meta(None, "embed"))
        init_t = nnx.initializers.normal(0.02)
        self.t_fc1 = L.linear(self.freq_dim, d, rngs=rngs, init=init_t)
        self.t_fc2 = L.linear(d, d, rngs=rngs, init=init_t)
        self.num_classes, self.context_dim = cfg.num_classes, cfg.context_dim
        self.y_embed = (
            ClassEmbedding(cfg.num_classes, d, learned_null=True, rngs=rngs) if cfg.num_classes else None
        )
        self.blocks = nnx.List(
            [
                DiTBlock(
                    d,
                    cfg.num_heads,
                    mlp_ratio=cfg.mlp_ratio,
                    context_dim=cfg.context_dim,
                    mlp_norm_eps=cfg.get("mlp_norm_eps", 1e-6),
                    rngs=rngs,
                )
                for _ in range(cfg.depth)
            ]
        )
        self.norm_f = _ln(d, rngs)
        self.ada_f = L.linear(d, 2 * d, rngs=rngs, zero=True)
        self.out = L.linear(d, p * p * self.out_channels, rngs=rngs, zero=True)

    def __call__(
        self, x, t_in, *, label=None, context=None, context_mask=None, deterministic=True, rngs=None
    ):
        """x [B,H,W,C], t_in [B] (e.g. t*999); label [B] int; context [B,L,E]; mask [B,L] bool."""
        del deterministic, rngs  # DiT uses no dropout (paper Sec. 4)
        s = self.image_size
        if x.ndim != 4 or x.shape[1:] != (s, s, self.in_channels):
            raise ValueError(f"DiT input x must be [B,{s},{s},{self.in_channels}], got {x.shape}")
        if context is not None and not self.context_dim:
            raise ValueError("context given but model.context_dim == 0 (no cross-attention)")
        b = x.shape[0]
        h = self.x_embed(x).reshape(b, self.grid * self.grid, -1) + self.pos_embed[None]
        t = L.positional_embedding(t_in, self.freq_dim, endpoint=bool(self.freq_shift), sin_first=False)
        c = self.t_fc2(jax.nn.silu(self.t_fc1(t)))
        if self.y_embed is not None:
            c = c + self.y_embed(label, batch=b)
        elif label is not None:
            raise ValueError("label given but model.num_classes == 0 (unconditional model)")
        for blk in self.blocks:
            h = blk(h, c, context, context_mask)
        shift, scale = jnp.split(self.ada_f(jax.nn.silu(c)), 2, axis=-1)
        h = self.out(modulate(self.norm_f(h), shift, scale))
        g, p, o = self.grid, self.p, self.out_channels
        h = h.reshape(b, g, g, p, p, o).transpose(0, 1, 3, 2, 4, 5)
        return h.reshape(b, g * p, g * p, o)
