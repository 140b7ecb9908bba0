"""Parity of the Flax FID InceptionV3 with pytorch-fid's network (random weights, nothing downloaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception")

from diffusion_jax.metrics import inception, inception_weights  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _randomize(net, seed: int = 0) -> None:
    """He-scaled conv weights and non-trivial BatchNorm statistics so every layer matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.state_dict().items():
            if name.endswith("conv.weight"):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif name.endswith(("bn.weight", "bn.running_var")):
                p.copy_(0.7 + 0.6 * torch.rand(p.shape, generator=g))
            elif name.endswith(("bn.bias", "bn.running_mean")):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def build_random_reference(directory):
    """pytorch-fid's InceptionV3 (its weight loading patched out), randomized, saved as a .pth in the
    published file's format (an Inception3 state dict), and our converted copy of it.
    Returns (torch net, .pth path, .npz path, sha256 of the .pth)."""
    built = {}

    def keep(self, state_dict, *a, **k):  # Inception3.load_state_dict(downloaded) -> remember the net
        built["inception3"] = self

    with (
        mock.patch.object(pytorch_fid_inception, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(pytorch_fid_inception.torchvision.models.Inception3, "load_state_dict", keep),
    ):
        net = pytorch_fid_inception.InceptionV3([3]).eval()
    _randomize(built["inception3"])
    pth, npz = (
        os.path.join(directory, "random_inception.pth"),
        os.path.join(directory, "random_inception.npz"),
    )
    torch.save(built["inception3"].state_dict(), pth)
    digest = inception_weights.convert(pth, npz, verify=False)
    return net, pth, npz, digest


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return build_random_reference(str(tmp_path_factory.mktemp("inception")))


@pytest.fixture(scope="module")
def ours(reference):
    return inception_weights.load_inception(reference[2])


@pytest.mark.parametrize(
    "shape",
    [(2, 28, 28, 1), (2, 32, 40, 3), (2, 299, 299, 3), (2, 331, 320, 3)],
    ids=["28x28-gray", "32x40", "299", "331x320-down"],
)
def test_pool3_matches_pytorch_fid(reference, ours, shape):
    net = reference[0]
    images = np.random.default_rng(sum(shape)).uniform(0.0, 1.0, shape).astype(np.float32)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        if x.shape[1] == 1:  # pytorch-fid reads images with PIL .convert('RGB'): gray repeated
            x = x.repeat(1, 3, 1, 1)
        want = net(x)[0][:, :, 0, 0].numpy()
    got = np.asarray(inception.pool3_features(*ours, images))
    assert got.shape == (2, 2048)
    assert np.abs(want).max() > 1e-2  # the random network does not collapse to zeros
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-4, rel


def test_uint8_input_equals_float(ours):
    u8 = np.random.default_rng(1).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    a = np.asarray(inception.pool3_features(*ours, u8))
    b = np.asarray(inception.pool3_features(*ours, u8.astype(np.float32) / 255.0))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_bilinear_matrix_matches_torch_interpolate():
    for n_in, n_out in [(28, 299), (331, 299), (7, 5), (1, 4)]:
        x = np.random.default_rng(n_in).normal(size=(n_in,))
        want = torch.nn.functional.interpolate(
            torch.from_numpy(x)[None, None, :, None], size=(n_out, 1), mode="bilinear", align_corners=False
        )[0, 0, :, 0].numpy()
        np.testing.assert_allclose(inception.bilinear_matrix(n_in, n_out) @ x, want, rtol=1e-6, atol=1e-12)


def test_missing_weights_error_says_where_and_how(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth") as e:
        inception_weights.load_inception(str(tmp_path / "nope.npz"))
    assert inception_weights.PUBLISHED_URL in str(e.value)
    assert "python -m diffusion_jax.metrics.inception_weights" in str(e.value)


def test_convert_verifies_published_checksum(reference, tmp_path):
    pth, digest = reference[1], reference[3]
    assert digest == inception_weights.sha256_of(pth) != inception_weights.PUBLISHED_SHA256
    with pytest.raises(ValueError, match="not the published"):
        inception_weights.convert(pth, str(tmp_path / "x.npz"))
    assert not os.path.exists(tmp_path / "x.npz")


def test_converter_cli(reference, tmp_path):
    out = tmp_path / "cli.npz"
    env = dict(os.environ, PYTHONPATH=REPO)
    cmd = [
        sys.executable,
        "-m",
        "diffusion_jax.metrics.inception_weights",
        reference[1],
        str(out),
        "--no-verify",
    ]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    with np.load(out) as a, np.load(reference[2]) as b:
        assert sorted(a.files) == sorted(b.files)
        np.testing.assert_array_equal(
            a["Mixed_7c/branch_pool/conv/kernel"], b["Mixed_7c/branch_pool/conv/kernel"]
        )
