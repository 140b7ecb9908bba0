"""Export of our own models (random init standing in for trained weights) to the published layouts:
the PyTorch reference loads the export and computes what our model computes (<= 1e-4), and
converting the export back gives our parameters bitwise."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from flax import nnx  # noqa: E402

from configs.models import dit as dit_configs  # noqa: E402
from diffusion_jax import convert  # noqa: E402
from diffusion_jax.convert import common  # noqa: E402
from diffusion_jax.models import build_model, complete_config  # noqa: E402
from tests.convert_helpers import rel_err  # noqa: E402
from tests.torch_dit_official import OfficialDiT  # noqa: E402


def _ours(cfg, seed=0):
    model = build_model(cfg, rngs=nnx.Rngs(seed))
    state = nnx.state(model)  # zero-initialised layers get random values so nothing is trivial
    leaves, tree = jax.tree.flatten(state)
    g = np.random.default_rng(seed + 1)  # numpy: no per-shape compilation
    leaves = [
        jnp.asarray(np.asarray(x) + 0.05 * g.standard_normal(x.shape).astype(np.float32)) for x in leaves
    ]
    nnx.update(model, jax.tree.unflatten(tree, leaves))
    return model


def _same_params(a, b):
    fa, fb = common.state_to_flat(nnx.state(a)), common.state_to_flat(nnx.state(b))
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert np.array_equal(fa[k], fb[k]), k


def test_dit_to_official_pt(tmp_path):
    cfg = dit_configs.get_config("tiny/2")
    model = _ours(cfg)
    path = str(tmp_path / "mine.safetensors")
    convert.save_model(path, model, cfg)
    convert.export(path, str(tmp_path / "mine.pt"), layout="official")
    ref = OfficialDiT(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10).eval()
    ref.load_state_dict(torch.load(str(tmp_path / "mine.pt")))
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    t, y = np.array([3, 700]), np.array([2, 10])
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
    got = model(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t, jnp.float32), label=jnp.asarray(y))
    err = rel_err(np.asarray(got).transpose(0, 3, 1, 2), want)
    print(f"our DiT exported to the official layout: max relative error {err:.1e}")
    assert err <= 1e-4
    convert.convert("dit", str(tmp_path / "mine.pt"), str(tmp_path / "back.safetensors"), num_heads=4)
    _same_params(model, convert.load_module(str(tmp_path / "back.safetensors"))[0])
    with pytest.raises(ValueError, match="timestep_freq_shift"):
        convert.export(path, str(tmp_path / "d"), layout="diffusers")  # diffusers computes other frequencies


def test_unet_and_vae_to_diffusers(tmp_path):
    ucfg = ml_collections.ConfigDict(dict(
        name="unet", image_size=8, nf=128, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(4,),
        resblock_type="ddpm", skip_rescale=False, dropout=0.0, decoder_attention="per_block"))  # fmt: skip
    vcfg = ml_collections.ConfigDict(dict(name="autoencoder", image_size=8, ch=128, ch_mult=(1, 1),
                                          num_res_blocks=1, z_channels=4))  # fmt: skip
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for cfg, cls in ((ucfg, diffusers.UNet2DModel), (vcfg, diffusers.AutoencoderKL)):
        model = _ours(complete_config(cfg))
        path = str(tmp_path / f"{cfg.name}.safetensors")
        convert.save_model(path, model, cfg)
        convert.export(path, str(tmp_path / cfg.name))
        ref = cls.from_pretrained(str(tmp_path / cfg.name)).eval()
        xj = jnp.asarray(x.transpose(0, 2, 3, 1))
        with torch.no_grad():
            if cfg.name == "unet":
                want = ref(torch.from_numpy(x), torch.tensor([5, 900])).sample.numpy()
                got = model(xj, jnp.asarray([5.0, 900.0]))
            else:
                want = ref.encode(torch.from_numpy(x)).latent_dist.mean.numpy()
                got = model.encode(xj)[0]
        err = rel_err(np.asarray(got).transpose(0, 3, 1, 2), want)
        print(f"our {cfg.name} exported to diffusers: max relative error {err:.1e}")
        assert err <= 1e-4
        model_name = "unet" if cfg.name == "unet" else "vae"
        convert.convert(model_name, str(tmp_path / cfg.name), str(tmp_path / f"{cfg.name}_back.safetensors"))
        _same_params(model, convert.load_module(str(tmp_path / f"{cfg.name}_back.safetensors"))[0])
