"""DiT converter: parity with diffusers' DiTTransformer2DModel and the official layout (random weights).

Relative error = max |ours - reference| / max |reference|, float32, bound 1e-4 (printed).
"""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from flax import nnx  # noqa: E402

from diffusion_jax import convert  # noqa: E402
from diffusion_jax.convert import common, dit  # noqa: E402
from diffusion_jax.models import build_model  # noqa: E402
from diffusion_jax.models.layers import count_params  # noqa: E402
from tests.convert_helpers import meta_count, randomize, rel_err, state_numpy  # noqa: E402
from tests.torch_dit_official import OfficialDiT  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=2,
            sample_size=8, patch_size=2, num_embeds_ada_norm=10)  # fmt: skip


def _diffusers_tiny(seed=0):
    torch.manual_seed(seed)
    m = diffusers.DiTTransformer2DModel(**TINY).eval()
    randomize(m, seed)
    sd = m.state_dict()
    with torch.no_grad():  # published weights hold one embedder copied into every block
        for i in range(1, TINY["num_layers"]):
            for k in dit.EMB_KEYS:
                sd[f"transformer_blocks.{i}.{k}"].copy_(sd[f"transformer_blocks.0.{k}"])
    return m


def _inputs(b=3, c=4, s=8, classes=10, seed=1):
    g = np.random.default_rng(seed)
    x = g.standard_normal((b, c, s, s)).astype(np.float32)
    return x, np.array([0, 437, 999])[:b], np.array([1, classes, 3])[:b]  # includes the null class


def _ours(model, x, t, y):
    out = model(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t, jnp.float32), label=jnp.asarray(y))
    return np.asarray(out).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    m = _diffusers_tiny()
    folder = str(tmp_path_factory.mktemp("dit") / "DiT-tiny")
    m.save_pretrained(folder)  # the published folder layout (config.json + safetensors)
    return m, folder


def test_diffusers_parity(diffusers_folder, tmp_path):
    ref_model, folder = diffusers_folder
    info = convert.convert("dit", folder, str(tmp_path / "dit.safetensors"))
    assert info.config.timestep_freq_shift == 1 and info.config.mlp_norm_eps == 1e-5
    model, _ = convert.load_module(str(tmp_path / "dit.safetensors"))
    x, t, y = _inputs()
    with torch.no_grad():
        ref = ref_model(
            torch.from_numpy(x), timestep=torch.from_numpy(t), class_labels=torch.from_numpy(y)
        ).sample
    err = rel_err(_ours(model, x, t, y), ref.numpy())
    print(f"DiT (diffusers layout, tiny) max relative error {err:.2e}")
    assert err <= 1e-4


def test_official_parity_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    ref_model = OfficialDiT(
        input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10
    ).eval()
    randomize(ref_model, 3)
    with torch.no_grad():
        ref_model.pos_embed.copy_(torch.from_numpy(dit.sincos_pos_embed_2d(64, 4))[None])
    pt = str(tmp_path / "DiT-tiny.pt")
    torch.save(ref_model.state_dict(), pt)
    out = str(tmp_path / "dit.safetensors")
    info = convert.convert("dit", pt, out, num_heads=4)
    assert (info.config.depth, info.config.num_heads, info.config.num_classes) == (2, 4, 10)
    assert info.extra["source_sha256"] == common.sha256_file(pt)
    model, _ = convert.load_module(out)
    x, t, y = _inputs()
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
    err = rel_err(_ours(model, x, t, y), ref)
    print(f"DiT (official layout, tiny) max relative error {err:.2e}")
    assert err <= 1e-4
    back = str(tmp_path / "back.pt")
    convert.export(out, back, layout="official")
    sd, got = state_numpy(ref_model), torch.load(back)
    assert sorted(sd) == sorted(got)
    for k in sd:
        assert np.array_equal(sd[k], got[k].numpy()), k  # bitwise round trip


def test_diffusers_export_roundtrip(diffusers_folder, tmp_path):
    ref_model, folder = diffusers_folder
    out = str(tmp_path / "dit.safetensors")
    convert.convert("dit", folder, out)
    convert.export(out, str(tmp_path / "back"), layout="diffusers")
    again = diffusers.DiTTransformer2DModel.from_pretrained(str(tmp_path / "back"))
    want, got = state_numpy(ref_model), state_numpy(again)
    assert sorted(want) == sorted(got)
    for k in want:
        assert np.array_equal(want[k], got[k]), k
    assert dict(again.config)["norm_eps"] == dict(ref_model.config)["norm_eps"]


