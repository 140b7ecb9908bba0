"""MLP denoiser for low-dimensional data x [B, D].

Time input options (`time_embedding`):
- 'concat': the raw t_in is appended to x as one extra input feature. With width 64, 3 hidden
  layers and SELU this is the network of the conditional flow matching 2-D experiments (Tong et al.
  2024, "Improving and generalizing flow-based generative models with minibatch optimal
  transport", App. E: "MLP with 3 hidden layers of width 64 and SELU activations").
- 'positional': a sinusoidal embedding of t_in (Vaswani et al. 2017) of size `time_dim` is
  concatenated to x.
- 'fourier': Gaussian random Fourier features of t_in (Tancik et al. 2020) of size `time_dim`.
An optional class label adds a learned embedding (with a learned null row) to the first hidden layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from diffusion_jax.models import layers as L
from diffusion_jax.models.conditioning import ClassEmbedding

ACTIVATIONS = {
    "selu": jax.nn.selu,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "elu": jax.nn.elu,
}
TIME_EMBEDDINGS = ("concat", "positional", "fourier")


def validate_mlp_config(cfg) -> None:
    """Raise ValueError naming the field for an inconsistent MLP config."""
    if cfg.activation not in ACTIVATIONS:
        raise ValueError(f"model.activation={cfg.activation!r} unknown; valid: {sorted(ACTIVATIONS)}")
    if cfg.time_embedding not in TIME_EMBEDDINGS:
        raise ValueError(f"model.time_embedding={cfg.time_embedding!r} unknown; valid: {TIME_EMBEDDINGS}")
    if cfg.dim < 1 or cfg.width < 1 or cfg.num_layers < 1:
        raise ValueError(
            f"model.dim/width/num_layers must be >= 1, got {cfg.dim}/{cfg.width}/{cfg.num_layers}"
        )
    if cfg.time_embedding != "concat" and (cfg.time_dim < 2 or cfg.time_dim % 2):
        raise ValueError(f"model.time_dim={cfg.time_dim} must be an even number >= 2")


class MLP(nnx.Module):
    """x [B, dim], t_in [B] -> [B, out_dim]: Linear(dim + t_feats, width), act, (num_layers - 1) x
    [Linear(width, width), act], Linear(width, out_dim)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        validate_mlp_config(cfg)
        self.dim, self.act_name = cfg.dim, cfg.activation
        self.time_embedding, self.time_dim = cfg.time_embedding, cfg.time_dim
        t_feats = 1 if cfg.time_embedding == "concat" else cfg.time_dim
        self.fourier = (
            L.GaussianFourierProjection(cfg.time_dim // 2, cfg.fourier_scale, rngs=rngs)
            if cfg.time_embedding == "fourier"
            else None
        )
        init = nnx.initializers.lecun_normal()
        dims = [cfg.dim + t_feats] + [cfg.width] * cfg.num_layers
        self.hidden = nnx.List(
            [L.linear(a, b, rngs=rngs, init=init) for a, b in zip(dims[:-1], dims[1:], strict=True)]
        )
        self.out = L.linear(cfg.width, cfg.out_dim or cfg.dim, rngs=rngs, init=init)
        self.num_classes = cfg.num_classes
        self.label_emb = (
            ClassEmbedding(cfg.num_classes, cfg.width, learned_null=True, rngs=rngs)
            if cfg.num_classes
            else None
        )

    def __call__(
        self, x, t_in, *, label=None, context=None, context_mask=None, deterministic=True, rngs=None
    ):
        """x [B, dim], t_in [B] -> [B, out_dim]; label [B] int (num_classes = null)."""
        del deterministic, rngs
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLP input x must be [B, {self.dim}], got {x.shape}")
        if context is not None:
            raise ValueError("the MLP takes no context (cross-attention); use label or a U-Net/DiT")
        if self.time_embedding == "concat":
            tf = t_in.astype(x.dtype)[:, None]
        elif self.time_embedding == "positional":
            tf = L.positional_embedding(t_in, self.time_dim)
        else:
            tf = self.fourier(t_in)
        act = ACTIVATIONS[self.act_name]
        h = jnp.concatenate([x, tf.astype(x.dtype)], axis=-1)
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and self.label_emb is not None:
                h = h + self.label_emb(label, batch=x.shape[0])
            elif i == 0 and label is not None:
                raise ValueError("label given but model.num_classes == 0 (unconditional model)")
            h = act(h)
        return self.out(h)
