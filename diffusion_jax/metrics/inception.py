"""The FID InceptionV3 in Flax NNX: pool3 (2048-d) features exactly as pytorch-fid computes them.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", Sec. 4) uses the pool3 activations of the TensorFlow Inception graph
``inception-2015-12-05`` (Szegedy et al. 2016, "Rethinking the Inception Architecture"). pytorch-fid
ports that graph to PyTorch; its network differs from the standard InceptionV3 in three places, all
reproduced here: the 3x3 average pools inside blocks 5b-5d, 6b-6e and 7b exclude the zero padding from
the mean (TensorFlow's ``SAME`` average pool), and the last block (7c) uses a 3x3 *max* pool in its pool
branch. Every convolution is ``conv (no bias) -> BatchNorm (eps 1e-3, inference statistics) -> ReLU``.

Input pipeline (pytorch-fid's ``InceptionV3.forward`` with its defaults ``resize_input=True``,
``normalize_input=True``): images in [0, 1] (a uint8 PNG divided by 255; grayscale images are repeated
to three channels, as PIL's ``convert('RGB')`` does when pytorch-fid reads them), bilinearly resized to
299 x 299 with ``align_corners=False`` and no antialiasing, then mapped to [-1, 1] by ``2 x - 1``.

Names of the submodules follow torchvision / pytorch-fid (``Conv2d_1a_3x3``, ``Mixed_5b.branch1x1``, ...)
so converting the published weights is a renaming (``diffusion_jax.metrics.inception_weights``). Images
are NHWC throughout.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FEATURE_DIM = 2048
INPUT_SIZE = 299
BN_EPS = 1e-3


class BasicConv(nnx.Module):
    """conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU. [B, H, W, cin] -> [B, H', W', cout]."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0, *, rngs: nnx.Rngs):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        ph, pw = (padding, padding) if isinstance(padding, int) else padding
        self.conv = nnx.Conv(
            cin,
            cout,
            (kh, kw),
            strides=(stride, stride),
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            rngs=rngs,
        )
        self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=BN_EPS, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


def _avg_pool_same(x):
    """3x3 stride-1 average pool over the valid (unpadded) neighbours only (TF 'SAME' avg pool)."""
    return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride: int = 2, pad: int = 0):
    return nnx.max_pool(x, (3, 3), strides=(stride, stride), padding=((pad, pad), (pad, pad)))


