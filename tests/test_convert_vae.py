"""VAE converter: parity with diffusers' AutoencoderKL (SD 1.x / SDXL layout and the 16-channel SD3
layout without quant convs), random weights, float32; relative error max|d| / max|ref| <= 1e-4."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from flax import nnx  # noqa: E402

from diffusion_jax import convert  # noqa: E402
from diffusion_jax.convert import common, vae  # noqa: E402
from diffusion_jax.models import build_model  # noqa: E402
from diffusion_jax.models.layers import count_params  # noqa: E402
from tests.convert_helpers import meta_count, randomize, rel_err, state_numpy  # noqa: E402

TINY = dict(block_out_channels=(128, 256), down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, sample_size=16)  # fmt: skip
SD3_TINY = dict(TINY, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                scaling_factor=1.5305, shift_factor=0.0609)  # fmt: skip
SD_FULL = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
               up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=256)  # fmt: skip


def _folder(tmp_path_factory, kw, seed):
    torch.manual_seed(seed)
    m = diffusers.AutoencoderKL(**kw).eval()
    randomize(m, seed, scale=0.05)
    folder = str(tmp_path_factory.mktemp("vae") / "vae")
    m.save_pretrained(folder)
    return m, folder


@pytest.fixture(scope="module", params=["sd", "sd3"])
def converted(request, tmp_path_factory):
    kw = TINY if request.param == "sd" else SD3_TINY
    m, folder = _folder(tmp_path_factory, kw, 0 if request.param == "sd" else 1)
    out = str(tmp_path_factory.mktemp("out") / f"{request.param}.safetensors")
    convert.convert("vae", folder, out)
    model, info = convert.load_module(out)
    return request.param, m, model, info, out


def test_encode_decode_parity(converted):
    name, ref, model, info, _ = converted
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        post = ref.encode(torch.from_numpy(x)).latent_dist
        mean_ref, logvar_ref = post.mean.numpy(), post.logvar.numpy()
        z = torch.from_numpy(mean_ref)
        dec_ref = ref.decode(z).sample.numpy()
    mean, logvar = model.encode(jnp.asarray(x.transpose(0, 2, 3, 1)))
    dec = model.decode(jnp.asarray(mean_ref.transpose(0, 2, 3, 1)))
    errs = [
        rel_err(np.asarray(a).transpose(0, 3, 1, 2), b)
        for a, b in ((mean, mean_ref), (logvar, logvar_ref), (dec, dec_ref))
    ]
    print(
        f"AutoencoderKL ({name}, tiny) max relative error: mean {errs[0]:.2e}, logvar {errs[1]:.2e}, decode {errs[2]:.2e}"
    )
    assert max(errs) <= 1e-4
    want = {"sd": (0.18215, 0.0), "sd3": (1.5305, 0.0609)}[name]
    assert (info.extra["latent_scale"], info.extra["latent_shift"]) == want


def test_export_roundtrip(converted, tmp_path):
    from diffusion_jax.convert.__main__ import main

    _, ref, _, _, out = converted
    src = str(tmp_path / "src")
    ref.save_pretrained(src)
    again_out = str(tmp_path / "again.safetensors")
    assert main(["vae", src, "--out", again_out]) == 0  # the README's command
    assert common.read_converted(again_out).params.keys() == common.read_converted(out).params.keys()
    convert.export(out, str(tmp_path / "back"))
    again = diffusers.AutoencoderKL.from_pretrained(str(tmp_path / "back"))
    want, got = state_numpy(ref), state_numpy(again)
    assert sorted(want) == sorted(got)
    for k in want:
        assert np.array_equal(want[k], got[k]), k
    for k in ("scaling_factor", "shift_factor", "use_quant_conv", "latent_channels"):
        assert again.config[k] == ref.config[k], k


def test_param_counts_full_published_config():
    def ours(cj):
        cfg, _ = vae.config_from_diffusers(cj)
        return count_params(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))

    sd = meta_count(lambda: diffusers.AutoencoderKL(**SD_FULL))
    sd3_kw = dict(SD_FULL, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
    sd3 = meta_count(lambda: diffusers.AutoencoderKL(**sd3_kw))
    print(
        f"SD VAE parameters: ours {ours(SD_FULL):,}, diffusers {sd:,}; SD3 VAE: ours {ours(sd3_kw):,}, diffusers {sd3:,}"
    )
    assert ours(SD_FULL) == sd == 83_653_863
    assert ours(sd3_kw) == sd3 + (32 * 32 + 32) + (16 * 16 + 16)  # our identity quant / post-quant convs


def test_unexpressible_config_refused():
    with pytest.raises(common.ConversionError, match="norm_num_groups=32 .* widths \\[64\\]"):
        vae.config_from_diffusers(dict(TINY, block_out_channels=(64, 128)))
    with pytest.raises(common.ConversionError, match="block types"):
        vae.config_from_diffusers(dict(TINY, down_block_types=("AttnDownEncoderBlock2D",) * 2))
