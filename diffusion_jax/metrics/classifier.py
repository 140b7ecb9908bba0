"""A small Fashion-MNIST CNN whose penultimate features give an offline Frechet "feature distance".

FID needs the ImageNet Inception weights; for 28x28 grayscale data a classifier trained on the data
itself is the usual offline substitute (e.g. the "Frechet classifier distance" of MNIST-scale papers).
The network: conv3x3(32)-ReLU-maxpool2 -> conv3x3(64)-ReLU-maxpool2 -> conv3x3(64)-ReLU -> flatten ->
dense(128)-ReLU (the FEATURES, 128-d) -> dense(10). Inputs [B, 28, 28, 1] in [-1, 1] (the models'
range). It is trained by ``experiments/train_fmnist_classifier.py`` (``make fmnist_classifier``); the
checkpoint is an ``.npz`` of the parameters plus metadata (test accuracy, command), never committed.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from diffusion_jax.metrics.inception import bilinear_matrix

FEATURE_DIM = 128
NUM_CLASSES = 10
MAKE_TARGET = "make fmnist_classifier"
TRAIN_COMMAND = "python -m experiments.train_fmnist_classifier --out=checkpoints/fmnist_classifier.npz"


class FashionClassifier(nnx.Module):
    """[B, 28, 28, 1] in [-1, 1] -> (logits [B, 10], features [B, 128])."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), padding="SAME", rngs=rngs)
        self.conv3 = nnx.Conv(64, 64, (3, 3), padding="SAME", rngs=rngs)
        self.fc1 = nnx.Linear(7 * 7 * 64, FEATURE_DIM, rngs=rngs)
        self.fc2 = nnx.Linear(FEATURE_DIM, NUM_CLASSES, rngs=rngs)

    def features(self, x):
        x = nnx.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(jax.nn.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        x = jax.nn.relu(self.conv3(x))
        return jax.nn.relu(self.fc1(x.reshape(x.shape[0], -1)))

    def __call__(self, x):
        f = self.features(x)
        return self.fc2(f), f


def create(seed: int = 0) -> FashionClassifier:
    return FashionClassifier(rngs=nnx.Rngs(seed))


def save(path: str | os.PathLike, model: FashionClassifier, **meta) -> None:
    """Write the parameters as a flat `.npz` (names 'conv1/kernel', ...) plus JSON metadata."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)), sep="/")
    tmp = f"{path}.tmp.npz"
    np.savez(tmp, **{k: np.asarray(v) for k, v in flat.items()}, __meta__=np.asarray(json.dumps(meta)))
    os.replace(tmp, path)


def load(path: str | os.PathLike):
    """(graphdef, state, meta) of a checkpoint written by `save`. A missing file raises
    FileNotFoundError saying how to produce it."""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"Fashion-MNIST classifier checkpoint {str(path)!r} not found; train it with `{MAKE_TARGET}` "
            f"or `{TRAIN_COMMAND}` (needs the Debian package dataset-fashion-mnist)"
        )
    graphdef, state = nnx.split(nnx.eval_shape(lambda: create(0)))
    with np.load(path) as f:
        flat = {k: f[k] for k in f.files if not k.startswith("__")}
        meta = json.loads(str(f["__meta__"])) if "__meta__" in f.files else {}
    want = traverse_util.flatten_dict(nnx.to_pure_dict(state), sep="/")
    bad = sorted(set(want) ^ set(flat)) or [k for k in want if flat[k].shape != want[k].shape]
    if bad:
        raise ValueError(f"{str(path)!r} is not a Fashion-MNIST classifier checkpoint (bad entry {bad[0]!r})")
    nnx.replace_by_pure_dict(
        state, traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    )
    return graphdef, state, meta


def feature_fn(graphdef, state):
    """images [B, H, W, C] (uint8, or floats in [-1, 1] which are first rounded to 8 bits as an image
    file stores them) -> penultimate features [B, 128]. Jit-compatible; use with
    `features.feature_statistics`. Images that are not 28 x 28 are resized bilinearly (as
    `inception.bilinear_matrix`), colour images averaged to gray."""

    def fn(images):
        if images.dtype == jnp.uint8:
            x = images.astype(jnp.float32) / 127.5 - 1.0
        else:
            x = jnp.clip(jnp.round((images.astype(jnp.float32) + 1.0) * 127.5), 0.0, 255.0) / 127.5 - 1.0
        if x.shape[-1] != 1:
            x = jnp.mean(x, axis=-1, keepdims=True)
        if x.shape[1:3] != (28, 28):
            mh = jnp.asarray(bilinear_matrix(x.shape[1], 28), x.dtype)
            mw = jnp.asarray(bilinear_matrix(x.shape[2], 28), x.dtype)
            x = jnp.einsum("ih,bhwc,jw->bijc", mh, x, mw, precision=jax.lax.Precision.HIGHEST)
        return nnx.merge(graphdef, state).features(x)

    return fn
