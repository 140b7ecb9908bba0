"""`python -m diffusion_jax.reference_statistics`: reference mean / covariance of real images.

Reference: numpy's mean and covariance (np.cov, unbiased) of the features of all images computed in
one unsharded batch. The statistics must equal it whether computed on 8 devices of one process or by
the CLI on 2 processes x 2 devices (reduced, never gathered), with real Fashion-MNIST images from
Debian's IDX file, and the written file must be loadable as `eval.reference_stats`.
"""

from __future__ import annotations

import os
import shlex
import sys

import jax
import jax.numpy as jnp
import numpy as np
import portpicker
import pytest

from diffusion_jax import reference_statistics as rs
from diffusion_jax.data import fashion_mnist
from diffusion_jax.metrics import classifier, fid
from tests.multiproc import REPO, run_processes

IDX = os.path.join(fashion_mnist.DEBIAN_DIR, "t10k-images-idx3-ubyte.gz")
N = 37  # not a multiple of the batch: the last step is padded and masked

pytestmark = pytest.mark.skipif(not os.path.exists(IDX), reason="needs Debian's dataset-fashion-mnist")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("refstats")
    clf = str(d / "clf.npz")
    classifier.save(clf, classifier.create(seed=3))
    images = fashion_mnist.read_idx(IDX)[:N, :, :, None]
    g, st, _ = classifier.load(clf)
    feats = np.asarray(jax.jit(classifier.feature_fn(g, st))(jnp.asarray(images)), np.float64)
    assert feats.std(axis=0).max() > 1e-3  # the random network's features are not degenerate
    return d, clf, feats


def _check(mu, sigma, feats):
    scale = np.abs(np.cov(feats, rowvar=False)).max()
    np.testing.assert_allclose(mu, feats.mean(axis=0), rtol=1e-5, atol=1e-6 * np.abs(feats).max())
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-4, atol=1e-5 * scale)


def test_statistics_on_8_devices_equal_numpy(setup):
    d, clf, feats = setup
    assert jax.device_count() == 8
    a = rs.parse(
        [
            "--features=classifier",
            f"--weights={clf}",
            f"--idx={IDX}",
            f"--num={N}",
            "--batch_size=8",
            "--out=x",
        ]
    )
    r, desc = rs.compute(a)
    assert r.count == N and desc == f"idx:{os.path.basename(IDX)}"
    _check(r.mu, r.sigma, feats)


def readme_command() -> list[str]:
    """The README's reference_statistics command (continuation lines joined), as argv."""
    text = open(os.path.join(REPO, "README.md")).read().replace("\\\n", " ")
    (line,) = [ln.strip() for ln in text.splitlines() if "-m diffusion_jax.reference_statistics" in ln]
    return shlex.split(line)


def test_readme_cli_on_two_processes_writes_loadable_statistics(setup):
    d, clf, feats = setup
    out = str(d / "stats" / "fmnist_test.npz")
    port = portpicker.pick_unused_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    argv = readme_command()
    assert (
        argv[:3] == [".venv/bin/python", "-m", "diffusion_jax.reference_statistics"]
        and f"--idx={IDX}" in argv
    )
    # the README's command with a random-weight classifier, N records and 2 processes x 2 devices
    argv = [sys.executable, *[a for a in argv[1:] if not a.startswith(("--weights=", "--out="))]]
    argv += [f"--weights={clf}", f"--out={out}", f"--num={N}", "--batch_size=5"]
    argv += [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--cpu_collectives=gloo"]
    outs = run_processes([[*argv, f"--process_id={i}"] for i in range(2)], env, timeout=600)
    assert f"statistics of {N} images" in outs[0][0]
    mu, sigma = fid.load_statistics(out)
    _check(mu, sigma, feats)
    with np.load(out) as f:
        assert int(f["num_images"]) == N and str(f["features"]) == "classifier"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--features=pool3"], "--features='pool3' is not one of ('inception', 'classifier')"),
        (
            ["--features=inception", "--weights=/nonexistent.npz"],
            "--weights='/nonexistent.npz' not found; convert",
        ),
        (["--array=/nonexistent.npy"], "--array='/nonexistent.npy' not found"),
        (["--num=-1"], "--num=-1 must be >= 0"),
    ],
)
def test_bad_flags_name_the_flag_before_any_work(setup, capsys, args, message):
    d, clf, _ = setup
    base = {"--features": "classifier", "--weights": clf, "--idx": IDX}
    for a in args:
        base.pop(a.split("=")[0], None)
        if a.startswith("--array"):
            base.pop("--idx")
    with pytest.raises(SystemExit) as e:
        rs.parse([*args, *(f"{k}={v}" for k, v in base.items()), "--out=never.npz"])
    assert e.value.code == 2 and message in capsys.readouterr().err