class InceptionA(nnx.Module):
    """Blocks 5b-5d (pytorch-fid's FIDInceptionA). [B, H, W, cin] -> [B, H, W, 224 + pool_features]."""

    def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv(cin, 64, 1, rngs=rngs)
        self.branch5x5_1 = BasicConv(cin, 48, 1, rngs=rngs)
        self.branch5x5_2 = BasicConv(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv(cin, pool_features, 1, rngs=rngs)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Block 6a (grid reduction 35 -> 17). [B, H, W, cin] -> [B, H', W', 480 + cin]."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv(cin, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(cin, 64, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nnx.Module):
    """Blocks 6b-6e with factorised 7x7 convolutions (FIDInceptionC). [B, H, W, 768] -> [B, H, W, 768]."""

    def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv(cin, 192, 1, rngs=rngs)
        self.branch7x7_1 = BasicConv(cin, c7, 1, rngs=rngs)
        self.branch7x7_2 = BasicConv(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7_3 = BasicConv(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_1 = BasicConv(cin, c7, 1, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_3 = BasicConv(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7dbl_4 = BasicConv(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7dbl_5 = BasicConv(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch_pool = BasicConv(cin, 192, 1, rngs=rngs)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3):
            bd = layer(bd)
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(bd))
        bp = self.branch_pool(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
    """Block 7a (grid reduction 17 -> 8). [B, H, W, cin] -> [B, H', W', 512 + cin]."""

    def __init__(self, cin: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv(cin, 192, 1, rngs=rngs)
        self.branch3x3_2 = BasicConv(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv(cin, 192, 1, rngs=rngs)
        self.branch7x7x3_2 = BasicConv(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nnx.Module):
    """Blocks 7b / 7c (FIDInceptionE_1 / _2: pool branch is an unpadded-mean avg pool / a max pool).
    [B, H, W, cin] -> [B, H, W, 2048]."""

    def __init__(self, cin: int, max_pool: bool, *, rngs: nnx.Rngs):
        self.max_pool = max_pool
        self.branch1x1 = BasicConv(cin, 320, 1, rngs=rngs)
        self.branch3x3_1 = BasicConv(cin, 384, 1, rngs=rngs)
        self.branch3x3_2a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv(cin, 448, 1, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv(cin, 192, 1, rngs=rngs)

    def __call__(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
        pooled = _max_pool(x, stride=1, pad=1) if self.max_pool else _avg_pool_same(x)
        return jnp.concatenate([b1, b3, bd, self.branch_pool(pooled)], axis=-1)


class InceptionV3(nnx.Module):
    """The FID Inception network up to pool3. ``__call__``: [B, 299, 299, 3] in [-1, 1] -> [B, 2048]."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = BasicConv(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv(64, 80, 1, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, max_pool=False, rngs=rngs)
        self.Mixed_7c = InceptionE(2048, max_pool=True, rngs=rngs)

    def __call__(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = _max_pool(x)
        x = _max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return jnp.mean(x, axis=(1, 2))  # adaptive average pool to 1x1 = pool3


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix of PyTorch's bilinear interpolation along one axis, align_corners=False.

    Source coordinate of output pixel i: s = max((i + 0.5) * n_in / n_out - 0.5, 0); it mixes input
    pixels floor(s) and min(floor(s) + 1, n_in - 1) with weights 1 - frac(s) and frac(s) (no antialias).
    """
    i = np.arange(n_out, dtype=np.float64)
    s = np.maximum((i + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(s).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = s - i0
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def preprocess(images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """pytorch-fid's input transform. images: [B, H, W, C], C in {1, 3}, floats in [0, 1] or uint8.

    Grayscale is repeated to RGB, the image is resized bilinearly to 299 x 299 (align_corners=False;
    skipped when it already is 299 x 299, as F.interpolate then is the identity) and mapped to [-1, 1].
    Returns [B, 299, 299, 3] of `dtype`.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [B, H, W, C] with C in (1, 3), got shape {tuple(images.shape)}")
    x = images.astype(dtype)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    h, w = x.shape[1:3]
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        mh = jnp.asarray(bilinear_matrix(h, INPUT_SIZE), dtype)
        mw = jnp.asarray(bilinear_matrix(w, INPUT_SIZE), dtype)
        x = jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)
    return 2.0 * x - 1.0


def create(seed: int = 0, abstract: bool = True) -> InceptionV3:
    """An InceptionV3 with random weights (or only shapes, `abstract=True`, to be filled by `load`)."""

    def make():
        return InceptionV3(rngs=nnx.Rngs(seed))

    return nnx.eval_shape(make) if abstract else make()


@functools.partial(jax.jit, static_argnums=0)
def _features(graphdef, state, images):
    model = nnx.merge(graphdef, state)
    return model(preprocess(images))


def pool3_features(graphdef, state, images) -> jax.Array:
    """pool3 features of `images` ([B, H, W, C], C in {1, 3}, [0, 1] floats or uint8) -> [B, 2048].

    `graphdef, state = nnx.split(model)` (e.g. from `inception_weights.load_inception`). Compiled once
    per input shape; the network itself always sees 299 x 299.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [B, H, W, C] with C in (1, 3), got shape {tuple(images.shape)}")
    return _features(graphdef, state, images)


def feature_fn(graphdef, state):
    """Model samples [B, H, W, C] in [-1, 1] (rounded to 8 bits first, as an image file stores them) or
    uint8 images -> pool3 features [B, 2048]. Jit-compatible (use with `features.feature_statistics`)."""

    def fn(images):
        if images.dtype == jnp.uint8:
            x = images.astype(jnp.float32) / 255.0
        else:
            x = jnp.clip(jnp.round((images.astype(jnp.float32) + 1.0) * 127.5), 0.0, 255.0) / 255.0
        return nnx.merge(graphdef, state)(preprocess(x))

    return fn


def to_unit_interval(samples, quantize: bool = True) -> np.ndarray:
    """Model samples in [-1, 1] -> [0, 1] floats. With `quantize` they are first rounded to uint8 as an
    image file would store them (pytorch-fid and clean-fid compute FID from 8-bit images)."""
    x = np.asarray(samples, np.float32)
    if quantize:
        return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.float32) / 255.0
    return np.clip((x + 1.0) / 2.0, 0.0, 1.0)
