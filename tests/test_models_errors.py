"""Bad configs and inputs raise ValueError naming the field and the constraint (before compilation)."""

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx

from configs.models import dit as dit_cfg
from configs.models import mlp as mlp_cfg
from configs.models import unet_small
from diffusion_jax.models import build_model
from diffusion_jax.models.functional import abstract_split, make_net_fn


def _cfg(**kw):
    return ml_collections.ConfigDict(kw)


@pytest.mark.parametrize(
    "cfg,match",
    [
        (_cfg(name="resnet"), r"valid names: \['autoencoder', 'dit', 'mlp', 'unet'\]"),
        (_cfg(), "model.name=None unknown"),
        (_cfg(name="dit", patch=2), r"fields \['patch'\] are not valid .* valid: .*patch_size"),
        (
            _cfg(name="dit", image_size=30, patch_size=4),
            "image_size=30 must be divisible by model.patch_size=4",
        ),
        (_cfg(name="dit", hidden_size=100, num_heads=16), "not divisible by model.num_heads"),
        (_cfg(name="unet", image_size=20, ch_mult=(1, 2, 2, 2)), r"divisible by 2\*\*\(len\(ch_mult\)-1\)=8"),
        (_cfg(name="unet", ch_mult=(1, 0)), "ch_mult"),
        (_cfg(name="unet", ch_mult=(1, 2.5)), "ch_mult"),
        (_cfg(name="unet", ch_mult=()), "ch_mult"),
        (_cfg(name="unet", nf=2, ch_mult=(1,)), "GroupNorm"),
        (_cfg(name="unet", attn_resolutions=(5,)), r"attn_resolutions \[5\] not among"),
        (_cfg(name="unet", arch="vit"), r"valid: \('ncsnpp', 'adm'\)"),
        (_cfg(name="unet", head_channels=48), "head_channels"),
        (_cfg(name="unet", progressive_input="output_skip"), "progressive_input"),
        (
            _cfg(name="autoencoder", image_size=30, ch_mult=(1, 2, 4)),
            "divisible by the downsampling factor 4",
        ),
        (_cfg(name="mlp", activation="swishy"), "model.activation='swishy' unknown"),
        (_cfg(name="mlp", time_embedding="positional", time_dim=7), "time_dim"),
    ],
)
def test_bad_configs(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_model(cfg, rngs=nnx.Rngs(0))


def test_config_modules_reject_unknown_variants():
    with pytest.raises(ValueError, match="SIZE/PATCH"):
        dit_cfg.get_config("XXL/2")
    with pytest.raises(ValueError, match="valid"):
        unet_small.get_config("huge")


def test_bad_inputs_and_conditions():
    graphdef, params, rest = abstract_split(mlp_cfg.get_config("cfm"))
    net_fn = make_net_fn(graphdef, rest)

    def f(*args):  # trace only: the errors come before any compilation
        return jax.eval_shape(net_fn, *args)

    x, t = jnp.zeros((2, 2)), jnp.zeros((2,))
    with pytest.raises(ValueError, match="MLP input x must be"):
        f(params, jnp.zeros((2, 3)), t)
    with pytest.raises(ValueError, match="num_classes == 0"):
        f(params, x, t, {"label": jnp.zeros((2,), jnp.int32)})
    with pytest.raises(ValueError, match="takes no context"):
        f(params, x, t, {"context": jnp.zeros((2, 1, 4))})
    with pytest.raises(ValueError, match=r"unknown keys \['labels'\]"):
        f(params, x, t, {"labels": jnp.zeros((2,), jnp.int32)})
    graphdef, params, rest = abstract_split(unet_small.get_config("tiny"))
    net_fn = make_net_fn(graphdef, rest)
    with pytest.raises(ValueError, match=r"UNet input x must be \[B,8,8,3\]"):
        jax.eval_shape(net_fn, params, jnp.zeros((2, 16, 16, 3)), t)
    with pytest.raises(ValueError, match="context_dim == 0"):
        jax.eval_shape(net_fn, params, jnp.zeros((2, 8, 8, 3)), t, {"context": jnp.zeros((2, 1, 4))})
