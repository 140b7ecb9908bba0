"""The Fashion-MNIST feature classifier: a tiny run of its training script end to end, its features and
the feature distance on real data (the > 90 % test accuracy of the full run is in the README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from diffusion_jax.data import fashion_mnist
from diffusion_jax.metrics import classifier, features, fid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(fashion_mnist.DEBIAN_DIR, "train-labels-idx1-ubyte.gz")),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("clf") / "fmnist_classifier.npz")
    cmd = [sys.executable, "-m", "experiments.train_fmnist_classifier", f"--out={out}"]
    cmd += ["--epochs=1", "--train_subset=1200", "--test_subset=500", "--batch_size=100"]
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    meta = json.loads(res.stdout.splitlines()[-2])
    return out, meta


def test_training_script_end_to_end(checkpoint):
    path, meta = checkpoint
    graphdef, state, saved = classifier.load(path)
    assert saved == meta and meta["train_images"] == 1200 and meta["test_images"] == 500
    assert meta["test_accuracy"] > 0.3  # 12 steps already beat chance (0.1) by far
    # the stored accuracy is what the loaded network scores on the same 500 test images
    x, y = fashion_mnist.load_split_numpy("test")
    feats = classifier.feature_fn(graphdef, state)
    pred = np.argmax(np.asarray(nnx.merge(graphdef, state)(x[:500].astype(np.float32) / 127.5 - 1.0)[0]), -1)
    assert np.mean(pred == y[:500]) == pytest.approx(meta["test_accuracy"])
    f_u8 = np.asarray(feats(x[:4]))
    f_float = np.asarray(feats(x[:4].astype(np.float32) / 127.5 - 1.0 + 0.001))  # rounds back to the bytes
    assert f_u8.shape == (4, classifier.FEATURE_DIM)
    np.testing.assert_allclose(f_u8, f_float, rtol=1e-5, atol=1e-6)


def test_feature_distance_separates_real_from_noise(checkpoint):
    graphdef, state, _ = classifier.load(checkpoint[0])
    fn = classifier.feature_fn(graphdef, state)
    x, _ = fashion_mnist.load_split_numpy("test")
    a, b = x[:300], x[300:600]
    noise = np.random.default_rng(0).integers(0, 256, size=(300, 28, 28, 1), dtype=np.uint8)

    def stats(imgs):
        r = features.feature_statistics(
            fn, features.dataset_batches(300, features.array_reader(imgs), 100), batch_size=100
        )
        return r.mu, r.sigma

    real_real = fid.frechet_distance(*stats(a), *stats(b))
    real_noise = fid.frechet_distance(*stats(a), *stats(noise))
    assert real_noise > 10 * real_real > 0


def test_missing_checkpoint_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="make fmnist_classifier"):
        classifier.load(str(tmp_path / "none.npz"))


def test_script_rejects_bad_arguments_before_work(tmp_path):
    out = tmp_path / "x.npz"
    cmd = [sys.executable, "-m", "experiments.train_fmnist_classifier", f"--out={out}", "--epochs=0"]
    res = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, text=True)
    assert res.returncode != 0 and "--epochs must be >= 1" in res.stderr
    assert not out.exists()
