"""Shared layers for the denoiser networks (Flax NNX).

Every parameter carries logical axis names (`out_sharding` metadata, never eagerly sharded) so
that `diffusion_jax.training.sharding` can map them onto a device mesh by rule. Logical names used:
`embed` (model width, input side), `mlp` (output side of a dense layer), `conv_in` / `conv_out`
(convolution channels), `vocab` (embedding rows), `norm` (norm scales/biases).

Images are NHWC throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class FixedParam(nnx.Variable):
    """A non-trainable array that the reference implementations count as a parameter.

    Examples: DiT's fixed 2-D sin-cos position table and the random Gaussian-Fourier frequencies of
    NCSN++ (both `nn.Parameter(..., requires_grad=False)` in the PyTorch references). Kept out of
    `nnx.Param` so optimizers never update them, yet counted by `count_params`.
    """


def meta(*names: str | None) -> dict:
    """Variable metadata holding logical axis names (no eager sharding at construction)."""
    return {"out_sharding": tuple(names), "eager_sharding": False}


def count_params(model_or_state) -> int:
    """Number of scalars in `nnx.Param` and `FixedParam` variables (works on `nnx.eval_shape` output)."""
    state = model_or_state if isinstance(model_or_state, nnx.State) else nnx.state(model_or_state)
    sub = nnx.filter_state(state, nnx.Any(nnx.Param, FixedParam))
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(sub)))


def linear(
    din: int, dout: int, *, rngs: nnx.Rngs, names=("embed", "mlp"), use_bias=True, zero=False, init=None
) -> nnx.Linear:
    """`nnx.Linear` with logical axis names; `zero=True` zero-initialises weight and bias (adaLN-Zero)."""
    kinit = nnx.initializers.zeros_init() if zero else (init or nnx.initializers.xavier_uniform())
    return nnx.Linear(
        din,
        dout,
        use_bias=use_bias,
        kernel_init=kinit,
        kernel_metadata=meta(*names),
        bias_metadata=meta(names[1]),
        rngs=rngs,
    )


def conv(
    cin: int, cout: int, k: int, *, rngs: nnx.Rngs, stride=1, padding="SAME", zero=False, init_scale=1.0
) -> nnx.Conv:
    """k x k `nnx.Conv` (NHWC) with logical names (None, None, conv_in, conv_out).

    The default init is the DDPM `variance_scaling(scale, fan_avg, uniform)` used by score_sde.
    """
    if zero or init_scale == 0.0:
        kinit = nnx.initializers.zeros_init()
    else:
        kinit = nnx.initializers.variance_scaling(init_scale, "fan_avg", "uniform")
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        strides=stride,
        padding=padding,
        kernel_init=kinit,
        kernel_metadata=meta(None, None, "conv_in", "conv_out"),
        bias_metadata=meta("conv_out"),
        rngs=rngs,
    )


def group_norm(c: int, *, rngs: nnx.Rngs, eps: float = 1e-6) -> nnx.GroupNorm:
    """GroupNorm with min(C // 4, 32) groups, as in DDPM/score_sde and EDM's ADM port."""
    g = min(c // 4, 32)
    if g < 1 or c % g:
        raise ValueError(f"group_norm: {c} channels cannot be split into min(C//4, 32)={g} groups")
    return nnx.GroupNorm(
        c, num_groups=g, epsilon=eps, scale_metadata=meta("norm"), bias_metadata=meta("norm"), rngs=rngs
    )


# ----------------------------------------------------------------------------- time embeddings


def positional_embedding(
    t: jax.Array, dim: int, *, max_period: float = 10000.0, endpoint: bool = False, sin_first: bool = False
) -> jax.Array:
    """Sinusoidal embedding [B] -> [B, dim] (Vaswani et al. 2017, used by DDPM / ADM / DiT).

    frequencies f_k = max_period^(-k / (half - endpoint)), k = 0..half-1. DDPM/score_sde use
    `endpoint=True, sin_first=True`; ADM/DiT use `endpoint=False, sin_first=False` (cos first).
    """
    half = dim // 2
    k = jnp.arange(half, dtype=jnp.float32) / (half - (1 if endpoint else 0))
    freqs = jnp.exp(-math.log(max_period) * k)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    parts = (jnp.sin(args), jnp.cos(args)) if sin_first else (jnp.cos(args), jnp.sin(args))
    emb = jnp.concatenate(parts, axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class GaussianFourierProjection(nnx.Module):
    """Random Fourier features [B] -> [B, 2*size]: [sin(2 pi t W), cos(2 pi t W)], W ~ N(0, scale^2).

    Tancik et al. 2020; used as the noise embedding of NCSN++ (Song et al. 2021, App. H), which feeds it
    log(sigma). W is fixed (not trained).
    """

    def __init__(self, size: int, scale: float, *, rngs: nnx.Rngs):
        self.W = FixedParam(jax.random.normal(rngs.params(), (size,)) * scale, **meta(None))

    def __call__(self, t: jax.Array) -> jax.Array:
        proj = t.astype(jnp.float32)[:, None] * self.W[None] * (2 * math.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


# ----------------------------------------------------------------------------- dropout


def dropout(x: jax.Array, rate: float, *, deterministic: bool, rngs: nnx.Rngs | None) -> jax.Array:
    """Inverted dropout (Srivastava et al. 2014); identity when deterministic or rate == 0."""
    if deterministic or rate == 0.0:
        return x
    if rngs is None:
        raise ValueError("dropout: deterministic=False needs rngs with a 'dropout' stream")
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


# ----------------------------------------------------------------------------- attention


def attention(q, k, v, mask=None):
    """Scaled dot-product attention. q [B,Lq,H,D], k/v [B,Lk,H,D], mask [B,Lk] bool -> [B,Lq,H,D].

    Query rows whose keys are all masked get a zero output (not a uniform average), so an all-false
    mask is exactly "no conditioning".
    """
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
    w = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", w, v)
    if mask is not None:
        out = out * jnp.any(mask, axis=-1)[:, None, None, None]
    return out


class HeadsProjection(nnx.Module):
    """`num` fused projections laid out by head: x [..., Din] -> [..., num, H, D/H]; kernel
    [Din, num, H, D/H] (logical names embed, -, heads, -), bias [num, H, D/H] (-, heads, -).

    The same numbers as a [Din, num * D] linear whose output is reshaped to (num, H, D/H) (e.g. a fused
    q / k / v, num = 3, or a cross-attention's k / v, num = 2), initialised as that linear is
    (xavier-uniform on [Din, num * D], zero bias, the same two keys drawn), but splitting the `heads`
    axis over devices keeps each head's q, k and v whole on one device: tensor-parallel attention
    (Shoeybi et al. 2019, Megatron-LM, Sec. 3) then needs no communication until the output projection.
    A [Din, num * D] kernel split by columns would instead put whole projections (all of q, half of k)
    on different devices, which the partitioner must re-shuffle before the attention.
    """

    def __init__(self, din: int, num: int, dim: int, num_heads: int, *, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"attention: dim={dim} not divisible by num_heads={num_heads}")
        hd = dim // num_heads
        w = nnx.initializers.xavier_uniform()(rngs.params(), (din, num * dim))
        rngs.params()  # the bias key nnx.Linear draws: the same initial weights as the [Din, num*D] linear
        self.kernel = nnx.Param(w.reshape(din, num, num_heads, hd), **meta("embed", None, "heads", None))
        self.bias = nnx.Param(jnp.zeros((num, num_heads, hd)), **meta(None, "heads", None))

    def __call__(self, x):
        return jnp.einsum("...c,cnhd->...nhd", x, self.kernel[...]) + self.bias[...]


class SelfAttention(nnx.Module):
    """Multi-head self-attention over tokens [B, L, C]: fused qkv projection + output projection.

    head_major=False: the qkv kernel is one [C, 3C] linear (the layout the U-Net / VAE converters
    write); head_major=True: a `HeadsProjection` [C, 3, H, C/H] (same numbers, tensor-parallel by
    heads; the DiT and the byte text encoder, which train under `training.sharding.TENSOR_PARALLEL`).
    """

    def __init__(
        self, dim: int, num_heads: int, *, rngs: nnx.Rngs, zero_out: bool = False, head_major: bool = False
    ):
        if dim % num_heads:
            raise ValueError(f"attention: dim={dim} not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        if head_major:
            self.qkv = HeadsProjection(dim, 3, dim, num_heads, rngs=rngs)
        else:
            self.qkv = linear(dim, 3 * dim, rngs=rngs, names=("embed", "heads"))
        self.proj = linear(dim, dim, rngs=rngs, names=("heads", "embed"), zero=zero_out)

    def __call__(self, x, mask=None):
        b, l, c = x.shape
        qkv = self.qkv(x).reshape(b, l, 3, self.num_heads, c // self.num_heads)
        out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask)
        return self.proj(out.reshape(b, l, c))


class CrossAttention(nnx.Module):
    """Cross-attention of tokens [B, L, C] over a context [B, Lc, E] with mask [B, Lc] bool.

    Used for text-to-image style conditioning (Rombach et al. 2022, Sec. 3.3). The whole block output
    is zero where the mask is all false, so the residual stream is then untouched.
    Tensor-parallel layout (`training.sharding.TENSOR_PARALLEL`): q [C, C] by output columns (whole
    heads, as its output is reshaped head-major), the fused k / v a `HeadsProjection` [E, 2, H, C/H],
    the output projection by input rows (heads); its bias is added after the all-reduce (replicated).
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, *, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"cross-attention: dim={dim} not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nnx.LayerNorm(dim, scale_metadata=meta("norm"), bias_metadata=meta("norm"), rngs=rngs)
        self.q = linear(dim, dim, rngs=rngs, names=("embed", "heads"))
        self.kv = HeadsProjection(context_dim, 2, dim, num_heads, rngs=rngs)
        self.proj = linear(dim, dim, rngs=rngs, names=("heads", "embed"), zero=True)

    def __call__(self, x, context, mask=None):
        b, l, c = x.shape
        if mask is None:
            mask = jnp.ones(context.shape[:2], bool)
        h = self.num_heads
        q = self.q(self.norm(x)).reshape(b, l, h, c // h)
        kv = self.kv(context)  # [B, Lc, 2, H, C/H]
        out = self.proj(attention(q, kv[:, :, 0], kv[:, :, 1], mask).reshape(b, l, c))
        return out * jnp.any(mask, axis=-1)[:, None, None].astype(out.dtype)


# ----------------------------------------------------------------------------- resampling


def naive_upsample(x: jax.Array, factor: int = 2) -> jax.Array:
    """Nearest-neighbour upsampling NHWC [B,H,W,C] -> [B,fH,fW,C]."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample(x: jax.Array, factor: int = 2) -> jax.Array:
    """Average pooling by `factor` NHWC [B,H,W,C] -> [B,H/f,W/f,C]."""
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def _fir_kernel(k: Sequence[float]) -> np.ndarray:
    k = np.asarray(k, np.float32)
    k2 = np.outer(k, k)
    return k2 / k2.sum()


def _depthwise(x: jax.Array, k2: np.ndarray, *, stride=1, lhs_dilation=1, pad=((0, 0), (0, 0))):
    c = x.shape[-1]
    w = jnp.tile(jnp.asarray(k2[::-1, ::-1], x.dtype)[:, :, None, None], (1, 1, 1, c))
    return jax.lax.conv_general_dilated(
        x,
        w,
        window_strides=(stride, stride),
        padding=pad,
        lhs_dilation=(lhs_dilation, lhs_dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c,
    )


def fir_downsample(x: jax.Array, kernel: Sequence[float] = (1, 3, 3, 1), factor: int = 2, extra_pad=0):
    """FIR-filtered downsampling, upfirdn2d(x, k, down=factor) (Karras et al. 2019/2020, StyleGAN2).

    The separable kernel is normalised to unit DC gain; pad = ((p+1)//2, p//2) with p = len(k) - factor
    (+ `extra_pad`, used when a stride-`factor` VALID convolution follows).
    """
    p = len(kernel) - factor + extra_pad
    pad = ((p + 1) // 2, p // 2)
    stride = 1 if extra_pad else factor
    return _depthwise(x, _fir_kernel(kernel), stride=stride, pad=(pad, pad))


def fir_upsample(x: jax.Array, kernel: Sequence[float] = (1, 3, 3, 1), factor: int = 2):
    """FIR-filtered upsampling, upfirdn2d(x, k * factor^2, up=factor) (StyleGAN2's upsample_2d).

    Zero-insertion by `factor` then filtering; the kernel gain factor^2 preserves the DC level.
    """
    p = len(kernel) - factor
    pad = ((p + 1) // 2 + factor - 1, p // 2 + factor - 1)
    k2 = _fir_kernel(kernel) * factor**2
    return _depthwise(x, k2, lhs_dilation=factor, pad=(pad, pad))


class Resample(nnx.Module):
    """2x up/down sampling with optional 3x3 conv (score_sde `Upsample` / `Downsample`).

    mode 'naive': nearest up / conv(stride 2, pad (0,1)) or avgpool down (DDPM);
    mode 'fir': FIR filter (kernel `fir_kernel`), with the conv applied after FIR (up) or as a
    stride-2 VALID conv after FIR blur with extra padding (down), as in score_sde's `Conv2d`.
    """

    def __init__(self, cin, cout=None, *, up: bool, with_conv: bool, fir: bool, fir_kernel, rngs):
        cout = cout or cin
        self.up, self.fir, self.fir_kernel = up, fir, tuple(fir_kernel)
        if not with_conv and cout != cin:
            raise ValueError("Resample: changing channels needs with_conv=True")
        pad = "SAME" if up else "VALID"
        self.conv = conv(cin, cout, 3, stride=1 if up else 2, padding=pad, rngs=rngs) if with_conv else None

    def __call__(self, x):
        if self.up:
            x = fir_upsample(x, self.fir_kernel) if self.fir else naive_upsample(x)
            return self.conv(x) if self.conv is not None else x
        if self.conv is None:
            return fir_downsample(x, self.fir_kernel) if self.fir else naive_downsample(x)
        if self.fir:
            return self.conv(fir_downsample(x, self.fir_kernel, extra_pad=2))
        return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))
