"""DiT specifics: adaLN-Zero makes a fresh block the identity; fixed 2-D sin-cos table; patch layout."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs.models import dit as dit_cfg
from diffusion_jax.models import dit
from diffusion_jax.models.functional import abstract_split, host_random_like, make_net_fn


def test_fresh_adaln_zero_block_is_identity():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 32)), jnp.float32)
    c = jnp.asarray(rng.normal(size=(2, 32)), jnp.float32)
    # init + apply in one compiled program (eager init compiles every initializer op separately)
    out = jax.jit(lambda x, c: dit.DiTBlock(32, 4, rngs=nnx.Rngs(0))(x, c))(x, c)
    np.testing.assert_array_equal(out, x)  # gates are exactly zero at init (Peebles & Xie, Sec. 3.2)


def test_sincos_table_closed_form():
    tab = dit.sincos_pos_embed_2d(8, 2)  # per-axis width 4: frequencies 1 and 1/100
    # token index 2 is (row 1, col 0): first half encodes the column, second half the row
    ref = [0, 0, 1, 1, np.sin(1.0), np.sin(0.01), np.cos(1.0), np.cos(0.01)]
    np.testing.assert_allclose(tab[2], ref, atol=1e-6)
    assert tab.shape == (4, 8)


def test_patch_layout_is_local():
    """Output patch (i, j) depends on input patch (i, j) only through attention: with attention and
    the adaLN path off (zero gates on attention), each output patch is a function of its own input patch."""
    cfg = dit_cfg.get_config("tiny/4")
    cfg.update(depth=1, num_classes=0)
    graphdef, ap, ar = abstract_split(cfg)
    params = host_random_like(ap, seed=0, scale=1.0)
    # zero the attention output projection: tokens no longer mix
    params["blocks"][0]["attn"]["proj"]["kernel"] = jnp.zeros_like(
        params["blocks"][0]["attn"]["proj"]["kernel"]
    )
    params["blocks"][0]["attn"]["proj"]["bias"] = jnp.zeros_like(params["blocks"][0]["attn"]["proj"]["bias"])
    rest = host_random_like(ar, seed=1)
    f = jax.jit(make_net_fn(graphdef, rest))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, 8, 4)), jnp.float32)
    t = jnp.array([0.5])
    x2 = x.at[:, 4:, :4].add(1.0)  # perturb the bottom-left 4x4 patch (row 1, col 0)
    d = np.abs(np.asarray(f(params, x2, t) - f(params, x, t)))[0].sum(-1)
    assert d[4:, :4].min() > 0  # that patch changed everywhere
    assert d[:4].max() == 0 and d[4:, 4:].max() == 0  # other patches untouched
