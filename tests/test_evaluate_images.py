"""`evaluate` on a tiny Fashion-MNIST run: FID (a converted random-weight pytorch-fid network), KID, the
classifier feature distance, precision/recall and bits/dim (ODE and ELBO); the CLI on 1 device prints
the numbers the in-process call on 8 devices returns; the FID equals the Frechet distance of pytorch-fid's
own network's features of the same images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from diffusion_jax.data import fashion_mnist
from diffusion_jax.training import loop, overrides

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_fid")

from diffusion_jax import evaluate as ev  # noqa: E402
from diffusion_jax.metrics import classifier, image_eval  # noqa: E402
from tests.multiproc import run_processes  # noqa: E402
from tests.test_metrics_fid import frechet_from_features  # noqa: E402
from tests.test_metrics_inception import build_random_reference  # noqa: E402
from tests.test_training_multihost import REPO  # noqa: E402

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(fashion_mnist.DEBIAN_DIR, "train-images-idx3-ubyte.gz")),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
N = 8
METRICS = "('fid', 'kid', 'fd_classifier', 'precision_recall', 'bpd', 'bpd_elbo')"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    sys.path.insert(0, REPO)
    from configs.fashion_mnist import rf_uniform

    d = tmp_path_factory.mktemp("evalimg")
    cfg = rf_uniform.get_config("tiny")  # 8x8 images, tiny U-Net
    cfg.data.data_dir, cfg.data.prepare = "", True
    cfg.training.num_steps, cfg.training.fast_compile = 2, True
    cfg.sampling.num_steps, cfg.sampling.chunk_size = 2, 4
    workdir = str(d / "run")
    loop.train(cfg, workdir, progress=False, devices=jax.devices()[:2])
    net, _, npz, _ = build_random_reference(str(d))
    clf = str(d / "clf.npz")
    classifier.save(clf, classifier.create(0), note="random weights (test)")
    sets = [
        ("eval.num_samples", str(N)),
        ("eval.metrics", METRICS),
        ("eval.inception_weights", npz),
        ("eval.classifier_path", clf),
        ("eval.kid_subset_size", "4"),
        ("eval.kid_subsets", "5"),
        ("eval.pr_k", "2"),
        ("eval.bpd_num_images", "2"),
        ("eval.bpd_rtol", "0.001"),
        ("eval.bpd_num_t", "2"),
        ("eval.batch_size", "4"),
    ]
    return workdir, net, sets


@pytest.fixture(scope="module")
def evaluated(run):
    """`evaluate` in this process (8 devices), samples saved for the pytorch-fid check."""
    workdir, _, sets = run
    cfg = overrides.apply_overrides(overrides.load_config_arg(os.path.join(workdir, "config.json")), sets)
    cfg.eval.save_samples = True
    return cfg, ev.evaluate(cfg, workdir)


def test_evaluate_reports_image_metrics_on_8_and_1_devices(run, evaluated):
    workdir, net, sets = run
    cfg, out = evaluated
    for k in ("fid", "kid", "fd_classifier", "precision", "recall", "bpd", "bpd_elbo", "bpd_nfe"):
        assert np.isfinite(out[k]), (k, out)
    assert out["fid"] > 0 and 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1 and out["bpd"] > 0
    # FID from pytorch-fid's own network on the very same uint8 images (the exact Frechet distance of
    # its features' statistics; the formula itself is checked against pytorch-fid's in test_metrics_fid)
    step = out["step"]
    d = os.path.join(workdir, "eval", f"{step:08d}_samples")
    fake = np.stack([np.load(os.path.join(d, f"{i:06d}.npz"))["sample"] for i in range(N)])
    fake_u8 = np.clip(np.round((fake + 1.0) * 127.5), 0, 255).astype(np.uint8)
    real_u8 = ev._real_images(cfg)[1](np.arange(N))

    def torch_features(u8):
        x = torch.from_numpy(u8.astype(np.float32) / 255.0).permute(0, 3, 1, 2).repeat(1, 3, 1, 1)
        with torch.no_grad():
            return net(x)[0][:, :, 0, 0].numpy().astype(np.float64)

    want = frechet_from_features(torch_features(fake_u8), torch_features(real_u8))
    assert out["fid"] == pytest.approx(want, rel=1e-3)
    # the CLI on one device prints the same numbers
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    cmd = [sys.executable, "-m", "diffusion_jax.evaluate", f"--workdir={workdir}", "--progress=false"]
    cmd += [f"--config.{k}={v}" for k, v in sets]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    one = json.loads(res.stdout[res.stdout.index("{") :])
    for k in ("fid", "kid", "fd_classifier", "precision", "recall", "bpd", "bpd_elbo"):
        assert one[k] == pytest.approx(out[k], rel=1e-4, abs=1e-6), k


def test_missing_inception_weights_fail_before_sampling(run, tmp_path):
    workdir, _, sets = run
    cfg = overrides.apply_overrides(overrides.load_config_arg(os.path.join(workdir, "config.json")), sets)
    cfg.eval.inception_weights = str(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        ev.evaluate(cfg, workdir)
    assert not os.path.exists(os.path.join(workdir, "eval", "missing"))
    cfg.eval.pr_features = "vgg"
    with pytest.raises(ValueError, match="eval.pr_features='vgg' is invalid; valid choices"):
        image_eval.validate(cfg.eval, check_files=False)


WORKER = """
import json, sys
sys.path.insert(0, {repo!r})
import jax
jax.config.update("jax_num_cpu_devices", 2)
from diffusion_jax.training import distributed
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]), cpu_collectives="gloo")
from diffusion_jax import evaluate as ev
from diffusion_jax.training import overrides
sets = json.loads(sys.argv[4])
cfg = overrides.apply_overrides(overrides.load_config_arg(sys.argv[3] + "/config.json"), [tuple(s) for s in sets])
out = ev.evaluate(cfg, sys.argv[3])
print("RESULT", json.dumps(out), flush=True)
"""


def test_two_processes_give_the_same_numbers(run, evaluated):
    import portpicker

    workdir, _, sets = run
    want = evaluated[1]
    port = portpicker.pick_unused_port()
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    code = WORKER.format(repo=REPO)
    outs = run_processes(
        [
            [sys.executable, "-c", code, f"127.0.0.1:{port}", str(pid), workdir, json.dumps(sets)]
            for pid in range(2)
        ],
        env,
        timeout=1200,
    )
    for out, _ in outs:
        got = json.loads(out[out.index("RESULT") + 7 :].splitlines()[0])
        for k in ("fid", "kid", "fd_classifier", "precision", "recall", "bpd", "bpd_elbo"):
            assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