def test_diffusers_embedder_copies_must_agree(diffusers_folder):
    ref_model, _ = diffusers_folder
    sd = state_numpy(ref_model)
    sd["transformer_blocks.1.norm1.emb.timestep_embedder.linear_2.bias"][3] += 1e-3
    with pytest.raises(common.ConversionError, match=r"transformer_blocks\.1 holds a different copy"):
        dit.from_diffusers(dict(ref_model.config), sd)


def test_strict_keys_named_and_partial_allowed(tmp_path):
    torch.manual_seed(0)
    ref_model = OfficialDiT(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10)
    sd = state_numpy(ref_model)
    del sd["blocks.1.mlp.fc2.bias"]
    sd["extra.weight"] = np.zeros(3, np.float32)
    sd["blocks.0.attn.proj.weight"] = np.zeros((64, 65), np.float32)
    with pytest.raises(common.ConversionError) as e:
        dit.from_official(sd, num_heads=4)
    msg = str(e.value)
    for part in ("missing keys (1): blocks.1.mlp.fc2.bias", "unexpected keys (1): extra.weight",
                 "blocks.0.attn.proj.weight [64, 65]", "allow_partial"):  # fmt: skip
        assert part in msg, msg
    pt = str(tmp_path / "bad.pt")
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, pt)
    with pytest.raises(common.ConversionError):
        convert.convert("dit", pt, str(tmp_path / "x.safetensors"), num_heads=4)
    assert not os.path.exists(tmp_path / "x.safetensors")  # nothing written
    info = convert.convert("dit", pt, str(tmp_path / "x.safetensors"), allow_partial=True, num_heads=4)
    assert len(info.extra["partial"]) == 3


def test_param_counts_full_published_config():
    ours = count_params(
        nnx.eval_shape(lambda: build_model(dit.official_config_for("XL/2", 256), rngs=nnx.Rngs(0)))
    )
    official = meta_count(lambda: OfficialDiT())
    diff = meta_count(
        lambda: diffusers.DiTTransformer2DModel(
            num_attention_heads=16,
            attention_head_dim=72,
            in_channels=4,
            out_channels=8,
            num_layers=28,
            sample_size=32,
            patch_size=2,
            num_embeds_ada_norm=1000,
        )  # fmt: skip
    )
    emb = 256 * 1152 + 1152 + 1152 * 1152 + 1152 + 1001 * 1152  # one copy of the two embedders
    print(f"DiT-XL/2 parameters: ours {ours:,}, official {official:,}, diffusers {diff:,}")
    assert ours == official == 675_129_632
    assert diff == 749_826_464
    assert diff - 27 * emb + 256 * 1152 == ours  # 27 extra copies; diffusers does not store pos_embed


def test_checksum_and_wrong_files(diffusers_folder, tmp_path):
    _, folder = diffusers_folder
    out = str(tmp_path / "dit.safetensors")
    convert.convert("dit", folder, out)
    with open(out, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="does not match"):
        convert.load_module(out)
    bad = tmp_path / "notes.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(common.ConversionError, match="not a PyTorch state dict"):
        convert.convert("dit", str(bad), str(tmp_path / "y.safetensors"))
    with pytest.raises(ValueError, match="layout='official' is not valid for vae"):
        convert.convert("vae", folder, str(tmp_path / "z.safetensors"), layout="official")


def test_cli(diffusers_folder, tmp_path):
    _, folder = diffusers_folder
    out = str(tmp_path / "cli.safetensors")
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "diffusion_jax.convert", "dit", folder, "--out", out],
                       cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "sha256" in r.stdout and os.path.exists(out + ".sha256")
    r = subprocess.run([sys.executable, "-m", "diffusion_jax.convert", "dit", str(tmp_path / "nope"), "--out", out],
                       cwd=ROOT, env=env, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_cli_official_pt_and_export(tmp_path, capsys):
    """The README's commands: convert an official .pt, export back to an official .pt (in-process main)."""
    from diffusion_jax.convert.__main__ import main

    torch.manual_seed(0)
    ref_model = OfficialDiT(input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=10)
    pt = str(tmp_path / "DiT-tiny.pt")
    torch.save(ref_model.state_dict(), pt)
    out = str(tmp_path / "dit.safetensors")
    assert main(["dit", pt, "--out", out, "--num_heads", "4"]) == 0
    assert main(["export", out, "--layout", "official", "--out", str(tmp_path / "dit.pt")]) == 0
    got = torch.load(str(tmp_path / "dit.pt"))
    for k, v in ref_model.state_dict().items():
        assert torch.equal(v, got[k]), k
    assert main(["dit", pt, "--out", str(tmp_path / "x.safetensors")]) == 2  # width 64: heads unknown
    assert "pass num_heads" in capsys.readouterr().err
