"""U-Net converter: parity with diffusers' UNet2DModel (DDPM layout), random weights, float32;
relative error max|d| / max|ref| <= 1e-4; parameter count of the DDPM CIFAR-10 config."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from flax import nnx  # noqa: E402

from diffusion_jax import convert  # noqa: E402
from diffusion_jax.convert import common, unet  # noqa: E402
from diffusion_jax.models import build_model  # noqa: E402
from diffusion_jax.models.layers import count_params  # noqa: E402
from tests.convert_helpers import meta_count, randomize, rel_err, state_numpy  # noqa: E402


def _tiny():
    cj = unet.ddpm_cifar10_config()
    cj.update(sample_size=8, block_out_channels=[32, 64], layers_per_block=1, norm_num_groups=8,
              down_block_types=["AttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "AttnUpBlock2D"])  # fmt: skip
    return cj


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cj = _tiny()
    cj["block_out_channels"] = [128, 128]  # min(C//4, 32) = 32 groups at every width
    cj["norm_num_groups"] = 32
    torch.manual_seed(0)
    kw = {k: v for k, v in cj.items() if not k.startswith("_")}
    m = diffusers.UNet2DModel(**kw).eval()
    randomize(m, 0, scale=0.05)
    folder = str(tmp_path_factory.mktemp("unet") / "unet")
    m.save_pretrained(folder)
    out = str(tmp_path_factory.mktemp("out") / "unet.safetensors")
    convert.convert("unet", folder, out)
    model, _ = convert.load_module(out)
    return m, model, out


def test_parity(converted):
    ref, model, _ = converted
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    t = np.array([0, 250, 999])
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(t)).sample.numpy()
    got = np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t, jnp.float32))).transpose(
        0, 3, 1, 2
    )
    err = rel_err(got, want)
    print(f"UNet2DModel (DDPM layout, tiny) max relative error {err:.2e}")
    assert err <= 1e-4


def test_export_roundtrip(converted, tmp_path):
    ref, _, out = converted
    convert.export(out, str(tmp_path / "back"))
    again = diffusers.UNet2DModel.from_pretrained(str(tmp_path / "back"))
    want, got = state_numpy(ref), state_numpy(again)
    assert sorted(want) == sorted(got)
    for k in want:
        assert np.array_equal(want[k], got[k]), k


def test_param_count_ddpm_cifar10():
    cj = unet.ddpm_cifar10_config()
    ref = meta_count(lambda: diffusers.UNet2DModel(**{k: v for k, v in cj.items() if not k.startswith("_")}))
    cfg = unet.config_from_diffusers(cj)
    ours = count_params(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))
    print(f"DDPM CIFAR-10 parameters: ours {ours:,}, diffusers {ref:,}")
    assert ours == ref


def test_outside_family_refused():
    with pytest.raises(common.ConversionError, match="flip_sin_to_cos"):
        unet.config_from_diffusers(dict(unet.ddpm_cifar10_config(), flip_sin_to_cos=True))
    with pytest.raises(common.ConversionError, match="norm_num_groups=8"):
        unet.config_from_diffusers(_tiny())
